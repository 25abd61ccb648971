"""imagenet.py end to end on tiny image folders (32 px crops, three classes, one batch):
what a run writes, evaluation, the authors' checkpoints, pretrained starts, corrupt images,
bad input answered with one line and nothing changed, and every documented command."""
import os
import shlex
import shutil

import pytest
import torch
import torchvision

import imagenet
from models import IMAGENET_MODELS
from tests.fakedata import authors_checkpoint, write_image_folder
from tests.helpers import assert_refused, run_script
from utils.cli import run
from utils.errors import AbnError
from utils.train.options import check_training_arguments
from utils.weights import checkpoint as ckpt
from utils.weights.pretrained import load_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ('cat', 'dog', 'fox')
TINY = ['-a', 'resnet18', '--image-size', '32', '--train-batch', '12', '--test-batch', '6',
        '-j', '0', '--manualSeed', '3', '--save-attention', '0']


def cli(argv, capsys):
    """Runs imagenet.py in this process; returns (exit status, stdout, stderr)."""
    return run_script(imagenet.main, argv, capsys)


def image_folders(root, classes=CLASSES, splits=(('train', 4), ('val', 2))):
    write_image_folder(str(root), splits=splits, classes=classes, size=40)
    return str(root)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return image_folders(tmp_path_factory.mktemp('folders'))


@pytest.fixture(scope='module')
def trained(data_root, tmp_path_factory):
    """One epoch of ABN ResNet-18 from scratch."""
    directory = str(tmp_path_factory.mktemp('runs') / 'resnet18')
    argv = ['--data', data_root, '--epochs', '1', '-c', directory, *TINY, '--save-attention', '3']
    assert run(imagenet.main, argv) == 0
    return directory


