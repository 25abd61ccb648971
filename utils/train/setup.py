"""A training run's set-up, in an order that touches no file before every input is checked:
the options a resumed (or starting) file records, the seed, the data, the model (new,
resumed or pretrained) and its spec, its placement (utils.train.placement), the optimizer,
the run's state (utils.train.state) and the loaders. `TrainingSetup(...).prepare()` does all
of it; the loop (utils.train.engine.Trainer) takes what it made."""
from __future__ import annotations

import dataclasses
import os
import random
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from utils.data.datasets import check_images
from utils.data.loaders import make_eval_loader, make_train_loader
from utils.distributed import broadcast_object, local_main_first
from utils.errors import AbnError
from utils.objectives import get_objective
from utils.train.checkpoint_policy import CheckpointPolicy
from utils.train.options import check_dropout
from utils.train.placement import (amp_dtype, check_device_shares, move_to, parallel_model, place,
                                   seed_everything, use_deterministic_algorithms)
from utils.train.state import TrainingState
from utils.train.teaching import map_teaching
from utils.weights import checkpoint as ckpt
from utils.weights.loading import file_spec, model_from_checkpoint, resolve_spec
from utils.weights.modelspec import (ModelSpec, build_model, check_script, resolve_flags,
                                     spec_from_checkpoint)

if TYPE_CHECKING:
    import argparse
    from contextlib import AbstractContextManager

    from utils.data.datasets import DataBundle
    from utils.data.fastdata import DeviceLoader
    from utils.data.loaders import Loader
    from utils.distributed import Runtime
    from utils.objectives.base import Objective
    from utils.train.script import TrainingScript


def with_data(spec: ModelSpec, data: DataBundle, objective: str) -> ModelSpec:
    """`spec` completed with what the run's data say: classes, normalisation, sizes."""
    return dataclasses.replace(spec, class_names=list(data.classes),
                               normalization=(tuple(data.mean), tuple(data.std)),
                               image_size=data.image_size,
                               resize_size=getattr(data, 'resize_size', None),
                               objective=objective, dataset=data.name)


def spec_of_flags(args: argparse.Namespace, script: TrainingScript, objective: Objective,
                  num_classes: int, data: DataBundle | None = None) -> ModelSpec:
    """The ModelSpec the command line describes (a new run)."""
    model_args = script.registry.model_args(args.arch, **script.model_options(args),
                                          num_classes=num_classes,
                                          attention=not args.baseline, gate=args.gate)
    spec = ModelSpec(script.name, args.arch, model_args, objective=objective.name)
    return spec if data is None else with_data(spec, data, objective.name)


def check_classes(spec: ModelSpec, data: DataBundle, path: str) -> None:
    """Refuses a resumed file of other classes than the data's, in one line."""
    if spec.num_classes not in (None, len(data.classes)):
        raise AbnError(f"{path} was trained for {spec.num_classes} classes, but this data "
                       f"set has {len(data.classes)}: check --dataset/--data")
    names = spec.class_names
    if names is not None and list(names) != list(data.classes):
        differ = sorted(set(names) ^ set(data.classes))
        raise AbnError(f"{path} was trained on other classes than this data "
                       f"set's ({', '.join(differ[:5])}): check --dataset/--data")


