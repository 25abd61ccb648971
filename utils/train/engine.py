"""The engine shared by cifar.py, imagenet.py and celeba.py: `script_main(parser, script,
argv)`, the scripts' main, and the loop (`Trainer`) over a prepared run (utils.train.setup),
saving the run's state (utils.train.state) through its checkpoint policy, with logs and
attention images. A script supplies a `TrainingScript` (utils.train.script: its model
registry and how it builds its data); map teaching is added when --attention-maps asks for
it (utils.train.teaching).

Training follows the authors: SGD with momentum and weight decay, the learning rate
multiplied by gamma at each epoch of --schedule, and `model_best` the epoch with the best
test metric. What is optimised and measured is the script's `Objective` (utils.objectives; the
authors' CE(attention logits) + CE(perception logits) and perception top-1 for cifar.py and
imagenet.py): the loop never looks inside a target.
"""
from __future__ import annotations

import bisect
import os
import re
import signal
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from utils.cpus import use_threads
from utils.data.images import CorruptImageError
from utils.distributed import (broadcast_module_state, broadcast_object, setup_runtime,
                               shutdown)
from utils.errors import AbnError
from utils.progress import Progress
from utils.signals import StopSignals
from utils.train.attention_images import write_attention_images
from utils.train.checkpoint_policy import resume_command
from utils.train.logger import RunLog
from utils.train.options import apply_fast, check_training_arguments
from utils.train.setup import TrainingSetup
from utils.train.script import TrainingScript
from utils.train.teaching import check_teach_arguments
from utils.weights import checkpoint as ckpt
from utils.weights.checkpoint import BEST, LAST
from utils.weights.resume import resolve_resume

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator, Sequence

    from torch import Tensor

    from models.abn import AbnOutput
    from utils.data.fastdata import DeviceLoader
    from utils.data.loaders import Loader
    from utils.distributed import Runtime
    from utils.objectives.base import Objective
    from utils.train.checkpoint_policy import CheckpointPolicy


class NonFiniteLoss(AbnError):
    pass


class StopRequested(Exception):
    """SIGTERM or Ctrl-C: stop at the next step boundary and save."""


def step_schedule_lr(args: argparse.Namespace, epoch: int) -> float:
    """The authors' schedule in closed form: lr * gamma^(milestones reached by `epoch`)."""
    return args.lr * args.gamma ** bisect.bisect_right(args.schedule, epoch)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group['lr'] = lr


def corrupt_image_message(error: CorruptImageError) -> str:
    """The one line of a CorruptImageError, also when re-raised from a loader worker (whose
    message carries the worker's traceback)."""
    last = str(error).strip().splitlines()[-1]
    last = re.sub(r'^[\w.]*CorruptImageError: ', '', last)
    return f'{last}: remove it, or pass --skip-bad-images to skip unreadable images'


@contextmanager
def images_readable() -> Iterator[None]:
    """An unreadable image met by a loader becomes the one-line error that names it."""
    try:
        yield
    except CorruptImageError as error:
        raise AbnError(corrupt_image_message(error)) from None


def shared_status(runtime: Runtime, stop: StopSignals, meter: Any) -> tuple[bool, int | None]:
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


def complete_message(checkpoints: CheckpointPolicy, epochs: int, wanted: int,
                     metric_label: str) -> str:
    best = checkpoints.best
    best = f'{best:.2f}' if best is not None else 'unknown'
    return (f'The run in {checkpoints.directory} is complete: {epochs} epochs of --epochs '
            f'{wanted}, best {metric_label} {best}. Nothing to do (raise --epochs to train '
            f'more); files: {checkpoints.directory}')


def check_finite(bad_step: int | None, epoch: int, checkpoint_dir: str,
                 optimizer: torch.optim.Optimizer) -> None:
    """Stops the run, in one line, at the first non-finite loss (`bad_step`, or None)."""
    if bad_step is None:
        return
    last = os.path.join(checkpoint_dir, LAST)
    kept = (f'the last good checkpoint, {last}, is kept' if os.path.exists(last)
            else 'no checkpoint was written')
    raise NonFiniteLoss(f'the loss became NaN or infinite at epoch {epoch + 1}, step '
                        f'{bad_step + 1} (lr {optimizer.param_groups[0]["lr"]:g}); '
                        f'training stopped and {kept}. Try a lower --lr')


