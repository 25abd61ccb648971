"""Any timm or torchvision classifier as an ABN: `-a timm:NAME`, `-a torchvision:NAME`.

`build(source, name, ...)` makes the library's model (fresh weights, a classifier for the
data's classes, built for the run's image size), finds its stages in the library's own
description of it (models.backbones.split) and splits it as the authors split their
families (models.backbones.cnn; vision transformers: models.backbones.vit). `split` picks
the first stage of the two branches (negative from the end; default: the last stage, for a
ViT the last 3 blocks). Pretrained weights are the library's (`library_state_dict`), loaded
into the backbone, the attention stage starting as a copy of the pretrained last stage.
timm is imported when a timm name is used.
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
from typing import Optional, Union

import torch
import torchvision

from .cnn import BackboneABN
from .graph import GraphBackboneABN, graph_split
from .split import DOWNSAMPLING_RULES, Trunk, timm_trunk, torchvision_trunk  # noqa: F401
from .vit import VisionTransformerABN

SOURCES = ('timm', 'torchvision')
VIT_DEFAULT_SPLIT = -3  # a ViT's branches: its last 3 blocks (a quarter of a 12-block ViT)


def split_name(arch: object) -> Optional[tuple[str, str]]:
    """('timm', 'resnet18') for 'timm:resnet18'; None for a name of no library."""
    if not isinstance(arch, str) or ':' not in arch:
        return None
    source, _, name = arch.partition(':')
    return (source, name) if source in SOURCES and name else None


def _timm():
    import timm
    return timm


def library_names(source: str, pattern: str = '*') -> list[str]:
    """The classifiers `source` can build whose name matches `pattern`."""
    if source == 'timm':
        return list(_timm().list_models(pattern))
    names = torchvision.models.list_models(module=torchvision.models)
    return [name for name in names if fnmatch.fnmatchcase(name, pattern)]


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
    if source != 'timm':
        return False
    from timm.models.vision_transformer import VisionTransformer
    with torch.device('meta'):
        model = _timm().create_model(name, pretrained=False)
    return isinstance(model, VisionTransformer)


def library_model(source: str, name: str, num_classes: int, image_size: int, vit: bool = False,
                  pretrained: bool = False,
                  pretrained_file: Optional[str] = None) -> torch.nn.Module:
    """The library's own model with `num_classes` outputs; ViTs for `image_size`, pooling
    the patch tokens (timm's global_pool='avg', with the final norm kept before it)."""
    if source == 'timm':
        options = dict(global_pool='avg', fc_norm=False) if vit else {}
        if pretrained_file:
            options['pretrained_cfg_overlay'] = dict(file=pretrained_file)
        create = _timm().create_model
        pretrained = pretrained or bool(pretrained_file)
        try:  # models with a fixed input size (ViTs, MLP-Mixers) are built for the run's
            return create(name, pretrained=pretrained, num_classes=num_classes,
                          img_size=image_size, **options)
        except TypeError:  # ... the others take none
            return create(name, pretrained=pretrained, num_classes=num_classes, **options)
    options = {}  # the transformers are built for the run's size
    if name.startswith('vit_'):
        options['image_size'] = image_size
    elif name.startswith('maxvit'):
        options['input_size'] = (image_size, image_size)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)


def trunk_of(source: str, name: str, image_size: int, vit: bool) -> Trunk:
    """The trunk of the model, found on a twin on the meta device (no memory, no arithmetic),
    or on the CPU for the few models that cannot be built there (torchvision's RegNets)."""
    find = timm_trunk if source == 'timm' else torchvision_trunk
    try:
        with torch.device('meta'):
            twin = library_model(source, name, 1000, image_size, vit).eval()
        return find(twin, image_size, 'meta')
    except (RuntimeError, NotImplementedError):
        with torch.device('cpu'):
            twin = library_model(source, name, 1000, image_size, vit).eval()
        return find(twin, image_size, 'cpu')


