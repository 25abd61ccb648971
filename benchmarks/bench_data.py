"""The training data pipeline alone: cifar.py's per-sample PIL DataLoader (random crop, flip,
ToTensor, Normalize per image, in worker processes) against the fast path's batched tensor
augmentation on the device, in one run with alternating epochs. Batches are delivered to
the training device, as the training loop receives them.

    python benchmarks/bench_data.py --gpu-id cpu
    python benchmarks/bench_data.py --images 50000 --gpu-id 0

The last line is the ratio fast/authors of images per second (authors: cifar.py's default
number of workers).
"""
import argparse
import time

import torch

from harness import build_data, cifar, machine, median, synchronize

from utils.data.fastdata import device_loader
from utils.data.loaders import make_train_loader
from utils.distributed import setup_runtime
from utils.train.options import check_training_arguments


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=int, default=5120, help='images per timed epoch')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--data', default='synthetic10',
                        help='synthetic10 | synthetic100 | shapes | cifar10 | cifar100 | svhn')
    parser.add_argument('--data-dir', default='./data')
    parser.add_argument('-j', '--workers', type=int, default=None,
                        help="the authors' loader's workers (default: cifar.py's default)")
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--gpu-id', default='0', help="as cifar.py; 'cpu' for the CPU")
    parser.add_argument('--threads', type=int, default=None,
                        help="torch's CPU threads (default: torch's own choice)")
    return parser.parse_args()


def epoch_seconds(loader, epoch, device):
    loader.set_epoch(epoch)
    synchronize(device)
    started = time.perf_counter()
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True)  # what the engine's to_device does
        targets = targets.to(device, non_blocking=True)
    synchronize(device)
    return time.perf_counter() - started


def main():
    options = parse()
    if options.threads:
        torch.set_num_threads(options.threads)
    defaults = cifar.get_args_parser().parse_args(['--gpu-id', options.gpu_id] + (
        ['-j', str(options.workers)] if options.workers is not None else []))
    check_training_arguments(defaults)  # fills in the default number of workers
    runtime = setup_runtime(options.gpu_id)
    data = build_data(options.data, options.images, 1, options.data_dir)
    fast, reason = device_loader(data.train, options.batch, runtime, seed=1)
    if fast is None:
        raise SystemExit(f'the fast path cannot load {options.data}: {reason}')
    loaders = {
        f'authors (-j {defaults.workers})': make_train_loader(
            data.train, options.batch, runtime, 1, defaults.workers),
        'per-sample PIL, -j 0': make_train_loader(data.train, options.batch, runtime, 1, 0),
        'fast (--fast-data)': fast,
    }
    print(f'machine: {machine()}')
    print(f'data {options.data}: {len(data.train)} images per epoch, batch {options.batch}, '
          f'delivered to {runtime.device}')
    times = {name: [] for name in loaders}
    for name, loader in loaders.items():  # warm-up: worker start, first allocations
        epoch_seconds(loader, 0, runtime.device)
    for epoch in range(1, options.rounds + 1):
        for name, loader in loaders.items():
            times[name].append(epoch_seconds(loader, epoch, runtime.device))
    speed = {name: len(data.train) / median(seconds) for name, seconds in times.items()}
    for name in loaders:
        print(f'{name:24} {speed[name]:10.0f} images/s')
    authors, fast_name = list(loaders)[0], list(loaders)[-1]
    print(f'fast/authors data pipeline images/s: {speed[fast_name] / speed[authors]:.1f}x')


if __name__ == '__main__':
    main()
