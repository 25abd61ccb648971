"""Where a training step's time goes: one CIFAR ABN model's forward, both losses, backward and
SGD step on random inputs (no data loading), timed in NCHW and in channels-last, alternating,
then torch.profiler's table of the most expensive operators in channels-last.

    python benchmarks/profile_step.py --depth 20 --batch 128 --gpu-id cpu

The last line is the ratio channels-last/NCHW of training images per second.
"""
import argparse
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from harness import machine, median
from models import CIFAR_MODELS


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-a', '--arch', default='resnet', choices=sorted(CIFAR_MODELS))
    parser.add_argument('--depth', type=int, default=20)
    parser.add_argument('--classes', type=int, default=10)
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--steps', type=int, default=5, help='timed steps per round')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--gpu-id', default='0', help="a CUDA device id, or 'cpu'")
    parser.add_argument('--threads', type=int, default=None)
    return parser.parse_args()


class Step:
    def __init__(self, options, device, channels_last):
        torch.manual_seed(0)
        self.model = CIFAR_MODELS[options.arch](depth=options.depth,
                                                num_classes=options.classes).to(device)
        self.inputs = torch.randn(options.batch, 3, 32, 32, device=device)
        self.targets = torch.randint(0, options.classes, (options.batch,), device=device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.inputs = self.inputs.contiguous(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9,
                                         weight_decay=5e-4)
        self.device = device

    def __call__(self):
        attention_logits, logits, _ = self.model(self.inputs)
        loss = F.cross_entropy(attention_logits, self.targets) + F.cross_entropy(logits,
                                                                                 self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def timed(self, steps):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self()
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started


def main():
    options = parse()
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device('cpu' if options.gpu_id == 'cpu' or not torch.cuda.is_available()
                          else f'cuda:{options.gpu_id}')
    print(f'machine: {machine()}')
    steps = {'NCHW': Step(options, device, False), 'channels-last': Step(options, device, True)}
    for step in steps.values():  # warm-up: allocator, oneDNN/cuDNN primitive creation
        step.timed(2)
    seconds = {name: [] for name in steps}
    for _ in range(options.rounds):
        for name, step in steps.items():
            seconds[name].append(step.timed(options.steps))
    speed = {name: options.batch * options.steps / median(values)
             for name, values in seconds.items()}
    for name, value in speed.items():
        print(f'{name:14} {value:8.1f} training images/s')
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda'
                                           else [])
    with profile(activities=activities) as profiler:
        steps['channels-last'].timed(options.steps)
    sort = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    print(profiler.key_averages().table(sort_by=sort, row_limit=12))
    print(f'channels-last/NCHW training images/s: '
          f'{speed["channels-last"] / speed["NCHW"]:.2f}x')


if __name__ == '__main__':
    main()
