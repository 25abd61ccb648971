"""Teaching that moves the decision: the shortcut data set (shapes-decoy), the teaching methods
(--teach-by counterfactual, rrr, map) on every family, and the measure of what a decision
rests on (explain.py --measure, the page's before/after table)."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import cifar
import explain
from models import AbnOutput
from tests.helpers import run_script, save_project_checkpoint, tiny_model
from tests.test_model_contract import REPRESENTATIVES, images, options
from utils.data.shapes import DECOY_COLOURS, ShapesDataset
from utils.explain.measures import decision_outside, split_scores
from utils.objectives import get_objective
from utils.objectives.teaching_methods import TEACHING_METHODS, counterfactual_inputs

pytestmark = pytest.mark.usefixtures('one_thread')


def patch_colours(dataset):
    """The colour of each image's patch, found as the one corner square of a decoy colour."""
    found = []
    for image in dataset.data:
        for rows in (slice(4, 8), slice(24, 28)):
            for cols in (slice(4, 8), slice(24, 28)):
                square = image[rows, cols].reshape(-1, 3)
                if (square == square[0]).all():
                    match = np.flatnonzero((DECOY_COLOURS == square[0]).all(1))
                    if len(match):
                        found.append(int(match[0]))
    return found


def test_shapes_decoy_carries_the_class_in_training_and_a_random_colour_in_testing():
    train = ShapesDataset(train=True, size=300, decoy=True)
    test = ShapesDataset(train=False, size=300, decoy=True)
    plain = ShapesDataset(train=True, size=300)
    assert patch_colours(train) == train.targets  # one patch each, of its class
    shown = patch_colours(test)
    assert len(shown) == 300 and 0.05 < np.mean(np.array(shown) == test.targets) < 0.2
    # the masks leave the patch out, and are the shapes masks elsewhere
    changed = (train.data != plain.data).any(-1)
    assert not (train.masks & changed).any()
    assert (train.masks == (plain.masks & ~changed)).all()
    # the first images are the same whatever the size (--train-size takes a prefix)
    assert (ShapesDataset(train=True, size=600, decoy=True).data[:300] == train.data).all()


def test_counterfactual_inputs_keep_the_map_and_take_the_outside_from_another_image():
    inputs = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).view(4, 3, 2, 2)
    given = torch.zeros(4, 1, 2, 2)
    given[0, 0, 0, 0] = 1  # image 0: one pixel given; image 1 has no map
    given[2, 0, 0, 1] = 1  # image 2: another pixel
    given[3] = 0.5
    has_map = torch.tensor([True, False, True, True])
    mixed = counterfactual_inputs(inputs, given, has_map)
    assert torch.equal(mixed[1], inputs[1])
    # image 0's outside from image 3 (the images with maps, rolled), whose own map is 0.5
    # everywhere: half of it is image 0's own pixels there
    assert torch.equal(mixed[0, :, 0, 0], inputs[0, :, 0, 0])
    assert torch.allclose(mixed[0, :, 1, 1], (inputs[3, :, 1, 1] + inputs[0, :, 1, 1]) / 2)
    # image 2's outside from image 0, except where image 0's object is: image 2's own there
    assert torch.equal(mixed[2, :, 0, 1], inputs[2, :, 0, 1])
    assert torch.equal(mixed[2, :, 0, 0], inputs[2, :, 0, 0])
    assert torch.equal(mixed[2, :, 1, 0], inputs[0, :, 1, 0])
    # with one image with a map, its outside comes from the next image of the batch
    alone = counterfactual_inputs(inputs, given, torch.tensor([True, False, False, False]))
    assert torch.equal(alone[0, :, 1, 1], inputs[3, :, 1, 1])
    assert torch.equal(alone[1:], inputs[1:])


def teaching_batch(model_images, seed=0):
    generator = torch.Generator().manual_seed(seed)
    given = torch.zeros(len(model_images), 1, *model_images.shape[-2:])
    given[..., 4:-4, 4:-4] = 1
    return {'label': torch.randint(0, 3, (len(model_images),), generator=generator),
            'map': given, 'has_map': torch.tensor([True] * (len(model_images) - 1) + [False])}


