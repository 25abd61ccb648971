"""Checkpoint files: atomic writes, safe loading, and the authors' legacy format.

A checkpoint is one dict. The authors' keys come first ('epoch', 'state_dict', 'acc',
'best_acc', 'optimizer'), so their tools read ours; ours add what an exact resume and a
self-describing file need ('step', 'rng', 'arch', 'model_args', 'num_classes',
'class_names', 'normalization', 'args', 'format'). Files load with `weights_only=True`: a
checkpoint from the internet can hold tensors and plain values, never code to run.

The authors' multi-task ABN files (MultitaskABN) are dicts {'epoch', 'iteration', 'best_score',
'model_state_dict', 'optimizer_state_dict', 'scheduler_state_dict'}; they load too, their
weights offered as 'state_dict'.
"""
from __future__ import annotations

import glob
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from typing import Any, Mapping

import numpy as np
import torch

from utils.errors import AbnError

FORMAT = 'abn-pytorch/1'
WRAPPER_PREFIXES = ('module.', '_orig_mod.')  # DataParallel/DDP, torch.compile


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path, write):
    """Writes through `write(file)` into a temporary file beside `path`, flushes it to disk,
    then renames it over `path`: at no moment is `path` half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp',
                               dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            raise AbnError(f'could not write {path}: {reason}; the previous file is intact'
                           ) from error
        raise
    _fsync_directory(directory)


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    _atomic_write(path, lambda f: torch.save(state, f))


def copy_checkpoint(source: str, path: str) -> None:
    def write(f):
        with open(source, 'rb') as src:
            shutil.copyfileobj(src, f, length=16 << 20)
    _atomic_write(path, write)


def remove_stale_temporaries(directory: str) -> None:
    """Temporary files left by a run killed mid-write (the real files are intact)."""
    for tmp in glob.glob(os.path.join(directory, '.*.pth.tar.*.tmp')):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _numpy_scalar_globals():
    """What a pickled numpy float needs (the MultitaskABN files' best_score is a numpy float64):
    numpy's scalar constructor under its numpy 1 and numpy 2 module names, and float dtypes.
    They build numbers, never run code."""
    scalar = np._core.multiarray.scalar if hasattr(np, '_core') else np.core.multiarray.scalar
    return [(scalar, 'numpy.core.multiarray.scalar'), (scalar, 'numpy._core.multiarray.scalar'),
            np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]


def _unsafe_globals(path):
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []


def load_checkpoint(path: str) -> dict[str, Any]:
    """Loads a checkpoint safely and returns it as a dict with at least 'state_dict'.
    Raises AbnError, with one line saying what is wrong, for a missing, truncated, foreign
    or code-carrying file."""
    if not path or not os.path.exists(path):
        raise AbnError(f'no checkpoint at {path}: check the --resume path')
    if os.path.isdir(path):
        raise AbnError(f'{path} is a directory: give --resume the checkpoint file in it, '
                       f'e.g. {os.path.join(path, "checkpoint.pth.tar")}')
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        names = _unsafe_globals(path)
        found = re.findall(r'GLOBAL ([\w.]+)', str(error))
        names = names or found
        if names:
            raise AbnError(f'refusing to load {path}: it asks to run code '
                           f'({", ".join(names)}); nothing from it was executed. Use '
                           f'checkpoints saved by these scripts or the authors\'') from None
        detail = re.search(r'WeightsUnpickler error: (.+?)\n\n', str(error), re.S)
        reason = detail.group(1).strip() if detail else str(error).splitlines()[0]
        raise AbnError(f'cannot read checkpoint {path}: it is corrupt or not a PyTorch '
                       f'checkpoint ({reason})') from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            UnicodeDecodeError, AttributeError, IndexError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AbnError(f'cannot read checkpoint {path}: the file is truncated or not a PyTorch '
                       f'checkpoint ({reason})') from None
    if isinstance(checkpoint, dict) and 'state_dict' in checkpoint:
        return checkpoint
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('model_state_dict'), dict):
        return {**checkpoint, 'state_dict': checkpoint['model_state_dict']}  # MultitaskABN
    if isinstance(checkpoint, dict) and checkpoint and all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return {'state_dict': checkpoint}  # a bare state_dict
    raise AbnError(f'{path} is not a model checkpoint: it holds no state_dict')


def is_legacy(checkpoint: dict[str, Any]) -> bool:
    """True for the authors' files (and bare state_dicts), which carry no description."""
    return checkpoint.get('format') != FORMAT


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drops the prefixes that wrappers add (DataParallel's `module.`, torch.compile's
    `_orig_mod.`), so files saved from wrapped and plain models load alike."""
    cleaned = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def checkpoint_num_classes(checkpoint: dict[str, Any]) -> int | None:
    if 'num_classes' in checkpoint:
        return int(checkpoint['num_classes'])
    state = clean_state_dict(checkpoint['state_dict'])
    weight = state.get('att_conv2.weight', state.get('conv_att.weight'))  # conv_att: multi-task
    return int(weight.shape[0]) if weight is not None else None


def load_model_state(model: torch.nn.Module, checkpoint: dict[str, Any], path: str,
                     description: str) -> None:
    """Loads the checkpoint's weights strictly; a mismatch gives one line that says how
    the file and the model differ. `description` names the model the user asked for."""
    state = clean_state_dict(checkpoint['state_dict'])
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        file_classes = checkpoint_num_classes(checkpoint)
        model_classes = getattr(model, 'num_classes', None)
        if file_classes and model_classes and file_classes != model_classes:
            raise AbnError(f'{path} was trained for {file_classes} classes, but this data set '
                           f'has {model_classes}: check --dataset/--data')
        parts = []
        if missing:
            parts.append(f'{len(missing)} weights missing (e.g. {missing[0]})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected (e.g. {unexpected[0]})')
        if reshaped:
            k = reshaped[0]
            parts.append(f'{len(reshaped)} of another shape (e.g. {k}: file '
                         f'{list(state[k].shape)}, model {list(expected[k].shape)})')
        raise AbnError(f'{path} does not fit {description}: {"; ".join(parts)}. '
                       f'Check -a, --depth and the other architecture options')
    model.load_state_dict(state, strict=True)


# The file names of a run's checkpoints (the authors').
LAST = 'checkpoint.pth.tar'
BEST = 'model_best.pth.tar'
