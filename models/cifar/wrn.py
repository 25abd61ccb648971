"""Wide ResNet for CIFAR (depth 6n+4, widen factor k) with an attention branch.

Feature extractor: conv1, block1, block2 (16x16 at 32 px); attention stage: att_block3
(stride-1 copy of block3); perception branch: block3, bn1, ReLU, global average pool, fc.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..abn import AttentionBranchNetwork, init_conv_bn
from ..registry import CIFAR_MODELS


class WideBasicBlock(nn.Module):
    """Pre-activation block. When the width changes, the shortcut (convShortcut) takes the
    pre-activated input, as in the reference WRN code."""

    def __init__(self, in_planes: int, out_planes: int, stride: int,
                 dropRate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, padding=1, bias=False)
        self.droprate = dropRate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        shortcut = x if self.equalInOut else self.convShortcut(activated)
        out = F.relu(self.bn2(self.conv1(activated)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """A stage; the extra `.layer` level keeps the authors' parameter names."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int,
                 dropRate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                           stride if i == 0 else 1, dropRate)
            for i in range(nb_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(AttentionBranchNetwork):
    def __init__(self, depth: int = 28, num_classes: int = 10, widen_factor: int = 4,
                 dropRate: float = 0.0, attention: bool = True,
                 gate: str = 'residual') -> None:
        super().__init__(num_classes, attention, gate)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f'WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}')
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropRate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropRate)
        if attention:
            self.att_block3 = NetworkBlock(n, widths[2], widths[3], 1, dropRate)
            self._make_attention_head(widths[3])
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropRate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def feature_extractor_modules(self) -> list[nn.Module]:
        return [self.conv1, self.block1, self.block2]

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(self.conv1(x)))

    @property
    def attention_stage(self) -> NetworkBlock:
        return self.att_block3

    def perception_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.block3(features)))

    @property
    def final_linear(self) -> nn.Linear:
        return self.fc


@CIFAR_MODELS.register
def wrn(depth: int = 28, num_classes: int = 10, widen_factor: int = 4, dropRate: float = 0.0,
        attention: bool = True, gate: str = 'residual') -> WideResNet:
    """WRN-`depth`-`widen_factor` for CIFAR with ABN (the authors' `-a wrn`)."""
    return WideResNet(depth, num_classes, widen_factor, dropRate, attention, gate)