FAMILIES = [pytest.param(registry, name, id=f'{registry.title}-{name}',
                         marks=[] if (registry.title, name) == ('CIFAR', 'resnet') else
                         [pytest.mark.slow]) for registry, name in REPRESENTATIVES]


@pytest.mark.parametrize('method', sorted(TEACHING_METHODS))
@pytest.mark.parametrize('registry,name', FAMILIES)
def test_every_method_trains_every_family(method, registry, name):
    """One step of each method on the smallest model of each family: finite losses, the
    map loss, RRR's penalty, and gradients reaching the feature extractor."""
    torch.manual_seed(0)
    model = registry.create(name, **options(registry, name)).train()
    x = images(registry).repeat(2, 1, 1, 1)
    x = x + 0.1 * torch.randn_like(x)
    target = teaching_batch(x)
    objective = get_objective('attention-maps', method=method)
    output, losses = objective.forward_losses(model, x, target)
    assert isinstance(output, AbnOutput)
    assert 'map_loss' in losses and ('rrr_loss' in losses) == (method == 'rrr')
    loss = objective.total_loss(losses)
    assert torch.isfinite(loss)
    loss.backward()
    extractor = [p for m in model.feature_extractor_modules() for p in m.parameters()]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in extractor)


@pytest.mark.parametrize('name', ['timm:resnet18', pytest.param(
    'timm:vit_tiny_patch16_224', marks=pytest.mark.slow)])
def test_counterfactual_and_rrr_teach_library_backbones(name):
    from models.backbones import build
    torch.manual_seed(0)
    model = build(*name.split(':'), num_classes=3, image_size=64).train()
    x = torch.randn(3, 3, 64, 64)
    for method in ('counterfactual', 'rrr'):
        objective = get_objective('attention-maps', method=method)
        _, losses = objective.forward_losses(model, x, teaching_batch(x))
        objective.total_loss(losses).backward()
        assert all(torch.isfinite(v) for v in losses.values())


def test_rrr_penalises_only_the_gradients_outside_the_map():
    model = tiny_model().train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = teaching_batch(x)
    objective = get_objective('attention-maps', method='rrr', rrr_weight=1.0)
    everywhere = dict(target, map=torch.ones_like(target['map']))
    _, inside_only = objective.forward_losses(model, x, everywhere)
    assert inside_only['rrr_loss'].item() == 0
    _, losses = objective.forward_losses(model, x, target)
    assert losses['rrr_loss'].item() > 0
    none = dict(target, has_map=torch.zeros(4, dtype=torch.bool))
    _, without = objective.forward_losses(model, x, none)
    assert without['rrr_loss'].item() == 0


class CornerReader(nn.Module):
    """Decides by the colour of the top-left pixel, or with `centre` by the centre pixel's:
    a shortcut model and a right-reasons one."""

    def __init__(self, centre=False):
        super().__init__()
        self.centre = centre

    def forward(self, x):
        pixel = x[:, :, 16, 16] if self.centre else x[:, :, 0, 0]
        logits = torch.stack([pixel[:, 0], -pixel[:, 0]], 1) * 10
        return AbnOutput(None, logits, None)


def test_the_decision_measure_tells_a_shortcut_from_the_object():
    x = torch.zeros(8, 3, 32, 32)
    labels = torch.tensor([0, 1] * 4)
    sign = torch.where(labels == 0, 1.0, -1.0).view(-1, 1, 1, 1)
    x[:, :, 12:20, 12:20] = sign  # the object tells the class
    x[:, :, 0:2, 0:2] = sign  # and so does the corner, as in training
    masks = np.zeros((8, 32, 32), bool)
    masks[:, 12:20, 12:20] = True

    def predict(model):
        return lambda images: model(images).perception_logits.softmax(1)

    shortcut = decision_outside(predict(CornerReader()), x, masks, labels)
    right = decision_outside(predict(CornerReader(centre=True)), x, masks, labels)
    for answers in (shortcut, right):
        assert answers['as given'][0].all()
    assert not shortcut['object kept'][0].any() and shortcut['outside only'][0].all()
    assert right['object kept'][0].all() and right['outside only'][0].mean() == 0.5

    def answer(model):
        def call(batch, batch_labels):
            out = model(batch)
            return float((out.perception_logits.argmax(1) == batch_labels).sum()), \
                torch.zeros(len(batch), 1, 8, 8)
        return call

    dataset = list(zip(x, labels))
    assert split_scores(answer(CornerReader()), dataset, 8, masks, 32, 2)['object_kept'] == 0
    assert split_scores(answer(CornerReader(centre=True)), dataset, 8, masks, 32,
                        2)['object_kept'] == 100


