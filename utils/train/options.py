"""The training options of cifar.py, imagenet.py and celeba.py: the authors' flags (same names,
same meanings) plus this project's, `--fast`, and the checks that need no data, model or
files."""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from utils.distributed import DEFAULT_DIST_TIMEOUT_MINUTES
from utils.errors import AbnError
from utils.train.tensorboard_log import require_tensorboard

if TYPE_CHECKING:
    import torch

    from models.registry import ModelRegistry


class _GivenSchedule(argparse.Action):
    """Stores --schedule and notes that it was typed (a default beyond a short --epochs is
    fine; a typed epoch that never comes is a mistake)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, '_schedule_given', True)



def add_training_arguments(parser: argparse.ArgumentParser,
                           defaults: dict[str, Any]) -> argparse.ArgumentParser:
    """The authors' flags (same names, same meanings) plus this project's, except the
    architecture's (add_architecture_arguments). `defaults` holds the per-script values
    (epochs, batch sizes, schedule, weight decay)."""
    add_data_options(parser)
    add_optimization_options(parser, defaults)
    add_checkpoint_options(parser)
    add_device_options(parser)
    return parser


def add_data_options(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group('data')
    data.add_argument('-j', '--workers', default=None, type=int, metavar='N',
                      help='data loading worker processes (default: 4, at most the CPU count)')
    data.add_argument('--train-size', default=None, type=int, metavar='N',
                      help='use only the first N training images (quick experiments)')
    data.add_argument('--test-size', default=None, type=int, metavar='N',
                      help='use only the first N test images (quick experiments)')
    data.add_argument('--skip-bad-images', action='store_true',
                      help='skip (and count) unreadable images in image folders instead of '
                           'stopping with an error naming the file')


def add_optimization_options(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    optim = parser.add_argument_group('optimization')
    optim.add_argument('--epochs', default=defaults['epochs'], type=int, metavar='N',
                       help='number of total epochs to run (default: %(default)s)')
    optim.add_argument('--start-epoch', default=0, type=int, metavar='N',
                       help='manual epoch number (useful on restarts)')
    optim.add_argument('--train-batch', default=defaults['train_batch'], type=int, metavar='N',
                       help='train batch size (default: %(default)s)')
    optim.add_argument('--test-batch', default=defaults['test_batch'], type=int, metavar='N',
                       help='test batch size (default: %(default)s)')
    optim.add_argument('--lr', '--learning-rate', default=0.1, type=float, metavar='LR',
                       help='initial learning rate (default: %(default)s)')
    optim.add_argument('--drop', '--dropout', default=0, type=float, metavar='Dropout',
                       help="dropout ratio of cifar.py's -a densenet and -a wrn (refused "
                            'for models without dropout)')
    optim.add_argument('--schedule', type=int, nargs='+', default=defaults['schedule'],
                       action=_GivenSchedule,
                       help='decrease learning rate at these epochs (default: %(default)s)')
    optim.add_argument('--gamma', type=float, default=0.1,
                       help='LR is multiplied by gamma on schedule (default: %(default)s)')
    optim.add_argument('--momentum', default=0.9, type=float, metavar='M', help='momentum')
    optim.add_argument('--weight-decay', '--wd', default=defaults['weight_decay'], type=float,
                       metavar='W', help='weight decay (default: %(default)s)')


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    ckpt = parser.add_argument_group('checkpoints')
    ckpt.add_argument('-c', '--checkpoint', default=None, type=str, metavar='PATH',
                      help='directory for checkpoints, log and images (default: checkpoint, '
                           'or the folder of --resume)')
    ckpt.add_argument('--resume', default='', type=str, metavar='PATH',
                      help="checkpoint to continue training from, or to evaluate with -e; "
                           "'auto': <-c>/checkpoint.pth.tar if it exists, else a new run")
    ckpt.add_argument('--overwrite', action='store_true',
                      help='start a new run in a checkpoint directory that already holds one')
    ckpt.add_argument('--save-every-steps', default=0, type=int, metavar='N',
                      help='also save a recovery checkpoint every N training steps '
                           '(mid-epoch; default: only at the end of each epoch)')
    ckpt.add_argument('--save-attention', default='16', metavar='N',
                      help="attention images of N test images ('all' for every one; "
                           "default: %(default)s)")
    ckpt.add_argument('--tensorboard', action='store_true',
                      help="also write log.txt's scalars and the attention grid for TensorBoard, "
                           "into <checkpoint>/tensorboard (needs the tensorboard package)")
    misc = parser.add_argument_group('miscellaneous')
    misc.add_argument('--manualSeed', type=int, help='manual seed: makes a run repeatable')
    misc.add_argument('--deterministic', action='store_true',
                      help='deterministic algorithms only (bitwise repeatable on CPU; slower)')
    misc.add_argument('-e', '--evaluate', dest='evaluate', action='store_true',
                      help='evaluate model on validation set')
    misc.add_argument('--print-freq', default=10, type=int, metavar='N',
                      help='refresh the shown losses every N steps (default: %(default)s)')


def add_device_options(parser: argparse.ArgumentParser) -> None:
    device = parser.add_argument_group('device and speed')
    device.add_argument('--gpu-id', default='0', type=str,
                        help="CUDA device id(s), comma-separated; several use DataParallel; "
                             "'cpu' forces the CPU (default: %(default)s)")
    device.add_argument('--amp', action='store_true',
                        help='mixed precision: bf16 autocast where supported, else fp16 '
                             'with a gradient scaler')
    device.add_argument('--channels-last', action='store_true',
                        help='channels-last memory format (faster convolutions)')
    device.add_argument('--compile', action='store_true', help='torch.compile the model')
    device.add_argument('--fast', action='store_true',
                        help='the fast path for the device: --channels-last, on CUDA also '
                             '--amp --compile (cifar.py: also --fast-data)')
    device.add_argument('--sync-bn', action='store_true',
                        help='SyncBatchNorm across processes (torchrun runs only)')
    device.add_argument('--threads', type=int, default=None, metavar='N',
                        help='CPU threads of the computation (default on the CPU: the CPUs this '
                             'process may use, its affinity and cgroup quota, less the data '
                             'loader workers; at least one)')
    device.add_argument('--dist-timeout', default=DEFAULT_DIST_TIMEOUT_MINUTES, type=float,
                        metavar='MIN',
                        help='torchrun: how long a process waits for the others in a '
                             'collective before the run fails (default: %(default)s minutes)')


def apply_fast(args: argparse.Namespace, device: torch.device) -> None:
    """--fast: the fast path's flags for `device` (BENCHMARKS.md). The CPU gets neither --amp
    (bf16 on a CPU without native bf16, such as AVX2 ones, is about 5x slower) nor --compile
    (no measured gain, a minute or more of compiling). Nor does a run with --sync-bn get
    --compile: torch.compile breaks its graph at every SyncBatchNorm (pytorch/pytorch#161302),
    many small graphs for a long compile."""
    if not getattr(args, 'fast', False):
        return
    args.channels_last = True
    if hasattr(args, 'fast_data'):
        args.fast_data = True
    if device.type == 'cuda':
        args.amp = True
        # (a second backward pass, --teach-by rrr, is not compiled either)
        args.compile = args.compile or not (args.sync_bn or getattr(args, 'teach_by', None) == 'rrr')


# The models with dropout (--drop): ResNeXt takes the authors' dropRate only to refuse it.
DROPOUT_MODELS = ('densenet', 'wrn')


def check_dropout(args: argparse.Namespace, registry: ModelRegistry) -> None:
    """--drop only where the model has dropout: the authors' scripts took it for every model
    and ignored it for most."""
    if args.drop and 'dropRate' not in registry.options_of(args.arch):
        raise AbnError(f'-a {args.arch} has no dropout, so --drop {args.drop:g} would be '
                       f"ignored: leave it out (it applies to cifar.py's -a "
                       f'{" and -a ".join(DROPOUT_MODELS)})')


def check_training_arguments(args: argparse.Namespace) -> None:
    """Checks that need no data, model or files; raises AbnError."""
    if any(b <= a for a, b in zip(args.schedule, args.schedule[1:])):
        raise AbnError(f'--schedule must be increasing epochs, got {" ".join(map(str, args.schedule))}')
    if any(e < 0 for e in args.schedule):
        raise AbnError('--schedule epochs must not be negative')
    for name in ('epochs', 'train_batch', 'test_batch'):
        if getattr(args, name) < 1:
            raise AbnError(f'--{name.replace("_", "-")} must be at least 1')
    for name in ('train_size', 'test_size', 'workers'):
        value = getattr(args, name)
        if value is not None and value < (0 if name == 'workers' else 1):
            raise AbnError(f'--{name.replace("_", "-")} must be positive')
    if getattr(args, '_schedule_given', False):
        del args._schedule_given  # not an option: kept out of args.json
        late = [e for e in args.schedule if e > args.epochs]
        if late:
            raise AbnError(f'--schedule epoch {late[0]} is beyond --epochs {args.epochs}: '
                           f'the learning rate would never change there')
    if args.lr <= 0:
        raise AbnError('--lr must be positive')
    if args.gamma <= 0:
        raise AbnError(f'--gamma must be positive, got {args.gamma:g} (the learning rate is '
                       f'multiplied by it)')
    if args.momentum < 0:
        raise AbnError(f'--momentum must not be negative, got {args.momentum:g}')
    if args.weight_decay < 0:
        raise AbnError(f'--wd/--weight-decay must not be negative, got {args.weight_decay:g}')
    if args.print_freq < 1:
        raise AbnError('--print-freq must be at least 1')
    if not 0 <= args.drop < 1:
        raise AbnError('--drop must be in [0, 1)')
    if args.threads is not None and args.threads < 1:
        raise AbnError(f'--threads must be at least 1, got {args.threads}')
    if args.dist_timeout <= 0:
        raise AbnError(f'--dist-timeout must be positive minutes, got {args.dist_timeout:g}')
    if args.save_every_steps < 0:
        raise AbnError('--save-every-steps must not be negative')
    if args.evaluate and not args.resume:
        raise AbnError('-e/--evaluate needs --resume PATH, the checkpoint to evaluate')
    if getattr(args, 'tensorboard', False):
        require_tensorboard()
    text = str(args.save_attention).strip().lower()
    if text != 'all' and not (text.isdigit()):
        raise AbnError(f"--save-attention takes a number or 'all', got '{args.save_attention}'")
    args.save_attention = -1 if text == 'all' else int(text)
    if args.workers is None:
        args.workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                           else (os.cpu_count() or 1))
