"""torchrun on the CPU (gloo): two processes with SyncBatchNorm train as one process on the
global batch, evaluation counts every test image once, only rank 0 writes or prints, and a
run resumes under torchrun. Real processes, launched as a user launches them."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import cifar
from tests.helpers import wait_for
from utils.cli import run
from utils.distributed import GlooSyncBatchNorm, sync_batchnorm
from utils.weights import checkpoint as ckpt

pytestmark = pytest.mark.slow  # torchrun processes: the full suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 64 training images: one global batch of 32 per step, 2 steps an epoch; 33 test images, an
# odd count, so a padded duplicate in either process's shard would change the metrics. A
# small learning rate keeps float32 rounding differences from growing between the set-ups.
COMMON = ['--dataset', 'shapes', '--train-size', '64', '--test-size', '33', '-a', 'resnet',
          '--depth', '8', '-j', '0', '--manualSeed', '4', '--test-batch', '16',
          '--save-attention', '2', '--schedule', '1', '--lr', '0.02', '--gpu-id', 'cpu']
PER_PROCESS_BATCH = 16

# Imported by every Python process started with this folder on PYTHONPATH: in torchrun's
# workers other than rank 0, it records each write under the watched folder.
WRITE_AUDIT = textwrap.dedent('''
    import atexit, os, sys
    rank = os.environ.get('RANK')
    if rank not in (None, '0'):
        watched = os.path.realpath(os.environ['ABN_WATCH'])
        writes = []
        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

        def audit(event, args):
            if event == 'open' and args[2] & writing:
                paths = [args[0]]
            elif event in ('os.rename', 'os.remove', 'os.mkdir', 'shutil.copyfile'):
                paths = list(args[:2] if event != 'os.mkdir' else args[:1])
            else:
                return
            for path in paths:
                if isinstance(path, (str, bytes, os.PathLike)):
                    path = os.path.realpath(os.fsdecode(path))
                    if path.startswith(watched):
                        writes.append(f'{event} {path}')

        def report():
            with open(os.environ['ABN_WRITES'] + rank, 'w') as f:
                f.write('\\n'.join(writes))

        sys.addaudithook(audit)
        atexit.register(report)
''')


def torchrun(argv, workdir, hooks):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hooks), ROOT]), OMP_NUM_THREADS='1',
               ABN_WATCH=str(workdir), ABN_WRITES=str(hooks / 'writes-rank'),
               MPLBACKEND='Agg')
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         os.path.join(ROOT, 'cifar.py')] + argv,
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope='module')
def single(tmp_path_factory):
    """One process on the global batch: an epoch, then a resume to the second."""
    root = tmp_path_factory.mktemp('single')
    batch = ['--train-batch', str(2 * PER_PROCESS_BATCH)]
    assert run(cifar.main, COMMON + batch + ['--epochs', '1', '-c', str(root / 'one')]) == 0
    shutil.copytree(root / 'one', root / 'two')
    assert run(cifar.main, COMMON + batch + ['--epochs', '2', '--resume',
                                             str(root / 'two' / 'checkpoint.pth.tar')]) == 0
    return root


@pytest.fixture(scope='module')
def ddp(tmp_path_factory):
    """Two processes: an epoch, then torchrun again to resume to the second."""
    root = tmp_path_factory.mktemp('ddp')
    hooks = tmp_path_factory.mktemp('hooks')
    (hooks / 'sitecustomize.py').write_text(WRITE_AUDIT)
    batch = ['--train-batch', str(PER_PROCESS_BATCH), '--sync-bn']
    first = torchrun(COMMON + batch + ['--epochs', '1', '-c', 'one'], root, hooks)
    writes = [(hooks / 'writes-rank1').read_text()]
    shutil.copytree(root / 'one', root / 'two')
    resumed = torchrun(COMMON + batch + ['--epochs', '2', '--resume',
                                         os.path.join('two', 'checkpoint.pth.tar')], root, hooks)
    writes.append((hooks / 'writes-rank1').read_text())
    return root, first, resumed, writes


def weights(directory):
    return ckpt.load_checkpoint(os.path.join(directory, 'checkpoint.pth.tar'))['state_dict']


def log_rows(directory):
    with open(os.path.join(directory, 'log.txt')) as f:
        header, *rows = f.read().splitlines()
    return [dict(zip(header.split('\t'), map(float, row.split('\t')))) for row in rows]


def assert_same_training(ddp_dir, single_dir):
    """Float32 rounding differs (other batch shapes, other summation orders) and grows a
    little with each step: the tolerances sit about 100x below what a real difference makes
    (without --sync-bn, weights move by 0.03-0.3 and losses by 0.03 in these runs; in float64
    the two set-ups' gradients agree to 1e-15)."""
    ours, theirs = weights(ddp_dir), weights(single_dir)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-3, atol=3e-4, msg=name)
    for a, b in zip(log_rows(ddp_dir), log_rows(single_dir), strict=True):
        for column in ('Train Loss', 'Train Att Loss', 'Train Per Loss', 'Valid Loss'):
            assert a[column] == pytest.approx(b[column], abs=5e-4), column
        for column in ('Train Acc.', 'Train Att Acc.', 'Valid Acc.', 'Valid Att Acc.',
                       'Valid Top-5'):
            assert a[column] == b[column], column