def test_explain_measure_reports_what_the_decision_rests_on(tmp_path, capsys):
    path = str(tmp_path / 'model.pth.tar')
    save_project_checkpoint(tiny_model(), path)
    out = tmp_path / 'report'
    code, stdout, _ = run_script(explain.main, [
        path, '--dataset', 'shapes-decoy', '-n', '8', '--measure', '--save-images', '0',
        '--road-percentiles', '50', '--steps', '4', '-o', str(out)], capsys)
    assert code == 0
    assert 'What the decision rests on' in stdout and 'top-1, object kept' in stdout
    with open(out / 'metrics.json') as f:
        decision = json.load(f)['decision']['']
    assert set(decision) == {'as given', 'object kept', 'outside only'}
    assert all(entry['n'] == 8 for entry in decision.values())


TINY = ['--dataset', 'shapes-decoy', '--depth', '8', '--train-size', '64', '--test-size', '32',
        '--train-batch', '16', '--test-batch', '32', '-j', '0', '--manualSeed', '3',
        '--save-attention', '0', '--gpu-id', 'cpu']


def test_a_teaching_run_on_the_shortcut_set_keeps_the_taught_model(tmp_path, capsys):
    """shapes-masks:P% on shapes-decoy, the default method, and the taught score that picks
    model_best (printed, logged, and the file's best_acc)."""
    code, stdout, _ = run_script(cifar.main, TINY + [
        '--epochs', '2', '--attention-maps', 'shapes-masks:50%', '-c', str(tmp_path / 'run')],
        capsys)
    assert code == 0, stdout
    assert 'teaching by counterfactual: ' in stdout
    with open(tmp_path / 'run' / 'log.txt') as f:
        header, *rows = f.read().splitlines()
    scores = [float(row.split('\t')[-1]) for row in rows]
    assert header.split('\t')[-1] == 'Taught Score'
    from utils.weights import checkpoint as ckpt
    best = ckpt.load_checkpoint(str(tmp_path / 'run' / 'model_best.pth.tar'))
    assert best['best_acc'] == pytest.approx(max(scores), abs=1e-4)
    assert f'Best taught score: {max(scores):.2f}' in stdout
    assert os.path.exists(tmp_path / 'run' / 'log.png')


def peaked_maps(rows, cols, size=32):
    maps = np.zeros((len(rows), size, size))
    maps[np.arange(len(rows)), rows, cols] = 1
    return maps


def test_where_maps_look_names_a_shortcut_in_the_corners_and_not_objects_that_move(tmp_path):
    from utils.explain.where_maps_look import WhereMapsLook
    rng = np.random.default_rng(0)
    n = 60
    corners = rng.integers(0, 2, (2, n)) * 24 + 5  # near one of the four corners
    classes = rng.integers(0, 3, n)
    where = WhereMapsLook(['a', 'b', 'c'])
    where.add('abn', peaked_maps(*corners), classes)
    where.add('cam', peaked_maps(*rng.integers(0, 32, (2, n))), classes)  # anywhere
    where.add('gradcam', peaked_maps(*rng.integers(12, 20, (2, n))), classes)  # the centre
    note = where.note('abn', 'ABN attention')
    assert note.startswith('note: the ABN attention maps of 100% of the images peak in the '
                           'same few places (bottom-left corner, bottom-right corner, '
                           'top-left corner, top-right corner)')
    assert where.note('cam') is None and where.note('gradcam') is None
    few = WhereMapsLook(None)
    few.add('abn', peaked_maps(*corners[:, :5]), classes[:5])
    assert few.note('abn') is None  # five images say nothing about a place
    path = where.write(str(tmp_path), {'abn': 'ABN attention'})
    from PIL import Image
    with Image.open(path) as picture:
        assert picture.size[0] > picture.size[1] > 100


