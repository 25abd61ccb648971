"""Multi-task ABN: the perception branch's T passes through layer4 as one folded call
(tasks in the batch, per-task BatchNorm statistics) against the authors' per-task loop.

One model, the same weights and inputs for both; each round times a training step (forward
+ backward, training mode) and an evaluation forward (eval mode, no grad) of each setup, the
setups alternating, so a change in the machine's load affects both alike. Prints the medians
and, as its last line, the ratio loop/folded (above 1: folding is faster).

    python benchmarks/bench_multitask.py                      # ResNet-18, 8 tasks, 4 x 64 px
    python benchmarks/bench_multitask.py --tasks 40 --image-size 224 --batch 8 --device cuda
    python benchmarks/bench_multitask.py --tasks 4 --width 8 --image-size 128 --batch 32  # demo
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from benchmarks.harness import machine  # noqa: E402
from models import MULTITASK_MODELS  # noqa: E402
from utils.objectives.per_attribute import bce_losses  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('-a', '--arch', default='mtabn_v1_resnet18',
                        choices=sorted(n for n in MULTITASK_MODELS if n.startswith('mtabn')))
    parser.add_argument('--tasks', type=int, default=8, help='T (CelebA: 40)')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--image-size', type=int, default=64)
    parser.add_argument('--width', type=int, default=64,
                        help="channels of the first stage (default: 64, the authors')")
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds after one warm-up')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (CPU)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda' (default: cpu)")
    return parser.parse_args(argv)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def train_step(model, x, target):
    model.zero_grad(set_to_none=True)
    loss = sum(bce_losses(model(x), target).values())
    loss.backward()


def eval_step(model, x):
    with torch.no_grad():
        model(x)


def timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MULTITASK_MODELS.create(args.arch, num_classes=args.tasks, width=args.width).to(device)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    target = (torch.rand(args.batch, args.tasks, device=device) < 0.5).float()
    print(machine())
    print(f'{args.arch} (width {args.width}), {args.tasks} tasks, batch {args.batch}, '
          f'{args.image_size} px, '
          f'{args.rounds} rounds on {device}')
    times = {(setup, kind): [] for setup in ('folded', 'loop') for kind in ('train', 'eval')}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for setup in ('folded', 'loop'):
            model.fold_tasks = setup == 'folded'
            model.train()
            train = timed(lambda: train_step(model, x, target), device)
            model.eval()
            evaluation = timed(lambda: eval_step(model, x), device)
            if round_:
                times[setup, 'train'].append(train)
                times[setup, 'eval'].append(evaluation)
    median = {key: statistics.median(values) for key, values in times.items()}
    for kind in ('train', 'eval'):
        print(f'{kind:5s}: folded {median["folded", kind] * 1000:8.1f} ms, '
              f'loop {median["loop", kind] * 1000:8.1f} ms, '
              f'loop/folded {median["loop", kind] / median["folded", kind]:.2f}x')
    ratio = {kind: median['loop', kind] / median['folded', kind] for kind in ('train', 'eval')}
    print(f'ratio loop/folded: training step {ratio["train"]:.2f}x, '
          f'evaluation {ratio["eval"]:.2f}x')


if __name__ == '__main__':
    main()
