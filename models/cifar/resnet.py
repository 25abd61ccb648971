"""ResNet for CIFAR (depth 6n+2) with an attention branch.

As in the authors' code: BasicBlocks below depth 44 and Bottlenecks from 44 on, with
n = (depth - 2) // 6 blocks per stage, so ResNet-110 is 3 stages of 18 bottlenecks.
Feature extractor: conv1, bn1, layer1, layer2 (16x16 at 32 px); attention stage: att_layer3
(stride-1 copy of layer3); perception branch: layer3, global average pool, fc.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..abn import AttentionBranchNetwork, init_conv_bn
from ..registry import CIFAR_MODELS
from ..stages import resnet_stage


class CifarResNet(AttentionBranchNetwork):
    def __init__(self, depth: int = 110, num_classes: int = 10, attention: bool = True,
                 gate: str = 'residual') -> None:
        super().__init__(num_classes, attention, gate)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f'ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), '
                             f'got {depth}')
        n = (depth - 2) // 6
        block = Bottleneck if depth >= 44 else BasicBlock
        width = 64 * block.expansion

        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = resnet_stage(block, 16, 16, n)
        self.layer2 = resnet_stage(block, 16 * block.expansion, 32, n, stride=2)
        if attention:
            self.att_layer3 = resnet_stage(block, 32 * block.expansion, 64, n, stride=1)
            self._make_attention_head(width)
        self.layer3 = resnet_stage(block, 32 * block.expansion, 64, n, stride=2)
        self.fc = nn.Linear(width, num_classes)
        init_conv_bn(self)

    def feature_extractor_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2]

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer2(self.layer1(x))

    @property
    def attention_stage(self) -> nn.Sequential:
        return self.att_layer3

    def perception_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.layer3(features)

    @property
    def final_linear(self) -> nn.Linear:
        return self.fc


@CIFAR_MODELS.register
def resnet(depth: int = 110, num_classes: int = 10, attention: bool = True,
           gate: str = 'residual') -> CifarResNet:
    """ResNet-`depth` for CIFAR with ABN (the authors' `-a resnet`)."""
    return CifarResNet(depth=depth, num_classes=num_classes, attention=attention, gate=gate)
