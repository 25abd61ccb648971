"""The part of an Attention Branch Network that every backbone family shares.

A family (ResNet, DenseNet, WRN, ResNeXt, ...) subclasses `AttentionBranchNetwork` and
provides three pieces:

- `extract_features(x)`: every stage of the backbone but the last;
- `attention_stage`: a copy of the last stage built with stride 1, so the attention map keeps
  the feature extractor's resolution (None for the plain baseline);
- `perception_features(features)`: the real last stage (with its final BN/ReLU, if any):
  the maps that are pooled and classified, and that CAM and Grad-CAM explain;
- `final_linear`: the classifier after global average pooling (or override `classify`).

The attention head itself (layer names as in the authors' code, so their checkpoints load)
and the gating of the features by the map live here, once, for all families.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

GATES = ('residual', 'multiply')


class AbnOutput(NamedTuple):
    """What every ABN model returns; it still unpacks as the authors' triple.

    attention_logits: (N, K) or None for a plain backbone; perception_logits: (N, K), the
    model's answer; attention_map: (N, 1, h, w) in [0, 1] (one channel per task, (N, T, h, w),
    for multi-task models), or None for a plain backbone."""
    attention_logits: Optional[torch.Tensor]
    perception_logits: torch.Tensor
    attention_map: Optional[torch.Tensor]


class AttentionBranchNetwork(nn.Module):
    """Base class. `forward(x)` returns an `AbnOutput`
    `(attention_logits, perception_logits, attention_map)`.

    gate: 'residual' feeds g(x) * (1 + M(x)) to the perception branch (the authors' code and
    published numbers); 'multiply' feeds g(x) * M(x) (the paper's ablation).
    A model built with `attention=False` is the plain backbone: it has no attention branch and
    returns `(None, perception_logits, None)`.
    """

    def __init__(self, num_classes: int, attention: bool = True,
                 gate: str = 'residual') -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"unknown attention gate '{gate}': choose one of {', '.join(GATES)}")
        self.num_classes = num_classes
        self.has_attention = attention
        self.gate = gate
        # The CIFAR ResNeXt defines bn_att but never applies it; kept for its checkpoints.
        self.uses_bn_att = True
        self.feature_extractor_frozen = False  # freeze_feature_extractor

    # -- pieces a family provides ------------------------------------------------------
    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def feature_extractor_modules(self) -> Sequence[nn.Module]:
        """The modules that `extract_features` runs, in order: what fine-tuning with
        attention maps keeps fixed (freeze_feature_extractor)."""
        raise NotImplementedError

    @property
    def attention_stage(self) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def perception_features(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def final_linear(self) -> nn.Module:
        raise NotImplementedError

    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        """Global average pooling and the final linear layer."""
        return self.final_linear(F.adaptive_avg_pool2d(maps, 1).flatten(1))

    def perceive(self, features: torch.Tensor) -> torch.Tensor:
        """The perception branch: last stage, pooling, classifier."""
        return self.classify(self.perception_features(features))

    # -- the shared attention head -----------------------------------------------------
    def _make_attention_head(self, in_channels, uses_bn_att=True):
        """Adds the head's layers under the authors' names (bn_att, att_conv, ...)."""
        k = self.num_classes
        self.bn_att = nn.BatchNorm2d(in_channels)
        self.att_conv = nn.Conv2d(in_channels, k, kernel_size=1, bias=False)
        self.bn_att2 = nn.BatchNorm2d(k)
        self.att_conv3 = nn.Conv2d(k, 1, kernel_size=3, padding=1, bias=False)
        self.bn_att3 = nn.BatchNorm2d(1)
        self.att_conv2 = nn.Conv2d(k, k, kernel_size=1, bias=False)
        self.uses_bn_att = uses_bn_att
        if not uses_bn_att:
            # Never in the graph: freezing it keeps DDP from waiting for its gradients.
            self.bn_att.requires_grad_(False)

    def attention_branch(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (attention_logits, attention_map) for the feature extractor's output."""
        a = self.attention_stage(features)
        if self.uses_bn_att:
            a = self.bn_att(a)
        a = F.relu(self.bn_att2(self.att_conv(a)))
        attention_map = torch.sigmoid(self.bn_att3(self.att_conv3(a)))
        attention_logits = F.adaptive_avg_pool2d(self.att_conv2(a), 1).flatten(1)
        return attention_logits, attention_map

    def map_size(self, features: torch.Tensor) -> tuple[int, ...]:
        """(h, w) of the attention map for these features."""
        return tuple(features.shape[-2:])

    def apply_attention(self, features: torch.Tensor,
                        attention_map: torch.Tensor) -> torch.Tensor:
        if self.gate == 'residual':
            return features * (1 + attention_map)
        return features * attention_map

    def train(self, mode: bool = True) -> AttentionBranchNetwork:
        super().train(mode)
        keep_frozen_in_eval(self)
        return self

    def forward(self, x: torch.Tensor, attention: Optional[torch.Tensor] = None) -> AbnOutput:
        """attention: an (N, 1, h, w) map to use instead of the model's own (attention
        editing); it is resized to the feature resolution if needed and returned as the map."""
        features = self.extract_features(x)
        if not self.has_attention:
            if attention is not None:
                raise ValueError('this model has no attention branch to edit')
            return AbnOutput(None, self.perceive(features), None)
        attention_logits, attention_map = self.attention_branch(features)
        if attention is not None:
            attention_map = _fit_map(attention.to(features.dtype), self.map_size(features))
        perception_logits = self.perceive(self.apply_attention(features, attention_map))
        return AbnOutput(attention_logits, perception_logits, attention_map)


def _fit_map(attention_map, size):
    if attention_map.dim() == 3:
        attention_map = attention_map.unsqueeze(1)
    if tuple(attention_map.shape[-2:]) != tuple(size):
        attention_map = F.interpolate(attention_map, size=tuple(size), mode='bilinear',
                                      align_corners=False)
    return attention_map


def freeze_feature_extractor(model: nn.Module) -> int:
    """Keeps the feature extractor fixed, as Mitsuhara et al. do when they fine-tune with
    edited maps: its parameters get no gradients, and its layers stay in eval mode whatever
    `model.train()` says, so BatchNorm running statistics and dropout do not change it either.
    Returns the number of parameters frozen."""
    modules = tuple(model.feature_extractor_modules())
    # parameters of the model itself that the extractor uses (a ViT's position embedding)
    extra = tuple(getattr(model, 'feature_extractor_parameters', tuple)())
    for module in modules:
        module.requires_grad_(False)
    for parameter in extra:
        parameter.requires_grad_(False)
    model.feature_extractor_frozen = True
    model.train(model.training)
    return sum(p.numel() for module in modules for p in module.parameters()) + \
        sum(p.numel() for p in extra)


def keep_frozen_in_eval(model: nn.Module) -> None:
    """The frozen feature extractor's layers back in eval mode (after `model.train()`). They
    are looked up anew each time: a layer replaced since the freeze (SyncBatchNorm's
    conversion makes new BatchNorm modules, on the same parameters) is frozen too."""
    if getattr(model, 'feature_extractor_frozen', False):
        for module in model.feature_extractor_modules():
            module.eval()  # frozen BatchNorm layers keep their running statistics


def init_conv_bn(model: nn.Module) -> None:
    """The authors' initialisation: conv weights normal(0, sqrt(2 / (k*k*out_channels))),
    which is kaiming_normal fan_out, and BatchNorm weight 1, bias 0. Conv biases (VGG's; the
    ResNets have none) start at 0, as torchvision's."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
