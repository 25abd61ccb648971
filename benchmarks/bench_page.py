"""How long the attention editor takes to answer one visitor while a Teach job trains beside
it: the page (`explain.py CHECKPOINT --dataset shapes --serve`, as a command) is asked to
show test images over HTTP, once while nothing else runs, then while a fine-tuning run of
the same shape as the page's Teach job trains, started two ways in turn: as the page started
it before (torch's default threads, the default data loader workers) and as it starts it now
(`--threads` the CPUs the page leaves it, `-j 0`). Median seconds per answer of each.

    python benchmarks/bench_page.py --requests 20 --rounds 3
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import machine  # noqa: E402
from tests.helpers import Server, save_project_checkpoint, tiny_model  # noqa: E402
from utils.cpus import cpu_budget  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--requests', type=int, default=20, help='answers timed a round')
    parser.add_argument('--rounds', type=int, default=3)
    return parser.parse_args()


def teach_job(folder, extra):
    """A training run of the Teach job's kind: cifar.py on shapes, for long enough."""
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'cifar.py'), '--dataset', 'shapes', '--depth', '20',
         '--epochs', '50', '--train-batch', '64', '--gpu-id', 'cpu', '--save-attention', '0',
         '-c', os.path.join(folder, f'job-{time.monotonic_ns()}')] + extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def answer_seconds(client, requests):
    times = []
    for i in range(requests):
        started = time.perf_counter()
        client.predict('test', i % 50, 'circle', api_name='/show_split')
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    options = parse()
    from gradio_client import Client
    print(machine())
    budget = cpu_budget()
    jobs = {'nothing beside it': None,
            # before: torch's own threads (every CPU) beside the default workers
            f'Teach job as before (--threads {budget} -j {min(4, budget)})':
                ['--threads', str(budget), '-j', str(min(4, budget))],
            f'Teach job as now (--threads {max(1, budget - 1)} -j 0)':
                ['--threads', str(max(1, budget - 1)), '-j', '0']}
    with tempfile.TemporaryDirectory() as folder:
        model = tiny_model()
        checkpoint = save_project_checkpoint(model, os.path.join(folder, 'abn.pth.tar'))
        server = Server([checkpoint, '--dataset', 'shapes', '-o', os.path.join(folder, 'out'),
                         '--no-teach'], cwd=folder)
        try:
            server.wait_until_up()
            client = Client(server.url, verbose=False)
            answer_seconds(client, 3)  # warm
            seconds = {name: [] for name in jobs}
            for _ in range(options.rounds):
                for name, extra in jobs.items():
                    job = teach_job(folder, extra) if extra is not None else None
                    try:
                        if job is not None:
                            time.sleep(8)  # the run past its start, training
                        seconds[name].append(answer_seconds(client, options.requests))
                    finally:
                        if job is not None:
                            job.kill()
                            job.wait()
        finally:
            server.stop()
    print(f'the page (ResNet-8, 32 px, one thread), {options.requests} answers a round, '
          f'{options.rounds} rounds; median seconds per answer:')
    quiet = statistics.median(seconds['nothing beside it'])
    for name, values in seconds.items():
        value = statistics.median(values)
        print(f'  {name:55s} {value:.3f} s  ({value / quiet:.2f}x the quiet page)')


if __name__ == '__main__':
    main()
