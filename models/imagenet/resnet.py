"""ResNet and ResNeXt for ImageNet-sized inputs with an attention branch.

Feature extractor: conv1, bn1, ReLU, maxpool, layer1..layer3 (14x14 at 224 px); attention
stage: att_layer4 (stride-1 copy of layer4); perception branch: layer4, global average pool,
fc. The blocks are torchvision's, whose names are also the authors', so the authors' ImageNet
checkpoints load, and the plain baseline (attention=False) is torchvision's ResNet/ResNeXt key
for key. Pooling is global at any input size (the authors hard-code 14 and 7 for 224 px).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..abn import init_conv_bn
from ..registry import IMAGENET_MODELS
from ..stages import resnet_stage
from .base import ImageNetABN

# depth -> (block, blocks per stage), as in torchvision and the authors' code
BLOCKS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


class ImageNetResNet(ImageNetABN):
    """`block` is torchvision's BasicBlock or Bottleneck, or a subclass (the SE blocks);
    groups and width_per_group make the Bottleneck ResNeXt's, as in torchvision."""
    last_stage, classifier_name = 'layer4', 'fc'

    def __init__(self, block: type[Union[BasicBlock, Bottleneck]], layers: list[int],
                 num_classes: int = 1000, attention: bool = True, gate: str = 'residual',
                 groups: int = 1, width_per_group: int = 64) -> None:
        super().__init__(num_classes, attention, gate)
        e = block.expansion
        options = dict(groups=groups, base_width=width_per_group)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = resnet_stage(block, 64, 64, layers[0], **options)
        self.layer2 = resnet_stage(block, 64 * e, 128, layers[1], stride=2, **options)
        self.layer3 = resnet_stage(block, 128 * e, 256, layers[2], stride=2, **options)
        if attention:
            self.att_layer4 = resnet_stage(block, 256 * e, 512, layers[3], stride=1, **options)
            self._make_attention_head(512 * e)
        self.layer4 = resnet_stage(block, 256 * e, 512, layers[3], stride=2, **options)
        self.fc = nn.Linear(512 * e, num_classes)
        init_conv_bn(self)

    def feature_extractor_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3]

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        return self.layer3(self.layer2(self.layer1(x)))

    @property
    def attention_stage(self) -> nn.Sequential:
        return self.att_layer4

    def perception_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.layer4(features)

    @property
    def final_linear(self) -> nn.Linear:
        return self.fc


def build_resnet(depth: int, num_classes: int, attention: bool, gate: str,
                 block: Optional[type[Union[BasicBlock, Bottleneck]]] = None,
                 torchvision_name: Optional[str] = None, **options: int) -> ImageNetResNet:
    """ResNet-`depth`; `block` replaces the family's block type (the SE variants)."""
    default_block, layers = BLOCKS[depth]
    model = ImageNetResNet(block or default_block, layers, num_classes, attention, gate,
                           **options)
    model.torchvision_name = torchvision_name
    return model


@IMAGENET_MODELS.register
def resnet18(num_classes: int = 1000, attention: bool = True,
             gate: str = 'residual') -> ImageNetResNet:
    """ResNet-18 with ABN (the authors' `-a resnet18`)."""
    return build_resnet(18, num_classes, attention, gate, torchvision_name='resnet18')


@IMAGENET_MODELS.register
def resnet34(num_classes: int = 1000, attention: bool = True,
             gate: str = 'residual') -> ImageNetResNet:
    """ResNet-34 with ABN."""
    return build_resnet(34, num_classes, attention, gate, torchvision_name='resnet34')


@IMAGENET_MODELS.register
def resnet50(num_classes: int = 1000, attention: bool = True,
             gate: str = 'residual') -> ImageNetResNet:
    """ResNet-50 with ABN (the authors' published ImageNet model)."""
    return build_resnet(50, num_classes, attention, gate, torchvision_name='resnet50')


@IMAGENET_MODELS.register
def resnet101(num_classes: int = 1000, attention: bool = True,
              gate: str = 'residual') -> ImageNetResNet:
    """ResNet-101 with ABN (the authors' published ImageNet model)."""
    return build_resnet(101, num_classes, attention, gate, torchvision_name='resnet101')


@IMAGENET_MODELS.register
def resnet152(num_classes: int = 1000, attention: bool = True,
              gate: str = 'residual') -> ImageNetResNet:
    """ResNet-152 with ABN (the authors' published ImageNet model)."""
    return build_resnet(152, num_classes, attention, gate, torchvision_name='resnet152')


def build_resnext(depth: int, cardinality: int, base_width: int, num_classes: int,
                  attention: bool, gate: str) -> ImageNetResNet:
    if cardinality < 1 or base_width < 1:
        raise ValueError(f'ResNeXt needs a positive --cardinality and --base-width, got '
                         f'{cardinality} and {base_width}')
    return build_resnet(depth, num_classes, attention, gate, groups=cardinality,
                        width_per_group=base_width,
                        torchvision_name=f'resnext{depth}_{cardinality}x{base_width}d')


@IMAGENET_MODELS.register
def resnext50(cardinality: int = 32, base_width: int = 4, num_classes: int = 1000,
              attention: bool = True, gate: str = 'residual') -> ImageNetResNet:
    """ResNeXt-50 (`cardinality` x `base_width`d) with ABN: `-a resnext50 --cardinality 32
    --base-width 4` is torchvision's resnext50_32x4d."""
    return build_resnext(50, cardinality, base_width, num_classes, attention, gate)


@IMAGENET_MODELS.register
def resnext101(cardinality: int = 32, base_width: int = 4, num_classes: int = 1000,
               attention: bool = True, gate: str = 'residual') -> ImageNetResNet:
    """ResNeXt-101 (`cardinality` x `base_width`d) with ABN: `--cardinality 32 --base-width 8`
    is torchvision's resnext101_32x8d, `--cardinality 64 --base-width 4` its resnext101_64x4d."""
    return build_resnext(101, cardinality, base_width, num_classes, attention, gate)
