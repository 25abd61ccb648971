"""--tensorboard: log.txt's scalars, one per column and epoch, and the attention grid of the
best model, written for TensorBoard into <checkpoint>/tensorboard (as the authors' later
multi-task ABN code logs with a SummaryWriter). Optional: the `tensorboard` package is not a
requirement of the scripts. Only the main process writes."""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from utils.errors import AbnError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable

# log.txt's column -> TensorBoard tag; a tag's '/' groups the train and valid curves.
TAGS = {
    'Learning Rate': 'learning_rate',
    'Train Loss': 'loss/train', 'Valid Loss': 'loss/valid',
    'Train Acc.': 'top1/train', 'Valid Acc.': 'top1/valid',
    'Train Att Loss': 'attention_loss/train', 'Train Per Loss': 'perception_loss/train',
    'Valid Att Loss': 'attention_loss/valid', 'Valid Per Loss': 'perception_loss/valid',
    'Train Att Acc.': 'attention_top1/train', 'Valid Att Acc.': 'attention_top1/valid',
    'Valid Top-5': 'top5/valid', 'Valid Att Top-5': 'attention_top5/valid',
    'Epoch Time (s)': 'epoch_seconds',
}
GRID_TAG = 'attention/grid'


def tag_of(column: str) -> str:
    """The tag of a log.txt column: TAGS' name, else the column's words, e.g. 'Valid Map
    Loss' -> 'valid_map_loss' (objectives other than the single-label one add columns)."""
    return TAGS.get(column) or re.sub(r'[^a-z0-9]+', '_', column.lower()).strip('_')


def require_tensorboard() -> None:
    """Raises AbnError, before anything runs, when --tensorboard cannot be served."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise AbnError('--tensorboard needs the tensorboard package: pip install tensorboard '
                       '(or leave the flag out)') from None


class TensorBoardLog:
    def __init__(self, log_dir: str, start_epoch: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops the events of epochs after its checkpoint, as
        # log.txt drops their rows.
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=start_epoch + 1)
        self.epoch = start_epoch

    def log_epoch(self, columns: Iterable[str], row: Iterable[float], epoch: int) -> None:
        """One log.txt row under its `columns` at `epoch`, counted from 1."""
        for name, value in zip(columns, row):
            self.writer.add_scalar(tag_of(name), value, epoch)
        self.epoch = epoch
        self.writer.flush()

    def finish(self, grid_path: str | None = None) -> None:
        """The attention grid (a PNG utils.visualize wrote), at the last logged epoch; then
        the event file is closed."""
        if grid_path and os.path.exists(grid_path):
            with Image.open(grid_path) as image:
                pixels = np.asarray(image.convert('RGB'))
            self.writer.add_image(GRID_TAG, pixels, self.epoch, dataformats='HWC')
        self.writer.close()


def open_log(args: argparse.Namespace, checkpoint_dir: str,
             start_epoch: int) -> TensorBoardLog | None:
    """A TensorBoardLog into checkpoint_dir/tensorboard with --tensorboard, else None."""
    if not getattr(args, 'tensorboard', False):
        return None
    return TensorBoardLog(os.path.join(checkpoint_dir, 'tensorboard'), start_epoch)
