"""Any timm or torchvision classifier as an ABN: `-a timm:NAME`, `-a torchvision:NAME`.

`build(source, name, ...)` makes the library's model (fresh weights, a classifier for the
data's classes, built for the run's image size) and splits it as the authors split their
families, the first of these ways that applies: timm's vision transformers
(models.backbones.vit); its children, at the stages of the library's own description of it
(models.backbones.split, .cnn); its traced graph's (N, C, H, W) maps (models.backbones.graph);
its traced graph between its blocks, whatever its tokens' layout (models.backbones.tokens).
`split` picks the first stage (or block) of the two branches (negative from the end;
default: the last stage, for a transformer the last 3 blocks). Pretrained weights are the library's (`library_state_dict`), loaded
into the backbone, the attention stage starting as a copy of the pretrained last stage.
Each library is one object of models.backbones.libraries; timm is imported when a timm name
is used.
"""
from __future__ import annotations

import copy
import difflib
from typing import Optional, Union

import torch

from ..abn import AttentionBranchNetwork
from .cnn import BackboneABN
from .graph import GraphBackboneABN, graph_split
from .libraries import LIBRARIES, library
from .split import DOWNSAMPLING_RULES, Trunk  # noqa: F401
from .tokens import TokenGraphABN, block_lists, check_whole, token_split
from .vit import VisionTransformerABN

VIT_DEFAULT_SPLIT = -3  # a ViT's branches: its last 3 blocks (a quarter of a 12-block ViT)


def split_name(arch: object) -> Optional[tuple[str, str]]:
    """('timm', 'resnet18') for 'timm:resnet18'; None for a name of no library."""
    if not isinstance(arch, str) or ':' not in arch:
        return None
    source, _, name = arch.partition(':')
    return (source, name) if source in LIBRARIES and name else None


def library_names(source: str, pattern: str = '*') -> list[str]:
    """The classifiers `source` can build whose name matches `pattern`."""
    return library(source).names(pattern)


def check_name(source: str, name: str) -> None:
    """Raises ValueError naming the nearest names where `source` has no model `name`."""
    names = library_names(source)
    if name in names:
        return
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f': did you mean {", ".join(f"{source}:{n}" for n in near)}?' if near else \
        f' (list them with --list-models "{source}:*")'
    raise ValueError(f"{source} has no model '{name}'{hint}")


def is_vit(source: str, name: str) -> bool:
    return library(source).is_vit(name)


def library_model(source: str, name: str, num_classes: int, image_size: int, vit: bool = False,
                  pretrained: bool = False,
                  pretrained_file: Optional[str] = None) -> torch.nn.Module:
    """The library's own model with `num_classes` outputs, for `image_size`; where `vit`, a
    transformer pooling its patch tokens where it can be built so."""
    return library(source).model(name, num_classes, image_size, vit, pretrained,
                                 pretrained_file)


def trunk_of(source: str, name: str, image_size: int, vit: bool) -> Trunk:
    """The trunk of the model, found on a twin on the meta device (no memory, no arithmetic),
    or on the CPU for the few models that cannot be built there (torchvision's RegNets)."""
    find = library(source).trunk
    try:
        with torch.device('meta'):
            twin = library_model(source, name, 1000, image_size, vit).eval()
        return find(twin, image_size, 'meta')
    except (RuntimeError, NotImplementedError):
        with torch.device('cpu'):
            twin = library_model(source, name, 1000, image_size, vit).eval()
        return find(twin, image_size, 'cpu')


class Final(ValueError):
    """A refusal that no other way of splitting the model would lift (a size its forward
    asserts, a --split out of range)."""