class EpochReport:
    """A training epoch's summary lines, and the objective's warning about the epoch (e.g. the
    taught map collapsing) printed once: with the first summary that has one."""

    def __init__(self, objective: Objective, attention: bool, print_line: Callable[[str], None],
                 lr: float) -> None:
        self.objective, self.attention, self.print_line, self.lr = objective, attention, \
            print_line, lr
        self.warned = False

    def text(self, summary: dict[str, Any]) -> str:
        if not self.warned:
            warning = self.objective.training_warning(summary, self.lr)
            if warning:
                self.print_line(warning)
                self.warned = True
        return self.objective.summary_text(summary, self.attention)


class Trainer:
    """The loops over a prepared TrainingSetup: training epochs, evaluation, the run's state
    saved through its checkpoint policy; `fit()` trains the whole run, `evaluate_only()`
    evaluates a checkpoint (-e)."""

    def __init__(self, setup: TrainingSetup) -> None:
        self.setup = setup  # everything the loops use: made by TrainingSetup.prepare()

    def forward_losses(self, inputs: Tensor, targets: Any) -> tuple[AbnOutput, dict[str, Tensor]]:
        """(the model's AbnOutput, the objective's named losses)."""
        setup = self.setup
        with setup.autocast():
            return setup.objective.forward_losses(setup.wrapped, inputs, targets)

    def train_one_epoch(self, epoch: int, stop: StopSignals) -> tuple[Any, dict[str, Any], int]:
        setup = self.setup
        args, runtime = setup.args, setup.runtime
        setup.wrapped.train()
        loader, state = setup.train_loader, setup.state
        loader.set_epoch(epoch, state.step)
        total = state.step + len(loader)
        meter = setup.objective.new_meter(runtime.device)
        if state.meter is not None:
            meter.load_state_dict(state.meter)
            state.meter = None
        progress = Progress(f'Train {epoch + 1}', total, enabled=runtime.is_main)
        step, state.step = state.step, 0  # a resumed epoch starts at the saved step
        report = EpochReport(setup.objective, setup.attention, setup.print,
                             step_schedule_lr(args, epoch))
        for inputs, targets in loader:
            inputs, targets = setup.to_device(inputs, targets)
            output, losses = self.forward_losses(inputs, targets)
            loss = setup.objective.total_loss(losses)
            setup.optimizer.zero_grad(set_to_none=True)
            setup.scaler.scale(loss).backward()
            setup.scaler.step(setup.optimizer)
            setup.scaler.update()
            meter.update(step, output, targets, losses)
            step += 1
            # The device is read (a host sync) only every --print-freq steps and at
            # checkpoints; one process also looks at its stop flag, a Python bool, each step.
            checkpoint_due = args.save_every_steps and step % args.save_every_steps == 0
            shown = step % args.print_freq == 0 or step == total
            if shown or checkpoint_due or (not runtime.distributed and stop.requested()):
                stop_now, bad_step = shared_status(runtime, stop, meter)
                check_finite(bad_step, epoch, setup.checkpoint_dir, setup.optimizer)
                progress.update(step, report.text(meter.summary()) if shown else None)
                if stop_now and step < total:
                    raise StopRequested(epoch, step, meter)
                if checkpoint_due and step < total:
                    setup.checkpoints.save(setup.state.state_dict(epoch, step, meter))
            else:
                progress.update(step)
        meter.all_reduce()
        check_finite(meter.first_nonfinite_step(), epoch, setup.checkpoint_dir,
                     setup.optimizer)
        summary = meter.summary()
        progress.finish(report.text(summary))
        return meter, summary, total

    @torch.no_grad()
    def evaluate(self, stop: StopSignals | None = None, title: str | None = None,
                 loader: Loader | DeviceLoader | None = None) -> dict[str, Any] | None:
        """The meter's summary over `loader` (default: the split that picks model_best, the
        validation split where the data has one, else test)."""
        setup = self.setup
        runtime = setup.runtime
        setup.wrapped.eval()
        loader = loader or setup.valid_loader
        title = title or ('Valid' if loader is not setup.test_loader else 'Test')
        meter = setup.objective.new_meter(runtime.device)
        progress = Progress(title, len(loader), enabled=runtime.is_main)
        for step, (inputs, targets) in enumerate(loader):
            inputs, targets = setup.to_device(inputs, targets)
            output, losses = self.forward_losses(inputs, targets)
            meter.update(step, output, targets, losses)
            progress.update(step + 1)
            if stop is not None and not runtime.distributed and stop.requested():
                return None
        meter.all_reduce()
        summary = meter.summary()
        progress.finish(setup.objective.summary_text(summary, setup.attention))
        return summary

    # ---- the whole run ----
    def fit(self) -> int:
        """Trains from the run's state to --epochs; returns the process's exit status."""
        setup = self.setup
        args, runtime, state = setup.args, setup.runtime, setup.state
        if setup.complete:  # a job wrapper re-running a finished job
            setup.print(complete_message(setup.checkpoints, setup.state.epoch, args.epochs,
                                        setup.objective.metric_label))
            return 0
        title = f'{setup.script.name} {setup.data.name}: {setup.description}'
        self.log = RunLog(args, runtime, setup.checkpoint_dir, setup.objective, state.epoch,
                          setup.resumed is not None, title)
        setup.print(f'==> Training on {setup.describe_device()}, seed {args.manualSeed}, '
                   f'checkpoints in {setup.checkpoint_dir}')
        if state.epoch or state.step:
            setup.print(f'    resuming at epoch {state.epoch + 1}'
                       + (f', step {state.step + 1}' if state.step else ''))
        with StopSignals(runtime) as stop:
            for epoch in range(state.epoch, args.epochs):
                lr = step_schedule_lr(args, epoch)
                set_lr(setup.optimizer, lr)
                setup.print(f'\nEpoch: [{epoch + 1} | {args.epochs}] LR: {lr:f}')
                started = time.time()
                try:
                    with images_readable():
                        train_meter, train, steps = self.train_one_epoch(epoch, stop)
                        valid = self.evaluate(stop)
                    if valid is None:  # stopped during evaluation: redo only that on resume
                        raise StopRequested(epoch, steps, train_meter)
                except StopRequested as request:
                    return self.stop_and_save(stop, *request.args)
                seconds = time.time() - started
                score = setup.objective.best_score(train, valid)
                is_best = setup.checkpoints.record(score)
                setup.print(f"    valid {setup.objective.summary_text(valid, setup.attention)} | "
                           f"{setup.objective.score_text(score, setup.checkpoints.best)} | "
                           f"{seconds:.0f}s")
                self.log.epoch(epoch + 1, setup.objective.log_row(lr, train, valid, seconds))
                setup.checkpoints.save(setup.state.state_dict(epoch + 1, 0), is_best)
                dropped = getattr(setup.train_loader, 'dropped', 0)
                if dropped:
                    setup.print(f'    {dropped} unreadable images skipped so far')
        return self.finish(title)

    def stop_and_save(self, stop: StopSignals, epoch: int, step: int, meter: Any) -> int:
        setup = self.setup
        setup.checkpoints.save(setup.state.state_dict(epoch, step, meter))
        path = setup.checkpoints.path(LAST)
        setup.print(f'Saved {path} at epoch {epoch + 1}, step {step}. To continue:\n'
                   f'  {resume_command(path)}')
        return 143 if stop.signum == signal.SIGTERM else 130

    def finish(self, title: str) -> int:
        setup = self.setup
        setup.print('\n' + setup.objective.best_text(setup.checkpoints.best))
        best_path = setup.checkpoints.path(BEST)
        # Rank 0 wrote the file: its answer holds for every process, which then tests the
        # best model together (a process deciding by its own look at the file could skip
        # the collectives the others enter, or find the previous best).
        has_best = broadcast_object(os.path.exists(best_path), setup.runtime)
        if setup.valid_loader is not setup.test_loader and has_best:
            self.test_best(best_path)
        if setup.runtime.is_main and os.path.exists(best_path):
            best = ckpt.load_checkpoint(best_path)
            out = write_attention_images(setup, best['state_dict'],
                                         title=f'{title}, best epoch {best["epoch"]}')
            if out:
                setup.print(f'Attention images of the best model: {out}')
        self.log.finish()
        setup.print(f'Log: {os.path.join(setup.checkpoint_dir, "log.txt")}, plot: '
                   f'{os.path.join(setup.checkpoint_dir, "log.png")}')
        return 0

    def test_best(self, best_path: str) -> None:
        """With a validation split: the best model (picked on it) once on the test split.
        Rank 0 reads the file and hands its weights to the other processes."""
        setup = self.setup
        if setup.runtime.is_main:
            best = ckpt.load_checkpoint(best_path)
            setup.net.load_state_dict(best['state_dict'])
            setup.print(f'==> The best model (epoch {best["epoch"]}) on the test split')
        broadcast_module_state(setup.net, setup.runtime)
        with images_readable():
            summary = self.evaluate(loader=setup.test_loader, title='Test')
        setup.print(setup.objective.evaluation_text(summary, setup.attention))
        self.write_evaluation(summary)
        self.test_summary = summary

    def write_evaluation(self, summary: dict[str, Any]) -> None:
        setup = self.setup
        if setup.runtime.is_main:
            for path in setup.objective.write_evaluation(summary, setup.checkpoint_dir,
                                                        list(setup.data.classes)):
                setup.print(f'    {path}')

    def evaluate_only(self) -> int:
        """-e: the checkpoint's model on the test split; returns the exit status."""
        setup = self.setup
        setup.print('\nEvaluation only')
        with images_readable():
            summary = self.evaluate()
        setup.print(setup.objective.evaluation_text(summary, setup.attention))
        if setup.runtime.is_main:
            try:
                os.makedirs(setup.checkpoint_dir, exist_ok=True)
            except OSError as error:
                raise AbnError(f'cannot create {setup.checkpoint_dir}: {error.strerror}') from None
            self.write_evaluation(summary)
            out = write_attention_images(
                setup, title=f'{setup.script.name} {setup.data.name}: {setup.description}')
            if out:
                setup.print(f'Attention images: {out}')
        self.summary = summary
        return 0


