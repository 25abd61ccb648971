"""log.txt (tab-separated, one row per epoch) and its plot, log.png; `RunLog`, what rank 0
writes of a run beside its checkpoints (args.json, the log, TensorBoard's scalars).

The columns are the objective's (utils.objectives). The first five are always the authors'
('Learning Rate', 'Train Loss', 'Valid Loss', 'Train Acc.', 'Valid Acc.'; accuracies are the
perception branch's, the model's answer), so their tools read it; the single-label
objective's columns after them split the losses and accuracies by branch."""
from __future__ import annotations

import gc
import json
import os
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from utils.objectives import AUTHORS_COLUMNS, SingleLabelObjective

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Sequence

    from utils.distributed import Runtime
    from utils.objectives.base import Objective

# The single-label objective's columns (each objective defines its own `log_columns`).
COLUMNS = SingleLabelObjective.log_columns


class Logger:
    """Appends rows to log.txt. Resuming keeps the rows of the epochs the checkpoint holds
    and drops any written after it (a run killed between the log and the checkpoint)."""

    def __init__(self, path: str, columns: Iterable[str] = COLUMNS,
                 resume_epochs: int | None = None, metric_label: str = 'top-1',
                 higher_is_better: bool = True) -> None:
        self.path = path
        self.columns = list(columns)
        self.metric_label, self.higher_is_better = metric_label, higher_is_better
        self.rows = []
        if resume_epochs is not None and os.path.exists(path):
            with open(path) as f:
                lines = f.read().splitlines()
            names = lines[0].rstrip('\t').split('\t') if lines else []
            rows = [[float(v) for v in line.rstrip('\t').split('\t')] for line in lines[1:]
                    if line.strip()]
            if names == self.columns:
                self.rows = rows[:resume_epochs]
        self._rewrite()

    def _rewrite(self):
        with open(self.path, 'w') as f:
            f.write('\t'.join(self.columns) + '\n')
            for row in self.rows:
                f.write(self._format(row))

    @staticmethod
    def _format(row):
        return '\t'.join(f'{v:.6f}' for v in row) + '\n'

    def append(self, row: Sequence[float]) -> None:
        self.rows.append(list(row))
        with open(self.path, 'a') as f:
            f.write(self._format(row))

    def plot(self, path: str, title: str = '') -> None:
        """Learning curves: loss and metric of both branches, train and validation, and LR."""
        if not self.rows:
            return
        col = {name: [r[i] for r in self.rows] for i, name in enumerate(self.columns)}
        epochs = list(range(1, len(self.rows) + 1))
        marker = 'o' if len(epochs) <= 20 else None  # few epochs: show the points
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        ax = axes[0]
        for name, style in (('Train Loss', 'C0-'), ('Valid Loss', 'C1-'),
                            ('Train Att Loss', 'C0:'), ('Valid Att Loss', 'C1:'),
                            ('Train Per Loss', 'C0--'), ('Valid Per Loss', 'C1--')):
            if name in col:
                ax.plot(epochs, col[name], style, label=name, marker=marker, ms=3)
        ax.set_title('loss (sum = attention + perception)')
        ax = axes[1]
        for name, style in (('Train Acc.', 'C0-'), ('Valid Acc.', 'C1-'),
                            ('Train Att Acc.', 'C0:'), ('Valid Att Acc.', 'C1:')):
            if name in col:
                ax.plot(epochs, col[name], style, label=name.replace('Acc.', self.metric_label),
                        marker=marker, ms=3)
        best = (max if self.higher_is_better else min)(col['Valid Acc.'])
        ax.axhline(best, color='gray', lw=0.8, ls='--', label=f'best valid {best:.2f}%')
        ax.set_title(f'{self.metric_label}: perception branch, and attention (dotted)')
        ax = axes[2]
        ax.plot(epochs, col['Learning Rate'], 'C2-', marker=marker, ms=3)
        ax.set_yscale('log')
        ax.set_title('learning rate')
        for ax in axes:
            ax.set_xlabel('epoch')
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            if ax is not axes[2]:
                ax.legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        # A figure is a web of reference cycles that only a full collection frees, and an
        # epoch allocates too few Python objects to trigger one: without this, each
        # epoch's figure (its canvas is ~3 MB) stayed resident, +3 MB an epoch.
        gc.collect()


__all__ = ['AUTHORS_COLUMNS', 'COLUMNS', 'Logger']


class RunLog:
    """What the main process writes of a run beside its checkpoints: args.json, log.txt and
    log.png after every epoch, and with --tensorboard its scalars and the attention grid.
    In the other processes it writes nothing."""

    def __init__(self, args: argparse.Namespace, runtime: Runtime, directory: str,
                 objective: Objective, start_epoch: int, resumed: bool, title: str) -> None:
        from utils.train.checkpoint_policy import plain_args
        from utils.train.tensorboard_log import open_log
        self.directory, self.title = directory, title
        self.logger = self.tensorboard = None
        if not runtime.is_main:
            return
        with open(os.path.join(directory, 'args.json'), 'w') as f:
            json.dump(plain_args(args), f, indent=2, sort_keys=True)
        self.logger = Logger(os.path.join(directory, 'log.txt'), objective.log_columns,
                             resume_epochs=start_epoch if resumed else None,
                             metric_label=objective.metric_label,
                             higher_is_better=objective.higher_is_better)
        self.tensorboard = open_log(args, directory, start_epoch)

    def epoch(self, number: int, row: Sequence[float]) -> None:
        """Epoch `number` (from 1) done, its row of log.txt."""
        if self.logger is None:
            return
        self.logger.append(row)
        self.logger.plot(os.path.join(self.directory, 'log.png'), self.title)
        if self.tensorboard:
            self.tensorboard.log_epoch(self.logger.columns, self.logger.rows[-1], number)

    def finish(self) -> None:
        if self.tensorboard:
            self.tensorboard.finish(os.path.join(self.directory, 'attention', 'grid.png'))
