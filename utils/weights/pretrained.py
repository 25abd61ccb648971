"""Starting a new model from weights: cifar.py --weights (every weight of a checkpoint,
`load_checkpoint_weights`), imagenet.py --pretrained/--pretrained-file/--weights, celeba.py's.

The backbone comes from the weights; the rest starts from the model's own initialisation: the
attention head, and the classifier when the file was trained for another number of classes.
The attention branch's stride-1 copy of the last stage (att_layer4, VGG's att_features) starts
from the pretrained last stage, as the perception branch's own last stage does, unless the file
holds one of its own (a checkpoint of an ABN model).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping, Sequence

import torchvision

from utils.errors import AbnError
from utils.weights.checkpoint import (clean_state_dict, is_legacy, load_checkpoint,
                                      load_model_state)

if TYPE_CHECKING:
    import argparse

    import torch
    import torch.nn as nn

    from models.abn import AttentionBranchNetwork
    from models.backbones import BackboneABN, VisionTransformerABN
    from models.imagenet.base import ImageNetABN
    from utils.distributed import Runtime

# The authors' names for the attention branch; the plain backbones have no such names.
ATTENTION_PREFIXES = ('att_', 'bn_att')


def torchvision_weights(name: str | None) -> torchvision.models.WeightsEnum | None:
    """torchvision's IMAGENET1K_V1 weights of model `name` (those the authors' --pretrained
    loaded), or None when torchvision has none."""
    if name is None or name not in torchvision.models.list_models():
        return None
    return torchvision.models.get_model_weights(name).IMAGENET1K_V1


def is_library_model(model: nn.Module) -> bool:
    """A timm or torchvision model split into an ABN (models.backbones)."""
    return getattr(model, 'backbone_name', None) is not None


def check_pretrained_arguments(args: argparse.Namespace, model: nn.Module) -> None:
    """Checks that need no download: the files exist, one start is asked for, the library
    has weights for the model."""
    pretrained_file = getattr(args, 'pretrained_file', None)
    for flag, path in (('--weights', args.weights), ('--pretrained-file', pretrained_file)):
        if path and not os.path.isfile(path):
            raise AbnError(f'{flag} {path}: no such file')
    if pretrained_file and args.weights:
        raise AbnError('--pretrained-file and --weights are two starts: give one')
    if is_library_model(model):
        from models.backbones import has_pretrained
        if args.pretrained and not (args.weights or pretrained_file) and \
                not has_pretrained(model.source, model.backbone_name):
            raise AbnError(f'--pretrained: {model.source} has no ImageNet weights for '
                           f'{model.backbone_name}; pass --weights FILE to start from your own')
        return
    if args.pretrained and not args.weights and not pretrained_file and \
            torchvision_weights(model.torchvision_name) is None:
        raise AbnError(f'--pretrained: torchvision has no ImageNet weights for {args.arch}'
                       + (f' ({model.torchvision_name})' if model.torchvision_name else '')
                       + '; pass --weights FILE to start from your own')


def download(name: str, show_progress: bool) -> dict[str, torch.Tensor]:
    """torchvision's state_dict for `name`, from torch.hub's cache or the internet (torch.hub
    writes through a temporary file, so processes downloading at once do not clash)."""
    weights = torchvision_weights(name)
    try:
        return weights.get_state_dict(progress=show_progress, check_hash=True)
    except (OSError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AbnError(f"--pretrained could not get torchvision's {name} weights ({reason}). "
                       f"Offline? Download {weights.url} elsewhere and pass --weights FILE"
                       ) from None


def load_pretrained(model: ImageNetABN, state_dict: Mapping[str, torch.Tensor], source: str,
                    model_name: str) -> str:
    """Copies pretrained weights into `model` (called `model_name` in messages) and returns a
    one-line summary. Every backbone weight must be in `state_dict` with its shape; raises
    AbnError naming one that is not."""
    weights = clean_state_dict(state_dict)
    stage = model.last_stage + '.'
    stage_copy = 'att_' + stage
    classifier = model.classifier_name + '.'
    chosen, copied, fresh, misfits = {}, 0, set(), []
    for key, own in model.state_dict().items():
        candidates = [key]
        if key.startswith(stage_copy):
            candidates.append(stage + key[len(stage_copy):])
        found = [k for k in candidates if k in weights and weights[k].shape == own.shape]
        if found:
            chosen[key] = weights[found[0]]
            copied += found[0] != key
        elif key.endswith('num_batches_tracked'):
            continue  # files saved before torch 0.4.1 have no BN counters
        elif key.startswith(classifier) or key.startswith(ATTENTION_PREFIXES):
            fresh.add(key.split('.')[0] if key.startswith(ATTENTION_PREFIXES) else classifier)
        else:
            misfits.append(key)
    if misfits:
        key = misfits[0]
        what = (f'file {list(weights[key].shape)}, model {list(model.state_dict()[key].shape)}'
                if key in weights else 'missing')
        raise AbnError(f'{source} does not fit {model_name}: {len(misfits)} backbone weights '
                       f'missing or of another shape (e.g. '
                       f'{key}: {what}). Check -a and the other architecture options')
    model.load_state_dict(chosen, strict=False)

    parts = [f'{len(chosen)} tensors loaded']
    if copied:
        parts.append(f'{stage_copy[:-1]} copied from {stage[:-1]}')
    if classifier in fresh:
        fresh.remove(classifier)
        file_classes = weights.get(classifier + 'weight')
        parts.append(f'{classifier[:-1]} re-initialised for {model.num_classes} classes'
                     + (f' (the file has {file_classes.shape[0]})'
                        if file_classes is not None else ''))
    if fresh:
        parts.append(f'starting fresh: {", ".join(sorted(fresh))}')
    return f'{source}: {"; ".join(parts)}'


def init_pretrained(model: AttentionBranchNetwork, args: argparse.Namespace,
                    runtime: Runtime) -> None:
    """TrainingScript.init_pretrained of imagenet.py: a new run starts from --weights FILE, else from
    the library's weights with --pretrained (or --pretrained-file), else from scratch."""
    if is_library_model(model):
        return init_library_pretrained(model, args, runtime)
    start = starting_weights(model, args, runtime)
    if start is None:
        return
    state_dict, source = start
    runtime.print(f'==> Pretrained: {load_pretrained(model, state_dict, source, args.arch)}')