class TrainingSetup:
    """One invocation's set-up: everything the loop uses, made by `prepare()`."""

    train_loader = None  # an evaluation (-e) or a finished run has none

    def __init__(self, args: argparse.Namespace, script: TrainingScript, runtime: Runtime,
                 given: set[str] | None = None) -> None:
        """`given`: the options the user typed (ArgumentParser.given_options); None counts
        every option as typed, so none is taken from a resumed file over the flags."""
        self.args, self.script, self.runtime, self.given = args, script, runtime, given
        self.print = runtime.print
        self.teaching = map_teaching(script, args)  # --attention-maps: its add-on, or None
        self.objective = self.make_objective(self.own_objective)

    @property
    def own_objective(self) -> str:
        """The objective these options ask for: the script's, or its map objective."""
        return self.teaching.objective if self.teaching else self.script.objective

    def make_objective(self, name: str) -> Objective:
        """The objective `name`, with the script's options (and the teaching's) when it is
        the one these options ask for. A teaching run's file is evaluated (-e) by the
        script's own objective: the map loss needs the given maps, the measures are the
        classifier's."""
        if self.args.evaluate and name == self.script.map_objective:
            name = self.script.objective
        options = self.script.objective_options(self.args)
        if self.teaching:
            options = self.teaching.objective_options(self.args, options)
        if options is not None and name != self.own_objective:
            raise AbnError(f"{self.args.resume} is a run of the objective '{name}', not "
                           f"'{self.own_objective}' as these options ask: give the options of "
                           f"its run, or start a new run from its weights with --weights "
                           f"{self.args.resume}")
        return get_objective(name, **(options or {}))

    # ---- the steps, in order ----------------------------------------------------------
    def prepare(self) -> TrainingSetup:
        """Every step of the set-up, in an order that touches no file before every input is
        checked: options, seed, data, model, placement, AMP, optimizer, the resumed state,
        the loaders and, for training, the checkpoint directory. Returns self."""
        args = self.args
        self.read_file_options()
        self.seed()
        self.build_data()
        self.build_model()
        self.amp_dtype = amp_dtype(self.runtime)  # before placing: DataParallel's replicas
        self.net = place(self.model, args, self.runtime)
        self.wrapped = parallel_model(self.net, self.runtime, args, self.amp_dtype, self.print)
        self.scaler = torch.amp.GradScaler(self.runtime.device.type,
                                           enabled=args.amp and self.amp_dtype == torch.float16)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=args.lr,
                                         momentum=args.momentum, weight_decay=args.weight_decay)
        self.state = TrainingState(self.net, self.optimizer, self.scaler, self.checkpoints,
                                   self.runtime, self.spec, self.data, args)
        if self.resumed is not None:
            self.state.load_state_dict(self.resumed)
        self.test_loader = self.make_loader(train=False)
        # model_best is picked on the validation split where the data has one
        self.valid_loader = self.test_loader
        if getattr(self.data, 'valid', None) is not None and not args.evaluate:
            self.valid_loader = make_eval_loader(self.data.valid, args.test_batch, self.runtime,
                                                 args.workers)
        self.complete = not args.evaluate and self.state.epoch >= args.epochs
        if args.evaluate or self.complete:  # a job wrapper re-running a finished job
            return self
        self.checkpoints.prepare(self.net)
        self.train_loader = self.make_loader(train=True)
        return self

    def read_file_options(self) -> None:
        """A file that describes itself supplies every option the user did not type: the
        resumed run's, or the one --weights starts from."""
        args = self.args
        self.resumed = ckpt.load_checkpoint(args.resume) if args.resume else None
        self.legacy = self.resumed is not None and ckpt.is_legacy(self.resumed)
        self.file_spec = spec_from_checkpoint(self.resumed) if self.resumed is not None else None
        if self.file_spec is not None:
            check_script(self.file_spec, self.script.name, args.resume)
            resolve_flags(self.file_spec, args, self.given, self.script.model_flags, args.resume)
            self.objective = self.make_objective(self.file_spec.objective)
        elif self.resumed is None:
            self.read_weights_options()
        self.script.check_arguments(args)
        check_dropout(args, self.script.registry)

    def read_weights_options(self) -> None:
        """A new run from `--weights FILE` of this project: as with --resume, the architecture
        options the user did not type come from the file, and a typed one that contradicts
        it is refused in one line (the class count is not among them: a start may be for
        other classes). Files that describe nothing (torchvision's, the authors') are left
        to the script's own start."""
        path = getattr(self.args, 'weights', None)
        if not path or not os.path.isfile(path):
            return
        _, spec = file_spec(path, self.script.name, '--weights')
        if spec is not None:
            resolve_flags(spec, self.args, self.given, self.script.model_flags, path)

    def seed(self) -> None:
        args, runtime = self.args, self.runtime
        saved_args = (self.resumed or {}).get('args') or {}
        if not args.evaluate and saved_args.get('manualSeed') is not None:
            args.manualSeed = saved_args['manualSeed']  # the resumed run's data order
        if args.manualSeed is None:
            args.manualSeed = broadcast_object(random.randint(1, 10000), runtime)
        seed_everything(args.manualSeed + runtime.rank)
        if args.deterministic:
            use_deterministic_algorithms()
        elif runtime.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True

    def build_data(self) -> None:
        args, runtime = self.args, self.runtime
        build_model(spec_of_flags(args, self.script, self.objective, 2), meta=True)  # impossible
        normalization = None
        if self.legacy:
            normalization = self.script.legacy_normalization
        elif self.file_spec is not None and self.file_spec.normalization is not None:
            normalization = self.file_spec.normalization
        self.print(f'==> Preparing data: {getattr(args, "dataset", None) or args.data}')
        with local_main_first(runtime):  # torchrun: one download per machine, not N at once
            self.data = self.script.build_data(args, args.evaluate, normalization)
        if self.teaching:
            self.data = self.teaching.attach_maps(self.data, args)
        data = self.data
        check_images(data, args.skip_bad_images, runtime)  # a bad file stops us now, not later
        check_device_shares(data, args, runtime)
        self.objective.bind(data)
        if self.legacy and normalization is not None:
            self.print(f'    authors\' checkpoint: inputs normalised as in their scripts '
                       f'(mean {list(normalization[0])}, std {list(normalization[1])})')
        sizes = ', '.join(f'{split} {len(part)}' for split, part in (
            ('train', data.train), ('valid', data.valid), ('test', data.test))
            if part is not None)
        self.print(f'    {sizes} images, {len(data.classes)} classes')

    def build_model(self) -> None:
        """The spec (the resumed file's, an authors' file read with the flags, or the
        flags'), the model with its weights, the script's preparation, the checkpoints."""
        args, data = self.args, self.data
        if self.file_spec is not None:
            check_classes(self.file_spec, data, args.resume)
            self.spec = self.file_spec
        elif self.resumed is not None:  # an authors' file: the one reading of them
            self.spec = with_data(resolve_spec(
                self.resumed, args.resume, arch=args.arch, num_classes=len(data.classes),
                script=self.script.name, gate=args.gate, **self.script.model_options(args)),
                data, self.objective.name)
        else:
            self.spec = spec_of_flags(args, self.script, self.objective, len(data.classes), data)
        self.description = self.spec.describe()
        self.print(f"==> Model: {self.description}")
        if self.resumed is not None:
            model, _ = model_from_checkpoint(self.resumed, args.resume, self.spec)
        else:
            model = build_model(self.spec)
            self.script.init_pretrained(model, args, self.runtime)
        self.print(f'    Total params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M')
        self.script.prepare_model(model, args, self.runtime)
        if self.teaching:
            self.teaching.prepare_model(model, args, self.runtime)
        self.model = model
        self.attention = model.has_attention
        self.checkpoints = CheckpointPolicy(args, self.runtime, self.objective)
        self.checkpoint_dir = self.checkpoints.directory

    def make_loader(self, train: bool) -> Loader | DeviceLoader:
        """The script's fast loader where it has one for this data, else the standard one."""
        args, runtime = self.args, self.runtime
        fast = self.script.fast_train_loader if train else self.script.fast_eval_loader
        if train and self.teaching:
            fast = self.teaching.fast_train_loader
        loader = fast(args, self.data, runtime)
        if loader is not None:
            return loader
        if train:
            return make_train_loader(self.data.train, args.train_batch, runtime,
                                     args.manualSeed, args.workers)
        return make_eval_loader(self.data.test, args.test_batch, runtime, args.workers)

    # ---- what the loop asks of it -------------------------------------------------------
    def autocast(self) -> AbstractContextManager[object]:
        if not self.args.amp:
            return nullcontext()
        return torch.autocast(self.runtime.device.type, dtype=self.amp_dtype)

    def to_device(self, inputs: torch.Tensor, targets: Any) -> tuple[torch.Tensor, Any]:
        """Inputs in the model's memory format; the target, whatever its structure (a
        tensor, nested tuples/lists/dicts of tensors), moved as it is and never read."""
        inputs = inputs.to(self.runtime.device, non_blocking=True)
        if self.args.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, move_to(targets, self.runtime.device)

    def describe_device(self) -> str:
        runtime = self.runtime
        if runtime.distributed:
            return f'{runtime.world_size} processes ({runtime.device.type})'
        if runtime.device.type == 'cpu':
            return f'cpu ({torch.get_num_threads()} threads)'
        if runtime.device_ids:
            return f"cuda {','.join(map(str, runtime.device_ids))} (DataParallel)"
        return f'{runtime.device} ({torch.cuda.get_device_name(runtime.device)})'