def test_two_processes_train_as_one_process_on_the_global_batch(ddp, single):
    """DistributedSampler's two shards of a permutation form the single process's batch,
    each image's augmentation is seeded by its index, SyncBatchNorm takes the statistics of
    the global batch and DDP averages the gradients: the same training, up to rounding."""
    root, _, _, _ = ddp
    assert_same_training(root / 'one', single / 'one')


def test_evaluation_counts_every_test_image_once(ddp, single):
    """33 test images over two processes: a padded duplicate (as DistributedSampler would
    add) would move the accuracy (k/34 instead of k/33) and the loss far beyond rounding."""
    root, _, _, _ = ddp
    (ours,), (theirs,) = log_rows(root / 'one'), log_rows(single / 'one')
    assert ours['Valid Acc.'] == theirs['Valid Acc.']
    assert ours['Valid Loss'] == pytest.approx(theirs['Valid Loss'], abs=5e-4)
    count = round(ours['Valid Acc.'] * 33 / 100)
    assert ours['Valid Acc.'] == pytest.approx(100 * count / 33, abs=1e-4)


def test_only_rank_0_writes_files_and_prints(ddp, single):
    root, first, resumed, writes = ddp
    assert writes == ['', ''], writes  # rank 1 wrote nothing under the run's folder
    assert sorted(os.listdir(root / 'one')) == sorted(os.listdir(single / 'one'))
    assert sorted(os.listdir(root)) == ['one', 'two']  # no stray default 'checkpoint' folder
    for out in (first, resumed):
        assert out.count('Best acc:') == 1
        assert out.count('==> Model:') == 1
    assert first.count('Train 1 [2/2]') == 1
    assert '2 processes (cpu)' in first


def test_resume_under_torchrun_continues_the_same_run(ddp, single):
    root, _, resumed, _ = ddp
    assert 'resuming at epoch 2' in resumed and 'Epoch: [1 |' not in resumed
    assert len(log_rows(root / 'two')) == 2
    assert_same_training(root / 'two', single / 'two')


# -- the CPU SyncBatchNorm, exactly --------------------------------------------------------

def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3),
                         nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(5 * 4 * 4, 3)).double()


def global_batch():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(8, 3, 8, 8, generator=generator, dtype=torch.float64),
            torch.randint(0, 3, (8,), generator=generator))


