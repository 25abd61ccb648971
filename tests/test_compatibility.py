"""Checkpoints outlive the code that wrote them. Files of format 'abn-pytorch/1' (written by
cifar.py, imagenet.py and celeba.py) and the authors' files must load after any change of
the project's layout: `-e --resume`, `--resume`, explain.py and utils.api work on them.

What makes a file survive a move of modules is that it pickles no class of the project, only
plain types: each file here loads with `weights_only=True`, and its keys are the ones the
scripts wrote before `utils/` was split into subpackages (frozen below), so a change of the
format is a decision taken here, not an accident."""
import os

import pytest
import torch

import celeba
import cifar
import explain
import imagenet
from models import CIFAR_MODELS
from tests.fakedata import authors_checkpoint, randomise, write_image_folder
from tests.helpers import run_script
from utils.api import load

# The keys of format 'abn-pytorch/1' as the scripts wrote them before the layout change:
# the same for the three scripts and for the best and the last checkpoint.
FORMAT_1 = {'acc', 'arch', 'args', 'best_acc', 'class_names', 'dataset', 'epoch',
            'epoch_meter', 'format', 'image_size', 'model_args', 'model_spec', 'normalization',
            'num_classes', 'optimizer', 'rng', 'scaler', 'state_dict', 'step'}
MODEL_SPEC_1 = {'arch', 'class_names', 'dataset', 'extra', 'image_size', 'model_args',
                'normalization', 'objective', 'resize_size', 'script'}
COMMON = ['--gpu-id', 'cpu', '-j', '0', '--manualSeed', '1', '--save-attention', '0']
SMALL_SHAPES = ['--train-size', '16', '--test-size', '8', '--train-batch', '8',
                '--test-batch', '8']


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('folders'))
    write_image_folder(root, splits=(('train', 4), ('val', 2)), size=40)
    return root


def script_run(name, folders):
    """(main, training arguments, explain.py's data arguments) of a tiny run of `name`."""
    if name == 'cifar':
        return cifar.main, ['--dataset', 'shapes', '-a', 'resnet', '--depth', '8',
                            *SMALL_SHAPES], ['--dataset', 'shapes']
    if name == 'imagenet':
        val = os.path.join(folders, 'val', 'cat')
        return imagenet.main, ['--data', folders, '-a', 'resnet18', '--image-size', '32',
                               '--train-batch', '12', '--test-batch', '6'], [
            os.path.join(val, name) for name in sorted(os.listdir(val))]
    return celeba.main, ['--dataset', 'shapes-multi', '--image-size', '32', '--width', '8',
                         *SMALL_SHAPES], ['--dataset', 'shapes-multi']


@pytest.mark.parametrize('name', ['cifar', pytest.param('imagenet', marks=pytest.mark.slow),
                                  pytest.param('celeba', marks=pytest.mark.slow)])
def test_the_scripts_checkpoints_keep_format_1_and_work_after_the_move(name, folders, tmp_path,
                                                                         capsys):
    main, train_args, explain_inputs = script_run(name, folders)
    run_dir = str(tmp_path / name)
    code, out, err = run_script(main, train_args + COMMON + ['--epochs', '1', '-c', run_dir],
                                capsys)
    assert code == 0, err
    best = os.path.join(run_dir, 'model_best.pth.tar')
    last = os.path.join(run_dir, 'checkpoint.pth.tar')
    for path in (best, last):
        saved = torch.load(path, map_location='cpu', weights_only=True)  # plain types only
        assert saved['format'] == 'abn-pytorch/1'
        assert set(saved) == FORMAT_1, sorted(set(saved) ^ FORMAT_1)
        assert set(saved['model_spec']) == MODEL_SPEC_1, sorted(saved['model_spec'])
        assert saved['model_spec']['script'] == name

    # -e --resume: the model described by the file, evaluated.
    code, out, err = run_script(main, train_args + COMMON + ['-e', '--resume', best], capsys)
    assert code == 0, err
    assert 'Traceback' not in out + err
    # --resume: training goes on from epoch 1 to epoch 2 in the same run folder.
    code, out, err = run_script(main, train_args + COMMON + ['--resume', last, '--epochs', '2',
                                                             '-c', run_dir], capsys)
    assert code == 0, err
    assert torch.load(last, map_location='cpu', weights_only=True)['epoch'] == 2
    # explain.py reads the file as it is.
    maps = str(tmp_path / 'maps')
    code, _, err = run_script(explain.main, [best, *explain_inputs, '-n', '2', '-o', maps,
                                               '--gpu-id', 'cpu'], capsys)
    assert code == 0, err
    assert any(f.endswith('.png') for _, _, files in os.walk(maps) for f in files)
    # The Python API reads it too: an answer and a map for a picture of any size.
    result = load(best).explain(torch.rand(1, 3, 37, 45))
    assert result.maps[0].shape[-2:] == (37, 45) and len(result.classes) == 1
    if name == 'celeba':
        assert result.maps[0].shape[0] == result.probabilities.shape[1]  # one per attribute


def test_the_authors_checkpoint_still_evaluates_and_explains(tmp_path, capsys):
    """Their five keys, DataParallel names, the pre-1.6 serialisation with CUDA storages."""
    path = authors_checkpoint(randomise(CIFAR_MODELS.create('resnet', depth=8, num_classes=10)),
                              str(tmp_path / 'model_best.pth.tar'))
    code, out, err = run_script(cifar.main, ['--dataset', 'shapes', '-a', 'resnet', '--depth',
                                             '8', *SMALL_SHAPES, *COMMON, '-e', '--resume',
                                             path], capsys)
    assert code == 0, err
    maps = str(tmp_path / 'maps')
    code, _, err = run_script(explain.main, [path, '--depth', '8', '--dataset', 'shapes',
                                               '-n', '2', '-o', maps, '--gpu-id', 'cpu'],
                                capsys)
    assert code == 0, err
    assert any(f.endswith('.png') for _, _, files in os.walk(maps) for f in files)
