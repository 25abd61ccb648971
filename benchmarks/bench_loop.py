"""What the training loop costs beyond the model's own work: cifar.py's real loop
(`Run.train_one_epoch` on the `--fast` path: its device-resident loader with crops, flips
and normalisation, the objective's losses, the meter, progress and the stop check) against
the bare step (forward, both losses, backward, SGD step) on the same model, optimizer and
batches, already made. The two alternate round by round in one run, so a change in the
machine's load affects both alike; the loader alone is timed too, to show its share.

    python benchmarks/bench_loop.py --depth 20 --batch 128 --steps 10 --rounds 5 --gpu-id cpu

The last line is the ratio loop/bare of seconds per epoch and the overhead in percent.
"""
import argparse
import time

import torch

from harness import Setup, build_data, machine, median, synchronize
from utils.objectives import get_objective


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-a', '--arch', default='resnet')
    parser.add_argument('--depth', type=int, default=20)
    parser.add_argument('--batch', type=int, default=128, help='training batch (default 128)')
    parser.add_argument('--steps', type=int, default=10, help='training steps per timed epoch')
    parser.add_argument('--rounds', type=int, default=5,
                        help='timed epochs of each, alternating, after one warm-up each')
    parser.add_argument('--data', default='synthetic10',
                        help='synthetic10 | synthetic100 | shapes | cifar10 | cifar100 | svhn')
    parser.add_argument('--data-dir', default='./data')
    parser.add_argument('--gpu-id', default='0', help="as cifar.py; 'cpu' for the CPU")
    parser.add_argument('--threads', type=int, default=None,
                        help="torch's CPU threads (default: torch's own choice)")
    parser.add_argument('--flags', default='--fast', help='cifar.py flags of the loop')
    parser.add_argument('--clock', default='wall', choices=('wall', 'cpu'),
                        help="wall: elapsed seconds; cpu: this process's CPU seconds, which "
                             "other processes' load barely changes (use it with --threads 1 "
                             "on a shared machine; it also counts idle-spinning threads)")
    return parser.parse_args()


class BareStep:
    """forward, both losses, backward, SGD step: nothing else, on batches made beforehand."""

    def __init__(self, run, batches):
        self.net, self.optimizer, self.batches = run.net, run.optimizer, batches
        self.objective = get_objective('single-label')
        self.device = run.runtime.device

    def epoch(self):
        for inputs, targets in self.batches:
            losses = self.objective.losses(self.net(inputs), targets)
            loss = sum(losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def timed(device, work, clock=time.perf_counter):
    synchronize(device)
    started = clock()
    work()
    synchronize(device)
    return clock() - started


def main():
    options = parse()
    if options.threads:
        torch.set_num_threads(options.threads)
    data = build_data(options.data, options.batch * options.steps, options.batch,
                      options.data_dir)
    flags = ['-a', options.arch, '--depth', str(options.depth), '--train-batch',
             str(options.batch), '--gpu-id', options.gpu_id, '--manualSeed', '1',
             '--save-attention', '0'] + options.flags.split()
    setup = Setup('loop', flags, data)
    run = setup.run.setup  # the trainer's set-up: its model, optimizer, loader, device
    device = setup.runtime.device
    loader = run.train_loader
    loader.set_epoch(0)
    batches = [run.to_device(inputs, targets) for inputs, targets in loader]
    bare = BareStep(run, batches)
    run.net.train()
    print(f'machine: {machine()}')
    print(f'model: {run.description}; {len(batches)} steps of {options.batch} images; '
          f'loop flags: {setup.description}; {options.clock} clock')

    def loader_only():
        loader.set_epoch(setup.epoch)
        for _ in loader:
            pass
    clock = time.process_time if options.clock == 'cpu' else time.perf_counter
    setup.train_epoch()  # warm-up: allocator, oneDNN primitives
    bare.epoch()
    seconds = {'bare step': [], 'loop': [], 'loader alone': []}
    for _ in range(options.rounds):
        seconds['bare step'].append(timed(device, bare.epoch, clock))
        seconds['loop'].append(timed(device, setup.train_epoch_untimed, clock))
        seconds['loader alone'].append(timed(device, loader_only, clock))
    images = options.batch * len(batches)
    for name, values in seconds.items():
        print(f'{name:13} {images / median(values):9.1f} images/s  '
              f'({median(values) * 1000 / len(batches):7.1f} ms/step; rounds: '
              + ', '.join(f'{v:.2f}' for v in values) + ' s)')
    ratio = median(seconds['loop']) / median(seconds['bare step'])
    print(f'loop/bare seconds per epoch: {ratio:.3f}x ({(ratio - 1) * 100:+.1f}% overhead)')


if __name__ == '__main__':
    main()
