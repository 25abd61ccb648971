"""DenseNet-BC for CIFAR (depth 6n+4, growth rate k) with an attention branch.

Feature extractor: conv1, dense1, trans1, dense2, trans2 (8x8 at 32 px); attention stage:
att_dense3 (a second dense3; dense blocks never downsample, the transitions do); perception
branch: dense3, bn, ReLU, global average pool, fc.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..abn import AttentionBranchNetwork, init_conv_bn
from ..registry import CIFAR_MODELS


class DenseBottleneck(nn.Module):
    """BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), concatenated to its input."""

    def __init__(self, inplanes: int, growthRate: int, dropRate: float = 0.0,
                 expansion: int = 4) -> None:
        super().__init__()
        planes = expansion * growthRate
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, growthRate, kernel_size=3, padding=1, bias=False)
        self.dropRate = dropRate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        if self.dropRate > 0:
            out = F.dropout(out, p=self.dropRate, training=self.training)
        return torch.cat((x, out), 1)


class Transition(nn.Module):
    def __init__(self, inplanes: int, outplanes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, outplanes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


def dense_block(inplanes: int, blocks: int, growthRate: int, dropRate: float) -> nn.Sequential:
    return nn.Sequential(*[DenseBottleneck(inplanes + i * growthRate, growthRate, dropRate)
                           for i in range(blocks)])


class CifarDenseNet(AttentionBranchNetwork):
    def __init__(self, depth: int = 100, growthRate: int = 12, compressionRate: int = 2,
                 dropRate: float = 0.0, num_classes: int = 10, attention: bool = True,
                 gate: str = 'residual') -> None:
        super().__init__(num_classes, attention, gate)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f'DenseNet-BC depth must be 6n+4 (40, 100, 190, ...), got {depth}')
        n = (depth - 4) // 6
        k = growthRate
        channels = 2 * k
        self.conv1 = nn.Conv2d(3, channels, kernel_size=3, padding=1, bias=False)
        self.dense1 = dense_block(channels, n, k, dropRate)
        channels += n * k
        self.trans1 = Transition(channels, channels // compressionRate)
        channels //= compressionRate
        self.dense2 = dense_block(channels, n, k, dropRate)
        channels += n * k
        self.trans2 = Transition(channels, channels // compressionRate)
        channels //= compressionRate
        self.dense3 = dense_block(channels, n, k, dropRate)
        channels += n * k
        if attention:
            self.att_dense3 = dense_block(channels - n * k, n, k, dropRate)
            self._make_attention_head(channels)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)

    def feature_extractor_modules(self) -> list[nn.Module]:
        return [self.conv1, self.dense1, self.trans1, self.dense2, self.trans2]

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.trans1(self.dense1(x))
        return self.trans2(self.dense2(x))

    @property
    def attention_stage(self) -> nn.Sequential:
        return self.att_dense3

    def perception_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.dense3(features)))

    @property
    def final_linear(self) -> nn.Linear:
        return self.fc


@CIFAR_MODELS.register
def densenet(depth: int = 100, growthRate: int = 12, compressionRate: int = 2,
             dropRate: float = 0.0, num_classes: int = 10, attention: bool = True,
             gate: str = 'residual') -> CifarDenseNet:
    """DenseNet-BC-`depth`-`growthRate` for CIFAR with ABN (the authors' `-a densenet`)."""
    return CifarDenseNet(depth, growthRate, compressionRate, dropRate, num_classes,
                         attention, gate)
