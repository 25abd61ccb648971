"""A run's set-up, in an order that touches no file before every input is checked: the
options a resumed file records, the seed, the data, the model (new, resumed or pretrained),
its placement (device, memory format, SyncBN, the parallel wrapper, torch.compile), AMP, the
optimizer and the loaders. `RunSetup.prepare()` does all of it; `Run` (utils.train.engine)
adds the loops."""
import dataclasses
import os
import random
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn

from utils.data.datasets import check_images
from utils.data.loaders import make_eval_loader, make_train_loader
from utils.distributed import (AutocastForward, broadcast_object, local_main_first,
                               smallest_chunk, sync_batchnorm)
from utils.errors import AbnError
from utils.objectives import get_objective
from utils.train.checkpoints import CheckpointPolicy, restore_run
from utils.train.options import check_dropout
from utils.weights import checkpoint as ckpt
from utils.weights.loading import file_spec, model_from_checkpoint, resolve_spec
from utils.weights.modelspec import (ModelSpec, build_model, check_script, resolve_flags,
                                     spec_from_checkpoint)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def use_deterministic_algorithms():
    """--deterministic: deterministic kernels only (an op without one raises), and cuBLAS
    with the fixed workspace its deterministic mode needs (CUDA 10.2 and later; torch
    raises at the first matrix product without it). The variable must be set before
    cuBLAS starts, which is at the first matrix product: here, before the model exists."""
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def amp_dtype(runtime):
    """--amp's dtype: bfloat16 on the CPU and on GPUs that compute it natively (compute
    capability 8.0, Ampere, and later; ROCm), else float16 with a gradient scaler.
    torch.cuda.is_bf16_supported() also counts the emulation of older GPUs (V100, T4), far
    slower than their float16; with DataParallel every device must have it."""
    if runtime.device.type != 'cuda':
        return torch.bfloat16
    native = torch.version.hip or all(torch.cuda.get_device_capability(device)[0] >= 8
                                      for device in runtime.cuda_devices)
    return torch.bfloat16 if native else torch.float16


def parallel_model(net, runtime, args, dtype, note=print):
    """What the loop calls: `net` (already on its device) inside DistributedDataParallel
    (torchrun) or DataParallel (--gpu-id 0,1), then torch.compile (--compile). `dtype`: the
    autocast dtype, which DataParallel's replicas get inside their forward."""
    model = net
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == 'cuda' else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    elif runtime.device_ids:
        if args.amp:
            model = AutocastForward(model, runtime.device.type, dtype)
        model = nn.DataParallel(model, device_ids=runtime.device_ids)
    if not args.compile:
        return model
    if runtime.device_ids:
        # Compiling DataParallel compiles its dispatch; the replicas run in threads of
        # their own, eager: the compile time would buy nothing.
        note('note: torch.compile (--compile, --fast) is left out with DataParallel (--gpu-id '
             'with several devices): its replicas would run uncompiled; torchrun runs '
             'compiled processes')
        return model
    return torch.compile(model)


def move_to(value, device):
    """`value` with every tensor in it (through tuples, lists and dicts) on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: move_to(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        moved = [move_to(item, device) for item in value]
        return type(value)(*moved) if hasattr(value, '_fields') else type(value)(moved)
    return value


def check_device_shares(data, args, runtime):
    """Refuses, in one line, data that leaves a process or a device without its share:
    under torchrun a process without an evaluation image skips the collectives the others
    wait in (DDP's buffer broadcast, the meters' sums) and the run hangs; DataParallel
    giving a device one training image fails in BatchNorm where the maps are 1x1."""
    if runtime.distributed:
        for split, part, flag in (('test', data.test, '--test-size'),
                                  ('validation', data.valid, '--test-size')):
            if part is not None and len(part) < runtime.world_size:
                raise AbnError(f'the {split} split has {len(part)} images for '
                               f'{runtime.world_size} processes: every process needs at least '
                               f'one (raise {flag}, or start fewer processes)')
    devices = len(runtime.device_ids)
    if devices > 1 and not args.evaluate and smallest_chunk(args.train_batch, devices) == 1:
        raise AbnError(f'--train-batch {args.train_batch} over {devices} devices gives one of '
                       f'them a single image (DataParallel splits a batch into '
                       f'{-(-args.train_batch // devices)}-image parts), where BatchNorm has the '
                       f'statistics of one image and fails on 1x1 maps: use a multiple of '
                       f'{devices}')


def with_data(spec, data, objective):
    """`spec` completed with what the run's data say: classes, normalisation, sizes."""
    return dataclasses.replace(spec, class_names=list(data.classes),
                               normalization=(tuple(data.mean), tuple(data.std)),
                               image_size=data.image_size,
                               resize_size=getattr(data, 'resize_size', None),
                               objective=objective, dataset=data.name)