def build(source: str, name: str, num_classes: int = 1000, attention: bool = True,
          gate: str = 'residual', split: Optional[int] = None,
          image_size: int = 224) -> AttentionBranchNetwork:
    """The ABN of `source`'s model `name` (see the module's docstring); `split=None` is the
    family's default. The ways of splitting are tried in turn: its children, its traced
    graph, between its blocks. Raises ValueError in one line for what cannot be split."""
    check_name(source, name)
    if is_vit(source, name):
        backbone = library_model(source, name, num_classes, image_size, vit=True)
        split = VIT_DEFAULT_SPLIT if split is None else split
        check_split(split, len(backbone.blocks), f'{source}:{name}', 'blocks')
        model = VisionTransformerABN(backbone, source, name, split, num_classes, attention,
                                     gate)
        model.check_head()
        return model
    reasons = []
    for make in (children_model, graph_model, token_model):
        try:
            return make(source, name, num_classes, attention, gate, split, image_size)
        except Final:
            raise
        except ValueError as refusal:
            reasons.append(str(refusal))
    children, graph, blocks = reasons
    # the graph's reason where it is the more precise: torchvision's children are a guess,
    # and a copy that keeps no resolution may only have lost a functional pooling
    first = graph if library(source).children_are_a_guess or \
        children.startswith('the downsampling') \
        else children
    raise ValueError(first if blocks in first else f'{first}; nor between its blocks: {blocks}')


def children_model(source: str, name: str, num_classes: int, attention: bool, gate: str,
                   split: Optional[int], image_size: int) -> BackboneABN:
    """The ABN of a model whose children run one after another (models.backbones.cnn)."""
    arch, asked, split = f'{source}:{name}', split is not None, -1 if split is None else split
    try:
        trunk = trunk_of(source, name, image_size, False)
    except AssertionError:  # the model's own check of its input
        raise Final(f'{arch} does not run at {image_size} px (its forward asserts a '
                    f'size{own_size(source, name)})') from None
    except (ValueError, RuntimeError, NotImplementedError, AttributeError) as error:
        raise ValueError(f'{arch} cannot be split into a feature extractor and a last stage: '
                         f'{str(error).splitlines()[0]}') from None
    check_split(split, len(trunk.stage_ends), arch, 'stages', asked)
    backbone = library_model(source, name, num_classes, image_size)
    model = BackboneABN(backbone, source, name, trunk, split, num_classes, attention, gate)
    if attention:
        before = trunk.parts[trunk.stage_start(split) - 1]
        check_keeps_resolution(model, before.channels, before.stride, image_size)
    model.check_head()
    return model


def own_size(source: str, name: str) -> str:
    """', e.g. its own N px: try --image-size N' where the library says a size."""
    size = library(source).own_size(name)
    return f'; its own is {size} px: try --image-size {size}' if size else ''


def graph_model(source: str, name: str, num_classes: int, attention: bool, gate: str,
                split: Optional[int], image_size: int) -> GraphBackboneABN:
    """The ABN of a model split on its traced graph (models.backbones.graph)."""
    arch, asked, split = f'{source}:{name}', split is not None, -1 if split is None else split
    try:
        try:
            with torch.device('meta'):
                twin = library_model(source, name, 1000, image_size)
            split_at = graph_split(twin, image_size, 'meta', source)
        except (RuntimeError, NotImplementedError):  # a model the meta device cannot build
            split_at = graph_split(library_model(source, name, 1000, image_size), image_size,
                                   'cpu', source)
    except Exception as error:  # tracing fails in many ways: each is a model not split here
        raise ValueError(f'{arch} cannot be split into a feature extractor and a last stage: '
                         f'{str(error).strip().splitlines()[0][:200]}') from None
    check_split(split, len(split_at.ends), arch, 'stages', asked)
    backbone = library_model(source, name, num_classes, image_size)
    model = GraphBackboneABN(backbone, source, name, split_at, split, num_classes, attention,
                             gate)
    if attention:
        check_keeps_resolution(model, model.feature_channels, model.map_stride, image_size)
    model.check_head()
    return model


