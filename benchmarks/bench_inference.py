"""How fast a loaded ABN answers on the CPU: images per second of the model with its map,
through each runtime of utils.inference (what the Python API, explain.py and its measures
run), beside onnxruntime on the file export.py writes; and how each keeps its speed when
another process keeps one core busy. Rounds alternate between the runners (and, with
--busy, between quiet and busy), so a change in the machine's load affects all alike; the
median round counts. Weights are random (BatchNorm statistics too): speed does not depend on
them.

    python benchmarks/bench_inference.py --cases resnet20:32:1,resnet20:32:64,resnet50:224:1,resnet50:224:64
    python benchmarks/bench_inference.py --busy --cases resnet20:32:1,resnet20:32:64
    python benchmarks/bench_inference.py --busy --one-thread --cases resnet20:32:1

A case is ARCH:SIZE:BATCH (cifar.py's ResNet-N below 64 px, imagenet.py's resnet50 at 224).
`eager (1.0)` is the model in inference mode with torch's own thread count, which the API ran
before utils.inference; `api` is the API's default runtime now.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import machine  # noqa: E402
from models import CIFAR_MODELS, IMAGENET_MODELS  # noqa: E402
from tests.fakedata import randomise  # noqa: E402
from utils.cpus import cpu_budget  # noqa: E402
from utils.data.datasets import NORMALIZATION  # noqa: E402
from utils.inference import EagerRuntime, FoldedRuntime, OnnxRuntime, onnx_file  # noqa: E402
from utils.weights.loading import LoadedModel  # noqa: E402
from utils.weights.modelspec import ModelSpec  # noqa: E402


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cases', default='resnet20:32:1,resnet20:32:64,resnet50:224:1,'
                                           'resnet50:224:64')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--seconds', type=float, default=1.0, help='about how long a round')
    parser.add_argument('--busy', action='store_true',
                        help='also with one core kept busy by another process')
    parser.add_argument('--one-thread', action='store_true',
                        help="also onnxruntime with one thread (what neither spinning nor "
                             "sleeping threads can lose to a busy core)")
    return parser.parse_args()


def loaded_model(arch, size):
    if size <= 64:
        depth = int(arch[len('resnet'):])
        spec = ModelSpec('cifar', 'resnet', CIFAR_MODELS.model_args(
            'resnet', depth=depth, num_classes=10))
        model = CIFAR_MODELS.create('resnet', depth=depth, num_classes=10)
        normalization = NORMALIZATION['cifar10']
    else:
        spec = ModelSpec('imagenet', arch, IMAGENET_MODELS.model_args(arch, num_classes=1000))
        model = IMAGENET_MODELS.create(arch, num_classes=1000)
        normalization = NORMALIZATION['imagefolder']
    model = randomise(model).eval()
    return LoadedModel(model, spec.describe(), None, normalization, size, size > 64, None,
                       round(size * 256 / 224), spec)


def raw_onnxruntime(path, threads=None):
    """onnxruntime as a user runs the exported file: its default session, this process's
    threads (or `threads`)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    return lambda x: session.run(None, {'image': x.numpy()})


def runners(loaded, folder, one_thread):
    """{name: (threads, function batch -> outputs)}."""
    path = onnx_file(loaded.model, loaded, None)
    os.replace(path, os.path.join(folder, 'abn.onnx'))
    path = os.path.join(folder, 'abn.onnx')
    budget = cpu_budget()
    made = {'eager (1.0)': (torch.get_num_threads(), EagerRuntime(loaded.model)),
            'folded': (budget, FoldedRuntime(loaded.model, loaded.image_size)),
            'api': (budget, OnnxRuntime(loaded.model, loaded, None)),
            'onnxruntime': (budget, raw_onnxruntime(path))}
    if one_thread:
        made['one thread'] = (1, raw_onnxruntime(path, threads=1))
    return made


def images_per_second(run, x, threads, seconds):
    torch.set_num_threads(threads)
    run(x)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(x)
        count += len(x)
    return count / (time.perf_counter() - started)


def busy_core():
    """Another process keeping one core busy: a plain Python loop."""
    return subprocess.Popen([sys.executable, '-c', 'while True: pass'])


def main():
    options = parse()
    default_threads = torch.get_num_threads()
    print(machine())
    print(f'{options.rounds} alternating rounds of about {options.seconds:g} s; CPU budget '
          f'{cpu_budget()}; images/s with the map, median round')
    for case in options.cases.split(','):
        arch, size, batch = case.split(':')
        size, batch = int(size), int(batch)
        loaded = loaded_model(arch, size)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as folder:
            made = runners(loaded, folder, options.one_thread)
            states = ['quiet', 'busy'] if options.busy else ['quiet']
            speed = {(n, s): [] for n in made for s in states}
            for _ in range(options.rounds):
                for state in states:
                    process = busy_core() if state == 'busy' else None
                    try:
                        for name, (threads, run) in made.items():
                            speed[name, state].append(
                                images_per_second(run, x, threads, options.seconds))
                    finally:
                        if process is not None:
                            process.kill()
                            process.wait()
            torch.set_num_threads(default_threads)
        median = {key: statistics.median(values) for key, values in speed.items()}
        print(f'\n{arch} {size} px, batch {batch}')
        for name, (threads, _) in made.items():
            line = f'  {name:12s} {threads} thr  quiet {median[name, "quiet"]:8.1f}'
            if options.busy:
                line += (f'  busy {median[name, "busy"]:8.1f}  busy/quiet '
                         f'{median[name, "busy"] / median[name, "quiet"]:.2f}x')
            print(line)
        print(f'  api / onnxruntime {median["api", "quiet"] / median["onnxruntime", "quiet"]:.2f}x'
              f'; api / eager {median["api", "quiet"] / median["eager (1.0)", "quiet"]:.2f}x',
              flush=True)


if __name__ == '__main__':
    main()
