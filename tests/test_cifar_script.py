"""cifar.py end to end: what a run writes, evaluation and resume, the authors' checkpoints,
and every bad input answered with one line, a non-zero exit, and nothing changed."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import cifar
from tests.fakedata import authors_checkpoint, write_cifar10, write_cifar100
from tests.helpers import assert_refused, file_states, run_script
from utils.cli import run
from utils.objectives.base import AUTHORS_COLUMNS
from utils.train.logger import COLUMNS
from utils.train.options import check_training_arguments
from utils.weights import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['-a', 'resnet', '--depth', '8', '--train-batch', '16', '--test-batch', '16', '-j', '0',
        '--manualSeed', '3', '--save-attention', '6']


def cli(argv, capsys):
    """Runs cifar.py in this process; returns (exit status, stdout, stderr)."""
    return run_script(cifar.main, argv, capsys)


@pytest.fixture(scope='module')
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    write_cifar10(str(root), per_batch=32, test=48)
    write_cifar100(str(root / 'c100'))
    return str(root)


@pytest.fixture(scope='module')
def trained(cifar_root, tmp_path_factory):
    """Two epochs on the CIFAR-10 pickles; the LR drops at epoch 2."""
    directory = str(tmp_path_factory.mktemp('runs') / 'resnet-8')
    argv = ['--dataset', 'cifar10', '--data', cifar_root, '--epochs', '2', '--schedule', '1',
            '-c', directory] + TINY
    code = run(cifar.main, argv)
    assert code == 0
    return directory


def test_a_run_writes_checkpoints_log_plot_images_and_arguments(trained):
    names = sorted(os.listdir(trained))
    assert names == ['args.json', 'attention', 'checkpoint.pth.tar', 'log.png', 'log.txt',
                     'model_best.pth.tar']
    with open(os.path.join(trained, 'log.txt')) as f:
        lines = f.read().splitlines()
    assert lines[0].split('\t')[:5] == AUTHORS_COLUMNS and lines[0].split('\t') == COLUMNS
    rows = [[float(v) for v in line.split('\t')] for line in lines[1:]]
    assert [r[0] for r in rows] == [0.1, 0.01]
    last = ckpt.load_checkpoint(os.path.join(trained, 'checkpoint.pth.tar'))
    assert list(last)[:5] == ['epoch', 'state_dict', 'acc', 'best_acc', 'optimizer']
    assert last['epoch'] == 2 and last['step'] == 0 and last['arch'] == 'resnet'
    assert last['model_args']['depth'] == 8 and last['num_classes'] == 10
    assert abs(last['acc'] - rows[-1][4]) < 1e-4
    assert abs(last['best_acc'] - max(r[4] for r in rows)) < 1e-4
    best = ckpt.load_checkpoint(os.path.join(trained, 'model_best.pth.tar'))
    assert best['acc'] == best['best_acc'] == last['best_acc']
    images = sorted(os.listdir(os.path.join(trained, 'attention')))
    assert len(images) == 7 and images[-1] == 'grid.png'
    assert images[0].startswith('0000_true-') and '_pred-' in images[0]
    with open(os.path.join(trained, 'log.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with open(os.path.join(trained, 'args.json')) as f:
        saved = json.load(f)
    assert saved['depth'] == 8 and saved['manualSeed'] == 3 and saved['schedule'] == [1]


def test_evaluate_reproduces_the_recorded_accuracy(trained, cifar_root, capsys):
    best = ckpt.load_checkpoint(os.path.join(trained, 'model_best.pth.tar'))
    code, out, _ = cli(['--dataset', 'cifar10', '--data', cifar_root, '-e', '--resume',
                        os.path.join(trained, 'model_best.pth.tar')] + TINY, capsys)
    assert code == 0
    assert f"Test Acc:  {best['best_acc']:.2f}" in out


def test_evaluate_needs_no_architecture_flags(trained, cifar_root, capsys):
    """The file records its model: -e --resume with the data alone, as a user types it."""
    best = ckpt.load_checkpoint(os.path.join(trained, 'model_best.pth.tar'))
    code, out, err = cli(['--dataset', 'cifar10', '--data', cifar_root, '-e', '--resume',
                          os.path.join(trained, 'model_best.pth.tar'), '-j', '0',
                          '--save-attention', '0'], capsys)
    assert code == 0, err
    assert 'resnet (depth 8, 10 classes, ABN)' in out
    assert f"Test Acc:  {best['best_acc']:.2f}" in out


def test_authors_format_checkpoint_evaluates_the_same(trained, cifar_root, tmp_path, capsys):
    from models import CIFAR_MODELS
    best = ckpt.load_checkpoint(os.path.join(trained, 'model_best.pth.tar'))
    model = CIFAR_MODELS.create('resnet', depth=8, num_classes=10)
    model.load_state_dict(best['state_dict'])
    path = authors_checkpoint(model, str(tmp_path / 'authors.pth.tar'))
    code, out, _ = cli(['--dataset', 'cifar10', '--data', cifar_root, '-e', '--resume', path]
                       + TINY, capsys)
    assert code == 0
    assert "authors' checkpoint" in out  # CIFAR-10's statistics are also theirs
    assert f"Test Acc:  {best['best_acc']:.2f}" in out
    assert os.path.exists(tmp_path / 'attention' / 'grid.png')


def test_resume_continues_at_the_saved_epoch_and_lr(trained, cifar_root, tmp_path, capsys):
    directory = str(tmp_path / 'run')
    shutil.copytree(trained, directory)
    code, out, _ = cli(['--dataset', 'cifar10', '--data', cifar_root, '--epochs', '3',
                        '--schedule', '1', '--resume', os.path.join(directory, 'checkpoint.pth.tar')]
                       + TINY, capsys)
    assert code == 0
    assert 'resuming at epoch 3' in out and 'Epoch: [3 | 3] LR: 0.010000' in out
    assert 'Epoch: [2 |' not in out
    with open(os.path.join(directory, 'log.txt')) as f:
        rows = f.read().splitlines()[1:]
    assert len(rows) == 3 and rows[:2] == open(os.path.join(trained, 'log.txt')).read().splitlines()[1:]
    assert ckpt.load_checkpoint(os.path.join(directory, 'checkpoint.pth.tar'))['epoch'] == 3


@pytest.mark.slow
def test_baseline_and_multiply_gate_train(tmp_path, capsys):
    for extra in (['--baseline'], ['--gate', 'multiply']):
        directory = str(tmp_path / extra[0].strip('-'))
        code, out, _ = cli(['--dataset', 'shapes', '--train-size', '64', '--test-size', '32',
                            '--epochs', '1', '-c', directory] + TINY + extra, capsys)
        assert code == 0
        assert ('baseline, no attention branch' in out) == (extra == ['--baseline'])
        assert os.path.exists(os.path.join(directory, 'model_best.pth.tar'))
    assert not os.path.exists(tmp_path / 'baseline' / 'attention')  # no map to draw


# -- bad input --------------------------------------------------------------------------------

@pytest.fixture
def run_copy(trained, tmp_path):
    directory = str(tmp_path / 'run')
    shutil.copytree(trained, directory)
    return directory


def bad_inputs(run_dir, data_root, tmp_path):
    garbage = tmp_path / 'garbage.pth.tar'
    garbage.write_bytes(b'\x00' * 100)
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    best = os.path.join(run_dir, 'model_best.pth.tar')
    cifar10 = ['--dataset', 'cifar10', '--data', data_root]
    return {
        'unknown data set': (['--dataset', 'imagenet', '-c', run_dir], 'invalid choice'),
        'unknown architecture': (['-a', 'resnet20', '-c', run_dir], 'invalid choice'),
        'impossible depth': (cifar10 + ['--depth', '29', '-c', run_dir], 'depth must be 6n+2'),
        'missing data': (['--dataset', 'cifar100', '--data', str(tmp_path / 'nothing'), '-c',
                          run_dir], 'Offline'),
        'unreadable checkpoint': (cifar10 + ['--resume', str(garbage), '-c', run_dir],
                                  'cannot read checkpoint'),
        'other architecture': (cifar10 + ['--depth', '14', '-e', '--resume', best],
                               'holds resnet (depth 8'),
        'other class count': (['--dataset', 'cifar100', '--data', os.path.join(data_root, 'c100'),
                               '--depth', '8', '-e', '--resume', best], 'trained for 10 classes'),
        'schedule not increasing': (cifar10 + ['--schedule', '150', '100', '-c', run_dir],
                                    'must be increasing'),
        'evaluate without checkpoint': (cifar10 + ['-e', '-c', run_dir], 'needs --resume'),
        'run directory taken': (cifar10 + ['-c', run_dir], 'already holds a run'),
        'checkpoint path is a file': (cifar10 + ['-c', str(a_file)], 'is a file'),
        'bad gpu id text': (cifar10 + ['--gpu-id', 'first', '-c', run_dir], "--gpu-id takes"),
        'negative momentum': (cifar10 + ['--momentum', '-1', '-c', run_dir],
                              '--momentum must not be negative'),
        'negative weight decay': (cifar10 + ['--wd', '-1', '-c', run_dir],
                                  '--wd/--weight-decay must not be negative'),
        'print frequency zero': (cifar10 + ['--print-freq', '0', '-c', run_dir],
                                 '--print-freq must be at least 1'),
        'negative gamma': (cifar10 + ['--gamma', '-0.1', '-c', run_dir],
                           '--gamma must be positive'),
        'schedule beyond epochs': (cifar10 + ['--epochs', '10', '--schedule', '5', '11', '-c',
                                              run_dir],
                                   '--schedule epoch 11 is beyond --epochs 10'),
        'dropout where the model has none': (cifar10 + ['--drop', '0.3', '-c',
                                                        str(tmp_path / 'new')],
                                             '-a resnet has no dropout, so --drop 0.3 would be '
                                             'ignored'),
    }


CASES = ['unknown data set', 'unknown architecture', 'impossible depth', 'missing data',
         'unreadable checkpoint', 'other architecture', 'other class count',
         'schedule not increasing', 'evaluate without checkpoint', 'run directory taken',
         'checkpoint path is a file', 'bad gpu id text', 'negative momentum',
         'negative weight decay', 'print frequency zero', 'negative gamma',
         'schedule beyond epochs', 'dropout where the model has none']


@pytest.mark.parametrize('case', CASES)
def test_bad_input_gives_one_line_and_changes_nothing(case, run_copy, cifar_root, tmp_path,
                                                      capsys, offline):
    argv, expected = bad_inputs(run_copy, cifar_root, tmp_path)[case]
    assert_refused(cifar.main, argv + ['-j', '0'], expected, run_copy, capsys)


def test_a_finished_run_says_it_is_complete_and_exits_0(run_copy, cifar_root, capsys):
    """A job wrapper re-running the command of a finished run must not mark it failed."""
    before = file_states(run_copy)
    argv = ['--dataset', 'cifar10', '--data', cifar_root, '--depth', '8', '--epochs', '2',
            '-j', '0', '--resume', os.path.join(run_copy, 'checkpoint.pth.tar')]
    code, out, err = cli(argv, capsys)
    assert code == 0, err
    assert f'The run in {run_copy} is complete: 2 epochs of --epochs 2, best top-1 ' in out
    assert 'Epoch:' not in out and file_states(run_copy) == before


def test_a_default_schedule_beyond_a_short_run_is_fine():
    args = cifar.get_args_parser().parse_args(['--epochs', '2'])
    check_training_arguments(args)
    assert args.schedule == [150, 225] and not hasattr(args, '_schedule_given')


def test_unavailable_gpu_id(run_copy, cifar_root, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    code, _, err = cli(['--dataset', 'cifar10', '--data', cifar_root, '--gpu-id', '0,3',
                        '-c', run_copy], capsys)
    assert code == 1
    assert err.strip() == ('pytest: error: --gpu-id 0,3: no CUDA device 3 (this machine has 2: 0-1)'
                           if os.path.basename(sys.argv[0]) == 'pytest' else err.strip())
    assert 'no CUDA device 3' in err


def test_errors_from_a_real_process_are_one_line(tmp_path):
    """The same, through the interpreter: no traceback reaches the terminal."""
    result = subprocess.run([sys.executable, 'cifar.py', '--dataset', 'shapes', '--depth', '10',
                             '-c', str(tmp_path / 'x')], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        'cifar.py: error: ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got 10']
    assert not os.path.exists(tmp_path / 'x')
