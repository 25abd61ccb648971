"""One way from a checkpoint file to a model, for every script, the attention editor and the
Python API, in two steps:

1. `resolve_spec(saved, path, ...)`: the ModelSpec of the file and the options typed with it.
   This project's files describe themselves (typed options that contradict them are refused);
   the authors' files, which record nothing, take their architecture from the typed options
   and their class count from the options, the data set or the file's classifier: the one
   place that reads them.
2. `model_from_checkpoint(saved, path, spec)`: the model built from the spec, with the file's
   weights.

`load_model(path, ...)` is both, plus what explaining an image needs (normalisation, sizes,
class names); training's `--resume`, `-e` and `--weights` resolve their files the same way
(`file_spec` reads only what a file says of itself)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch

from models import CIFAR_MODELS, IMAGENET_MODELS
from utils.data.datasets import (AUTHORS_NORMALIZATION, NORMALIZATION, SMALL_IMAGE_DATASETS,
                                 class_count, known_classes)
from utils.data.inputs import read_class_names
from utils.errors import AbnError
from utils.kinds import PER_ATTRIBUTE, SINGLE_LABEL, SingleLabel
from utils.weights import checkpoint as ckpt
from utils.weights.modelspec import (ModelSpec, build_model, check_script, flag_name,
                                     legacy_num_classes, registry_for, spec_from_checkpoint)
from utils.weights.portable import is_safetensors, read_safetensors

if TYPE_CHECKING:
    import argparse

# The size options of the authors' CIFAR families, as builder arguments.
ARCH_OPTIONS = ('depth', 'cardinality', 'widen_factor', 'growthRate', 'compressionRate')


@dataclass
class LoadedModel:
    model: torch.nn.Module
    description: str
    class_names: list  # or None: classes shown by number
    normalization: tuple  # (mean, std)
    image_size: int
    imagenet: bool  # ImageNet-style preprocessing (resize, centre crop)
    dataset: str  # the data set it was trained on, when known
    resize_size: int = None  # ImageNet: the shorter side before the centre crop
    spec: ModelSpec = None  # what rebuilds it

    @property
    def kind(self) -> SingleLabel:
        """Single-label, or a decision and a map per attribute (utils.kinds)."""
        return PER_ATTRIBUTE if self.spec is not None and self.spec.multitask else SINGLE_LABEL

    @property
    def multitask(self) -> bool:
        return self.kind.per_attribute


def architecture_options(args: argparse.Namespace) -> dict[str, Any]:
    """load_model's keywords from the command line's flags (those of the authors' checkpoints:
    utils.cli.add_authors_architecture_arguments, and --dataset)."""
    names = ARCH_OPTIONS + ('arch', 'gate', 'num_classes', 'dataset', 'class_names', 'image_size')
    return {name: getattr(args, name, None) for name in names}


def architecture_family(arch: str, dataset: str | None = None) -> str:
    """The script whose registry builds `arch` ('cifar' or 'imagenet'); the training data set
    settles a name in both."""
    in_cifar, in_imagenet = arch in CIFAR_MODELS, arch in IMAGENET_MODELS
    if in_cifar and (not in_imagenet or dataset in SMALL_IMAGE_DATASETS):
        return 'cifar'
    if in_imagenet:
        return 'imagenet'
    raise AbnError(f"unknown architecture '{arch}' in the checkpoint")


def read_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint file's contents (utils.weights.checkpoint.load_checkpoint), or a
    safetensors file's of export.py in the same shape; a clear line for a missing path, a
    directory or a file that is neither."""
    if not os.path.exists(path):
        raise AbnError(f'no checkpoint at {path}')
    if os.path.isdir(path):
        raise AbnError(f'{path} is a directory: give the checkpoint file in it, e.g. '
                       f'{os.path.join(path, "model_best.pth.tar")}')
    if is_safetensors(path):
        return read_safetensors(path)
    try:
        return ckpt.load_checkpoint(path)
    except AbnError:
        if not _looks_like_torch_file(path):
            raise AbnError(f"{path} is neither a PyTorch checkpoint nor a safetensors file: "
                           f"give a checkpoint of cifar.py, imagenet.py or celeba.py, one of "
                           f"the authors', or a .safetensors file of export.py") from None
        raise


def _looks_like_torch_file(path):
    """torch.save writes a zip archive (since PyTorch 1.6) or, before, a pickle."""
    with open(path, 'rb') as f:
        head = f.read(4)
    return head.startswith(b'PK\x03\x04') or head[:1] == b'\x80'


def file_spec(path: str, script: str | None = None,
              flag: str = '--weights') -> tuple[dict[str, Any], ModelSpec | None]:
    """(the file's contents, the ModelSpec it records or None for the authors' and the
    libraries' files); with `script`, a file of another script is refused in one line."""
    saved = read_checkpoint(path)
    spec = spec_from_checkpoint(saved)
    if spec is not None and script is not None:
        check_script(spec, script, path, flag=flag)
    return saved, spec


