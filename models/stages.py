"""Stage builders shared by the ResNet families (CIFAR and ImageNet)."""
from __future__ import annotations

from typing import Any

import torch.nn as nn


def resnet_stage(block: type[nn.Module], inplanes: int, planes: int, blocks: int,
                 stride: int = 1, **block_kwargs: Any) -> nn.Sequential:
    """`blocks` residual blocks; the first changes stride/width through a projection
    shortcut (downsample.0 conv 1x1, downsample.1 BN), as torchvision and the authors do.

    The attention branch's copy of the last stage is this with stride=1: its first block
    still needs the projection because the width changes."""
    out_planes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out_planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_planes),
        )
    layers = [block(inplanes, planes, stride, downsample, **block_kwargs)]
    layers += [block(out_planes, planes, **block_kwargs) for _ in range(1, blocks)]
    return nn.Sequential(*layers)