def sync_bn_process(rank, init_file, out_dir):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    net = sync_batchnorm(small_net(), torch.device('cpu'))
    assert isinstance(net[1], GlooSyncBatchNorm)
    model = nn.parallel.DistributedDataParallel(net)
    inputs, targets = global_batch()
    F.cross_entropy(model(inputs[rank::2]), targets[rank::2]).backward()
    torch.save({'grads': [p.grad for p in net.parameters()], 'state': net.state_dict()},
               os.path.join(out_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()


def test_gloo_sync_batchnorm_gives_the_global_batchs_gradients(tmp_path):
    """In float64, two processes with half the batch each get one process's gradients and
    running statistics to rounding (1e-12): the synchronised forward and backward are
    exact, so the tolerances above only absorb float32 rounding."""
    torch.multiprocessing.start_processes(sync_bn_process, nprocs=2, start_method='spawn',
                                          args=(str(tmp_path / 'init'), str(tmp_path)))
    net = small_net()
    inputs, targets = global_batch()
    F.cross_entropy(net(inputs), targets).backward()
    for rank in range(2):
        saved = torch.load(tmp_path / f'rank{rank}.pt')
        for got, expected in zip(saved['grads'], (p.grad for p in net.parameters()), strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        for name, value in net.state_dict().items():
            torch.testing.assert_close(saved['state'][name], value, rtol=0, atol=1e-12, msg=name)


# -- torchrun restarts and signals, through real processes ---------------------------------

# 4 steps an epoch (8 images per process), 2 epochs, deterministic kernels on the CPU.
ELASTIC = COMMON + ['--train-batch', '8', '--sync-bn', '--epochs', '2', '--deterministic']
UNATTENDED = ['--resume', 'auto', '--save-every-steps', '1']


def start_torchrun(argv, workdir, *launcher):
    """torchrun in a session of its own (as a scheduler starts a job); output as it comes."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', MPLBACKEND='Agg',
               PYTHONUNBUFFERED='1')
    return subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         *launcher, os.path.join(ROOT, 'cifar.py')] + argv,
        cwd=workdir, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)


def worker_pid(torchrun_pid, rank):
    """The pid of torchrun's worker of `rank`: a child of the launcher with RANK=rank."""
    children = []
    for task in os.listdir(f'/proc/{torchrun_pid}/task'):
        with open(f'/proc/{torchrun_pid}/task/{task}/children') as f:
            children += [int(pid) for pid in f.read().split()]
    for pid in children:
        with open(f'/proc/{pid}/environ', 'rb') as f:
            if f'RANK={rank}'.encode() in f.read().split(b'\0'):
                return pid
    raise AssertionError(f'no worker of rank {rank} among {children}')


@pytest.fixture(scope='module')
def uninterrupted_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp('uninterrupted')
    process = start_torchrun(ELASTIC + ['-c', 'run'], root)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out[-3000:]
    return root / 'run'


def assert_bitwise_equal(a, b):
    ours, theirs = (ckpt.load_checkpoint(os.path.join(d, 'checkpoint.pth.tar')) for d in (a, b))
    assert (ours['epoch'], ours['step']) == (theirs['epoch'], theirs['step']) == (2, 0)
    assert ours['state_dict'].keys() == theirs['state_dict'].keys()
    for name in ours['state_dict']:
        assert torch.equal(ours['state_dict'][name], theirs['state_dict'][name]), name
    for x, y in zip(ours['optimizer']['state'].values(), theirs['optimizer']['state'].values(),
                    strict=True):
        assert torch.equal(x['momentum_buffer'], y['momentum_buffer'])


@pytest.mark.skipif(not os.path.exists('/proc/self/task'), reason='finds the worker in /proc')
def test_torchrun_restarts_a_killed_worker_and_the_run_ends_bitwise_the_same(
        uninterrupted_pair, tmp_path):
    """SIGKILL to rank 1 mid-epoch (when rank 0 has printed step 2 of 4; read from the job's
    output, never a timer): torchrun stops rank 0, starts both again with the same command,
    they continue from the last checkpoint of the same -c, and the job exits 0 with the
    weights of a run that was never interrupted."""
    process = start_torchrun(ELASTIC + UNATTENDED + ['-c', 'run'], tmp_path, '--max-restarts=3')
    seen = wait_for(process, 'Train 1 [2/4]')
    os.kill(worker_pid(process.pid, rank=1), signal.SIGKILL)
    out, _ = process.communicate(timeout=300)
    out = seen + out
    assert process.returncode == 0, out[-5000:]
    assert out.count('==> Training on 2 processes') == 2  # the first start and one restart
    assert 'resuming at epoch ' in out.split('==> Training on')[2]
    assert out.count('Best acc:') == 1
    assert_bitwise_equal(tmp_path / 'run', uninterrupted_pair)
    assert not [n for n in os.listdir(tmp_path / 'run') if n.endswith('.tmp')]


def test_sigterm_to_a_torchrun_job_saves_once_and_resumes_bitwise(uninterrupted_pair, tmp_path):
    """As a scheduler stops a torchrun job: SIGTERM to the launcher's process group (its
    workers are in sessions of their own: the agent forwards the signal to them). Both
    workers stop at the same step, rank 0 saves and prints once, the workers exit 143; the
    same command then finishes the run with the uninterrupted run's weights."""
    process = start_torchrun(ELASTIC + UNATTENDED + ['-c', 'run'], tmp_path)
    seen = wait_for(process, 'Train 1 [2/4]')
    os.killpg(process.pid, signal.SIGTERM)
    out, _ = process.communicate(timeout=300)
    out = seen + out
    assert process.returncode != 0, out[-5000:]  # torchrun reports the signal it got
    assert out.count('SIGTERM: stopping after this step') == 1, out[-5000:]
    assert 'Ctrl-C' not in out, out[-5000:]
    assert out.count('To continue:') == 1, out[-5000:]
    assert out.split('To continue:')[1].strip().splitlines()[0].startswith('torchrun ... ')
    saved = ckpt.load_checkpoint(os.path.join(tmp_path, 'run', 'checkpoint.pth.tar'))
    assert saved['epoch'] == 0 and 2 <= saved['step'] < 4 or saved['epoch'] == 1, \
        (saved['epoch'], saved['step'])
    process = start_torchrun(ELASTIC + UNATTENDED + ['-c', 'run'], tmp_path)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out[-5000:]
    assert_bitwise_equal(tmp_path / 'run', uninterrupted_pair)
