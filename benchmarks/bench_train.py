"""Training and evaluation speed of one model in the authors' setup (fp32, per-sample PIL
DataLoader, eager) and in the fast path, measured in one run: the two alternate epoch by
epoch, so a machine whose load changes affects both alike. Each timed epoch is cifar.py's
own training loop (its loader, step, meters) over --train-images images, then its
evaluation over --test-images.

    python benchmarks/bench_train.py --depth 20 --batch 128 --steps 6          # CPU
    python benchmarks/bench_train.py --depth 110 --data synthetic100 \\
        --train-images 50000 --test-images 10000 --rounds 2 --gpu-id 0       # one GPU

The last line is the ratio fast/authors of training images per second.
"""
import argparse
import shlex

import torch

from harness import PeakMemory, Setup, build_data, machine, median, megabytes

EPOCHS_OF_THE_RECIPE = 300  # CIFAR ResNet-110/DenseNet


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-a', '--arch', default='resnet')
    parser.add_argument('--depth', type=int, default=20)
    parser.add_argument('--batch', type=int, default=128, help='training batch (default 128)')
    parser.add_argument('--test-batch', type=int, default=100)
    parser.add_argument('--steps', type=int, default=6,
                        help='training steps per timed epoch, when --train-images is not given')
    parser.add_argument('--train-images', type=int, default=None,
                        help='images per timed training epoch (50000 for a CIFAR epoch)')
    parser.add_argument('--test-images', type=int, default=None,
                        help='images per timed evaluation (default: 2 test batches)')
    parser.add_argument('--data', default='synthetic10',
                        help='synthetic10 | synthetic100 (random CIFAR-sized data, no download)'
                             ' | shapes | cifar10 | cifar100 | svhn (from --data-dir)')
    parser.add_argument('--data-dir', default='./data')
    parser.add_argument('--rounds', type=int, default=3,
                        help='timed epochs per setup, after one warm-up epoch each')
    parser.add_argument('--gpu-id', default='0', help="as cifar.py; 'cpu' for the CPU")
    parser.add_argument('--threads', type=int, default=None,
                        help="torch's CPU threads (default: torch's own choice)")
    parser.add_argument('--authors', default='',
                        help='extra cifar.py flags of the authors\' setup, e.g. --authors="-j 4"')
    parser.add_argument('--fast', default='--fast',
                        help='cifar.py flags of the fast path (default: --fast), e.g. '
                             '--fast="--fast-data --channels-last --amp"')
    return parser.parse_args()


def main():
    options = parse()
    if options.threads:
        torch.set_num_threads(options.threads)
    train_images = options.train_images or options.batch * options.steps
    test_images = options.test_images or 2 * options.test_batch
    data = build_data(options.data, train_images, test_images, options.data_dir)
    common = ['-a', options.arch, '--depth', str(options.depth), '--train-batch',
              str(options.batch), '--test-batch', str(options.test_batch), '--gpu-id',
              options.gpu_id, '--manualSeed', '1', '--save-attention', '0']
    setups = [Setup('authors', common + shlex.split(options.authors), data),
              Setup('fast', common + shlex.split(options.fast), data)]
    print(f'machine: {machine()}')
    print(f'model: {setups[0].run.setup.description}, data {options.data}: '
          f'{len(data.train)} training / {len(data.test)} test images per epoch')
    for setup in setups:  # warm-up: worker start, cudnn autotuning, compilation
        setup.train_epoch()
        setup.evaluate()
    train, test, peak = ({s.name: [] for s in setups} for _ in range(3))
    for _ in range(options.rounds):
        for setup in setups:
            with PeakMemory(setup.runtime.device) as memory:
                train[setup.name].append(setup.train_epoch())
                test[setup.name].append(setup.evaluate())
            if memory.peak_mb is not None:
                peak[setup.name].append(memory.peak_mb)

    on_gpu = setups[0].runtime.device.type == 'cuda'
    print(f'{"setup":8} {"train img/s":>12} {"eval img/s":>11} {"epoch s":>9} '
          f'{"peak memory":>12}  flags')
    print('(peak memory: ' + ('the CUDA allocator\'s peak during the epoch' if on_gpu else
                              'peak resident set of this process, which holds both setups; '
                              'DataLoader workers not counted') + ')')
    speed = {}
    for setup in setups:
        seconds = median(train[setup.name]) + median(test[setup.name])
        speed[setup.name] = len(data.train) / median(train[setup.name])
        print(f'{setup.name:8} {speed[setup.name]:12.1f} '
              f'{len(data.test) / median(test[setup.name]):11.1f} {seconds:9.2f} '
              f'{megabytes(max(peak[setup.name], default=None)):>12}  {setup.description}')
        if len(data.train) >= 50000:
            print(f'         {EPOCHS_OF_THE_RECIPE} epochs of this: '
                  f'{seconds * EPOCHS_OF_THE_RECIPE / 60:.1f} minutes')
    print(f'fast/authors training images/s: {speed["fast"] / speed["authors"]:.2f}x')


if __name__ == '__main__':
    main()
