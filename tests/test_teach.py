"""cifar.py --attention-maps end to end: a fine-tuning run from --weights that teaches the map,
keeps the feature extractor as it was, records its maps, and one-line refusals; the
attention-maps objective on known values."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import cifar
import imagenet
from models.abn import AbnOutput
from tests.helpers import assert_refused, run_script
from utils.cli import run
from utils.objectives import get_objective
from utils.objectives.map_loss import AttentionMapObjective
from utils.teach.attention_maps import export_shapes_masks
from utils.weights import checkpoint as ckpt

TINY = ['--dataset', 'shapes', '--depth', '8', '--train-size', '64', '--test-size', '32',
        '--train-batch', '16', '--test-batch', '32', '-j', '0', '--manualSeed', '3',
        '--save-attention', '0', '--gpu-id', 'cpu']


# Tiny models: one thread is fastest, and on a busy machine far faster.
pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """A tiny shapes ABN to start from, and the masks of half its training images."""
    root = tmp_path_factory.mktemp('teach')
    torch.set_num_threads(1)
    assert run(cifar.main, TINY + ['--epochs', '1', '-c', str(root / 'base')]) == 0
    export_shapes_masks(str(root / 'masks'), 50, train_size=64)
    return root


def extractor_keys(state):
    return [k for k in state if k.split('.')[0] in ('conv1', 'bn1', 'layer1', 'layer2')]


@pytest.mark.parametrize('fast', [False, True])
def test_the_papers_setting_teaches_the_map_and_keeps_the_feature_extractor(base, tmp_path,
                                                                            fast, capsys):
    out = str(tmp_path / 'taught')
    start = str(base / 'base' / 'model_best.pth.tar')
    argv = TINY + ['--epochs', '2', '--lr', '0.05', '--weights', start,
                   '--attention-maps', str(base / 'masks'), '--teach-by', 'map', '-c', out]
    code, stdout, _ = run_script(cifar.main, argv + (['--fast'] if fast else []), capsys)
    assert code == 0
    assert 'attention maps: 32 of 64 training images' in stdout
    before = ckpt.load_checkpoint(start)['state_dict']
    after = ckpt.load_checkpoint(os.path.join(out, 'checkpoint.pth.tar'))
    frozen = extractor_keys(before)
    assert any('running_mean' in k for k in frozen)
    assert all(torch.equal(before[k], after['state_dict'][k]) for k in frozen)
    assert not torch.equal(before['att_conv3.weight'], after['state_dict']['att_conv3.weight'])
    assert after['epoch'] == 2 and after['args']['attention_maps_count'] == 32
    with open(os.path.join(out, 'args.json')) as f:
        recorded = json.load(f)
    assert recorded['attention_maps'] == str(base / 'masks')
    assert len(recorded['attention_maps_images']) == 32 and recorded['map_loss_weight'] == 10
    with open(os.path.join(out, 'log.txt')) as f:
        header, *rows = f.read().splitlines()
    assert header.split('\t')[-2:] == ['Train Map Loss', 'Taught Score'] and len(rows) == 2
    map_losses = [float(row.split('\t')[-2]) for row in rows]
    assert map_losses[1] < map_losses[0]  # the map moves towards the masks
    for row in rows:  # the taught score: valid top-1 less 100 x L_map (gamma 10)
        values = [float(v) for v in row.split('\t')]
        assert values[-1] == pytest.approx(values[4] - 100 * values[-2] / 10, abs=1e-4)
    assert 'Best taught score: ' in stdout and 'taught score ' in stdout


@pytest.mark.parametrize('method', ['map', 'counterfactual', 'rrr'])
def test_the_feature_extractor_trains_on_request_or_by_the_method(method, base, tmp_path,
                                                                   capsys):
    start = str(base / 'base' / 'model_best.pth.tar')
    out = str(tmp_path / 'all')
    unfreeze = ['--train-feature-extractor'] if method == 'map' else []
    code, stdout, _ = run_script(cifar.main, TINY + [
        '--epochs', '1', '--weights', start, '--attention-maps', 'shapes-masks:25%',
        '--teach-by', method, '-c', out] + unfreeze, capsys)
    assert code == 0
    assert f'teaching by {method}: ' in stdout and 'feature extractor fixed' not in stdout
    before = ckpt.load_checkpoint(start)['state_dict']
    after = ckpt.load_checkpoint(os.path.join(out, 'checkpoint.pth.tar'))
    assert not torch.equal(before['conv1.weight'], after['state_dict']['conv1.weight'])
    assert after['args']['teach_by'] == method


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


BAD = {
    'weight without maps': (lambda b, t: ['--map-loss-weight', '3'],
                            '--map-loss-weight needs --attention-maps'),
    'unfreeze without maps': (lambda b, t: ['--train-feature-extractor'],
                              '--train-feature-extractor needs --attention-maps'),
    'method without maps': (lambda b, t: ['--teach-by', 'rrr'], '--teach-by needs --attention-maps'),
    'rrr weight without rrr': (lambda b, t: ['--attention-maps', 'shapes-masks:10%',
                                             '--rrr-weight', '5'],
                               '--rrr-weight needs --teach-by rrr'),
    'negative rrr weight': (lambda b, t: ['--attention-maps', 'shapes-masks:10%', '--teach-by',
                                          'rrr', '--rrr-weight', '-5'], 'must not be negative'),
    'unfreeze with a method that trains it': (
        lambda b, t: ['--attention-maps', 'shapes-masks:10%', '--train-feature-extractor'],
        'always trains the feature extractor: drop --train-feature-extractor'),
    'rrr compiled': (lambda b, t: ['--attention-maps', 'shapes-masks:10%', '--teach-by', 'rrr',
                                   '--compile'], 'drop --compile'),
    'baseline': (lambda b, t: ['--baseline', '--attention-maps', 'shapes-masks:10%'],
                 'needs an attention branch'),
    'negative weight': (lambda b, t: ['--attention-maps', 'shapes-masks:10%',
                                      '--map-loss-weight', '-1'], 'must not be negative'),
    'bad percentage': (lambda b, t: ['--attention-maps', 'shapes-masks:lots'], 'percentage'),
    'missing folder': (lambda b, t: ['--attention-maps', str(t / 'nothing')], 'no such folder'),
    'unreadable map': (lambda b, t: ['--attention-maps', bad_folder(t)], 'cannot read'),
    'map of no image': (lambda b, t: ['--attention-maps', stray_folder(t)],
                        'names no training image'),
    'missing weights': (lambda b, t: ['--attention-maps', 'shapes-masks:10%', '--weights',
                                      str(t / 'none.pth.tar')], 'no such file'),
    'resume of a run without maps': (lambda b, t: ['--attention-maps', 'shapes-masks:10%',
                                                   '--resume',
                                                   str(b / 'base' / 'checkpoint.pth.tar'),
                                                   '--epochs', '2'],
                                     "start a new run from its weights with --weights"),
    'weights of another gate': (lambda b, t: ['--attention-maps', 'shapes-masks:10%',
                                              '--weights', str(b / 'base' / 'model_best.pth.tar'),
                                              '--gate', 'multiply'], 'contradicts'),
    'weights of another model': (lambda b, t: ['--attention-maps', 'shapes-masks:10%',
                                               '--weights', str(b / 'base' / 'model_best.pth.tar'),
                                               '--depth', '14'], 'contradicts'),
}


def bad_folder(tmp_path):
    folder = tmp_path / 'bad'
    folder.mkdir(exist_ok=True)
    (folder / '3.png').write_bytes(b'no png')
    return str(folder)


def stray_folder(tmp_path):
    write_png(str(tmp_path / 'stray' / 'cat' / 'felix.png'), np.zeros((4, 4)))
    return str(tmp_path / 'stray')


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_gives_one_line_and_changes_nothing(case, base, tmp_path, capsys):
    make_argv, expected = BAD[case]
    argv = TINY + ['--epochs', '1', '-c', str(tmp_path / 'run')] + make_argv(base, tmp_path)
    assert_refused(cifar.main, argv, expected, str(base), capsys)
    assert not os.path.exists(tmp_path / 'run' / 'checkpoint.pth.tar')


def test_imagenet_py_has_the_flags():
    args = imagenet.get_args_parser().parse_args(['--data', 'x', '--attention-maps', 'maps',
                                                   '--map-loss-weight', '2'])
    assert args.attention_maps == 'maps' and args.map_loss_weight == 2


def test_the_objective_on_known_values():
    objective = get_objective('attention-maps', weight=2.0)
    assert isinstance(objective, AttentionMapObjective)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    model_map = torch.zeros(2, 1, 2, 2)
    output = AbnOutput(logits, logits, model_map)
    target = {'label': torch.tensor([0, 1]), 'map': torch.ones(2, 1, 4, 4),
              'has_map': torch.tensor([True, False])}
    losses = objective.losses(output, target)
    single = get_objective('single-label').losses(output, target['label'])
    assert set(losses) == {'att_loss', 'per_loss', 'map_loss'}
    assert losses['per_loss'] == single['per_loss']
    assert losses['map_loss'].item() == pytest.approx(2.0)  # weight 2 x (1 - 0)^2 on image 0
    assert set(objective.losses(output, target['label'])) == {'att_loss', 'per_loss'}
    meter = objective.new_meter(torch.device('cpu'))
    meter.update(0, output, target, losses)
    summary = meter.summary()
    assert summary['map_loss'] == pytest.approx(2.0) and summary['maps'] == 1
    assert summary['per_top1'] == 100.0 and meter.first_nonfinite_step() is None
    meter.update(1, output, target, dict(losses, map_loss=torch.tensor(float('nan'))))
    assert meter.first_nonfinite_step() == 1
    restored = objective.new_meter(torch.device('cpu'))
    restored.load_state_dict(meter.state_dict())
    assert np.isnan(restored.summary()['map_loss'])
    assert 'map loss' in objective.summary_text(summary, True)


def test_a_collapsing_map_is_named_with_the_learning_rate_to_try():
    """The guard follows the recent steps with maps: a map falling towards zero on them is
    named once the average has fallen below 0.4 of the given maps' mean."""
    objective = get_objective('attention-maps')
    meter = objective.new_meter(torch.device('cpu'))
    logits = torch.zeros(2, 3)
    given = torch.zeros(2, 1, 8, 8)
    given[:, :, 2:6, 2:6] = 1  # the given maps' mean: 0.25
    target = {'label': torch.tensor([0, 1]), 'map': given, 'has_map': torch.tensor([True, False])}
    for step, level in enumerate([0.3, 0.25, 0.2]):  # healthy
        output = AbnOutput(logits, logits, torch.full((2, 1, 4, 4), level))
        meter.update(step, output, target, objective.losses(output, target))
    summary = meter.summary()
    assert summary['given_map_mean'] == pytest.approx(0.25)
    assert summary['map_mean'] == pytest.approx(0.25)
    assert objective.training_warning(summary, 0.1) is None
    for step in range(3, 40):  # the map falls to 0.001 on the images with a map
        output = AbnOutput(logits, logits, torch.full((2, 1, 4, 4), 0.001))
        meter.update(step, output, target, objective.losses(output, target))
        no_maps = dict(target, has_map=torch.tensor([False, False]))  # steps without: no say
        meter.update(step, AbnOutput(logits, logits, torch.ones(2, 1, 4, 4)), no_maps,
                     objective.losses(output, no_maps))
    warning = objective.training_warning(meter.summary(), 0.1)
    assert warning.startswith('warning: the attention map is collapsing towards zero')
    assert warning.endswith('try a lower learning rate, --lr 0.01')
    old = meter.state_dict()
    old['map'] = old['map'][:2]  # a checkpoint written before the means were kept
    restored = objective.new_meter(torch.device('cpu'))
    restored.load_state_dict(old)
    assert restored.summary()['maps'] == meter.summary()['maps']


