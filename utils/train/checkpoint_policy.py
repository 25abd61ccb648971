"""A training run's checkpoints: which directory, which epoch is best and how files are
written (`CheckpointPolicy`, which the loop asks to save); what a checkpoint holds is the
run's state (utils.train.state)."""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from typing import TYPE_CHECKING, Any

from utils.errors import AbnError
from utils.weights.checkpoint import (BEST, LAST, copy_checkpoint, remove_stale_temporaries,
                                      save_checkpoint)
from utils.weights.resume import AUTO, resume_requested_auto

if TYPE_CHECKING:
    import argparse

    import torch

    from utils.distributed import Runtime
    from utils.objectives.base import Objective


class CheckpointPolicy:
    """A run's checkpoints, beside the loop: which directory (and whether it may be used),
    proving it writable with room to spare, how files are written, and which epoch is best
    by the objective's metric and direction. The loop asks it to `save`."""

    def __init__(self, args: argparse.Namespace, runtime: Runtime,
                 objective: Objective) -> None:
        self.args, self.runtime, self.objective = args, runtime, objective
        self.best = None  # the best value of the objective's metric so far
        self.last = None  # the metric of the last finished epoch
        self.directory = self.resolve_checkpoint_dir()

    def path(self, name: str = LAST) -> str:
        return os.path.join(self.directory, name)

    def resolve_checkpoint_dir(self) -> str:
        args = self.args
        directory = args.checkpoint or (os.path.dirname(os.path.abspath(args.resume))
                                        if args.resume else 'checkpoint')
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise AbnError(f'checkpoint directory {directory} is a file: choose another -c')
        if not args.evaluate and not args.resume and not args.overwrite and os.path.isdir(directory):
            # args.json/log.txt alone are a run that died before its first checkpoint
            held = [n for n in (LAST, BEST) if os.path.exists(os.path.join(directory, n))]
            if held:
                raise AbnError(f'{directory} already holds a run ({", ".join(held)}): pass '
                               f'--resume {os.path.join(directory, LAST)} (or --resume auto) '
                               f'to continue it, --overwrite to replace it, or another -c')
        return directory

    def prepare(self, model: torch.nn.Module) -> None:
        """Creates the directory and proves it writable before any training."""
        if not self.runtime.is_main:
            return
        directory = self.directory
        try:
            os.makedirs(directory, exist_ok=True)
            probe = os.path.join(directory, f'.write-test-{os.getpid()}')
            with open(probe, 'wb') as f:
                f.write(b'0' * 4096)
                f.flush()
                os.fsync(f.fileno())
            os.unlink(probe)
        except OSError as error:
            raise AbnError(f'cannot write to checkpoint directory {directory}: '
                           f'{error.strerror or error}') from None
        remove_stale_temporaries(directory)
        self.check_free_space(directory, model)
        if self.args.overwrite and not self.args.resume:
            for name in (LAST, BEST, 'log.txt', 'log.png'):
                path = os.path.join(directory, name)
                if os.path.exists(path):
                    os.unlink(path)

    @staticmethod
    def check_free_space(directory: str, model: torch.nn.Module) -> None:
        """A checkpoint holds the weights and about as much optimizer state; writing one
        needs room for a second copy until the rename."""
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        needed = 3 * weights + (1 << 20)
        free = shutil.disk_usage(directory).free
        if free < needed:
            raise AbnError(f'not enough free space in {directory}: saving checkpoints needs '
                           f'about {needed / 2**20:.0f} MB, {free / 2**20:.0f} MB are free')

    def restore(self, saved: dict[str, Any]) -> None:
        """The metric of a resumed file's last and best epochs (the authors' 'acc' and
        'best_acc' keys, whatever the objective's metric)."""
        last, best = saved.get('acc'), saved.get('best_acc')
        self.last = float(last) if last is not None else None
        self.best = float(best) if best is not None else None

    def record(self, value: float) -> bool:
        """An epoch's metric; returns whether it is the best so far."""
        is_best = self.objective.is_better(value, self.best)
        if is_best:
            self.best = value
        self.last = value
        return is_best

    def save(self, state: dict[str, Any], is_best: bool = False) -> None:
        """model_best first, then checkpoint: a kill between the two leaves a consistent pair
        (the resumed epoch recomputes the same weights and rewrites the same best)."""
        if not self.runtime.is_main:
            return
        if is_best:
            save_checkpoint(state, self.path(BEST))
            copy_checkpoint(self.path(BEST), self.path(LAST))
        else:
            save_checkpoint(state, self.path(LAST))


def plain_args(args: argparse.Namespace) -> dict[str, str | int | float | bool | list | None]:
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


def resume_command(path: str) -> str:
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
