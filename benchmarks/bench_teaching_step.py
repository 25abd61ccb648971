"""What each teaching method (--teach-by) costs per training step against a plain step (the two
cross-entropies), on the same model, batches and maps, alternating round by round in one run.

    python benchmarks/bench_teaching_step.py --depth 20 --batch 64 --steps 10 --rounds 5 --threads 1 --clock cpu

Every step: forward, the method's losses, backward, SGD step. The maps are the shapes object
masks of a share (--share) of each batch's images. The last lines give each method's seconds
per step and its ratio to the plain step (the median of the rounds' ratios)."""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402

from harness import machine  # noqa: E402
from models import CIFAR_MODELS  # noqa: E402
from utils.data.datasets import NORMALIZATION  # noqa: E402
from utils.data.shapes import ShapesDataset  # noqa: E402
from utils.objectives import get_objective  # noqa: E402


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--depth', type=int, default=20)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--steps', type=int, default=10, help='steps per timed round')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--share', type=float, default=10, help='%% of images with a map')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--clock', default='wall', choices=('wall', 'cpu'),
                        help='cpu: this process\'s CPU seconds (with --threads 1 on a shared '
                             'machine)')
    return parser.parse_args()


def batches(count, size, share, seed=0):
    data = ShapesDataset(train=True, size=count * size, decoy=True)
    normalise = T.Normalize(*NORMALIZATION['shapes'])
    images = normalise(torch.from_numpy(data.data).permute(0, 3, 1, 2).float() / 255)
    masks = torch.from_numpy(data.masks).float()[:, None]
    labels = torch.tensor(data.targets)
    has_map = torch.rand(len(labels), generator=torch.Generator().manual_seed(seed)) < share / 100
    return [(images[i:i + size], {'label': labels[i:i + size], 'map': masks[i:i + size],
                                  'has_map': has_map[i:i + size]})
            for i in range(0, count * size, size)]


def main():
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    torch.manual_seed(0)
    model = CIFAR_MODELS.create('resnet', depth=args.depth, num_classes=10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = batches(args.steps, args.batch, args.share)
    plain = get_objective('single-label')
    methods = {'plain step': None}
    methods.update({f'--teach-by {m}': get_objective('attention-maps', method=m)
                    for m in ('map', 'counterfactual', 'rrr')})

    def round_of(objective):
        started = clock()
        for inputs, target in data:
            if objective is None:
                losses = plain.losses(model(inputs), target['label'])
            else:
                _, losses = objective.forward_losses(model, inputs, target)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
        return (clock() - started) / len(data)

    print(machine())
    print(f'ResNet-{args.depth}, batch {args.batch}, {args.share:g}% of the images with a map, '
          f'{args.steps} steps x {args.rounds} rounds, {args.clock} clock')
    for objective in methods.values():  # warm-up
        round_of(objective)
    times = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, objective in methods.items():
            times[name].append(round_of(objective))
    for name in methods:
        ratios = [t / p for t, p in zip(times[name], times['plain step'])]
        print(f'{name:26s} {1000 * statistics.median(times[name]):8.1f} ms/step   '
              f'x{statistics.median(ratios):.2f} of the plain step')


if __name__ == '__main__':
    main()
