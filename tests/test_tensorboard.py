"""--tensorboard: the event file holds log.txt's scalars and the attention grid, read back with
TensorBoard's own reader; without the package, one line says what to install."""
import builtins
import os

import pytest

import cifar
from tests.helpers import run_script
from utils.train.logger import COLUMNS
from utils.train.tensorboard_log import GRID_TAG, TAGS

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = ['--dataset', 'shapes', '--train-size', '64', '--test-size', '32', '-a', 'resnet',
        '--depth', '8', '--train-batch', '16', '--test-batch', '16', '-j', '0',
        '--manualSeed', '1', '--save-attention', '4', '--epochs', '2', '--schedule', '1']


def read_log(path):
    with open(path) as f:
        lines = f.read().splitlines()
    return [[float(v) for v in line.split('\t')] for line in lines[1:]]


def test_event_file_holds_the_logs_scalars_and_the_grid(tmp_path, capsys):
    run_dir = tmp_path / 'run'
    code, _, err = run_script(cifar.main, TINY + ['--data', str(tmp_path / 'data'), '-c',
                                                  str(run_dir), '--tensorboard'], capsys)
    assert code == 0, err
    events = EventAccumulator(str(run_dir / 'tensorboard'), size_guidance={'scalars': 0})
    events.Reload()
    assert set(events.Tags()['scalars']) == set(TAGS.values())
    rows = read_log(run_dir / 'log.txt')
    for i, name in enumerate(COLUMNS):
        logged = events.Scalars(TAGS[name])
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([row[i] for row in rows], abs=1e-5)
    assert [e.value for e in events.Scalars('learning_rate')] == pytest.approx([0.1, 0.01])
    assert events.Tags()['images'] == [GRID_TAG]
    grid = events.Images(GRID_TAG)[-1]
    assert grid.step == 2 and grid.width > 0 and grid.height > 0


def test_without_the_flag_nothing_is_written(tmp_path, capsys):
    run_dir = tmp_path / 'run'
    code, _, err = run_script(cifar.main, TINY[:-4] + ['--epochs', '1', '--data',
                                                       str(tmp_path / 'data'), '-c', str(run_dir)],
                              capsys)
    assert code == 0, err
    assert not os.path.exists(run_dir / 'tensorboard')


def test_missing_package_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.split('.')[0] == 'tensorboard' or name == 'torch.utils.tensorboard':
            raise ImportError(f'No module named {name!r}')
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, '__import__', no_tensorboard)
    run_dir = tmp_path / 'run'
    code, out, err = run_script(cifar.main, TINY + ['--data', str(tmp_path / 'data'), '-c',
                                                    str(run_dir), '--tensorboard'], capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert err.strip().endswith('error: --tensorboard needs the tensorboard package: pip '
                                'install tensorboard (or leave the flag out)')
    assert not run_dir.exists()


def test_columns_of_other_objectives_get_tags_of_their_own():
    from utils.train.tensorboard_log import tag_of
    assert tag_of('Valid Acc.') == TAGS['Valid Acc.']
    assert tag_of('Valid Map Loss') == 'valid_map_loss'
    assert tag_of('Valid Att Mean Acc. (%)') == 'valid_att_mean_acc'
