"""Fault injection through real processes: interrupted runs resume to bitwise-identical
weights, a NaN stops the run without touching the last good checkpoint, and a full or
unwritable disk fails clearly without damaging earlier checkpoints."""
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from tests.fakedata import write_image_folder
from tests.helpers import wait_for
from utils.weights import checkpoint as ckpt

pytestmark = pytest.mark.slow  # real processes killed and resumed: the full suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 12 steps an epoch, 2 epochs, deterministic: small enough for seconds, long enough to hit.
RUN = [sys.executable, '-u', 'cifar.py', '--dataset', 'shapes', '--train-size', '192',
       '--test-size', '32', '--depth', '8', '--train-batch', '16', '--test-batch', '32',
       '--epochs', '2', '--schedule', '1', '--manualSeed', '7', '--deterministic', '-j', '1',
       '--save-attention', '0', '--print-freq', '1']


def start(directory, *extra, **kwargs):
    return subprocess.Popen(RUN + ['-c', directory] + list(extra), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def finish(process, timeout=300):
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def weights(directory):
    saved = ckpt.load_checkpoint(os.path.join(directory, 'checkpoint.pth.tar'))
    momentum = [s['momentum_buffer'] for s in saved['optimizer']['state'].values()]
    return saved['epoch'], saved['step'], saved['state_dict'], momentum


def assert_bitwise_equal(a, b):
    epoch_a, step_a, state_a, momentum_a = weights(a)
    epoch_b, step_b, state_b, momentum_b = weights(b)
    assert (epoch_a, step_a) == (epoch_b, step_b) == (2, 0)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp('reliability') / 'reference')
    code, out = finish(start(directory))
    assert code == 0, out
    return directory


def test_sigterm_mid_epoch_saves_and_resume_is_bitwise_exact(uninterrupted, tmp_path):
    directory = str(tmp_path / 'run')
    process = start(directory)
    wait_for(process, 'Train 1 [5/12]')
    process.send_signal(signal.SIGTERM)
    code, out = finish(process)
    assert code == 143, out
    assert 'SIGTERM: stopping after this step' in out and 'To continue:' in out
    epoch, step, _, _ = weights(directory)
    assert epoch == 0 and 5 <= step < 12  # mid-epoch 1
    resume = out.split('To continue:')[1].strip().splitlines()[0]
    assert resume.endswith(f'--resume {os.path.join(directory, "checkpoint.pth.tar")}')
    code, out = finish(start(directory, '--resume', os.path.join(directory, 'checkpoint.pth.tar')))
    assert code == 0, out
    assert f'resuming at epoch 1, step {step + 1}' in out
    assert_bitwise_equal(uninterrupted, directory)
    with open(os.path.join(directory, 'log.txt')) as f, \
            open(os.path.join(uninterrupted, 'log.txt')) as g:
        mine, theirs = f.read().splitlines(), g.read().splitlines()
    # Same rows, the same losses and accuracies (only the epoch time differs).
    assert [r.split('\t')[:-1] for r in mine] == [r.split('\t')[:-1] for r in theirs]


# Where each SIGKILL lands, read from the run's own output (never a timer, never a random
# draw): during start-up, mid-epoch 1 between and on recovery checkpoints, during the test
# pass, mid-epoch 2. Each moment is after the previous one, and a resumed process restarts
# at or before it, so every moment is reached on any machine.
KILL_AFTER = ['==> Preparing data', 'Train 1 [3/12]', 'Train 1 [8/12]', 'Train 1 [12/12]',
              'Train 2 [5/12]']


def test_kill_9_at_fixed_moments_then_resume_is_bitwise_exact(uninterrupted, tmp_path):
    directory = str(tmp_path / 'run')
    last = os.path.join(directory, 'checkpoint.pth.tar')
    for moment in KILL_AFTER:
        process = start(directory, '--resume', 'auto', '--save-every-steps', '2')
        wait_for(process, moment)
        process.kill()
        process.communicate()
        if os.path.exists(last):
            ckpt.load_checkpoint(last)  # never half-written
    code, out = finish(start(directory, '--resume', 'auto', '--save-every-steps', '2'))
    assert code == 0, out
    assert_bitwise_equal(uninterrupted, directory)
    assert not [n for n in os.listdir(directory) if n.endswith('.tmp')]
    # The same command once more: the run is complete, which is no failure.
    code, out = finish(start(directory, '--resume', 'auto', '--save-every-steps', '2'))
    assert code == 0, out
    assert f'The run in {directory} is complete: 2 epochs of --epochs 2' in out
    assert 'Epoch:' not in out
    assert_bitwise_equal(uninterrupted, directory)


