"""The engine shared by cifar.py and imagenet.py: model set-up, the training and evaluation
loops, checkpoints, logs and attention images. A script supplies a `Task` (its model registry
and how it builds its data) and calls `main(args, task)`.

Training follows the authors: SGD with momentum and weight decay, the learning rate
multiplied by gamma at each epoch of --schedule, and `model_best` the epoch with the best
test metric. What is optimised and measured is the task's `Objective` (utils.objectives; the
authors' CE(attention logits) + CE(perception logits) and perception top-1 for cifar.py and
imagenet.py): the loop never looks inside a target.
"""
import bisect
import json
import os
import random
import re
import shlex
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import default_collate

from . import checkpoint as ckpt
from .checkpoint import BEST, LAST, CheckpointPolicy
from .cli import AbnError, apply_fast, check_training_arguments
from .data import CorruptImageError, check_images, make_eval_loader, make_train_loader
from .distributed import (Runtime, broadcast_object, gather_objects, local_main_first,
                          setup_runtime, shutdown, sync_batchnorm)
from .logger import Logger
from .modelspec import (ModelSpec, build_model, check_script, describe, resolve_flags,
                        spec_from_checkpoint)
from .objectives import get_objective
from .progress import Progress
from .resume import AUTO, resolve_resume, resume_requested_auto
from .tensorboard_log import open_log as open_tensorboard_log



@dataclass
class Task:
    """What a script contributes to the engine."""
    name: str  # shown in titles: 'cifar', 'imagenet'
    registry: object  # models.registry.ModelRegistry
    # (args, evaluate_only, normalization or None) -> DataBundle
    build_data: Callable
    # builder argument -> the args dest that sets it, e.g. {'depth': 'depth', 'dropRate':
    # 'drop'}: the architecture options, which a self-describing checkpoint also supplies
    model_flags: dict
    # normalisation of the authors' checkpoints, which do not record it
    legacy_normalization: tuple
    # (model, args, runtime) -> None: starts a fresh model from pretrained weights
    init_pretrained: Optional[Callable] = None
    # (args, bundle, runtime) -> loader or None: the fast path's device-resident loaders
    fast_train_loader: Optional[Callable] = None
    fast_eval_loader: Optional[Callable] = None
    # the registry name of what is optimised and measured (utils.objectives)
    objective: str = 'single-label'
    # args -> {keyword: value} for that objective's constructor (e.g. a loss weight)
    objective_options: Optional[Callable] = None
    # (model, args, runtime) -> None: once the weights are in (a new, resumed or pretrained
    # run) and before the model is placed on its device, e.g. to freeze part of it
    prepare_model: Optional[Callable] = None
    # args -> None: the script's own checks, once a resumed file's options are applied
    check_arguments: Optional[Callable] = None

    def model_options(self, args):
        """The architecture options of `args`, as the registry's builders name them."""
        return {argument: getattr(args, dest) for argument, dest in self.model_flags.items()}


class NonFiniteLoss(AbnError):
    pass


class StopRequested(Exception):
    """SIGTERM or Ctrl-C: stop at the next step boundary and save."""


# -- small pieces ---------------------------------------------------------------------------

def step_schedule_lr(args, epoch):
    """The authors' schedule in closed form: lr * gamma^(milestones reached by `epoch`)."""
    return args.lr * args.gamma ** bisect.bisect_right(args.schedule, epoch)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group['lr'] = lr


def rng_state():
    state = np.random.get_state()
    return {
        'python': random.getstate(),
        'numpy': [state[0], torch.from_numpy(state[1].astype(np.int64)), state[2], state[3],
                  state[4]],
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state):
    random.setstate(_tuples(state['python']))
    numpy = state['numpy']
    np.random.set_state((numpy[0], numpy[1].numpy().astype(np.uint32), int(numpy[2]),
                         int(numpy[3]), float(numpy[4])))
    torch.set_rng_state(state['torch'])
    if state.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def resume_command(path):
    """This process's command line with --resume pointing at `path` (or as it was, with
    --resume auto)."""
    argv, out, skip = sys.argv[1:], [], False
    if resume_requested_auto(argv):
        path = AUTO
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == '--resume':
            skip = True
            continue
        if arg.startswith('--resume='):
            continue
        out.append(arg)
    launcher = 'torchrun ... ' if 'LOCAL_RANK' in os.environ else 'python '
    # quoted for a POSIX shell: a -c path with spaces still pastes as one argument
    return launcher + shlex.join([os.path.basename(sys.argv[0] or 'cifar.py')] + out
                                 + ['--resume', path])


