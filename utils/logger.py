"""log.txt (tab-separated, one row per epoch) and its plot, log.png.

The first five columns are the authors' ('Learning Rate', 'Train Loss', 'Valid Loss',
'Train Acc.', 'Valid Acc.'; accuracies are the perception branch's, the model's answer), so
their tools read it; the columns after them split the losses and accuracies by branch."""
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

AUTHORS_COLUMNS = ['Learning Rate', 'Train Loss', 'Valid Loss', 'Train Acc.', 'Valid Acc.']
COLUMNS = AUTHORS_COLUMNS + [
    'Train Att Loss', 'Train Per Loss', 'Valid Att Loss', 'Valid Per Loss',
    'Train Att Acc.', 'Valid Att Acc.', 'Valid Top-5', 'Valid Att Top-5', 'Epoch Time (s)']


def epoch_row(lr, train, valid, seconds):
    return [lr, train['loss'], valid['loss'], train['per_top1'], valid['per_top1'],
            train['att_loss'], train['per_loss'], valid['att_loss'], valid['per_loss'],
            train['att_top1'], valid['att_top1'], valid['per_top5'], valid['att_top5'], seconds]


class Logger:
    """Appends rows to log.txt. Resuming keeps the rows of the epochs the checkpoint holds
    and drops any written after it (a run killed between the log and the checkpoint)."""

    def __init__(self, path, resume_epochs=None):
        self.path = path
        self.rows = []
        if resume_epochs is not None and os.path.exists(path):
            with open(path) as f:
                lines = f.read().splitlines()
            names = lines[0].rstrip('\t').split('\t') if lines else []
            rows = [[float(v) for v in line.rstrip('\t').split('\t')] for line in lines[1:]
                    if line.strip()]
            if names == COLUMNS:
                self.rows = rows[:resume_epochs]
        self._rewrite()

    def _rewrite(self):
        with open(self.path, 'w') as f:
            f.write('\t'.join(COLUMNS) + '\n')
            for row in self.rows:
                f.write(self._format(row))

    @staticmethod
    def _format(row):
        return '\t'.join(f'{v:.6f}' for v in row) + '\n'

    def append(self, row):
        self.rows.append(list(row))
        with open(self.path, 'a') as f:
            f.write(self._format(row))

    def plot(self, path, title=''):
        """Learning curves: loss and top-1 of both branches, train and validation, and LR."""
        if not self.rows:
            return
        col = {name: [r[i] for r in self.rows] for i, name in enumerate(COLUMNS)}
        epochs = list(range(1, len(self.rows) + 1))
        marker = 'o' if len(epochs) <= 20 else None  # few epochs: show the points
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        ax = axes[0]
        for name, style in (('Train Loss', 'C0-'), ('Valid Loss', 'C1-'),
                            ('Train Att Loss', 'C0:'), ('Valid Att Loss', 'C1:'),
                            ('Train Per Loss', 'C0--'), ('Valid Per Loss', 'C1--')):
            ax.plot(epochs, col[name], style, label=name, marker=marker, ms=3)
        ax.set_title('loss (sum = attention + perception)')
        ax = axes[1]
        for name, style in (('Train Acc.', 'C0-'), ('Valid Acc.', 'C1-'),
                            ('Train Att Acc.', 'C0:'), ('Valid Att Acc.', 'C1:')):
            ax.plot(epochs, col[name], style, label=name.replace('Acc.', 'top-1'), marker=marker,
                    ms=3)
        best = max(col['Valid Acc.'])
        ax.axhline(best, color='gray', lw=0.8, ls='--', label=f'best valid {best:.2f}%')
        ax.set_title('top-1 accuracy (%): perception branch, and attention (dotted)')
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