def test_sigterm_to_the_process_group_with_workers_saves_once(uninterrupted, tmp_path):
    """As SLURM, Kubernetes or `timeout` stop a job: every process of the group, data
    workers included, gets SIGTERM. A path with a space checks the printed command's
    quoting."""
    directory = str(tmp_path / 'my run')
    process = start(directory, '-j', '2', start_new_session=True)
    wait_for(process, 'Train 1 [5/12]')
    os.killpg(process.pid, signal.SIGTERM)
    code, out = finish(process)
    assert code == 143, out
    assert out.count('SIGTERM: stopping after this step') == 1, out
    assert 'Ctrl-C' not in out  # a scheduler's signal: no key to press again
    assert 'Traceback' not in out and 'Error' not in out, out
    epoch, step, _, _ = weights(directory)
    assert epoch == 0 and 5 <= step < 12
    command = shlex.split(out.split('To continue:')[1].strip().splitlines()[0])
    assert command[:2] == ['python', 'cifar.py'] and command[-2:] == [
        '--resume', os.path.join(directory, 'checkpoint.pth.tar')]
    code, out = finish(subprocess.Popen([sys.executable, '-u'] + command[1:], cwd=ROOT,
                                        text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT))
    assert code == 0, out
    assert_bitwise_equal(uninterrupted, directory)  # -j 2 and -j 1 train the same


@pytest.mark.parametrize('signum, extra, status', [
    (signal.SIGINT, ['-j', '2'], 130),  # a terminal's Ctrl-C reaches the whole group
    (signal.SIGTERM, ['--fast-data'], 143),
], ids=['sigint-workers', 'sigterm-fast-data'])
def test_a_signal_to_the_process_group_saves_once(signum, extra, status, tmp_path):
    directory = str(tmp_path / 'run')
    process = start(directory, *extra, start_new_session=True)
    wait_for(process, 'Train 1 [3/12]')
    os.killpg(process.pid, signum)
    code, out = finish(process)
    assert code == status, out
    assert out.count('stopping after this step') == 1, out
    assert ('Ctrl-C again to quit at once' in out) == (signum == signal.SIGINT), out
    assert out.count('To continue:') == 1 and 'Traceback' not in out, out
    epoch, step, _, _ = weights(directory)
    assert epoch == 0 and 3 <= step < 12


