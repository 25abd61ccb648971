"""Does the fast path cost accuracy? cifar.py trains the same model on `shapes` twice, with
the same seed, data order and epochs: in the authors' setup and with the fast path's flags.
The two runs go side by side (accuracy, not time, is measured here). Prints both runs' test
accuracy epoch by epoch; the last line is the difference at the final epoch.

    python benchmarks/bench_accuracy.py --depth 20 --epochs 10 --gpu-id cpu --threads 1
"""
import argparse
import os
import shlex
import subprocess
import sys
import tempfile

from harness import ROOT, machine


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--depth', type=int, default=20)
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--schedule', type=int, nargs='+', default=None,
                        help='LR x0.1 at these epochs (default: after 60%% and 80%% of them)')
    parser.add_argument('--train-size', type=int, default=None, help='default: all 10000')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--gpu-id', default='0', help="as cifar.py; 'cpu' for the CPU")
    parser.add_argument('--threads', type=int, default=None, help='CPU threads of each run')
    parser.add_argument('--fast', default='--fast',
                        help='the fast path\'s cifar.py flags, e.g. --fast="--fast-data"')
    return parser.parse_args()


def log_rows(directory):
    with open(os.path.join(directory, 'log.txt')) as f:
        header, *rows = f.read().splitlines()
    return [dict(zip(header.split('\t'), map(float, row.split('\t')))) for row in rows]


def main():
    options = parse()
    epochs = options.epochs
    schedule = options.schedule or sorted({max(1, round(epochs * 0.6)),
                                           max(2, round(epochs * 0.8))})
    common = ['--dataset', 'shapes', '-a', 'resnet', '--depth', str(options.depth),
              '--epochs', str(epochs), '--schedule', *map(str, schedule),
              '--train-batch', str(options.batch), '--manualSeed', str(options.seed),
              '--gpu-id', options.gpu_id, '--save-attention', '0']
    if options.train_size:
        common += ['--train-size', str(options.train_size)]
    env = dict(os.environ)
    if options.threads:
        env['OMP_NUM_THREADS'] = str(options.threads)
    print(f'machine: {machine()}')
    print(f'cifar.py {" ".join(common)}  (+ the setup\'s flags; {options.threads or "default"} '
          f'threads each)', flush=True)
    setups = {'authors': [], 'fast': shlex.split(options.fast)}
    with tempfile.TemporaryDirectory(prefix='abn-accuracy-') as root:
        runs = {}
        for name, flags in setups.items():
            out = open(os.path.join(root, f'{name}.out'), 'w')
            command = [sys.executable, os.path.join(ROOT, 'cifar.py')] + common + flags + [
                '-c', os.path.join(root, name)]
            runs[name] = (subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                           env=env), out)
        for name, (process, out) in runs.items():
            if process.wait() != 0:
                out.close()
                with open(out.name) as f:
                    raise SystemExit(f'{name} run failed:\n{f.read()[-2000:]}')
            out.close()
        rows = {name: log_rows(os.path.join(root, name)) for name in setups}
    print(f'{"epoch":>5} {"lr":>7}  ' + '  '.join(f'{name + " top-1":>13}' for name in setups)
          + '   seconds (authors, fast)')
    for epoch, row in enumerate(zip(*rows.values()), 1):
        print(f'{epoch:5d} {row[0]["Learning Rate"]:7.4f}  '
              + '  '.join(f'{r["Valid Acc."]:13.2f}' for r in row)
              + '   ' + ', '.join(f'{r["Epoch Time (s)"]:.0f}' for r in row))
    for name, flags in setups.items():
        best = max(row['Valid Acc.'] for row in rows[name])
        print(f'{name}: {" ".join(flags) or "(no flags)"}; best {best:.2f}')
    difference = rows['fast'][-1]['Valid Acc.'] - rows['authors'][-1]['Valid Acc.']
    print(f'fast - authors final test top-1: {difference:+.2f} points')


if __name__ == '__main__':
    main()
