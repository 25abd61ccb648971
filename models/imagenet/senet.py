"""SE-ResNet for ImageNet-sized inputs with an attention branch.

The blocks follow the authors' senet_resnet.py: squeeze-and-excitation on the residual branch,
before the addition, through `fc1` (to a sixteenth of the block's output channels) and `fc2`,
with adaptive global pooling where they hard-code the sizes of 224 px inputs. The split is
ResNet's (models/imagenet/resnet.py).

The attention head is the ordinary one (models/abn.py), as the paper describes SENet+ABN. The
authors' SE code differs: its map is sum_c log(1 + relu(...)) over the head's K channels,
unbounded and without att_conv3/bn_att3/sigmoid; that variant is not reproduced (and no
checkpoint of it was published).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..registry import IMAGENET_MODELS
from .resnet import ImageNetResNet, build_resnet

REDUCTION = 16


class SqueezeExcitation:
    """Mixin for torchvision's blocks: `fc1`/`fc2` under the authors' names."""

    def _make_squeeze_excitation(self, channels: int) -> None:
        self.fc1 = nn.Linear(channels, round(channels / REDUCTION))
        self.fc2 = nn.Linear(round(channels / REDUCTION), channels)

    def excite(self, out: torch.Tensor) -> torch.Tensor:
        weights = F.adaptive_avg_pool2d(out, 1).flatten(1)
        weights = torch.sigmoid(self.fc2(F.relu(self.fc1(weights))))
        return out * weights[:, :, None, None]

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)


class SEBasicBlock(SqueezeExcitation, BasicBlock):
    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, **kwargs: Any) -> None:
        super().__init__(inplanes, planes, stride, downsample, **kwargs)
        self._make_squeeze_excitation(planes * self.expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.excite(out) + self.shortcut(x))


class SEBottleneck(SqueezeExcitation, Bottleneck):
    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, **kwargs: Any) -> None:
        super().__init__(inplanes, planes, stride, downsample, **kwargs)
        self._make_squeeze_excitation(planes * self.expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(self.excite(out) + self.shortcut(x))


@IMAGENET_MODELS.register
def se_resnet18(num_classes: int = 1000, attention: bool = True,
                gate: str = 'residual') -> ImageNetResNet:
    """SE-ResNet-18 with ABN."""
    return build_resnet(18, num_classes, attention, gate, block=SEBasicBlock)


@IMAGENET_MODELS.register
def se_resnet34(num_classes: int = 1000, attention: bool = True,
                gate: str = 'residual') -> ImageNetResNet:
    """SE-ResNet-34 with ABN."""
    return build_resnet(34, num_classes, attention, gate, block=SEBasicBlock)


@IMAGENET_MODELS.register
def se_resnet50(num_classes: int = 1000, attention: bool = True,
                gate: str = 'residual') -> ImageNetResNet:
    """SE-ResNet-50 with ABN."""
    return build_resnet(50, num_classes, attention, gate, block=SEBottleneck)


@IMAGENET_MODELS.register
def se_resnet101(num_classes: int = 1000, attention: bool = True,
                 gate: str = 'residual') -> ImageNetResNet:
    """SE-ResNet-101 with ABN."""
    return build_resnet(101, num_classes, attention, gate, block=SEBottleneck)


@IMAGENET_MODELS.register
def se_resnet152(num_classes: int = 1000, attention: bool = True,
                 gate: str = 'residual') -> ImageNetResNet:
    """SE-ResNet-152 with ABN (the paper's SENet-152 + ABN)."""
    return build_resnet(152, num_classes, attention, gate, block=SEBottleneck)