def token_model(source: str, name: str, num_classes: int, attention: bool, gate: str,
                split: Optional[int], image_size: int) -> TokenGraphABN:
    """The ABN of a transformer split between its blocks (models.backbones.tokens); raises
    ValueError with the reason where it cannot be. The blocks' lists are tried in turn
    (block_lists), and where no split was asked for, the family's default (the last 3
    blocks, or all but the first of fewer) and then later ones: the first that is the model
    (check_whole) is the ABN, so the same arguments always build the same one."""
    arch, asked = f'{source}:{name}', split is not None
    reasons = []
    try:
        backbone = library_model(source, name, num_classes, image_size, vit=True)
        lists = block_lists(backbone)
        if not lists:
            raise ValueError('it has no list of blocks to split between')
        for k, blocks in enumerate(lists):
            if asked:
                if k and not -len(blocks) < split < len(blocks):
                    continue
                check_split(split, len(blocks), arch, 'blocks', asked and not k)
                tries = [split]
            else:
                tries = range(max(VIT_DEFAULT_SPLIT, 1 - len(blocks)), 0)
            for at in tries:
                if backbone is None:  # a failed try left its constants on the last one
                    backbone = library_model(source, name, num_classes, image_size, vit=True)
                try:
                    return split_between(backbone, source, name, blocks, at, num_classes,
                                         attention, gate, image_size)
                except Final:
                    raise
                except Exception as error:  # tracing fails in many ways
                    reasons.append(first_line(error))
                    backbone = None
    except Final:
        raise
    except Exception as error:
        reasons.append(first_line(error))
    raise ValueError(reasons[0])


def first_line(error: Exception) -> str:
    """An error's first line (its type's name where it says nothing), as a refusal's reason."""
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def split_between(backbone: torch.nn.Module, source: str, name: str, blocks: list[str],
                  split: int, num_classes: int, attention: bool, gate: str,
                  image_size: int) -> TokenGraphABN:
    """The ABN of `backbone` with its branches from block `split` of `blocks`, checked."""
    first = len(blocks) + split if split < 0 else split
    split_at = token_split(backbone, blocks, first, image_size, source)
    model = TokenGraphABN(backbone, source, name, split_at, split, num_classes, attention,
                          gate)
    check_whole(model, image_size)
    model.check_head()
    return model


def check_split(split: int, count: int, arch: str, what: str, asked: bool = True) -> None:
    """`split` picks the first stage (block) of the branches: -1 .. -(count-1), or
    1 .. count-1 (the feature extractor keeps at least one). Out of range, a split `asked`
    for among stages to choose from is final; otherwise this way only splits nothing."""
    if not (-count < split < 0 or 0 < split < count):
        raise (Final if asked and count > 1 else ValueError)(f'--split {split} is out of range for {arch}, which has {count} '
                         f'{what}: give -1 .. -{count - 1} (from the end) or 1 .. {count - 1}')


def check_keeps_resolution(model: Union[BackboneABN, GraphBackboneABN], channels: int,
                           stride: int, image_size: int) -> None:
    """The attention stage must keep the extractor's resolution (probed on meta tensors):
    `channels` and `stride` of the extractor's output."""
    side = image_size // stride
    probe = torch.zeros(1, channels, side, side, device='meta')
    try:
        with torch.no_grad():  # eval: a 1x1 map of one image is no batch to normalise
            out = copy.deepcopy(model.att_stage).eval().to('meta')(probe)
    except Exception as error:  # e.g. a fixed grid its copy cannot keep
        out = None
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else \
            type(error).__name__
    if out is None or tuple(out.shape[-2:]) != (side, side):
        turns = (f'turns {side}x{side} maps into {out.shape[-2]}x{out.shape[-1]}'
                 if out is not None else f'fails on {side}x{side} maps ({reason})')
        raise ValueError(f'the downsampling of {model.source}:{model.backbone_name}\'s last '
                         f'stage cannot be removed by the rules ({"; ".join(DOWNSAMPLING_RULES)}'
                         f'): its copy {turns}')


def has_pretrained(source: str, name: str) -> bool:
    """Whether the library publishes ImageNet weights of `name`."""
    return library(source).has_pretrained(name)


def library_state_dict(source: str, name: str, num_classes: int, image_size: int,
                       pretrained_file: Optional[str] = None,
                       pools_tokens: bool = False) -> dict[str, torch.Tensor]:
    """The library's pretrained weights for the model (downloaded by the library, or read
    from `pretrained_file`), as a state_dict of its own model (built pooling its patch tokens
    where `pools_tokens`, as the ABN's)."""
    return library(source).pretrained_state_dict(name, num_classes, image_size,
                                                 pretrained_file, pools_tokens)


__all__ = ['BackboneABN', 'DOWNSAMPLING_RULES', 'GraphBackboneABN', 'TokenGraphABN',
           'VisionTransformerABN', 'build', 'check_name', 'has_pretrained', 'library_names',
           'library_state_dict', 'split_name']