def starting_weights(model: nn.Module, args: argparse.Namespace,
                     runtime: Runtime) -> tuple[Mapping[str, torch.Tensor], str] | None:
    """(state_dict, where it came from) of --weights FILE, else of torchvision's ImageNet
    weights with --pretrained; None for a start from scratch."""
    if args.weights:
        return load_checkpoint(args.weights)['state_dict'], args.weights
    if getattr(args, 'pretrained_file', None):
        return load_checkpoint(args.pretrained_file)['state_dict'], args.pretrained_file
    if args.pretrained:
        name = model.torchvision_name
        return (download(name, show_progress=runtime.is_main),
                f"torchvision's {name} ImageNet weights")
    return None


# The multi-task model's own parts, which the authors' --pretrained leaves at their
# initialisation (they load torchvision's weights with strict=False).
MULTITASK_FRESH = ('layer4_att.', 'conv_att.', 'output_per.', 'fc.')


def init_multitask_pretrained(model: nn.Module, args: argparse.Namespace,
                              runtime: Runtime) -> None:
    """TrainingScript.init_pretrained of celeba.py: the backbone (conv1, bn1, layer1..layer4) from
    --weights FILE or torchvision's weights (--pretrained); layer4_att, conv_att and the task
    heads start fresh, as in the authors' script, unless the file has them too (a checkpoint
    of celeba.py, e.g. the start of a fine-tuning with --attention-maps). A backbone weight missing or of another
    shape is refused in one line."""
    start = starting_weights(model, args, runtime)
    if start is None:
        return
    state_dict, source = start
    weights = clean_state_dict(state_dict)
    chosen, misfits = {}, []
    for key, own in model.state_dict().items():
        if key in weights and weights[key].shape == own.shape:
            chosen[key] = weights[key]
        elif not key.startswith(MULTITASK_FRESH) and not key.endswith('num_batches_tracked'):
            misfits.append(key)
    if misfits:
        raise AbnError(f'{source} does not fit {args.arch}: {len(misfits)} backbone weights '
                       f'missing or of another shape (e.g. {misfits[0]}). Check -a')
    model.load_state_dict(chosen, strict=False)
    fresh = [key for key in model.state_dict() if key not in chosen
             and not key.endswith('num_batches_tracked')]
    runtime.print(f'==> Pretrained: {source}: {len(chosen)} tensors loaded'
                  + ('; starting fresh: the attention branch and the task heads' if fresh
                     else ' (every weight: attention branch and task heads included)'))


