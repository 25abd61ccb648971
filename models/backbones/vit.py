"""A timm vision transformer (ViT, DeiT: `VisionTransformer`) as an ABN.

The patch tokens, laid out on their grid, are the feature maps: (N, C, H, W) with H x W the
patch grid of the run's image size (the position embedding is built for it, and timm
resamples a pretrained one to it).

- feature extractor: patch embedding, position embedding, the blocks before the split;
- attention branch: copies of the last blocks (`split`: how many, negative; default -3) and
  of the final norm, the patch tokens on their grid, then the one attention head: the map
  lives on the patch grid;
- perception branch: the patch tokens gated by the map (the class token passes ungated),
  the real last blocks, the final norm, and the model's own pooling as timm's
  `global_pool='avg'` (the mean of the patch tokens) with a new linear classifier. The
  class token still takes part in attention; the head reads the patch tokens, so CAM and
  Grad-CAM have a map of them to explain (with the class token's pooling the last block's
  patch tokens would reach no output).
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

from ..abn import AttentionBranchNetwork

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer


class VisionTransformerABN(AttentionBranchNetwork):
    min_image_size = 32
    cam_exact = True  # the head is the mean of the patch tokens and one linear layer
    classifier_path = 'head'  # in the backbone
    pools_tokens = True  # built with the library's mean of the patch tokens

    def __init__(self, backbone: VisionTransformer, source: str, name: str, split: int,
                 num_classes: int, attention: bool = True, gate: str = 'residual') -> None:
        super().__init__(num_classes, attention, gate)
        self.backbone = backbone
        self.source, self.backbone_name, self.split = source, name, split
        self.first_branch_block = len(backbone.blocks) + split
        self.map_stride = backbone.patch_embed.patch_size[0]
        if attention:
            self.att_blocks = nn.Sequential(
                *[copy.deepcopy(block) for block in backbone.blocks[self.first_branch_block:]])
            self.att_norm = copy.deepcopy(backbone.norm)
            self._make_attention_head(backbone.embed_dim)

    def grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch tokens (N, prefix + H*W, C) as maps (N, C, H, W)."""
        height, width = self.backbone.patch_embed.grid_size
        patches = tokens[:, self.backbone.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)

    def map_size(self, features: torch.Tensor) -> tuple[int, ...]:
        return tuple(self.backbone.patch_embed.grid_size)

    # -- the pieces of an AttentionBranchNetwork ------------------------------------------
    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.backbone
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for block in vit.blocks[:self.first_branch_block]:
            x = block(x)
        return x

    def feature_extractor_modules(self) -> list[nn.Module]:
        vit = self.backbone
        return [vit.patch_embed, vit.pos_drop, vit.patch_drop, vit.norm_pre,
                *vit.blocks[:self.first_branch_block]]

    def feature_extractor_parameters(self) -> list[nn.Parameter]:
        """The position embedding and the class (and register) tokens: parameters of the
        model itself, part of the feature extractor."""
        vit = self.backbone
        return [p for p in (vit.cls_token, vit.reg_token, vit.pos_embed) if p is not None]

    @property
    def attention_stage(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.attend

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.grid(self.att_norm(self.att_blocks(tokens)))

    def apply_attention(self, tokens: torch.Tensor, attention_map: torch.Tensor) -> torch.Tensor:
        prefix = self.backbone.num_prefix_tokens
        weights = attention_map.flatten(2).transpose(1, 2)  # (N, H*W, 1)
        patches = tokens[:, prefix:]
        gated = patches * (1 + weights) if self.gate == 'residual' else patches * weights
        return torch.cat([tokens[:, :prefix], gated], 1)

    def perception_features(self, tokens: torch.Tensor) -> torch.Tensor:
        vit = self.backbone
        for block in vit.blocks[self.first_branch_block:]:
            tokens = block(tokens)
        return self.grid(vit.norm(tokens))

    @property
    def final_linear(self) -> nn.Module:
        return self.backbone.head

    # -- weights ---------------------------------------------------------------------------
    def copy_stage_to_attention(self) -> None:
        if self.has_attention:
            blocks = self.backbone.blocks[self.first_branch_block:]
            for copied, block in zip(self.att_blocks, blocks):
                copied.load_state_dict(block.state_dict())
            self.att_norm.load_state_dict(self.backbone.norm.state_dict())

    def check_head(self) -> bool:
        return True