class RunSetup:
    """One invocation's set-up: everything the loops use."""

    def __init__(self, args, task, runtime, given=None):
        """`given`: the options the user typed (ArgumentParser.given_options); None counts
        every option as typed, so none is taken from a resumed file over the flags."""
        self.args, self.task, self.runtime, self.given = args, task, runtime, given
        self.print = runtime.print
        self.objective = self.make_objective(task.objective)

    def make_objective(self, name):
        """The objective `name`, with the task's options when it is the task's own. A
        teaching run's file is evaluated (-e) by the task's own objective: the map loss
        needs the given maps, the measures are the classifier's."""
        if self.args.evaluate and name == self.task.map_objective:
            name = self.task.objective
        options = self.task.objective_options
        if options is not None and name != self.task.objective:
            raise AbnError(f"{self.args.resume} is a run of the objective '{name}', not "
                           f"'{self.task.objective}' as these options ask: give the options of "
                           f"its run, or start a new run from its weights with --weights "
                           f"{self.args.resume}")
        if options is None or name != self.task.objective:
            return get_objective(name)
        return get_objective(name, **options(self.args))

    # ---- set-up, in an order that touches no file before every input is checked ----
    def setup(self):
        args, runtime = self.args, self.runtime
        self.resumed = ckpt.load_checkpoint(args.resume) if args.resume else None
        self.legacy = self.resumed is not None and ckpt.is_legacy(self.resumed)
        # A file that describes itself supplies every option the user did not type.
        self.file_spec = spec_from_checkpoint(self.resumed) if self.resumed is not None else None
        if self.file_spec is not None:
            check_script(self.file_spec, self.task.name, args.resume)
            resolve_flags(self.file_spec, args, self.given, self.task.model_flags, args.resume)
            self.objective = self.make_objective(self.file_spec.objective)
        elif self.resumed is None:
            self.resolve_weights_flags()
        if self.task.check_arguments is not None:
            self.task.check_arguments(args)
        check_dropout(args, self.task.registry)
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

        build_model(self.spec_of_flags(num_classes=2), meta=True)  # impossible options
        normalization = None
        if self.legacy:
            normalization = self.task.legacy_normalization
        elif self.file_spec is not None and self.file_spec.normalization is not None:
            normalization = self.file_spec.normalization
        self.print(f'==> Preparing data: {getattr(args, "dataset", None) or args.data}')
        with local_main_first(runtime):  # torchrun: one download per machine, not N at once
            self.data = self.task.build_data(args, args.evaluate, normalization)
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

        if self.file_spec is not None:
            self.check_resumed_classes()
            self.spec = self.file_spec
        elif self.resumed is not None:  # an authors' file: the one reading of them
            self.spec = with_data(resolve_spec(
                self.resumed, args.resume, arch=args.arch, num_classes=len(data.classes),
                script=self.task.name, gate=args.gate, **self.task.model_options(args)),
                data, self.objective.name)
        else:
            self.spec = self.spec_of_flags(num_classes=len(data.classes), data=data)
        self.model_args = self.spec.model_args
        self.description = self.spec.describe()
        self.print(f"==> Model: {self.description}")
        if self.resumed is not None:
            model, _ = model_from_checkpoint(self.resumed, args.resume, self.spec)
        else:
            model = build_model(self.spec)
            if self.task.init_pretrained is not None:
                self.task.init_pretrained(model, args, runtime)
        self.print(f'    Total params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M')
        if self.task.prepare_model is not None:
            self.task.prepare_model(model, args, runtime)
        self.model = model
        self.attention = model.has_attention
        self.checkpoints = CheckpointPolicy(args, runtime, self.objective)
        self.checkpoint_dir = self.checkpoints.directory

    def resolve_weights_flags(self):
        """A new run from `--weights FILE` of this project: as with --resume, the architecture
        options the user did not type come from the file, and a typed one that contradicts
        it is refused in one line (the class count is not among them: a start may be for
        other classes). Files that describe nothing (torchvision's, the authors') are left
        to the task's own start."""
        path = getattr(self.args, 'weights', None)
        if not path or not os.path.isfile(path):
            return
        _, spec = file_spec(path, self.task.name, '--weights')
        if spec is not None:
            resolve_flags(spec, self.args, self.given, self.task.model_flags, path)

    def spec_of_flags(self, num_classes, data=None):
        """The ModelSpec the command line describes (new runs and the authors' files)."""
        args, task = self.args, self.task
        model_args = task.registry.model_args(args.arch, **task.model_options(args),
                                              num_classes=num_classes,
                                              attention=not args.baseline, gate=args.gate)
        spec = ModelSpec(task.name, args.arch, model_args, objective=self.objective.name)
        return spec if data is None else with_data(spec, data, self.objective.name)

    def check_resumed_classes(self):
        spec, data, path = self.file_spec, self.data, self.args.resume
        if spec.num_classes not in (None, len(data.classes)):
            raise AbnError(f"{path} was trained for {spec.num_classes} classes, but this data "
                           f"set has {len(data.classes)}: check --dataset/--data")
        names = spec.class_names
        if names is not None and list(names) != list(data.classes):
            differ = sorted(set(names) ^ set(data.classes))
            raise AbnError(f"{path} was trained on other classes than this data "
                           f"set's ({', '.join(differ[:5])}): check --dataset/--data")

    def place_model(self):
        """Device, memory format, SyncBN, the parallel wrapper and torch.compile."""
        args, runtime = self.args, self.runtime
        model = self.model.to(runtime.device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if args.sync_bn and runtime.distributed:
            model = sync_batchnorm(model, runtime.device)
        self.net = model  # the unwrapped model: its state_dict is what checkpoints hold
        self.wrapped = parallel_model(model, runtime, args, self.amp_dtype, self.print)

    def autocast(self):
        if not self.args.amp:
            return nullcontext()
        return torch.autocast(self.runtime.device.type, dtype=self.amp_dtype)

    def setup_amp(self):
        device = self.runtime.device
        self.amp_dtype = amp_dtype(self.runtime)
        enabled = self.args.amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=enabled)

    def to_device(self, inputs, targets):
        """Inputs in the model's memory format; the target, whatever its structure (a
        tensor, nested tuples/lists/dicts of tensors), moved as it is and never read."""
        device = self.runtime.device
        inputs = inputs.to(device, non_blocking=True)
        if self.args.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, move_to(targets, device)

    def prepare(self):
        """Every step of the set-up `run` does before its loop, in an order that touches no
        file before every input is checked: model, placement, AMP, optimizer, a resumed
        state, the loaders and, for training, the checkpoint directory. Afterwards
        `train_one_epoch(epoch, stop)` and `evaluate()` are ready to call (the benchmarks
        do). Returns self."""
        args, runtime = self.args, self.runtime
        self.setup()
        self.setup_amp()  # before placing: DataParallel's replicas take its dtype
        self.place_model()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=args.lr,
                                         momentum=args.momentum, weight_decay=args.weight_decay)
        self.start_epoch, self.start_step, self.resumed_meter = args.start_epoch, 0, None
        self.complete = False
        if self.resumed is not None:
            restore_run(self, self.resumed)
        self.test_loader = self.make_loader(train=False)
        # model_best is picked on the validation split where the data has one
        self.valid_loader = self.test_loader
        if getattr(self.data, 'valid', None) is not None and not args.evaluate:
            self.valid_loader = make_eval_loader(self.data.valid, args.test_batch, runtime,
                                                 args.workers)
        if args.evaluate:
            return self
        if self.start_epoch >= args.epochs:  # a job wrapper re-running a finished job
            self.complete = True
            return self
        self.checkpoints.prepare(self.net)
        self.train_loader = self.make_loader(train=True)
        return self

    def make_loader(self, train):
        """The task's fast loader where it has one for this data, else the standard one."""
        args, runtime = self.args, self.runtime
        fast = self.task.fast_train_loader if train else self.task.fast_eval_loader
        loader = fast(args, self.data, runtime) if fast is not None else None
        if loader is not None:
            return loader
        if train:
            return make_train_loader(self.data.train, args.train_batch, runtime,
                                     args.manualSeed, args.workers)
        return make_eval_loader(self.data.test, args.test_batch, runtime, args.workers)

    def describe_device(self):
        runtime = self.runtime
        if runtime.distributed:
            return f'{runtime.world_size} processes ({runtime.device.type})'
        if runtime.device.type == 'cpu':
            return f'cpu ({torch.get_num_threads()} threads)'
        if runtime.device_ids:
            return f"cuda {','.join(map(str, runtime.device_ids))} (DataParallel)"
        return f'{runtime.device} ({torch.cuda.get_device_name(runtime.device)})'