# -- timm and torchvision models (models.backbones) -------------------------------------------

def init_library_pretrained(model: BackboneABN | VisionTransformerABN, args: argparse.Namespace,
                            runtime: Runtime) -> None:
    """A library model's start: --weights FILE (a checkpoint of this project: every weight
    that fits; or the library's own state_dict), --pretrained-file FILE or --pretrained (the
    library's ImageNet weights, read by the library itself: timm drops a classifier of other
    classes and resamples a ViT's position embedding). The attention stage then starts as a
    copy of the pretrained last stage; the heads start fresh."""
    pretrained_file = getattr(args, 'pretrained_file', None)
    if args.weights:
        state = clean_state_dict(load_checkpoint(args.weights)['state_dict'])
        if any(key.startswith('backbone.') for key in state):  # a checkpoint of this project
            summary = load_abn_weights(model, state, args.weights)
        else:
            summary = load_backbone_weights(model, state, args.weights)
    elif args.pretrained or pretrained_file:
        where = pretrained_file or f"{model.source}'s {model.backbone_name} ImageNet weights"
        summary = load_backbone_weights(model, library_weights(model, pretrained_file), where)
    else:
        return
    runtime.print(f'==> Pretrained: {summary}')


def library_weights(model: BackboneABN | VisionTransformerABN,
                    pretrained_file: str | None) -> Mapping[str, torch.Tensor]:
    """The library's weights of `model` (downloaded, or from `pretrained_file`)."""
    from models.backbones import library_state_dict
    from models.backbones.libraries import library
    source, name = model.source, model.backbone_name
    if pretrained_file and not library(source).reads_pretrained_files:
        return load_checkpoint(pretrained_file)['state_dict']
    image_size = getattr(getattr(model.backbone, 'patch_embed', None), 'img_size', (224,))[0]
    try:
        state = library_state_dict(source, name, model.num_classes, image_size, pretrained_file,
                                   model.pools_tokens)
        if pretrained_file:  # a library adapts a file without complaint: the names must agree
            check_names(model, clean_state_dict(load_checkpoint(pretrained_file)['state_dict']),
                        pretrained_file)
        return state
    except AbnError:
        raise
    except Exception as error:  # the hub's and the library's errors are many kinds
        reason = str(error).strip().splitlines()[0] if str(error).strip() else \
            type(error).__name__
        if pretrained_file:
            raise AbnError(f'--pretrained-file {pretrained_file} does not fit {source}:{name} '
                           f'({reason[:300]})') from None
        raise AbnError(f"--pretrained could not get {source}'s {name} weights ({reason[:200]}). "
                       f'Offline? Download them elsewhere and pass --pretrained-file FILE'
                       ) from None


def check_names(model: BackboneABN | VisionTransformerABN, state: Mapping[str, torch.Tensor],
                source: str) -> None:
    """Every weight of the library's model is in `state` and nothing else (its classifier
    apart): a file of another model loads nothing by mistake."""
    own = set(model.backbone.state_dict())
    classifier = model.classifier_path + '.'
    missing = sorted(k for k in own - set(state) if not k.startswith(classifier)
                     and not k.endswith('num_batches_tracked'))
    unexpected = sorted(k for k in set(state) - own if not k.startswith(classifier))
    if missing or unexpected:
        example = (f'{len(missing)} missing, e.g. {missing[0]}' if missing else
                   f'{len(unexpected)} the model lacks, e.g. {unexpected[0]}')
        raise AbnError(f'--pretrained-file {source} does not fit {model.source}:'
                       f'{model.backbone_name}: its weights differ ({example}). Check -a')