def corrupt_image_message(error):
    """The one line of a CorruptImageError, also when re-raised from a loader worker (whose
    message carries the worker's traceback)."""
    last = str(error).strip().splitlines()[-1]
    last = re.sub(r'^[\w.]*CorruptImageError: ', '', last)
    return f'{last}: remove it, or pass --skip-bad-images to skip unreadable images'


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


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


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def plain_args(args):
    """args as JSON-safe primitives (stored in checkpoints and args.json)."""
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = list(value)
        else:
            out[key] = str(value)
    return out


class StopSignals:
    """Turns the first SIGTERM/SIGINT into a request to stop at the next step boundary; a
    second Ctrl-C interrupts at once."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.signum = None
        self.previous = {}

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            # torchrun's agent forwards the signal the whole group already got: not a
            # second Ctrl-C from the user
            if signum == signal.SIGINT and not self.runtime.distributed:
                raise KeyboardInterrupt
            return
        self.signum = signum
        if signum == signal.SIGINT and not self.runtime.distributed:
            self.runtime.print('\nCtrl-C: stopping after this step to save a checkpoint '
                               '(Ctrl-C again to quit at once)')
        else:  # a scheduler's signal (or Ctrl-C under torchrun): nobody to press it again
            name = 'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'
            status = 143 if signum == signal.SIGTERM else 130
            self.runtime.print(f'\n{name}: stopping after this step to save a checkpoint, '
                               f'then exiting with status {status}')

    def requested(self):
        return self.signum is not None


def agree(runtime, stop, meter):
    """(stop requested, first non-finite step) as all processes see them, in one collective
    (a rank that stopped or raised alone would leave the others waiting forever)."""
    stop_flag = stop.requested()
    if not runtime.distributed:
        return stop_flag, meter.first_nonfinite_step()
    import torch.distributed as dist
    never = torch.iinfo(torch.long).max
    bad = meter.nonfinite_step.clone()
    bad[bad < 0] = never
    box = torch.stack([bad.new_full((), 0 if stop_flag else 1), bad])
    dist.all_reduce(box, op=dist.ReduceOp.MIN)
    stop_flag, step = box.tolist()
    return stop_flag == 0, (None if step == never else step)


# -- the run --------------------------------------------------------------------------------

class Run:
    """One invocation: everything `main` sets up, and the loops that use it."""

    def __init__(self, args, task, runtime, given=None):
        """`given`: the options the user typed (ArgumentParser.given_options); None counts
        every option as typed, so none is taken from a resumed file over the flags."""
        self.args, self.task, self.runtime, self.given = args, task, runtime, given
        self.print = runtime.print
        self.objective = self.make_objective(task.objective)

    def make_objective(self, name):
        """The objective `name`, with the task's options when it is the task's own."""
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
        if self.task.check_arguments is not None:
            self.task.check_arguments(args)
        saved_args = (self.resumed or {}).get('args') or {}
        if not args.evaluate and saved_args.get('manualSeed') is not None:
            args.manualSeed = saved_args['manualSeed']  # the resumed run's data order
        if args.manualSeed is None:
            args.manualSeed = broadcast_object(random.randint(1, 10000), runtime)
        seed_everything(args.manualSeed + runtime.rank)
        if args.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
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
        else:
            self.spec = self.spec_of_flags(num_classes=len(data.classes), data=data)
        self.model_args = self.spec.model_args
        self.description = self.spec.describe()
        model = build_model(self.spec)
        self.print(f"==> Model: {self.description}")
        self.print(f'    Total params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M')
        if self.resumed is not None:
            ckpt.load_model_state(model, self.resumed, args.resume, self.description)
        elif self.task.init_pretrained is not None:
            self.task.init_pretrained(model, args, runtime)
        if self.task.prepare_model is not None:
            self.task.prepare_model(model, args, runtime)
        self.model = model
        self.attention = model.has_attention
        self.checkpoints = CheckpointPolicy(args, runtime, self.objective)
        self.checkpoint_dir = self.checkpoints.directory

    def spec_of_flags(self, num_classes, data=None):
        """The ModelSpec the command line describes (new runs and the authors' files)."""
        args, task = self.args, self.task
        model_args = task.registry.model_args(args.arch, **task.model_options(args),
                                              num_classes=num_classes,
                                              attention=not args.baseline, gate=args.gate)
        if data is None:
            return ModelSpec(task.name, args.arch, model_args, objective=self.objective.name)
        return ModelSpec(task.name, args.arch, model_args, class_names=list(data.classes),
                         normalization=(tuple(data.mean), tuple(data.std)),
                         image_size=data.image_size,
                         resize_size=getattr(data, 'resize_size', None),
                         objective=self.objective.name, dataset=data.name)

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
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == 'cuda' else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        elif runtime.device_ids:
            model = nn.DataParallel(model, device_ids=runtime.device_ids)
        if args.compile:
            model = torch.compile(model)
        self.wrapped = model

    def autocast(self):
        if not self.args.amp:
            return nullcontext()
        return torch.autocast(self.runtime.device.type, dtype=self.amp_dtype)

    def setup_amp(self):
        device = self.runtime.device
        self.amp_dtype = torch.bfloat16
        if self.args.amp and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.float16
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

    # ---- checkpoints ----
    def state(self, epoch, step, meter=None):
        """The checkpoint of this moment: the authors' keys (their 'acc' and 'best_acc' hold
        the objective's metric), what an exact resume needs, and the model's spec."""
        data = self.data
        return {
            'epoch': epoch, 'state_dict': self.net.state_dict(), 'acc': self.checkpoints.last,
            'best_acc': self.checkpoints.best, 'optimizer': self.optimizer.state_dict(),
            'step': step, 'scaler': self.scaler.state_dict(),
            # per process, like the random state: each resumes its own partial sums
            'epoch_meter': gather_objects(meter.state_dict(), self.runtime)
            if meter is not None else None,
            'rng': gather_objects(rng_state(), self.runtime),
            'arch': self.spec.arch, 'model_args': self.model_args,
            'num_classes': len(data.classes), 'class_names': list(data.classes),
            'dataset': data.name, 'image_size': data.image_size,
            'normalization': {'mean': list(data.mean), 'std': list(data.std)},
            'model_spec': self.spec.to_dict(),
            'args': plain_args(self.args), 'format': ckpt.FORMAT,
        }

    def restore(self, saved):
        """Optimizer, scaler, epoch, step, best accuracy and random state of a resumed run."""
        args = self.args
        if 'optimizer' in saved and saved['optimizer'] and not args.evaluate:
            try:
                self.optimizer.load_state_dict(saved['optimizer'])
            except (ValueError, KeyError, RuntimeError) as error:
                raise AbnError(f'the optimizer state in {args.resume} does not fit this model '
                               f'({error})') from None
            for group in self.optimizer.param_groups:  # flags follow this run's options
                group['momentum'], group['weight_decay'] = args.momentum, args.weight_decay
        if saved.get('scaler'):
            self.scaler.load_state_dict(saved['scaler'])
        self.start_epoch = int(saved.get('epoch', 0))
        self.start_step = int(saved.get('step', 0) or 0)
        self.checkpoints.restore(saved)
        meters = saved.get('epoch_meter') if self.start_step else None
        self.resumed_meter = (meters[self.runtime.rank] if meters and
                              len(meters) == self.runtime.world_size else None)
        states = saved.get('rng') or []
        if len(states) == self.runtime.world_size:
            set_rng_state(states[self.runtime.rank])
        elif states:
            self.print('note: the checkpoint was saved by a different number of processes; '
                       'the random state starts afresh')

    # ---- loops ----
    def forward_losses(self, inputs, targets):
        """(the model's AbnOutput, the objective's named losses)."""
        with self.autocast():
            output = self.wrapped(inputs)
            losses = self.objective.losses(output, targets)
        return output, losses

    def check_finite(self, bad_step, epoch):
        if bad_step is None:
            return
        last = os.path.join(self.checkpoint_dir, LAST)
        kept = (f'the last good checkpoint, {last}, is kept' if os.path.exists(last)
                else 'no checkpoint was written')
        raise NonFiniteLoss(f'the loss became NaN or infinite at epoch {epoch + 1}, step '
                            f'{bad_step + 1} (lr {self.optimizer.param_groups[0]["lr"]:g}); '
                            f'training stopped and {kept}. Try a lower --lr')

    def train_one_epoch(self, epoch, stop):
        args, runtime = self.args, self.runtime
        self.wrapped.train()
        loader = self.train_loader
        loader.set_epoch(epoch, self.start_step)
        total = self.start_step + len(loader)
        meter = self.objective.new_meter(runtime.device)
        if self.resumed_meter is not None:
            meter.load_state_dict(self.resumed_meter)
            self.resumed_meter = None
        progress = Progress(f'Train {epoch + 1}', total, enabled=runtime.is_main)
        step = self.start_step
        self.start_step = 0
        for inputs, targets in loader:
            inputs, targets = self.to_device(inputs, targets)
            output, losses = self.forward_losses(inputs, targets)
            loss = self.objective.total_loss(losses)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            meter.update(step, output, targets, losses)
            step += 1
            # The device is read (a host sync) only every --print-freq steps and at
            # checkpoints; one process also looks at its stop flag, a Python bool, each step.
            checkpoint_due = args.save_every_steps and step % args.save_every_steps == 0
            shown = step % args.print_freq == 0 or step == total
            if shown or checkpoint_due or (not runtime.distributed and stop.requested()):
                stop_now, bad_step = agree(runtime, stop, meter)
                self.check_finite(bad_step, epoch)
                progress.update(step, self.objective.summary_text(meter.summary(), self.attention)
                                if shown else None)
                if stop_now and step < total:
                    raise StopRequested(epoch, step, meter)
                if checkpoint_due and step < total:
                    self.checkpoints.save(self.state(epoch, step, meter))
            else:
                progress.update(step)
        meter.all_reduce()
        self.check_finite(meter.first_nonfinite_step(), epoch)
        summary = meter.summary()
        progress.finish(self.objective.summary_text(summary, self.attention))
        return meter, summary, total

    @torch.no_grad()
    def evaluate(self, stop=None, title=None, loader=None):
        """The meter's summary over `loader` (default: the split that picks model_best, the
        validation split where the data has one, else test)."""
        runtime = self.runtime
        self.wrapped.eval()
        loader = loader or self.valid_loader
        title = title or ('Valid' if loader is not self.test_loader else 'Test')
        meter = self.objective.new_meter(runtime.device)
        progress = Progress(title, len(loader), enabled=runtime.is_main)
        for step, (inputs, targets) in enumerate(loader):
            inputs, targets = self.to_device(inputs, targets)
            output, losses = self.forward_losses(inputs, targets)
            meter.update(step, output, targets, losses)
            progress.update(step + 1)
            if stop is not None and not runtime.distributed and stop.requested():
                return None
        meter.all_reduce()
        summary = meter.summary()
        progress.finish(self.objective.summary_text(summary, self.attention))
        return summary

    # ---- attention images ----
    @torch.no_grad()
    def write_attention_images(self, state_dict=None, title=''):
        count = self.args.save_attention
        if not self.runtime.is_main or not self.attention or count == 0:
            return None
        dataset = self.data.test
        count = len(dataset) if count < 0 else min(count, len(dataset))
        net = self.net
        if state_dict is not None:
            net.load_state_dict(state_dict)
        net.eval()
        out_dir = os.path.join(self.checkpoint_dir, 'attention')
        os.makedirs(out_dir, exist_ok=True)
        for name in os.listdir(out_dir):
            if name.endswith('.png') and (name[:4].isdigit() or name.startswith('grid')):
                os.unlink(os.path.join(out_dir, name))
        batch = 64
        progress = Progress('Attention images', (count + batch - 1) // batch,
                            enabled=count > batch)
        for b, start in enumerate(range(0, count, batch)):
            items = [dataset[i] for i in range(start, min(start + batch, count))]
            items = [item for item in items if item is not None]  # skipped unreadable images
            if not items:
                continue
            inputs, targets = default_collate(items)  # the loaders' collation: any target
            device_inputs = inputs.to(self.runtime.device)
            if self.args.channels_last:
                device_inputs = device_inputs.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                output = net(device_inputs)
            self.objective.save_attention(
                out_dir, inputs, output, targets, self.data, start_index=start,
                grid_name='grid.png' if start == 0 else f'grid_{b:03d}.png', title=title)
            progress.update(b + 1)
        return out_dir

    # ---- the whole run ----
    def prepare(self):
        """Every step of the set-up `run` does before its loop, in an order that touches no
        file before every input is checked: model, placement, AMP, optimizer, a resumed
        state, the loaders and, for training, the checkpoint directory. Afterwards
        `train_one_epoch(epoch, stop)` and `evaluate()` are ready to call (the benchmarks
        do). Returns self."""
        args, runtime = self.args, self.runtime
        self.setup()
        self.place_model()
        self.setup_amp()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=args.lr,
                                         momentum=args.momentum, weight_decay=args.weight_decay)
        self.start_epoch, self.start_step, self.resumed_meter = args.start_epoch, 0, None
        self.complete = False
        if self.resumed is not None:
            self.restore(self.resumed)
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

    def run(self):
        args, runtime = self.args, self.runtime
        self.prepare()
        if args.evaluate:
            return self.run_evaluation()
        if self.complete:
            return self.report_complete()
        logger = None
        self.tensorboard = runtime.is_main and open_tensorboard_log(args, self.checkpoint_dir,
                                                                    self.start_epoch)
        if runtime.is_main:
            with open(os.path.join(self.checkpoint_dir, 'args.json'), 'w') as f:
                json.dump(plain_args(args), f, indent=2, sort_keys=True)
            objective = self.objective
            logger = Logger(os.path.join(self.checkpoint_dir, 'log.txt'), objective.log_columns,
                            resume_epochs=self.start_epoch if self.resumed is not None else None,
                            metric_label=objective.metric_label,
                            higher_is_better=objective.higher_is_better)
        self.print(f'==> Training on {self.describe_device()}, seed {args.manualSeed}, '
                   f'checkpoints in {self.checkpoint_dir}')
        if self.start_epoch or self.start_step:
            self.print(f'    resuming at epoch {self.start_epoch + 1}'
                       + (f', step {self.start_step + 1}' if self.start_step else ''))

        title = f'{self.task.name} {self.data.name}: {self.description}'
        with StopSignals(runtime) as stop:
            for epoch in range(self.start_epoch, args.epochs):
                lr = step_schedule_lr(args, epoch)
                set_lr(self.optimizer, lr)
                self.print(f'\nEpoch: [{epoch + 1} | {args.epochs}] LR: {lr:f}')
                started = time.time()
                try:
                    train_meter, train, steps = self.train_one_epoch(epoch, stop)
                    valid = self.evaluate(stop)
                    if valid is None:  # stopped during evaluation: redo only that on resume
                        raise StopRequested(epoch, steps, train_meter)
                except StopRequested as request:
                    return self.stop_and_save(stop, *request.args)
                except CorruptImageError as error:
                    raise AbnError(corrupt_image_message(error)) from None
                seconds = time.time() - started
                is_best = self.checkpoints.record(valid[self.objective.metric])
                self.print(f"    valid {self.objective.summary_text(valid, self.attention)} | "
                           f"best {self.checkpoints.best:.2f} | {seconds:.0f}s")
                if logger is not None:
                    logger.append(self.objective.log_row(lr, train, valid, seconds))
                    logger.plot(os.path.join(self.checkpoint_dir, 'log.png'), title)
                    if self.tensorboard:
                        self.tensorboard.log_epoch(logger.columns, logger.rows[-1], epoch + 1)
                self.checkpoints.save(self.state(epoch + 1, 0), is_best)
                if getattr(self.train_loader, 'dropped', 0):
                    self.print(f'    {self.train_loader.dropped} unreadable images skipped so far')
        return self.finish(title)

    def describe_device(self):
        runtime = self.runtime
        if runtime.distributed:
            return f'{runtime.world_size} processes ({runtime.device.type})'
        if runtime.device.type == 'cpu':
            return f'cpu ({torch.get_num_threads()} threads)'
        if runtime.device_ids:
            return f"cuda {','.join(map(str, runtime.device_ids))} (DataParallel)"
        return f'{runtime.device} ({torch.cuda.get_device_name(runtime.device)})'

    def stop_and_save(self, stop, epoch, step, meter):
        self.checkpoints.save(self.state(epoch, step, meter))
        path = self.checkpoints.path(LAST)
        self.print(f'Saved {path} at epoch {epoch + 1}, step {step}. To continue:\n'
                   f'  {resume_command(path)}')
        return 143 if stop.signum == signal.SIGTERM else 130

    def report_complete(self):
        best = self.checkpoints.best
        best = f'{best:.2f}' if best is not None else 'unknown'
        self.print(f'The run in {self.checkpoint_dir} is complete: {self.start_epoch} epochs '
                   f'of --epochs {self.args.epochs}, best {self.objective.metric_label} {best}. '
                   f'Nothing to do (raise --epochs to train more); files: {self.checkpoint_dir}')
        return 0

    def finish(self, title):
        self.print('\n' + self.objective.best_text(self.checkpoints.best))
        best_path = self.checkpoints.path(BEST)
        if self.valid_loader is not self.test_loader and os.path.exists(best_path):
            self.test_best(best_path)
        if self.runtime.is_main and os.path.exists(best_path):
            best = ckpt.load_checkpoint(best_path)
            out = self.write_attention_images(best['state_dict'],
                                              title=f'{title}, best epoch {best["epoch"]}')
            if out:
                self.print(f'Attention images of the best model: {out}')
        if self.tensorboard:
            self.tensorboard.finish(os.path.join(self.checkpoint_dir, 'attention', 'grid.png'))
        self.print(f'Log: {os.path.join(self.checkpoint_dir, "log.txt")}, plot: '
                   f'{os.path.join(self.checkpoint_dir, "log.png")}')
        return 0

    def test_best(self, best_path):
        """With a validation split: the best model (picked on it) once on the test split."""
        best = ckpt.load_checkpoint(best_path)
        self.net.load_state_dict(best['state_dict'])
        self.print(f'==> The best model (epoch {best["epoch"]}) on the test split')
        try:
            summary = self.evaluate(loader=self.test_loader, title='Test')
        except CorruptImageError as error:
            raise AbnError(corrupt_image_message(error)) from None
        self.print(self.objective.evaluation_text(summary, self.attention))
        self.write_evaluation(summary)
        self.test_summary = summary

    def write_evaluation(self, summary):
        if self.runtime.is_main:
            for path in self.objective.write_evaluation(summary, self.checkpoint_dir,
                                                        list(self.data.classes)):
                self.print(f'    {path}')

    def run_evaluation(self):
        self.print('\nEvaluation only')
        try:
            summary = self.evaluate()
        except CorruptImageError as error:
            raise AbnError(corrupt_image_message(error)) from None
        self.print(self.objective.evaluation_text(summary, self.attention))
        if self.runtime.is_main:
            try:
                os.makedirs(self.checkpoint_dir, exist_ok=True)
            except OSError as error:
                raise AbnError(f'cannot create {self.checkpoint_dir}: {error.strerror}') from None
            self.write_evaluation(summary)
            out = self.write_attention_images(
                title=f'{self.task.name} {self.data.name}: {self.description}')
            if out:
                self.print(f'Attention images: {out}')
        self.summary = summary
        return 0


def main(args, task, given=None):
    """Runs training or evaluation; returns the process exit status. `given`: the options
    the user typed (ArgumentParser.given_options); the others may come from --resume's file."""
    resolve_resume(args)
    check_training_arguments(args)
    runtime = setup_runtime(args.gpu_id)
    apply_fast(args, runtime.device)
    try:
        return Run(args, task, runtime, given).run()
    finally:
        shutdown(runtime)


__all__ = ['Task', 'main', 'Run', 'Runtime', 'describe', 'step_schedule_lr']
