"""ResNeXt for CIFAR (depth 9n+2, cardinality C, widen factor w) with an attention branch.

Feature extractor: conv_1_3x3, bn_1, stage_1, stage_2 (16x16 at 32 px); attention stage:
stage_att (stride-1 copy of stage_3); perception branch: stage_3, global average pool,
classifier. Faithful to the authors' code, the head skips bn_att (it exists, unused, so their
checkpoints load and give their outputs).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..abn import AttentionBranchNetwork, init_conv_bn
from ..registry import CIFAR_MODELS


class ResNeXtBottleneck(nn.Module):
    """Type C bottleneck: 1x1 reduce, grouped 3x3, 1x1 expand; D = C * out / w channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, cardinality: int,
                 widen_factor: int) -> None:
        super().__init__()
        d = cardinality * out_channels // widen_factor
        self.conv_reduce = nn.Conv2d(in_channels, d, kernel_size=1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(d)
        self.conv_conv = nn.Conv2d(d, d, kernel_size=3, stride=stride, padding=1,
                                   groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(d)
        self.conv_expand = nn.Conv2d(d, out_channels, kernel_size=1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if in_channels != out_channels:
            self.shortcut.add_module('shortcut_conv', nn.Conv2d(
                in_channels, out_channels, kernel_size=1, stride=stride, bias=False))
            self.shortcut.add_module('shortcut_bn', nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        return F.relu(self.shortcut(x) + out)


def resnext_stage(name: str, blocks: int, in_channels: int, out_channels: int, stride: int,
                  cardinality: int, widen_factor: int) -> nn.Sequential:
    stage = nn.Sequential()
    for i in range(blocks):
        stage.add_module(f'{name}_bottleneck_{i}', ResNeXtBottleneck(
            in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1,
            cardinality, widen_factor))
    return stage


class CifarResNeXt(AttentionBranchNetwork):
    def __init__(self, cardinality: int = 8, depth: int = 29, num_classes: int = 10,
                 widen_factor: int = 4, attention: bool = True,
                 gate: str = 'residual') -> None:
        super().__init__(num_classes, attention, gate)
        if depth < 11 or (depth - 2) % 9:
            raise ValueError(f'ResNeXt depth must be 9n+2 (11, 20, 29, ...), got {depth}')
        n = (depth - 2) // 9
        widths = [64, 64 * widen_factor, 128 * widen_factor, 256 * widen_factor]
        stage_options = dict(cardinality=cardinality, widen_factor=widen_factor)
        self.conv_1_3x3 = nn.Conv2d(3, 64, kernel_size=3, padding=1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        self.stage_1 = resnext_stage('stage_1', n, widths[0], widths[1], 1, **stage_options)
        self.stage_2 = resnext_stage('stage_2', n, widths[1], widths[2], 2, **stage_options)
        self.stage_3 = resnext_stage('stage_3', n, widths[2], widths[3], 2, **stage_options)
        # The authors hard-code 1024 inputs here, right only for widen factor 4.
        self.classifier = nn.Linear(widths[3], num_classes)
        if attention:
            self.stage_att = resnext_stage('stage_att', n, widths[2], widths[3], 1,
                                           **stage_options)
            self._make_attention_head(widths[3], uses_bn_att=False)
        init_conv_bn(self)
        nn.init.kaiming_normal_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def feature_extractor_modules(self) -> list[nn.Module]:
        return [self.conv_1_3x3, self.bn_1, self.stage_1, self.stage_2]

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_1(self.conv_1_3x3(x)))
        return self.stage_2(self.stage_1(x))

    @property
    def attention_stage(self) -> nn.Sequential:
        return self.stage_att

    def perception_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.stage_3(features)

    @property
    def final_linear(self) -> nn.Linear:
        return self.classifier


@CIFAR_MODELS.register
def resnext(cardinality: int = 8, depth: int = 29, num_classes: int = 10,
            widen_factor: int = 4, dropRate: float = 0.0, attention: bool = True,
            gate: str = 'residual') -> CifarResNeXt:
    """ResNeXt-`depth` (`cardinality` x 64d at widen factor 4) for CIFAR with ABN (the
    authors' `-a resnext`). The authors accept dropRate and ignore it; here it is refused."""
    if dropRate:
        raise ValueError('ResNeXt has no dropout (the authors\' code ignores --drop): '
                         'leave --drop at 0')
    return CifarResNeXt(cardinality, depth, num_classes, widen_factor, attention, gate)
