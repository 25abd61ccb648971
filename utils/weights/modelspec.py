"""One way from a file to a model: the model specification every checkpoint records.

A `ModelSpec` holds whatever rebuilding a run's model needs: which script's registry built
it, the architecture and every builder argument (depth, gate, attention, classes, ...), the
class names, the input normalisation, the training and evaluation sizes, and the objective.
Training, `-e --resume`, `--resume`, explain.py and the pretrained start all build through
`build_model(spec)`; a checkpoint's spec is read by `spec_from_checkpoint(saved)`, and
utils.weights.loading turns a checkpoint file into its model.

On the command line, the flags a user did not type come from the file, and a typed flag that
contradicts the file is refused (`resolve_flags`). The authors' checkpoints record nothing:
their models come from the flags, as in their scripts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Collection, Mapping, Optional

import torch

from utils.errors import AbnError
from utils.weights.checkpoint import clean_state_dict, is_legacy

if TYPE_CHECKING:
    import argparse

    from models.registry import ModelRegistry

SCRIPTS = {'cifar': 'cifar.py', 'imagenet': 'imagenet.py', 'celeba': 'celeba.py'}


def registry_for(script: str) -> ModelRegistry:
    """The model registry of a script ('cifar', 'imagenet' or 'celeba')."""
    # models import nothing from utils
    from models import CIFAR_MODELS, IMAGENET_MODELS, MULTITASK_MODELS
    registries = {'cifar': CIFAR_MODELS, 'imagenet': IMAGENET_MODELS,
                  'celeba': MULTITASK_MODELS}
    if script not in registries:
        raise AbnError(f"unknown model family '{script}' in the checkpoint: choose one of "
                       f"{', '.join(sorted(registries))}")
    return registries[script]


def describe(arch: str, options: Mapping[str, Any], attention: bool) -> str:
    """e.g. 'resnet (depth 110, 100 classes, ABN)'."""
    details = [f'{k} {v}' for k, v in options.items()
               if k not in ('num_classes', 'attention', 'gate', 'fold_tasks') and v is not None]
    details.append(f"{options.get('num_classes')} classes")
    if not attention:
        details.append('baseline, no attention branch')
    else:
        details.append('ABN' if options.get('gate', 'residual') == 'residual'
                       else f"ABN, gate {options['gate']}")
    return f"{arch} ({', '.join(details)})"


@dataclass
class ModelSpec:
    script: str  # whose registry builds it: 'cifar', 'imagenet' or 'celeba' (the .py)
    arch: str
    model_args: dict  # every builder argument: num_classes, attention, gate, depth, ...
    class_names: Optional[list] = None
    normalization: Optional[tuple] = None  # (mean, std)
    image_size: Optional[int] = None  # training crops and evaluation input, in pixels
    resize_size: Optional[int] = None  # imagenet.py: shorter side before the centre crop
    objective: str = 'single-label'  # utils.objectives
    dataset: Optional[str] = None  # the data set it was trained on, when known
    extra: dict = field(default_factory=dict)  # what later objectives record (task names...)

    @property
    def num_classes(self) -> int | None:
        return self.model_args.get('num_classes')

    @property
    def attention(self) -> bool:
        return self.model_args.get('attention', True)

    @property
    def gate(self) -> str:
        return self.model_args.get('gate', 'residual')

    @property
    def multitask(self) -> bool:
        """One map and one output per task (celeba.py's models)."""
        return self.script == 'celeba'

    def describe(self) -> str:
        return describe(self.arch, self.model_args, self.attention)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (checkpoints load with weights_only=True)."""
        out = asdict(self)
        if self.normalization is not None:
            mean, std = self.normalization
            out['normalization'] = {'mean': list(mean), 'std': list(std)}
        if self.class_names is not None:
            out['class_names'] = list(self.class_names)
        return out

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> ModelSpec:
        values = dict(saved)
        normalization = values.get('normalization')
        if isinstance(normalization, dict):
            values['normalization'] = (tuple(normalization['mean']), tuple(normalization['std']))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def script_of(saved: dict[str, Any]) -> str:
    """Which script wrote a self-describing checkpoint without a recorded spec (this
    project's files before the spec): cifar.py's arguments have --dataset, imagenet.py's
    do not."""
    args = saved.get('args') or {}
    if args:
        return 'cifar' if 'dataset' in args else 'imagenet'
    from models import CIFAR_MODELS
    return 'cifar' if saved.get('arch') in CIFAR_MODELS and saved.get('image_size', 32) <= 64 \
        else 'imagenet'


def spec_from_checkpoint(saved: dict[str, Any]) -> ModelSpec | None:
    """The ModelSpec a checkpoint records, or None for the authors' files (and bare
    state_dicts), which record nothing."""
    if is_legacy(saved) or 'arch' not in saved and 'model_spec' not in saved:
        return None
    if saved.get('model_spec'):
        return ModelSpec.from_dict(saved['model_spec'])
    normalization = saved.get('normalization')
    return ModelSpec(
        script=script_of(saved), arch=saved['arch'], model_args=dict(saved.get('model_args') or {}),
        class_names=list(saved['class_names']) if saved.get('class_names') else None,
        normalization=((tuple(normalization['mean']), tuple(normalization['std']))
                       if normalization else None),
        image_size=saved.get('image_size'),
        resize_size=(saved.get('args') or {}).get('resize_size'),
        dataset=saved.get('dataset'))


def build_model(spec: ModelSpec, meta: bool = False) -> torch.nn.Module:
    """The model `spec` describes, freshly initialised (on the meta device with `meta`: no
    memory, no time). An impossible specification raises AbnError with one line."""
    registry = registry_for(spec.script)
    try:
        if meta:
            with torch.device('meta'):
                return registry.create(spec.arch, **spec.model_args)
        return registry.create(spec.arch, **spec.model_args)
    except ValueError as error:
        raise AbnError(str(error)) from None


def check_script(spec: ModelSpec, script: str, path: str, flag: str = '--resume') -> None:
    """Refuses a checkpoint of the other script with a line that names the right one."""
    if spec.script != script:
        right = SCRIPTS.get(spec.script, spec.script)
        raise AbnError(f'{path} is a checkpoint of {right} ({spec.describe()}), not of '
                       f'{SCRIPTS.get(script, script)}: use python {right} ... {flag} {path}')


def recorded_flags(spec: ModelSpec, model_flags: Mapping[str, str]) -> dict[str, Any]:
    """{args dest: the value the file records}: -a, --baseline, --gate, the architecture
    options (`model_flags`: builder argument -> args dest) and the input sizes."""
    flags = {'arch': spec.arch, 'baseline': not spec.attention, 'gate': spec.gate}
    for argument, dest in model_flags.items():
        if argument in spec.model_args:
            flags[dest] = spec.model_args[argument]
    if spec.image_size is not None:
        flags['image_size'] = spec.image_size
    if spec.resize_size is not None:
        flags['resize_size'] = spec.resize_size
    return flags


def flag_name(dest: str) -> str:
    return {'arch': '-a'}.get(dest, '--' + dest.replace('_', '-'))


def resolve_flags(spec: ModelSpec, args: argparse.Namespace, given: Collection[str] | None,
                  model_flags: Mapping[str, str], path: str) -> None:
    """Sets every recorded option the user did not type from the file; refuses, in one line,
    typed options that contradict it. `given`: the dests typed (None: treat all as typed)."""
    contradicted = []
    for dest, value in recorded_flags(spec, model_flags).items():
        if not hasattr(args, dest):
            continue
        typed = given is None or dest in given
        if typed and getattr(args, dest) != value:
            shown = getattr(args, dest)
            contradicted.append(flag_name(dest) if isinstance(shown, bool)
                                else f'{flag_name(dest)} {shown}')
        elif not typed:
            setattr(args, dest, value)
    if contradicted:
        raise AbnError(f'{path} holds {spec.describe()}'
                       + (f' for {spec.image_size} px images' if spec.image_size else '')
                       + f", which {', '.join(contradicted)} contradict"
                       + ('s' if len(contradicted) == 1 else '')
                       + ': leave these options out (the file records them)')


def legacy_num_classes(saved: dict[str, Any], spec_without_classes: ModelSpec) -> int | None:
    """The class count of an authors' file, read off its classifier's weight."""
    probe = build_model(ModelSpec(**dict(asdict(spec_without_classes), model_args=dict(
        spec_without_classes.model_args, num_classes=2))), meta=True)
    names = {id(module): name for name, module in probe.named_modules()}
    key = names[id(probe.final_linear)] + '.weight'
    weight = clean_state_dict(saved['state_dict']).get(key)
    return int(weight.shape[0]) if weight is not None else None


__all__ = ['ModelSpec', 'SCRIPTS', 'build_model', 'check_script', 'describe',
           'legacy_num_classes', 'recorded_flags', 'registry_for',
           'resolve_flags', 'script_of', 'spec_from_checkpoint']
