"""A timm or torchvision CNN as an ABN, split as the authors split their families.

- feature extractor: the trunk's stages before the split (models.backbones.split);
- perception branch: the real stages after it, then the model's own head (its pooling and
  the rest of its head, with a new classifier for the data's classes);
- attention branch: a copy of those stages without their downsampling, then the one
  attention head of models.abn.

The library's model is kept whole under `backbone.` (its own parameter names, so its
weights load as the library saves them); the attention stage is `att_stage.<i>`, a copy of
the i-th module after the split. CAM is exact where the head is global average pooling and
one linear layer (checked on the model itself: `cam_exact`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..abn import AttentionBranchNetwork
from .libraries import library
from .split import Trunk, remove_downsampling


class BackboneABN(AttentionBranchNetwork):
    min_image_size = 32
    pools_tokens = False  # the library's model as it is

    def __init__(self, backbone: nn.Module, source: str, name: str, trunk: Trunk, split: int,
                 num_classes: int, attention: bool = True, gate: str = 'residual') -> None:
        super().__init__(num_classes, attention, gate)
        self.backbone = backbone
        self.source, self.backbone_name, self.split = source, name, split
        first = trunk.stage_start(split)
        self.extractor_paths = tuple(part.path for part in trunk.parts[:first])
        self.stage_paths = tuple(part.path for part in trunk.parts[first:])
        self.map_stride = trunk.parts[first - 1].stride
        self.head_paths, self.flatten_head, self.classifier_path = \
            library(source).head(backbone)
        if attention:
            self.att_stage = remove_downsampling(nn.Sequential(
                *[copy.deepcopy(self.part(path)) for path in self.stage_paths]))
            self._make_attention_head(trunk.parts[-1].channels)
        self.cam_exact = False  # set by check_head once the weights exist

    def part(self, path: str) -> nn.Module:
        return self.backbone.get_submodule(path)

    # -- the pieces of an AttentionBranchNetwork ------------------------------------------
    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        for path in self.extractor_paths:
            x = self.part(path)(x)
        return x

    def feature_extractor_modules(self) -> list[nn.Module]:
        return [self.part(path) for path in self.extractor_paths]

    @property
    def attention_stage(self) -> nn.Module:
        return self.att_stage

    def perception_features(self, features: torch.Tensor) -> torch.Tensor:
        for path in self.stage_paths:
            features = self.part(path)(features)
        return features

    @property
    def final_linear(self) -> nn.Module:
        return self.part(self.classifier_path)

    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        """The model's own head (its library's: timm's forward_head, torchvision's pooling and
        the children after it)."""
        return library(self.source).classify(self.backbone, maps, self.head_paths,
                                             self.flatten_head)

    # -- weights ---------------------------------------------------------------------------
    def copy_stage_to_attention(self) -> None:
        """The attention stage as a copy of the perception's (after pretrained weights)."""
        if self.has_attention:
            for copied, path in zip(self.att_stage, self.stage_paths):
                copied.load_state_dict(self.part(path).state_dict())

    def check_head(self) -> bool:
        """Whether CAM is exact: in eval mode the head is average pooling + final_linear."""
        self.cam_exact = head_is_linear(self, self.part(self.stage_paths[-1]))
        return self.cam_exact


def head_is_linear(model: AttentionBranchNetwork, last_part: nn.Module) -> bool:
    """In eval mode, does the head give final_linear(mean of the maps)? Probed on random
    maps of the last stage's width."""
    linear = model.final_linear
    if not isinstance(linear, nn.Linear) or linear.weight.is_meta:
        return False
    training = model.training
    model.eval()
    try:
        maps = torch.randn(2, linear.in_features, 3, 3,
                           generator=torch.Generator().manual_seed(0)).to(linear.weight)
        with torch.no_grad():
            ok = torch.allclose(model.classify(maps), linear(maps.mean((2, 3))), atol=1e-5)
    except RuntimeError:  # the head wants another width: not pooling + linear
        ok = False
    finally:
        model.train(training)
    return ok