def resolve_spec(saved: dict[str, Any], path: str, role: str = 'model', arch: str | None = None,
                 num_classes: int | None = None, dataset: str | None = None,
                 script: str | None = None, **options: Any) -> ModelSpec:
    """The ModelSpec of the model in `saved` (the contents of the file at `path`):
    - a file of this project: its own spec. Options given that contradict it are refused
      with role='model' (the training scripts' words), and ignored with another role (a
      baseline beside the model); with `script`, a file of another script is refused;
    - an authors' file: the spec its options describe (`arch`, `gate`, the sizes), of the
      `script` that trains `arch` (read off the name where not given), its class count
      `num_classes`, else `dataset`'s, else read off the file's classifier."""
    options = {k: v for k, v in options.items() if v is not None}
    spec = spec_from_checkpoint(saved)
    if spec is None:
        return authors_spec(saved, path, arch, options, num_classes, dataset, script)
    if script is not None:
        check_script(spec, script, path)
    if role == 'model':
        contradicted = [f"{flag_name(k)} {v}" for k, v in options.items()
                        if k in spec.model_args and spec.model_args[k] != v]
        if arch and arch != spec.arch:
            contradicted.insert(0, f'-a {arch}')
        if contradicted:
            # The same words as the training scripts' refusal (modelspec.resolve_flags).
            raise AbnError(f'{path} holds {spec.describe()}, which {", ".join(contradicted)}'
                           f' contradict{"s" if len(contradicted) == 1 else ""}: leave '
                           f'these options out (the file records them)')
    return spec


def model_from_checkpoint(saved: dict[str, Any], path: str,
                          spec: ModelSpec | None = None) -> tuple[torch.nn.Module, ModelSpec]:
    """(model with the checkpoint's weights, its spec); `spec` is required for the authors'
    files, which record none."""
    spec = spec or spec_from_checkpoint(saved)
    if spec is None:
        raise AbnError(f"{path} is one of the authors' checkpoints, which do not record their "
                       f"model: give the architecture options")
    model = build_model(spec)
    ckpt.load_model_state(model, saved, path, spec.describe())
    return model, spec


def load_model(path: str, role: str = 'model', saved: dict[str, Any] | None = None,
               arch: str | None = None, gate: str | None = None, num_classes: int | None = None,
               dataset: str | None = None, class_names: str | None = None,
               image_size: int | None = None, **sizes: int | None) -> LoadedModel:
    """The model a checkpoint file holds, with its weights, in evaluation mode, and what its
    inputs need (LoadedModel). Checkpoints of the scripts describe themselves; the authors'
    files need their architecture options as keywords, as their flags: `arch` (-a), `gate`,
    the sizes (depth=110, ...), and `num_classes` or a `dataset` that implies it.
    `class_names`: a text file of names, one per line; `image_size`: another input size.
    For a self-describing file, options that contradict it are refused with role='model' and
    ignored with any other role (a baseline beside the model). `saved`: the file's contents,
    when already read. Raises AbnError when the file or the options do not fit."""
    unknown = sorted(set(sizes) - set(ARCH_OPTIONS))
    if unknown:
        raise TypeError(f'load_model() got unknown options: {", ".join(unknown)}')
    checkpoint = saved if saved is not None else read_checkpoint(path)
    authors = spec_from_checkpoint(checkpoint) is None
    spec = resolve_spec(checkpoint, path, role, arch, num_classes, dataset, gate=gate, **sizes)
    if not authors:
        imagenet = spec.script == 'imagenet'
        normalization = spec.normalization or NORMALIZATION.get(spec.dataset,
                                                                NORMALIZATION['imagefolder'])
        names = list(spec.class_names) if spec.class_names else None
        size = int(spec.image_size or (224 if imagenet else 32))
        resize_size = spec.resize_size
    else:
        imagenet = spec.script == 'imagenet'
        normalization = NORMALIZATION['imagefolder'] if imagenet else AUTHORS_NORMALIZATION
        names = known_classes(dataset)
        size, resize_size = (224 if imagenet else 32), None
        spec.dataset = dataset
    if image_size and role == 'model':
        size, resize_size = image_size, None
    model, spec = model_from_checkpoint(checkpoint, path, spec)
    if class_names and role == 'model':
        names = read_class_names(class_names, model.num_classes)
    if names is not None and len(names) != model.num_classes:
        names = None
    return LoadedModel(model.eval(), spec.describe(), names, normalization, size, imagenet,
                       spec.dataset, resize_size or round(size * 256 / 224), spec)


def has_attention_branch(state: Mapping[str, torch.Tensor], script: str, arch: str,
                         given: Mapping[str, Any]) -> bool:
    """Whether a state_dict holds the attention branch of `arch`: any of the weights its ABN
    has and its plain baseline lacks (the authors' baselines have none)."""
    registry = registry_for(script)
    try:
        with torch.device('meta'):
            keys = [set(registry.create(arch, **dict(given, num_classes=2, attention=a))
                        .state_dict()) for a in (True, False)]
    except (ValueError, TypeError):
        return True
    return bool((keys[0] - keys[1]) & set(state))


def authors_spec(checkpoint: dict[str, Any], path: str, arch: str | None,
                 given: Mapping[str, Any], num_classes: int | None, dataset: str | None,
                 script: str | None = None) -> ModelSpec:
    """The ModelSpec of an authors' file, which records none: from their flags (`given`: the
    sizes and gate), and the class count from `num_classes`, the data set, or the file's
    classifier."""
    arch = arch or 'resnet'
    script = script or architecture_family(arch)
    state = ckpt.clean_state_dict(checkpoint['state_dict'])
    spec = ModelSpec(script, arch, dict(given, attention=has_attention_branch(
        state, script, arch, given)))
    num_classes = num_classes or class_count(dataset)
    if num_classes is None:  # read it off the classifier's weight
        num_classes = legacy_num_classes(checkpoint, spec)
        if num_classes is None:
            raise AbnError(f'{path} does not fit {arch}: pass -a and --num-classes')
    spec.model_args = registry_for(script).model_args(arch, **spec.model_args,
                                                      num_classes=num_classes)
    return spec