def prepare_training(args: argparse.Namespace, script: TrainingScript, runtime: Runtime,
                     given: set[str] | None = None) -> Trainer:
    """The loop over a run set up from `args` (parsed and checked) and `script`."""
    return Trainer(TrainingSetup(args, script, runtime, given).prepare())


def script_main(parser: Any, script: TrainingScript,
                argv: Sequence[str] | None = None) -> int:
    """The main of cifar.py, imagenet.py and celeba.py: their options parsed, the script
    configured for them (the set-up adds the teaching where --attention-maps asks for it),
    then training or evaluation; returns the process exit status. Options the user did not type
    may come from --resume's file."""
    args = parser.parse_args(argv)
    given = parser.given_options(argv)
    script = script.configured(args, given)
    check_teach_arguments(args)
    resolve_resume(args)
    check_training_arguments(args)
    runtime = setup_runtime(args.gpu_id, args.dist_timeout)
    apply_fast(args, runtime.device)
    threads = torch.get_num_threads()
    try:
        if runtime.device.type == 'cpu' or args.threads:
            # the data loader workers busy beside the computation (none on the fast path)
            use_threads(args.threads, 0 if getattr(args, 'fast_data', False) else args.workers)
        trainer = prepare_training(args, script, runtime, given)
        return trainer.evaluate_only() if args.evaluate else trainer.fit()
    finally:
        torch.set_num_threads(threads)  # a caller in this process gets its own back
        shutdown(runtime)


__all__ = ['TrainingScript', 'Trainer', 'prepare_training', 'script_main', 'step_schedule_lr']