def test_data_come_from_the_folders_with_imagenet_transforms(data_root):
    args = imagenet.get_args_parser().parse_args(['--data', data_root, '--image-size', '32'])
    data = imagenet.build_data(args, evaluate_only=False, normalization=None)
    assert data.classes == list(CLASSES) and (len(data.train), len(data.test)) == (12, 6)
    assert data.train[0][0].shape == data.test[0][0].shape == (3, 32, 32)
    train, test = (str(d.transform).replace('\n', '') for d in (data.train, data.test))
    assert 'RandomResizedCrop(size=(32, 32)' in train and 'RandomHorizontalFlip' in train
    assert 'Resize(size=37' in test and 'CenterCrop(size=(32, 32))' in test  # 32 * 256/224
    assert (data.mean, data.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_the_crops_share_of_the_image_is_an_option(data_root, tmp_path, capsys):
    """--scale, as timm's: the authors' 0.08..1 by default; a data set of one small object
    wants crops that keep it."""
    args = imagenet.get_args_parser().parse_args(['--data', data_root, '--image-size', '32'])
    crop = imagenet.build_data(args, False, None).train.transform.transforms[0]
    assert crop.scale == (0.08, 1.0)
    args = imagenet.get_args_parser().parse_args(['--data', data_root, '--scale', '0.7', '1'])
    assert imagenet.build_data(args, False, None).train.transform.transforms[0].scale == (0.7, 1)
    assert_refused(imagenet.main, ['--data', data_root, '--scale', '0', '1', '-c',
                                   str(tmp_path / 'run')], '--scale 0 1: give two shares',
                   str(tmp_path), capsys)


def test_a_run_records_classes_and_draws_them(trained):
    best = ckpt.load_checkpoint(os.path.join(trained, 'model_best.pth.tar'))
    assert best['arch'] == 'resnet18' and best['num_classes'] == 3
    assert best['class_names'] == list(CLASSES) and best['image_size'] == 32
    assert best['args']['schedule'] == [30, 60]  # fires within 90 epochs, unlike the authors'
    images = sorted(os.listdir(os.path.join(trained, 'attention')))
    assert images[-1] == 'grid.png' and len(images) == 4
    assert images[0].startswith('0000_true-cat_pred-')
    assert all(name.split('_pred-')[1][:-4] in CLASSES for name in images[:-1])


def test_evaluate_reproduces_the_recorded_accuracy(trained, data_root, capsys):
    best = ckpt.load_checkpoint(os.path.join(trained, 'model_best.pth.tar'))
    code, out, _ = cli(['--data', data_root, '-e', '--resume',
                        os.path.join(trained, 'model_best.pth.tar')] + TINY, capsys)
    assert code == 0
    assert f"Test Acc:  {best['best_acc']:.2f}" in out


def test_authors_checkpoint_evaluates(trained, data_root, tmp_path, capsys):
    """Their format (DataParallel keys, torch 0.4's CUDA serialisation), their normalisation."""
    best = ckpt.load_checkpoint(os.path.join(trained, 'model_best.pth.tar'))
    model = IMAGENET_MODELS.create('resnet18', num_classes=3)
    model.load_state_dict(best['state_dict'])
    path = authors_checkpoint(model, str(tmp_path / 'model_best.pth.tar'), epoch=90)
    code, out, _ = cli(['--data', data_root, '-e', '--resume', path] + TINY
                       + ['--save-attention', '2'], capsys)
    assert code == 0
    assert "authors' checkpoint" in out and 'mean [0.485, 0.456, 0.406]' in out
    assert f"Test Acc:  {best['best_acc']:.2f}" in out
    assert os.path.exists(tmp_path / 'attention' / 'grid.png')


# -- pretrained starts ------------------------------------------------------------------------

@pytest.fixture(scope='module')
def torchvision_file(tmp_path_factory):
    """torchvision's resnet18 as its weights file holds it: a bare state_dict, 1000 classes."""
    path = str(tmp_path_factory.mktemp('weights') / 'resnet18.pth')
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_pretrained_backbone_copies_the_last_stage_and_reinitialises_fc(torchvision_file):
    weights = {k: v for k, v in torch.load(torchvision_file, weights_only=True).items()
               if not k.endswith('num_batches_tracked')}  # as files saved before torch 0.4.1
    model = IMAGENET_MODELS.create('resnet18', num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = load_pretrained(model, weights, 'resnet18.pth', 'resnet18')
    state = model.state_dict()
    for key, value in weights.items():
        if not key.startswith('fc.'):
            assert torch.equal(state[key], value), key
    for key, value in state.items():
        source = 'layer4.' + key[len('att_layer4.'):]
        if key.startswith('att_layer4.') and source in weights:
            assert torch.equal(value, weights[source]), key
    for key in ('fc.weight', 'fc.bias', 'att_conv.weight', 'bn_att3.weight'):
        assert torch.equal(state[key], before[key])  # the model's own initialisation
    assert summary.split('; ')[1:] == [
        'att_layer4 copied from layer4', 'fc re-initialised for 3 classes (the file has 1000)',
        'starting fresh: att_conv, att_conv2, att_conv3, bn_att, bn_att2, bn_att3']
    same_classes = IMAGENET_MODELS.create('resnet18', num_classes=1000)
    load_pretrained(same_classes, weights, 'resnet18.pth', 'resnet18')
    assert torch.equal(same_classes.fc.weight, weights['fc.weight'])


def test_pretrained_from_an_abn_checkpoint_keeps_its_attention_branch(trained):
    best = ckpt.load_checkpoint(os.path.join(trained, 'model_best.pth.tar'))
    model = IMAGENET_MODELS.create('resnet18', num_classes=3)
    summary = load_pretrained(model, best['state_dict'], 'model_best.pth.tar', 'resnet18')
    for key, value in model.state_dict().items():
        assert torch.equal(value, best['state_dict'][key]), key
    assert 'copied' not in summary and 'fresh' not in summary


def test_pretrained_file_of_another_architecture_is_refused(torchvision_file):
    with pytest.raises(AbnError, match=r'resnet18.pth does not fit resnet34: .* backbone '
                                       r'weights missing .*layer1.2'):
        load_pretrained(IMAGENET_MODELS.create('resnet34', num_classes=3),
                        torch.load(torchvision_file, weights_only=True), 'resnet18.pth',
                        'resnet34')


def test_weights_flag_starts_a_run(torchvision_file, data_root, tmp_path, capsys):
    code, out, _ = cli(['--data', data_root, '--epochs', '1', '--weights', torchvision_file,
                        '-c', str(tmp_path / 'run')] + TINY, capsys)
    assert code == 0
    assert 'att_layer4 copied from layer4; fc re-initialised for 3 classes' in out


def test_pretrained_offline_suggests_weights(data_root, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise OSError('no network (test)')
    monkeypatch.setattr(torch.hub, 'urlopen', refuse)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))  # nothing cached
    code, _, err = cli(['--data', data_root, '--pretrained', '-c', str(tmp_path / 'run')] + TINY,
                       capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert ("could not get torchvision's resnet18 weights (no network (test)). Offline? "
            "Download https://download.pytorch.org/models/resnet18-f37072fd.pth elsewhere and "
            "pass --weights FILE") in err
    assert not os.path.exists(tmp_path / 'run')


# -- corrupt images ---------------------------------------------------------------------------

def test_corrupt_images_are_named_or_skipped_and_counted(data_root, tmp_path, capsys):
    root = str(tmp_path / 'data')
    shutil.copytree(data_root, root)
    bad = os.path.join(root, 'train', 'dog', '1.jpg')
    for path in (bad, os.path.join(root, 'val', 'cat', '0.png')):
        with open(path, 'wb') as f:
            f.write(b'not an image')
    argv = ['--data', root, '--epochs', '1'] + TINY + ['--save-attention', '2']
    run_dir = str(tmp_path / 'run')
    code, out, err = cli(argv + ['-c', run_dir], capsys)
    # both found before the first step, the one in val/ too
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert 'error: cannot read 2 images: ' in err and f'{bad} (' in err
    assert 'val/cat/0.png (' in err and 'pass --skip-bad-images' in err
    assert 'Epoch:' not in out
    # the suggested rerun, in the same directory: nothing there blocks it
    code, out, err = cli(argv + ['-c', run_dir, '--skip-bad-images'], capsys)
    assert code == 0, err
    assert '2 unreadable images skipped: ' in out
    assert '1 unreadable images skipped so far' in out
    assert os.path.exists(tmp_path / 'run' / 'attention' / 'grid.png')


def test_a_run_that_died_before_its_first_checkpoint_does_not_block_a_new_start(
        data_root, tmp_path, capsys):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / 'args.json').write_text('{}')
    (run_dir / 'log.txt').write_text('Learning Rate\n')
    argv = ['--data', data_root, '--epochs', '1', '-c', str(run_dir)] + TINY
    code, out, err = cli(argv + ['--resume', 'auto'], capsys)
    assert code == 0, err
    assert 'resuming' not in out
    code, out, err = cli(argv + ['--epochs', '2', '--resume', 'auto'], capsys)
    assert code == 0, err
    assert 'resuming at epoch 2' in out


def test_a_last_batch_of_one_image_is_dropped(data_root, tmp_path, capsys):
    """12 training images in batches of 11: a batch of 1 would fail in BatchNorm on the 1x1
    maps of a 32 px ResNet-18."""
    argv = ['--data', data_root, '--epochs', '1', '-c', str(tmp_path / 'run')] + TINY
    code, out, err = cli(argv + ['--train-batch', '11'], capsys)
    assert code == 0, err
    assert 'Train 1 [1/1]' in out


def test_gif_and_other_pil_formats_are_training_images(tmp_path, capsys):
    root = image_folders(tmp_path / 'data')
    for split in ('train', 'val'):
        for name in CLASSES:
            folder = os.path.join(root, split, name)
            png = os.path.join(folder, '0.png')
            from PIL import Image
            Image.open(png).save(os.path.join(folder, 'extra.gif'))
    args = imagenet.get_args_parser().parse_args(['--data', root, '--image-size', '32'])
    data = imagenet.build_data(args, evaluate_only=False, normalization=None)
    assert (len(data.train), len(data.test)) == (15, 9)
    assert any(path.endswith('.gif') for path, _ in data.train.samples)


# -- bad input --------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def bad_folders(tmp_path_factory):
    base = tmp_path_factory.mktemp('bad')
    folders = {
        'only_val': image_folders(base / 'only_val', splits=(('val', 1),)),
        'only_train': image_folders(base / 'only_train', splits=(('train', 1),)),
        'empty_class': image_folders(base / 'empty_class', splits=(('train', 1), ('val', 1))),
        'four': image_folders(base / 'four', classes=CLASSES + ('owl',), splits=(('val', 1),)),
        'others': image_folders(base / 'others', classes=('ant', 'bee', 'cat'),
                                splits=(('val', 1),)),
    }
    for split in ('train', 'val'):
        os.makedirs(os.path.join(folders['empty_class'], split, 'emu'))
    return folders


@pytest.fixture(scope='module')
def run_copy(trained, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp('copy') / 'run')
    shutil.copytree(trained, directory)
    return directory


def bad_inputs(run_dir, data_root, folders, tmp_path):
    best = ['-e', '--resume', os.path.join(run_dir, 'model_best.pth.tar')]
    mine = ['--data', data_root, '-c', run_dir]
    return {
        'no train folder': (['--data', folders['only_val'], '-c', run_dir],
                            'no train/ folder in'),
        'no val folder': (['--data', folders['only_train'], '-c', run_dir],
                          'no val/ or test/ folder in'),
        'empty class folder': (['--data', folders['empty_class'], '-c', run_dir], 'emu'),
        'other class count': (['--data', folders['four']] + best,
                              'trained for 3 classes, but this data set has 4'),
        'other class names': (['--data', folders['others']] + best,
                              "other classes than this data set's (ant, bee, dog, fox)"),
        'image too small': (mine + ['-a', 'vgg16_bn', '--image-size', '16'],
                            '--image-size 16 is too small for vgg16_bn: it takes images of at '
                            'least 32 px'),
        'resize below crop': (mine + ['--image-size', '64', '--resize-size', '48'],
                              'smaller than --image-size 64'),
        'depth contradicts the name': (mine + ['-a', 'resnet50', '--depth', '101'],
                                       '--depth 101 contradicts -a resnet50'),
        'missing weights file': (mine + ['--weights', str(tmp_path / 'none.pth')],
                                 'none.pth: no such file'),
        'no torchvision weights': (mine + ['-a', 'se_resnet18', '--pretrained'],
                                   'torchvision has no ImageNet weights for se_resnet18'),
        'unknown architecture': (mine + ['-a', 'resnet20'], 'invalid choice'),
        'no data folder given': (['-c', run_dir], 'the following arguments are required'),
        'run directory taken': (mine, 'already holds a run'),
        'dropout where the model has none': (mine + ['--drop', '0.2'],
                                             '-a resnet18 has no dropout'),
    }


CASES = ['no train folder', 'no val folder', 'empty class folder', 'other class count',
         'other class names', 'image too small', 'resize below crop',
         'depth contradicts the name', 'missing weights file', 'no torchvision weights',
         'unknown architecture', 'no data folder given', 'run directory taken',
         'dropout where the model has none']


@pytest.mark.parametrize('case', CASES)
def test_bad_input_gives_one_line_and_changes_nothing(case, run_copy, data_root, bad_folders,
                                                      tmp_path, capsys):
    argv, expected = bad_inputs(run_copy, data_root, bad_folders, tmp_path)[case]
    # argv comes last: it may override the defaults
    assert_refused(imagenet.main, ['-j', '0', '--image-size', '32'] + argv, expected, run_copy,
                   capsys)


# -- documented commands ----------------------------------------------------------------------

AUTHORS_COMMANDS = [  # their TRAINING.md and README.md
    'python3 imagenet.py -a resnet18 --data ~/dataset/ILSVRC2012/ --epochs 90 --schedule 31 61 '
    '--gamma 0.1 -c checkpoints/imagenet/resnet18',
    'python3 imagenet.py -a resnext50 --base-width 4 --cardinality 32 --data '
    '~/dataset/ILSVRC2012/ --epochs 90 --schedule 31 61 --gamma 0.1 -c '
    'checkpoints/imagenet/resnext50-32x4d',
    'python3 imagenet.py -a resnet152 --data ../../dataset/imagenet_data/ --epochs 90 '
    '--schedule 31 61 --gamma 0.1 -c checkpoints/imagenet/resnet152 --gpu-id 4,5,6,7 '
    '--test-batch 100',
    'python3 imagenet.py -a resnet152 --data ../../../../dataset/imagenet_data/ --epochs 90 '
    '--schedule 31 61 --gamma 0.1 -c checkpoints/imagenet/resnet152 --gpu-id 4,5,6 '
    '--test-batch 10 --evaluate --resume checkpoints/imagenet/resnet152/model_best.pth.tar',
]
def parse_and_build(command):
    """What parsing a command means: argparse, the engine's checks and imagenet.py's, and the
    model built on the meta device; nothing is read or run."""
    words = shlex.split(command)
    script = next(i for i, w in enumerate(words) if w.endswith('imagenet.py'))
    args = imagenet.get_args_parser().parse_args(words[script + 1:])
    check_training_arguments(args)
    imagenet.check_arguments(args)
    with torch.device('meta'):
        return IMAGENET_MODELS.create(args.arch, num_classes=1000, attention=not args.baseline,
                                      gate=args.gate, **imagenet.model_options(args))


def test_authors_commands_parse():
    """Their commands, as they wrote them (TRAINING.md also holds them; tests/test_docs.py
    checks every documented command)."""
    for command in AUTHORS_COMMANDS:
        try:
            parse_and_build(command)
        except (SystemExit, AbnError) as error:
            pytest.fail(f'{command}: {error}')


def test_authors_resnext_command_builds_resnext50_32x4d():
    model = parse_and_build(AUTHORS_COMMANDS[1])
    assert model.torchvision_name == 'resnext50_32x4d' and model.layer1[0].conv2.groups == 32
