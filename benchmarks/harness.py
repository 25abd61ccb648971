"""What the benchmarks share: the machine's description, CIFAR-shaped data that needs no
download, and cifar.py's own engine set up from a command line, so that what is timed is
what the script runs (its loaders, its training step, its evaluation)."""
import contextlib
import io
import os
import platform
import re
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.utils.data as tud  # noqa: E402
from PIL import Image  # noqa: E402

import cifar  # noqa: E402
from utils.data.datasets import (NORMALIZATION, DataBundle, build_small_image_data,  # noqa: E402
                                 small_image_transforms)
from utils.distributed import setup_runtime  # noqa: E402
from utils.signals import StopSignals  # noqa: E402
from utils.train.engine import prepare_training  # noqa: E402
from utils.train.options import apply_fast, check_training_arguments  # noqa: E402


def machine():
    """One line: CPU model and cores, GPU, torch, threads and the load at the start."""
    model = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            found = re.search(r'model name\s*:\s*(.+)', f.read())
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    load = ' '.join(f'{v:.2f}' for v in os.getloadavg()) if hasattr(os, 'getloadavg') else '?'
    return (f'{model}, {cores} cores; {gpu}; torch {torch.__version__}, '
            f'{torch.get_num_threads()} threads; load average {load}')


class SyntheticSplit(tud.Dataset):
    """Random CIFAR-shaped images stored as torchvision's CIFAR10 stores them (`data` uint8
    (N, 32, 32, 3), `targets`), served as PIL images through `transform`: the same per-image
    cost as CIFAR, with no download (GPU machines may have no internet)."""

    def __init__(self, count, classes, transform, seed):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        self.targets = rng.integers(0, classes, count).tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def build_data(name, train_images, test_images, root='./data'):
    """'synthetic10'/'synthetic100' (CIFAR-10/100-sized random data), or a cifar.py data
    set (shapes, or cifar10/cifar100/svhn from --data) cut to the given sizes."""
    if name.startswith('synthetic'):
        classes = int(name[len('synthetic'):])
        mean, std = NORMALIZATION['cifar100' if classes == 100 else 'cifar10']
        train_tf, test_tf = small_image_transforms(mean, std)
        return DataBundle(name, SyntheticSplit(train_images, classes, train_tf, seed=1),
                          SyntheticSplit(test_images, classes, test_tf, seed=2),
                          [str(c) for c in range(classes)], mean, std, 32)
    return build_small_image_data(name, root, train_images, test_images)


class Setup:
    """cifar.py's engine for `flags` (its own command-line options) on `data`: model,
    optimizer, AMP, and the loaders the script would build."""

    def __init__(self, name, flags, data, runtime=None):
        self.name = name
        args = cifar.get_args_parser().parse_args(flags)
        check_training_arguments(args)
        self.args = args
        self.runtime = runtime or setup_runtime(args.gpu_id)
        apply_fast(args, self.runtime.device)
        self.workdir = tempfile.TemporaryDirectory(prefix='abn-bench-')
        args.checkpoint = self.workdir.name
        script = cifar.CifarScript()
        script.build_data = lambda *_: data
        with contextlib.redirect_stdout(io.StringIO()):
            # the engine's own set-up, through its public steps
            self.run = prepare_training(args, script, self.runtime)
        self.epoch = 0
        self.stop = StopSignals(self.runtime)

    def train_epoch(self):
        """One epoch of the engine's training loop; returns the seconds it took."""
        self.epoch += 1
        return self.timed(lambda: self.run.train_one_epoch(self.epoch, self.stop))

    def train_epoch_untimed(self):
        """One epoch of the engine's training loop, its output hidden."""
        self.epoch += 1
        with contextlib.redirect_stdout(io.StringIO()):
            self.run.train_one_epoch(self.epoch, self.stop)

    def evaluate(self):
        return self.timed(self.run.evaluate)

    def timed(self, work):
        synchronize(self.runtime.device)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            work()
        synchronize(self.runtime.device)
        return time.perf_counter() - started

    @property
    def description(self):
        args = self.args
        parts = [f'batch {args.train_batch}', f'-j {args.workers}']
        parts += [flag for flag, on in (('--fast-data', args.fast_data),
                                        ('--channels-last', args.channels_last),
                                        ('--amp', args.amp), ('--compile', args.compile)) if on]
        return ' '.join(parts)


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a block: the CUDA allocator's peak on a GPU, else this process's peak
    resident set (Linux; DataLoader workers are other processes and not counted)."""

    def __init__(self, device):
        self.device = device
        self.peak_mb = None

    def __enter__(self):
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open('/proc/self/clear_refs', 'w') as f:
                    f.write('5')  # resets VmHWM to the current resident set
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == 'cuda':
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            try:
                with open('/proc/self/status') as f:
                    self.peak_mb = int(re.search(r'VmHWM:\s+(\d+)', f.read()).group(1)) / 1024
            except (OSError, AttributeError):
                self.peak_mb = None


def median(values):
    return statistics.median(values) if values else float('nan')


def megabytes(value):
    return f'{value:.0f} MB' if value is not None else 'n/a'
