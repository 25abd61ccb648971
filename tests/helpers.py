"""What the test files share: running a script's main in this process and checking that a
refused input gave one error line and left a run's files alone; a tiny model and its
checkpoint as cifar.py writes it; a command's output read until a line appears; and the
attention editor started as a command (`Server`)."""
import glob
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest

from models import CIFAR_MODELS
from tests.fakedata import randomise
from utils.cli import run
from utils.data.datasets import NORMALIZATION
from utils.data.shapes import SHAPE_CLASSES
from utils.weights import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def documentation():
    """(name, text) of every page that holds commands: README.md, TRAINING.md, docs/*.md;
    lines continued with a backslash are joined."""
    paths = [os.path.join(ROOT, 'README.md'), os.path.join(ROOT, 'TRAINING.md')]
    paths += sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
    pages = []
    for path in paths:
        with open(path) as f:
            pages.append((os.path.relpath(path, ROOT), f.read().replace('\\\n', ' ')))
    return pages


def optional(module, install):
    """An optional package that requirements-dev.txt cannot pin (Quantus installs without
    its dependencies): skipped where it is missing, except under CI (CI=true, as .ci/run
    sets it), where a missing one fails instead of letting its tests vanish."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
            pytest.fail(f'{module} is missing under CI: {install}')
        pytest.skip(f'{module} is missing: {install}')


def run_script(main, argv, capsys):
    """Runs a script's main(argv) as its __main__ does; returns (exit status, stdout, stderr)."""
    try:
        code = run(main, argv)
    except SystemExit as done:  # argparse's own errors
        code = done.code
    out, err = capsys.readouterr()
    return code, out, err


def file_states(directory):
    """(inode, mtime, size) of every file below `directory`: a rewrite or an atomic
    replacement changes them (cheaper than reading large checkpoints back)."""
    out = {}
    for base, _, files in os.walk(directory):
        for name in files:
            info = os.stat(os.path.join(base, name))
            out[os.path.relpath(os.path.join(base, name), directory)] = (
                info.st_ino, info.st_mtime_ns, info.st_size)
    return out


def assert_refused(main, argv, expected, run_dir, capsys):
    """`argv` exits non-zero with one `error:` line on stderr containing `expected`, no
    traceback, and every file of `run_dir` as it was."""
    before = file_states(run_dir)
    code, out, err = run_script(main, argv, capsys)
    assert code not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert 'error:' in lines[0] and expected in lines[0], lines[0]
    assert 'Traceback' not in out + err
    assert file_states(run_dir) == before


# The smallest model of each of the authors' families and of the multi-task ABN, for the
# tests that go through every family: {name: (script, arch, builder options)}; the daily
# tier takes DAILY_FAMILY, the full suite the others.
SMALLEST = {
    'cifar-resnet': ('cifar', 'resnet', dict(depth=8)),
    'cifar-densenet': ('cifar', 'densenet', dict(depth=10, growthRate=4)),
    'cifar-wrn': ('cifar', 'wrn', dict(depth=10, widen_factor=1)),
    'cifar-resnext': ('cifar', 'resnext', dict(depth=11, cardinality=2, widen_factor=1)),
    'imagenet-resnet18': ('imagenet', 'resnet18', {}),
    'celeba-mtabn': ('celeba', 'mtabn_v1_resnet18', dict(width=8)),
}
DAILY_FAMILY = 'cifar-resnet'


def family_params(names, *more):
    """pytest.param(name, *more) of each name, the daily family's daily, the others slow."""
    return [pytest.param(name, *more, id=name,
                         marks=[] if name == DAILY_FAMILY else [pytest.mark.slow])
            for name in names]


def tiny_model(attention=True, gate='residual', seed=0):
    model = CIFAR_MODELS.create('resnet', depth=8, num_classes=10, attention=attention, gate=gate)
    return randomise(model, seed).eval()


def save_project_checkpoint(model, path):
    """A checkpoint of tiny_model's family (a depth-8 shapes ResNet) as cifar.py writes it:
    what describes the model written by the engine's own function
    (utils.train.state.model_description), its spec included."""
    from utils.train.setup import with_data
    from utils.train.state import model_description
    from utils.weights.modelspec import ModelSpec
    mean, std = NORMALIZATION['shapes']
    data = SimpleNamespace(classes=list(SHAPE_CLASSES), name='shapes', image_size=32,
                           mean=mean, std=std)
    arguments = CIFAR_MODELS.model_args('resnet', depth=8, num_classes=10,
                                        attention=model.has_attention, gate=model.gate)
    spec = with_data(ModelSpec('cifar', 'resnet', arguments), data, 'single-label')
    ckpt.save_checkpoint({'epoch': 1, 'state_dict': model.state_dict(), 'acc': 50.0,
                          'best_acc': 50.0, **model_description(spec, data)}, path)
    return path


def save_checkpoint_without_spec(model, path):
    """The same as the project wrote it before checkpoints held their model's spec: the
    architecture's arguments and the data's keys, from which the loaders work the spec out."""
    mean, std = NORMALIZATION['shapes']
    ckpt.save_checkpoint({
        'epoch': 1, 'state_dict': model.state_dict(), 'arch': 'resnet',
        'model_args': CIFAR_MODELS.model_args('resnet', depth=8, num_classes=10,
                                              attention=model.has_attention, gate=model.gate),
        'num_classes': 10, 'class_names': list(SHAPE_CLASSES), 'dataset': 'shapes',
        'image_size': 32, 'normalization': {'mean': list(mean), 'std': list(std)},
        'format': ckpt.FORMAT}, path)
    return path


def wait_for(process, text, timeout=300):
    """Reads the process's output until a line contains `text`; returns what was read."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return ''.join(seen)
    raise AssertionError(f'{text!r} never appeared:\n' + ''.join(seen))


WAIT = 120  # seconds: generous, for a busy 2-core machine; every wait is for an element


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def as_from_a_terminal():
    """The server's signals as a command typed in a terminal has them: SIGINT and SIGTERM
    delivered and at their defaults, whatever earlier tests left in this process."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Server:
    """`explain.py ... --serve` in its own process; its output collected by a thread."""

    def __init__(self, argv, cwd, env=None):
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}/'
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED='False', PYTHONUNBUFFERED='1',
                   OMP_NUM_THREADS='1', **(env or {}))
        # What this test process's main thread does with SIGINT, which the server inherits
        # (a blocked or ignored SIGINT survives exec): reported if Ctrl+C fails.
        self.parent_sigint = (signal.getsignal(signal.SIGINT),
                              signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, 'explain.py')] + argv
            + ['--serve', '--port', str(self.port), '--gpu-id', 'cpu'],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=as_from_a_terminal)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self):
        return ''.join(self.lines)

    def wait_until_up(self):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f'the server stopped:\n{self.output}')
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f'the page did not come up in {WAIT} s:\n{self.output}')

    def interrupt(self):
        """Ctrl+C: the server closes and the command exits as interrupted."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f'Ctrl+C did not end the server in {WAIT} s (this process\'s SIGINT '
                        f'handler and blocked: {self.parent_sigint}):\n{self.output}')

    def stop(self):
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=10)