def test_imagenet_sigterm_to_the_process_group_with_workers(tmp_path):
    root = str(tmp_path / 'data')
    write_image_folder(root, splits=(('train', 16), ('val', 2)), size=40)
    directory = str(tmp_path / 'run')
    process = subprocess.Popen(
        [sys.executable, '-u', 'imagenet.py', '--data', root, '-a', 'resnet18', '--image-size',
         '32', '--train-batch', '4', '--epochs', '1', '-j', '2', '--print-freq', '1',
         '--save-attention', '0', '--manualSeed', '1', '-c', directory],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    wait_for(process, 'Train 1 [2/12]')
    os.killpg(process.pid, signal.SIGTERM)
    code, out = finish(process)
    assert code == 143, out
    assert out.count('SIGTERM: stopping after this step') == 1 and 'Traceback' not in out, out
    assert weights(directory)[:2][0] == 0


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(uninterrupted, tmp_path):
    directory = str(tmp_path / 'run')
    shutil.copytree(uninterrupted, directory)
    last = os.path.join(directory, 'checkpoint.pth.tar')
    before = open(last, 'rb').read()
    code, out = finish(start(directory, '--epochs', '3', '--lr', '1e12', '--resume', last))
    assert code == 1, out
    error = out.strip().splitlines()[-1]
    assert error.startswith('cifar.py: error: the loss became NaN or infinite at epoch 3, step ')
    assert f'the last good checkpoint, {last}, is kept' in error
    assert open(last, 'rb').read() == before


def test_full_disk_fails_clearly_and_keeps_earlier_checkpoints(uninterrupted, tmp_path):
    directory = str(tmp_path / 'run')
    shutil.copytree(uninterrupted, directory)
    last = os.path.join(directory, 'checkpoint.pth.tar')
    before = open(last, 'rb').read()
    limit = len(before) // 2  # files may not grow past this: the next checkpoint cannot fit

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code, out = finish(start(directory, '--epochs', '3', '--resume', last,
                             preexec_fn=small_files))
    assert code == 1, out
    error = out.strip().splitlines()[-1]
    assert error.startswith('cifar.py: error: could not write ')
    assert error.endswith('File too large; the previous file is intact')
    assert open(last, 'rb').read() == before
    assert not [n for n in os.listdir(directory) if n.endswith('.tmp')]


def test_unwritable_checkpoint_directory_is_refused_before_training(tmp_path):
    blocker = tmp_path / 'blocker'
    blocker.write_text('a file where a folder should be')
    code, out = finish(start(str(blocker / 'run')))
    assert code == 1
    assert out.strip().splitlines()[-1] == (
        f'cifar.py: error: cannot write to checkpoint directory {blocker / "run"}: '
        f'Not a directory')
    assert 'Epoch:' not in out


def resident_kb(pid):
    with open(f'/proc/{pid}/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))


def growth_per_epoch(rss):
    """MiB per epoch of {epoch: KiB}: the median of the slopes between every two readings
    (Theil-Sen), which a few readings off by a jump cannot move, unlike a least-squares
    slope."""
    epochs = sorted(rss)
    slopes = sorted((rss[b] - rss[a]) / (b - a) for i, a in enumerate(epochs)
                    for b in epochs[i + 1:])
    middle = len(slopes) // 2
    return (slopes[middle] if len(slopes) % 2 else
            (slopes[middle - 1] + slopes[middle]) / 2) / 1024


def test_growth_per_epoch_ignores_jumps():
    steady = {e: 1000_000 + 1024 * e for e in range(3, 31)}  # 1 MiB an epoch
    jumpy = {e: kib + (20 << 10 if e in (9, 17, 29) else 0) for e, kib in steady.items()}
    assert growth_per_epoch(steady) == growth_per_epoch(jumpy) == 1.0
    assert growth_per_epoch({e: 5 << 20 for e in range(3, 31)}) == 0


def child_pids(pid):
    children = []
    for task in os.listdir(f'/proc/{pid}/task'):
        with open(f'/proc/{pid}/task/{task}/children') as f:
            children += [int(child) for child in f.read().split()]
    return children


def memory_per_epoch(tmp_path, epochs, leak_mib=0):
    """({epoch: KiB} of the main process, read by tests/memory_probe.py after handing free
    heap pages back, {epoch: KiB} of its two persistent data workers together, read from
    here), from epoch 3 on, each as its epoch starts (driven by the run's output, not a
    timer)."""
    probe = [sys.executable, '-u', os.path.join('tests', 'memory_probe.py')]
    if leak_mib:
        probe += ['--leak-mib', str(leak_mib)]
    process = subprocess.Popen(
        probe + ['cifar.py', '--dataset', 'shapes', '--train-size', '64', '--test-size', '32',
                 '--depth', '8', '--train-batch', '32', '--epochs', str(epochs), '--schedule',
                 str(epochs * 2 // 3), '--manualSeed', '1', '-j', '2', '--save-attention', '0',
                 '-c', str(tmp_path / 'run')],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    main, workers, out = {}, {}, []
    for line in process.stdout:
        out.append(line)
        if line.startswith('memory-probe:'):
            epoch, kib = map(int, line.split()[1:])
            if epoch >= 3:
                main[epoch] = kib
                workers[epoch] = sum(resident_kb(pid) for pid in child_pids(process.pid))
    assert process.wait() == 0, ''.join(out)
    assert sorted(main) == list(range(3, epochs + 1)), ''.join(out)
    return main, workers


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists('/proc/self/status'), reason='reads /proc')
def test_memory_does_not_grow_over_many_epochs(tmp_path):
    """Resident memory of the main process and of its two (persistent) data workers over 30
    epochs. The first two epochs are warm-up; from the third on each may grow by less than
    0.5 MiB an epoch. Read after malloc_trim, the main process's memory moves by ~1 MiB over
    the whole run (a plain reading jumps by ~20 MiB as malloc keeps freed pages or not, which
    under load made a healthy run's slope +1 MiB/epoch); the median of pairwise slopes
    ignores the jumps that remain. This caught log.png's figures, freed only by a full
    garbage collection: +3 MiB an epoch before Logger.plot collected them."""
    epochs = 30
    main, workers = memory_per_epoch(tmp_path, epochs)
    print(f'main: {main[3] / 1024:.0f} MiB at epoch 3, {main[epochs] / 1024:.0f} MiB at '
          f'epoch {epochs}, {growth_per_epoch(main):+.3f} MiB/epoch; workers: '
          f'{growth_per_epoch(workers):+.3f} MiB/epoch')
    assert growth_per_epoch(main) < 0.5, main
    assert growth_per_epoch(workers) < 0.5, workers


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists('/proc/self/status'), reason='reads /proc')
def test_memory_test_sees_a_leak_of_one_mib_an_epoch(tmp_path):
    """The same reading of a run that keeps 1 MiB more each epoch fails the 0.5 limit."""
    main, _ = memory_per_epoch(tmp_path, 14, leak_mib=1)
    assert 0.8 < growth_per_epoch(main) < 1.3, main