def test_a_step_adds_a_quarter_of_counterfactuals_however_few_the_maps():
    from utils.objectives.teaching_methods import counterfactual_batch
    inputs = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    given = torch.zeros(16, 1, 8, 8)
    given[..., 2:6, 2:6] = 1
    has_map = torch.zeros(16, dtype=torch.bool)
    has_map[[3, 9]] = True
    target = {'label': torch.arange(16), 'map': given, 'has_map': has_map}
    shown, taught = counterfactual_batch(inputs, target, 2)
    # the batch as it is, then 4 counterfactuals: images 3 and 9, twice each
    assert len(shown) == 20 and taught['label'].tolist() == list(range(16)) + [3, 9, 3, 9]
    assert torch.equal(shown[:16], inputs) and torch.equal(taught['has_map'][:16], has_map)
    assert not taught['has_map'][16:].any()  # the map loss sees the batch as it is
    assert torch.equal(shown[16, :, 2:6, 2:6], inputs[3, :, 2:6, 2:6])  # the object kept
    assert not torch.equal(shown[16], inputs[3])  # amid other surroundings
    assert not torch.equal(shown[16], shown[18])  # and other ones the second time
    plenty = dict(target, has_map=torch.ones(16, dtype=torch.bool))
    shown, taught = counterfactual_batch(inputs, plenty, 16)
    assert len(shown) == 20 and taught['label'][16:].tolist() == [0, 1, 2, 3]
    none = dict(target, has_map=torch.zeros(16, dtype=torch.bool))
    assert torch.equal(counterfactual_batch(inputs, none, 0)[0], inputs)


def test_a_step_with_copies_answers_for_the_batchs_own_images():
    model = tiny_model().train()
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = teaching_batch(x)
    target['has_map'] = torch.zeros(16, dtype=torch.bool)
    target['has_map'][0] = True
    output, losses = get_objective('attention-maps').forward_losses(model, x, target)
    assert output.perception_logits.shape[0] == output.attention_map.shape[0] == 16
    assert torch.isfinite(sum(losses.values()))


def test_the_map_loss_of_a_step_with_copies_is_the_batchs_own():
    torch.manual_seed(0)
    model = tiny_model().eval()  # eval: batch statistics would differ with the copies
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = teaching_batch(x)
    target['has_map'] = torch.zeros(16, dtype=torch.bool)
    target['has_map'][[1, 5, 6]] = True
    objective = get_objective('attention-maps')
    _, losses = objective.forward_losses(model, x, target)
    with torch.no_grad():
        alone = objective.losses(model(x), target)
    assert torch.allclose(losses['map_loss'].detach(), alone['map_loss'])
    assert not torch.allclose(losses['per_loss'].detach(), alone['per_loss'])  # copies seen


def test_the_measures_show_one_object_and_no_silhouette():
    from utils.explain.measures import object_kept, object_removed
    images = torch.stack([torch.full((1, 4, 4), float(v)) for v in (1, 2)])
    inside = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    inside[0, :, 0, 0] = True  # image 0's object
    inside[1, :, 3, 3] = True  # image 1's object
    kept = object_kept(images, inside)
    assert kept[0, 0, 0, 0] == 1 and kept[0, 0, 1, 1] == 2  # its object, image 1's outside
    assert kept[0, 0, 3, 3] == 1  # where image 1's object was: image 0's own pixel
    removed = object_removed(images, inside)
    assert torch.allclose(removed[0], torch.ones(1, 4, 4))  # filled from its own outside
    assert torch.allclose(removed[1], torch.full((1, 4, 4), 2.0))  # no silhouette left