def build(source: str, name: str, num_classes: int = 1000, attention: bool = True,
          gate: str = 'residual', split: Optional[int] = None,
          image_size: int = 224) -> Union[BackboneABN, GraphBackboneABN, VisionTransformerABN]:
    """The ABN of `source`'s model `name` (see the module's docstring); `split=None` is the
    family's default. Raises ValueError in one line for what cannot be split."""
    check_name(source, name)
    vit = is_vit(source, name)
    if vit:
        backbone = library_model(source, name, num_classes, image_size, vit=True)
        depth = len(backbone.blocks)
        split = VIT_DEFAULT_SPLIT if split is None else split
        check_split(split, depth, f'{source}:{name}', 'blocks')
        model = VisionTransformerABN(backbone, name, split, num_classes, attention, gate)
    else:
        split = -1 if split is None else split
        try:
            trunk = trunk_of(source, name, image_size, vit)
        except AssertionError:  # the model's own check of its input
            raise ValueError(f'{source}:{name} does not run at {image_size} px (its forward '
                             f'asserts a size{own_size(source, name)})') from None
        except (ValueError, RuntimeError, NotImplementedError, AttributeError) as error:
            # its children do not run one after another: split its traced graph
            try:
                return graph_model(source, name, num_classes, attention, gate, split,
                                   image_size)
            except ValueError:
                if source == 'torchvision':
                    raise
            raise ValueError(f'{source}:{name} cannot be split into a feature extractor '
                             f'and a last stage: {str(error).splitlines()[0]}') from None
        check_split(split, len(trunk.stage_ends), f'{source}:{name}', 'stages')
        backbone = library_model(source, name, num_classes, image_size)
        model = BackboneABN(backbone, source, name, trunk, split, num_classes, attention, gate)
        if attention:
            before = trunk.parts[trunk.stage_start(split) - 1]
            try:
                check_keeps_resolution(model, before.channels, before.stride, image_size)
            except ValueError:
                # a functional pooling in its last stage: its graph's copy can lose it (where
                # not, the graph's reason is the more precise one)
                return graph_model(source, name, num_classes, attention, gate, split,
                                   image_size)
    model.check_head()
    return model


def own_size(source: str, name: str) -> str:
    """', e.g. its own N px: try --image-size N' where the library says a size."""
    if source != 'timm':
        return ''
    try:
        size = _timm().get_pretrained_cfg(name).input_size[-1]
    except Exception:  # no configuration: nothing to suggest
        return ''
    return f'; its own is {size} px: try --image-size {size}'


def graph_model(source: str, name: str, num_classes: int, attention: bool, gate: str,
                split: int, image_size: int) -> GraphBackboneABN:
    """The ABN of a model split on its traced graph (models.backbones.graph)."""
    arch = f'{source}:{name}'
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
    check_split(split, len(split_at.ends), arch, 'stages')
    backbone = library_model(source, name, num_classes, image_size)
    model = GraphBackboneABN(backbone, source, name, split_at, split, num_classes, attention,
                             gate)
    if attention:
        check_keeps_resolution(model, model.feature_channels, model.map_stride, image_size)
    model.check_head()
    return model


def check_split(split: int, count: int, arch: str, what: str) -> None:
    """`split` picks the first stage (block) of the branches: -1 .. -(count-1), or
    1 .. count-1 (the feature extractor keeps at least one)."""
    if not (-count < split < 0 or 0 < split < count):
        raise ValueError(f'--split {split} is out of range for {arch}, which has {count} '
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
    if source == 'timm':
        return bool(_timm().is_model_pretrained(name))
    try:
        return torchvision.models.get_model_weights(name) is not None
    except ValueError:
        return False


def library_state_dict(source: str, name: str, num_classes: int, image_size: int,
                       pretrained_file: Optional[str] = None) -> dict[str, torch.Tensor]:
    """The library's pretrained weights for the model (downloaded by the library, or read
    from `pretrained_file`), as a state_dict of its own model: timm adapts them itself (its
    classifier dropped for other classes, a ViT's position embedding resampled)."""
    if source == 'timm':
        vit = is_vit(source, name)
        model = library_model(source, name, num_classes, image_size, vit, pretrained=True,
                              pretrained_file=pretrained_file)
        return model.state_dict()
    if pretrained_file:
        raise NotImplementedError  # torchvision files are read by the caller (a state_dict)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return weights.get_state_dict(progress=True, check_hash=True)


__all__ = ['BackboneABN', 'DOWNSAMPLING_RULES', 'GraphBackboneABN', 'SOURCES',
           'VisionTransformerABN', 'build', 'check_name', 'has_pretrained', 'library_names',
           'library_state_dict', 'split_name']
