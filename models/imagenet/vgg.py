"""VGG-16 with batch normalisation and an attention branch.

The backbone is torchvision's vgg16_bn (its own class builds `features`, `avgpool` and
`classifier`), so its names and torchvision's ImageNet weights carry over, and the plain
baseline is torchvision's model. The split, in indices of `features`:

- feature extractor: features[0:34], conv1_1 ... conv4_3 and pool4 (14x14 at 224 px);
- attention stage: att_features, a copy of the conv5 block (conv5_1 ... conv5_3 with their
  BN and ReLU, features[34:43]; stride 1 like the original, and without pool5), keeping the
  indices of `features`, so att_features.34 is the copy of features.34;
- perception branch: the conv5 block (its output is what CAM/Grad-CAM explain), pool5
  (features[43]), avgpool (adaptive, 7x7) and the classifier MLP (4096, 4096, classes).
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Union

import torch
import torch.nn as nn
from torchvision.models.vgg import VGG, cfgs, make_layers

from ..abn import init_conv_bn
from ..registry import IMAGENET_MODELS
from .base import ImageNetABN


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """torch's adaptive average pooling (no weights: torchvision's keys are unchanged), but
    with a deterministic backward pass under torch.use_deterministic_algorithms: CUDA has
    none for torch's (--deterministic would fail at the first step). There it pools with
    two averaging matrices (rows, then columns), whose products are deterministic; an input
    already of the output size (7x7 at 224 px) passes unchanged, as torch's pooling leaves it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = nn.modules.utils._pair(self.output_size)
        size = tuple(s if s is not None else x.shape[-2 + i] for i, s in enumerate(size))
        if tuple(x.shape[-2:]) == size:
            return x
        if not torch.are_deterministic_algorithms_enabled():
            return super().forward(x)
        rows = averaging_matrix(x.shape[-2], size[0], x)
        columns = averaging_matrix(x.shape[-1], size[1], x)
        return torch.einsum('oh,nchw,pw->ncop', rows, x, columns)


def averaging_matrix(length: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """(size, length): row i averages the inputs of adaptive pooling's bin i, [floor(i L /
    S), ceil((i + 1) L / S))."""
    bins = torch.arange(size, device=like.device)
    starts = (bins * length) // size
    ends = -((-(bins + 1) * length) // size)
    positions = torch.arange(length, device=like.device)
    inside = (positions >= starts[:, None]) & (positions < ends[:, None])
    inside = inside.to(like.dtype)
    return inside / inside.sum(1, keepdim=True)


class ImageNetVGG(ImageNetABN):
    last_stage, classifier_name = 'features', 'classifier.6'

    def __init__(self, cfg: list[Union[str, int]], num_classes: int = 1000,
                 attention: bool = True, gate: str = 'residual', dropout: float = 0.5) -> None:
        super().__init__(num_classes, attention, gate)
        vgg = VGG(make_layers(cfg, batch_norm=True), num_classes, dropout=dropout)
        self.features, self.classifier = vgg.features, vgg.classifier
        self.avgpool = AdaptiveAvgPool2d(vgg.avgpool.output_size)
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self.pool4, self.pool5 = pools[-2:]
        if attention:
            block = list(self.features.named_children())[self.pool4 + 1:self.pool5]
            self.att_features = nn.Sequential(OrderedDict(
                (name, copy.deepcopy(module)) for name, module in block))
            self._make_attention_head(512)
            # torchvision's conv/BN initialisation, drawn anew for every conv: the attention
            # stage starts as a stage of its own, not a clone of conv5
            init_conv_bn(self)

    def feature_extractor_modules(self) -> list[nn.Module]:
        return list(self.features[:self.pool4 + 1])

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[:self.pool4 + 1](x)

    @property
    def attention_stage(self) -> nn.Sequential:
        return self.att_features

    def perception_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.features[self.pool4 + 1:self.pool5](features)

    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        pooled = self.avgpool(self.features[self.pool5](maps))
        return self.classifier(torch.flatten(pooled, 1))


@IMAGENET_MODELS.register
def vgg16_bn(num_classes: int = 1000, attention: bool = True,
             gate: str = 'residual') -> ImageNetVGG:
    """VGG-16 with batch normalisation and ABN (torchvision's vgg16_bn backbone)."""
    model = ImageNetVGG(cfgs['D'], num_classes, attention, gate)
    model.torchvision_name = 'vgg16_bn'
    return model