def load_backbone_weights(model: BackboneABN | VisionTransformerABN,
                          state: Mapping[str, torch.Tensor], source: str) -> str:
    """The library model's weights `state` into `model.backbone` (every weight but the
    classifier must fit), then the attention stage copied from the last stage."""
    own = model.backbone.state_dict()
    classifier = model.classifier_path + '.'
    chosen, misfits = {}, []
    for key, tensor in own.items():
        if key in state and state[key].shape == tensor.shape:
            chosen[key] = state[key]
        elif not key.startswith(classifier) and not key.endswith('num_batches_tracked'):
            misfits.append(key)
    if misfits:
        key = misfits[0]
        what = (f'file {list(state[key].shape)}, model {list(own[key].shape)}' if key in state
                else 'missing')
        raise AbnError(f'{source} does not fit {model.source}:{model.backbone_name}: '
                       f'{len(misfits)} weights missing or of another shape (e.g. {key}: {what})')
    model.backbone.load_state_dict(chosen, strict=False)
    model.copy_stage_to_attention()
    fresh = [key for key in own if key.startswith(classifier) and key not in chosen]
    parts = [f'{len(chosen)} tensors loaded']
    if model.has_attention:
        parts.append('the attention stage copied from the last stage')
    parts.append(f'starting fresh: the classifier ({model.num_classes} classes)' if fresh
                 else 'the classifier kept')
    if model.has_attention:
        parts[-1] += ' and the attention head'
    return f'{source}: {"; ".join(parts)}'


def load_abn_weights(model: BackboneABN | VisionTransformerABN,
                     state: Mapping[str, torch.Tensor], source: str) -> str:
    """A checkpoint of this project for the same backbone: every weight that fits (a
    classifier and attention head of other classes start fresh)."""
    own = model.state_dict()
    chosen = {key: state[key] for key, tensor in own.items()
              if key in state and state[key].shape == tensor.shape}
    missing = [key for key in own if key not in chosen and not key.endswith('num_batches_tracked')]
    classes = ('backbone.' + model.classifier_path + '.', 'att_conv', 'bn_att2', 'att_conv3',
               'att_conv2')
    misfits = [key for key in missing if not key.startswith(classes)]
    if misfits:
        raise AbnError(f'{source} does not fit {model.source}:{model.backbone_name}: '
                       f'{len(misfits)} weights missing or of another shape (e.g. {misfits[0]})')
    model.load_state_dict(chosen, strict=False)
    return (f'{source}: {len(chosen)} tensors loaded'
            + (f'; starting fresh for {model.num_classes} classes: {len(missing)} tensors'
               if missing else ''))


# -- a checkpoint's every weight (cifar.py --weights) -------------------------------------------

def weights_normalization(path: str, legacy_normalization: tuple[Sequence[float], Sequence[float]]
                          ) -> tuple[Sequence[float], Sequence[float]] | None:
    """The input normalisation the model in `path` was trained with: the authors' for their
    files, the recorded one for this project's (None: the data set's own)."""
    from utils.weights.loading import file_spec
    if not os.path.isfile(path):
        raise AbnError(f'--weights {path}: no such file')
    saved, spec = file_spec(path)
    if is_legacy(saved):
        return legacy_normalization
    return spec.normalization if spec is not None else None


def load_checkpoint_weights(model: AttentionBranchNetwork, path: str, runtime: Runtime) -> None:
    """--weights: every weight of the checkpoint at `path`, which must fit the model."""
    from utils.weights.loading import file_spec
    if not os.path.isfile(path):
        raise AbnError(f'--weights {path}: no such file')
    saved, spec = file_spec(path)
    if spec is not None and spec.gate != model.gate:  # not in the weights: they would load
        raise AbnError(f'--weights {path} was trained with --gate {spec.gate}, not '
                       f'{model.gate}: pass --gate {spec.gate}')
    load_model_state(model, saved, path, type(model).__name__)
    runtime.print(f'==> Weights: {path}')