def test_weights_start_a_plain_run_too(base, tmp_path, capsys):
    start = str(base / 'base' / 'model_best.pth.tar')
    code, stdout, _ = run_script(cifar.main, TINY + ['--epochs', '1', '--lr', '1e-9', '--weights',
                                                     start, '-c', str(tmp_path / 'on')], capsys)
    assert code == 0 and f'==> Weights: {start}' in stdout
    before = ckpt.load_checkpoint(start)['state_dict']
    after = ckpt.load_checkpoint(str(tmp_path / 'on' / 'checkpoint.pth.tar'))['state_dict']
    assert torch.allclose(before['fc.weight'], after['fc.weight'], atol=1e-6)
    assert ckpt.load_checkpoint(str(tmp_path / 'on' / 'checkpoint.pth.tar'))['epoch'] == 1


def test_unreadable_training_images_are_still_found_first(tmp_path, capsys):
    from tests.fakedata import write_image_folder
    write_image_folder(str(tmp_path / 'data'), splits=(('train', 2), ('val', 1)), size=32)
    (tmp_path / 'data' / 'train' / 'dog' / '1.jpg').write_bytes(b'broken')
    write_png(str(tmp_path / 'maps' / 'cat' / '0.png'), np.full((8, 8), 255))
    argv = ['--dataset', 'imagefolder', '--data', str(tmp_path / 'data'), '--depth', '8',
            '--epochs', '1', '-j', '0', '--gpu-id', 'cpu', '--attention-maps',
            str(tmp_path / 'maps'), '-c', str(tmp_path / 'run')]
    assert_refused(cifar.main, argv, 'dog/1.jpg', str(tmp_path / 'maps'), capsys)
    assert not os.path.exists(tmp_path / 'run')  # before the run began, not in its first epoch


def test_the_pages_status_shows_the_runs_warning(tmp_path):
    from types import SimpleNamespace

    from utils.serve.teach_job import TeachingJob
    from utils.serve.teach_page import status_text
    run = TeachingJob(str(tmp_path), ['python', 'cifar.py'], 'python cifar.py')
    run.state = 'running'
    (tmp_path / 'output.txt').write_text(
        'Epoch: [1 | 2] LR: 0.100000\nwarning: the attention map is collapsing towards zero '
        '(its mean 0.001 on the recent images with a given map, theirs 0.210): try a lower '
        'learning rate, --lr 0.01\nTrain 1 [15/157] 0:03 ETA 0:30 | loss 0.1\n')
    teacher = SimpleNamespace(run=run, editor=SimpleNamespace(shown_path=lambda path: 'run'))
    status = status_text(teacher)
    assert '**Warning**: the attention map is collapsing towards zero' in status
    assert '--lr 0.01' in status and '`Train 1 [15/157]' in status
