"""How fast an exported ABN gives its attention map on the CPU: the same model through PyTorch
eager (inference mode), the `torch.export` program (.pt2, loaded back from its file) and
onnxruntime (the .onnx file), as export.py writes them. Each case is timed in rounds that
alternate between the three runners, so a change in the machine's load affects all alike;
the median round counts. Weights are random: speed does not depend on them.

    python benchmarks/bench_export.py --cases resnet20:32:1,resnet20:32:64,resnet50:224:1

A case is ARCH:SIZE:BATCH, ARCH one of resnetN (ABN ResNet-N of cifar.py for N = 6n+2,
imagenet.py's resnet50 and the other ImageNet ResNets at 224). One line per case and runner
with images per second, then each case's ratios to eager.
"""
import argparse
import os
import tempfile
import time

import torch

from harness import machine, median
from models import CIFAR_MODELS, IMAGENET_MODELS
from utils.data.datasets import NORMALIZATION
from utils.weights.export import (ExportedAbn, OUTPUTS, export_program, runner, write_onnx,
                                  write_pt2)
from utils.weights.loading import LoadedModel
from utils.weights.modelspec import ModelSpec, build_model

RUNNERS = ('eager', 'pt2', 'onnxruntime')


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cases', default='resnet20:32:1,resnet20:32:64,resnet50:224:1',
                        help='comma-separated ARCH:SIZE:BATCH (default: %(default)s)')
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds per runner')
    parser.add_argument('--seconds', type=float, default=1.0,
                        help='about how long one round of one runner lasts')
    parser.add_argument('--threads', type=int, default=None,
                        help="CPU threads of torch and onnxruntime (default: torch's choice)")
    return parser.parse_args()


def loaded_model(arch, size):
    """A LoadedModel of random weights: cifar.py's ResNet-depth below 64 px, else imagenet.py's."""
    if size <= 64:
        depth = int(arch[len('resnet'):])
        spec = ModelSpec('cifar', 'resnet', CIFAR_MODELS.model_args(
            'resnet', depth=depth, num_classes=10, attention=True))
        normalization = NORMALIZATION['cifar10']
    else:
        spec = ModelSpec('imagenet', arch, IMAGENET_MODELS.model_args(
            arch, num_classes=1000, attention=True))
        normalization = NORMALIZATION['imagefolder']
    model = build_model(spec).eval()
    return LoadedModel(model, spec.describe(), None, normalization, size, size > 64, None,
                       round(size * 256 / 224), spec)


def runners(loaded, folder, threads):
    """{name: function batch -> outputs} for the three ways, the files written to `folder`."""
    program = export_program(ExportedAbn(loaded.model, loaded.normalization).eval(), loaded,
                             False)
    onnx_path, pt2_path = os.path.join(folder, 'abn.onnx'), os.path.join(folder, 'abn.pt2')
    write_onnx(program, onnx_path, OUTPUTS, {})
    write_pt2(program, pt2_path, {})
    if threads:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(onnx_path, options, providers=['CPUExecutionProvider'])
        run_onnx = lambda x: session.run(None, {'image': x.numpy()})  # noqa: E731
    else:
        run_onnx = runner(onnx_path, 'onnx')
    eager = loaded.model
    return {'eager': lambda x: eager(x), 'pt2': runner(pt2_path, 'pt2'),
            'onnxruntime': run_onnx}


def calls_per_round(run, x, seconds):
    start = time.perf_counter()
    run(x)
    once = max(time.perf_counter() - start, 1e-4)
    return max(1, int(seconds / once))


def main():
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'machine: {machine()}')
    print(f'onnxruntime {__import__("onnxruntime").__version__}; median of {args.rounds} '
          f'alternating rounds')
    summary = []
    for case in args.cases.split(','):
        arch, size, batch = case.split(':')
        size, batch = int(size), int(batch)
        loaded = loaded_model(arch, size)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
            ways = runners(loaded, folder, args.threads)
            for run in ways.values():  # warm-up: first-call allocation and planning
                run(x)
            counts = {name: calls_per_round(run, x, args.seconds) for name, run in ways.items()}
            seconds = {name: [] for name in ways}
            for _ in range(args.rounds):
                for name, run in ways.items():
                    start = time.perf_counter()
                    for _ in range(counts[name]):
                        run(x)
                    seconds[name].append((time.perf_counter() - start) / counts[name])
        rates = {name: batch / median(values) for name, values in seconds.items()}
        for name in RUNNERS:
            print(f'{name:<12} {loaded.description} {size}px batch {batch}: '
                  f'{rates[name]:9.1f} images/s')
        summary.append(f'{arch} {size}px batch {batch}: ' + ', '.join(
            f'{name}/eager {rates[name] / rates["eager"]:.2f}x' for name in RUNNERS[1:]))
    for line in summary:
        print(line)


if __name__ == '__main__':
    main()
