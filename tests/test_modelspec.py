"""A model from its checkpoint alone: the spec every checkpoint records, read by one function
that training, evaluation, explain.py and the pretrained start share; the flags a user did
not type come from the file, and a typed flag that contradicts it is refused in one line."""
import pytest

import cifar
import imagenet
from models import CIFAR_MODELS
from tests.fakedata import (authors_checkpoint, randomise, save_run_checkpoint,
                            write_image_folder)
from tests.helpers import run_script
from utils.data.datasets import NORMALIZATION
from utils.data.shapes import SHAPE_CLASSES
from utils.errors import AbnError
from utils.weights import checkpoint as ckpt
from utils.weights.loading import model_from_checkpoint
from utils.weights.modelspec import ModelSpec, resolve_flags, spec_from_checkpoint

SHAPES = ['--dataset', 'shapes', '--test-size', '16', '-j', '0', '--save-attention', '0']


def cifar_spec(gate='multiply', depth=8):
    mean, std = NORMALIZATION['shapes']
    return ModelSpec('cifar', 'resnet', CIFAR_MODELS.model_args(
        'resnet', depth=depth, num_classes=10, attention=True, gate=gate),
        class_names=list(SHAPE_CLASSES), normalization=(mean, std), image_size=32,
        dataset='shapes')


def test_the_spec_round_trips_through_a_safe_checkpoint(tmp_path):
    spec = cifar_spec()
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    path = save_run_checkpoint(spec, str(tmp_path / 'm.pth.tar'))
    saved = ckpt.load_checkpoint(path)  # weights_only: the spec is plain values
    assert spec_from_checkpoint(saved) == spec
    model, read = model_from_checkpoint(saved, path)
    assert read == spec and model.gate == 'multiply' and model.num_classes == 10
    assert spec.describe() == 'resnet (depth 8, 10 classes, ABN, gate multiply)'


def test_the_authors_files_record_no_spec(tmp_path):
    model = CIFAR_MODELS.create('resnet', depth=8, num_classes=10)
    saved = ckpt.load_checkpoint(authors_checkpoint(model, str(tmp_path / 'a.pth.tar')))
    assert spec_from_checkpoint(saved) is None


def test_given_options_are_the_typed_ones():
    parser = cifar.get_args_parser()
    argv = ['--depth', '20', '--gate', 'residual', '-e', '--resume', 'x']
    assert parser.given_options(argv) == {'depth', 'gate', 'evaluate', 'resume'}
    assert parser.parse_args([]).gate == 'residual'  # defaults are back afterwards


def test_resolve_flags_fills_untyped_and_refuses_contradictions():
    args = cifar.get_args_parser().parse_args(['--gate', 'residual', '--depth', '8'])
    with pytest.raises(AbnError, match=r'holds resnet \(depth 8, 10 classes, ABN, gate '
                                       r'multiply\) for 32 px images, which --gate residual '
                                       r'contradicts: leave these options out'):
        resolve_flags(cifar_spec(), args, {'gate', 'depth'}, cifar.MODEL_FLAGS, 'f')
    args = cifar.get_args_parser().parse_args([])
    resolve_flags(cifar_spec(), args, set(), cifar.MODEL_FLAGS, 'f')
    assert (args.arch, args.depth, args.gate, args.baseline) == ('resnet', 8, 'multiply', False)


def test_evaluate_takes_the_architecture_from_the_file(tmp_path, capsys):
    path = save_run_checkpoint(cifar_spec(), str(tmp_path / 'model_best.pth.tar'))
    code, out, err = run_script(cifar.main, SHAPES + ['-e', '--resume', path], capsys)
    assert code == 0, err
    assert 'resnet (depth 8, 10 classes, ABN, gate multiply)' in out and 'Test Acc:' in out


def test_a_contradicting_flag_is_refused_in_one_line(tmp_path, capsys):
    path = save_run_checkpoint(cifar_spec(), str(tmp_path / 'model_best.pth.tar'))
    code, out, err = run_script(cifar.main, SHAPES + ['-e', '--resume', path, '--gate',
                                                      'residual', '--depth', '14'], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and 'Traceback' not in out + err
    assert 'which --gate residual, --depth 14 contradict' in lines[0]


def test_a_checkpoint_of_the_other_script_names_the_right_one(tmp_path, capsys):
    path = save_run_checkpoint(cifar_spec(), str(tmp_path / 'cifar.pth.tar'))
    folder = str(tmp_path / 'folders')
    write_image_folder(folder, splits=(('val', 1),), size=40)
    code, out, err = run_script(imagenet.main, ['--data', folder, '-e', '--resume', path,
                                                '-j', '0'], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert 'is a checkpoint of cifar.py' in err and 'use python cifar.py' in err
    spec = ModelSpec('imagenet', 'resnet18', {'num_classes': 3, 'attention': True,
                                              'gate': 'residual'}, image_size=64)
    other = save_run_checkpoint(spec, str(tmp_path / 'imagenet.pth.tar'))
    code, out, err = run_script(cifar.main, SHAPES + ['-e', '--resume', other], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert 'is a checkpoint of imagenet.py' in err and 'use python imagenet.py' in err


def test_the_authors_files_still_take_the_architecture_flags(tmp_path, capsys):
    model = randomise(CIFAR_MODELS.create('resnet', depth=8, num_classes=10), 1)
    path = authors_checkpoint(model, str(tmp_path / 'authors.pth.tar'))
    code, out, err = run_script(cifar.main, SHAPES + ['-e', '--resume', path, '--depth', '8'],
                                capsys)
    assert code == 0 and 'resnet (depth 8, 10 classes, ABN)' in out, err
    code, out, err = run_script(cifar.main, SHAPES + ['-e', '--resume', path, '--depth', '14'],
                                capsys)
    assert code == 1 and 'does not fit resnet (depth 14' in err


@pytest.fixture
def recorded_sizes(monkeypatch):
    seen = {}
    build = imagenet.SCRIPT.build_data

    def spy(args, evaluate_only, normalization):
        seen['sizes'] = (args.image_size, imagenet.resize_size(args))
        return build(args, evaluate_only, normalization)
    monkeypatch.setattr(imagenet.SCRIPT, 'build_data', spy)
    return seen


def test_imagenet_evaluates_at_the_recorded_image_size(tmp_path, capsys, recorded_sizes):
    folder = str(tmp_path / 'folders')
    write_image_folder(folder, splits=(('val', 1),), size=80)
    mean, std = NORMALIZATION['imagefolder']
    spec = ModelSpec('imagenet', 'resnet18', {'num_classes': 3, 'attention': True,
                                              'gate': 'residual'},
                     class_names=['cat', 'dog', 'fox'], normalization=(mean, std),
                     image_size=64, resize_size=73)
    path = save_run_checkpoint(spec, str(tmp_path / 'model_best.pth.tar'))
    argv = ['--data', folder, '-e', '--resume', path, '-j', '0', '--save-attention', '0']
    code, out, err = run_script(imagenet.main, argv, capsys)
    assert code == 0, err
    assert recorded_sizes['sizes'] == (64, 73)
    code, out, err = run_script(imagenet.main, argv + ['--image-size', '224'], capsys)
    assert code == 1 and 'which --image-size 224 contradicts' in err
    assert len(err.strip().splitlines()) == 1
