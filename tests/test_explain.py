"""explain.py and the explanation methods and metrics: the command end to end on tiny
checkpoints (this project's and the authors' format) and on image files, folders and a data
set split; the metrics on hand-made maps with known answers; Grad-CAM from the library
against exact CAM; attention editing; bad input answered with one line."""
import json
import os
import re
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

import explain
from models import CIFAR_MODELS
from tests.fakedata import authors_checkpoint, randomise
from tests.helpers import (documentation, optional, run_script, save_project_checkpoint,
                           tiny_model)
from utils.data.datasets import AUTHORS_NORMALIZATION, NORMALIZATION
from utils.data.shapes import SHAPE_CLASSES, generate_shapes
from utils.explain.cam import class_activation_maps, perception_probabilities, scale_to_unit
from utils.explain.measures import deletion_insertion, energy_inside, pointing_game, road
from utils.explain.methods import Explainer
from utils.visualize import upsample_maps

CPU = ['--gpu-id', 'cpu']


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and on a busy 2-core machine two OpenMP
    threads wait on each other (a 3x3 conv of 4x16x32x32 took 30x longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cli(argv, capsys):
    """Runs explain.py in this process; returns (exit status, stdout, stderr)."""
    return run_script(explain.main, argv, capsys)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('explain')
    images, labels, _ = generate_shapes(4, seed=5)
    folder = root / 'photos'
    paths = []
    for i, (pixels, label) in enumerate(zip(images, labels)):
        class_folder = folder / SHAPE_CLASSES[label]  # ImageFolder layout: labels known
        class_folder.mkdir(parents=True, exist_ok=True)
        paths.append(str(class_folder / f'{i}.png'))
        Image.fromarray(pixels).save(paths[-1])
    single = root / 'big.jpg'  # any size: resized to the model's 32x32
    Image.fromarray(np.kron(images[0], np.ones((3, 3, 1), np.uint8))).save(single)
    (root / 'broken.png').write_bytes(b'not an image')
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / 'zero_map.png')
    return {
        'root': root, 'folder': str(folder), 'single': str(single), 'labels': labels.tolist(),
        'model': save_project_checkpoint(tiny_model(), str(root / 'abn.pth.tar')),
        'multiply': save_project_checkpoint(tiny_model(gate='multiply'),
                                            str(root / 'multiply.pth.tar')),
        'baseline': save_project_checkpoint(tiny_model(attention=False, seed=1),
                                            str(root / 'baseline.pth.tar')),
        'authors': authors_checkpoint(tiny_model(seed=2), str(root / 'authors.pth.tar')),
    }


def read_json(path):
    with open(path) as f:
        return json.load(f)


# -- the command ------------------------------------------------------------------------------

def test_images_and_folders_give_pictures_maps_grid_and_top5(files, tmp_path, capsys):
    out = str(tmp_path / 'out')
    code, stdout, _ = cli([files['model'], files['single'], files['folder'], '-o', out] + CPU,
                          capsys)
    assert code == 0
    names = sorted(os.listdir(out))
    assert 'grid.png' in names and 'predictions.json' in names
    pictures = [n for n in names if n[:4].isdigit()]
    assert len(pictures) == 5 and pictures[0] == '0000_big.png'
    assert len(os.listdir(os.path.join(out, 'maps'))) == 5
    with Image.open(os.path.join(out, 'maps', pictures[0])) as editable:
        assert editable.mode == 'L' and editable.size == (16, 16)  # the map's own resolution
    images = read_json(os.path.join(out, 'predictions.json'))['images']
    assert images[0]['true'] is None
    assert [r['true'] for r in images[1:]] == [os.path.basename(os.path.dirname(r['source']))
                                               for r in images[1:]]
    assert sorted(r['true'] for r in images[1:]) == sorted(SHAPE_CLASSES[y]
                                                          for y in files['labels'])
    for record in images:
        probabilities = [r['probability'] for r in record['top5']]
        assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert all(r['name'] in SHAPE_CLASSES for r in record['top5'])
    first = images[0]['top5'][0]
    assert f"{first['name']} {100 * first['probability']:.1f}%" in stdout


@pytest.mark.slow
def test_dataset_split_with_compare_measure_and_baseline(files, tmp_path, capsys):
    out = str(tmp_path / 'out')
    code, stdout, _ = cli([files['model'], '--dataset', 'shapes', '-n', '5', '--batch-size', '4',
                           '--compare', '--measure', '--steps', '2', '--save-images', '2',
                           '--road-percentiles', '20,80',
                           '--baseline-checkpoint', files['baseline'], '-o', out] + CPU, capsys)
    assert code == 0
    result = read_json(os.path.join(out, 'metrics.json'))
    assert list(result['results']) == ['ABN attention', 'CAM', 'Grad-CAM', 'random',
                                       'baseline CAM', 'baseline Grad-CAM']
    for scores in result['results'].values():
        assert set(scores) == {'pointing_game', 'pointing_game_tolerant', 'energy_inside',
                               'deletion_auc', 'insertion_auc', 'road'}
        assert all(entry['n'] == 5 and 0 <= entry['mean'] <= 1 for metric, entry
                   in scores.items() if metric != 'road')
        assert -1 <= scores['road']['mean'] <= 1  # a difference of probabilities
    assert result['meta']['images'] == 5 and result['meta']['pointing tolerance (px)'] == 2
    assert result['meta']['ROAD percentiles'] == '20,80'
    assert result['metrics']['pointing_game_tolerant']['title'] == 'pointing game ±2 px'
    with open(os.path.join(out, 'metrics.md')) as f:
        table = f.read()
    assert table.startswith('| map | pointing game') and table.splitlines()[2] in stdout
    for name in ('metrics.png', 'grid.png', '0000_shapes-test-0.png'):
        with open(os.path.join(out, name), 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert not os.path.exists(os.path.join(out, '0002_shapes-test-2.png'))  # --save-images 2
    images = read_json(os.path.join(out, 'predictions.json'))['images']
    assert len(images) == 5 and 'baseline_top5' in images[0]


def test_authors_checkpoint_predicts_as_the_model_itself(files, tmp_path, capsys):
    out = str(tmp_path / 'out')
    image = os.path.join(files['folder'], SHAPE_CLASSES[files['labels'][0]], '0.png')
    code, _, _ = cli([files['authors'], image, '-a', 'resnet', '--depth', '8', '-o', out] + CPU,
                     capsys)
    assert code == 0
    record = read_json(os.path.join(out, 'predictions.json'))['images'][0]
    assert record['top5'][0]['name'] == str(record['top5'][0]['class'])  # no names in the file
    # The same image through the model by hand, with the authors' normalisation.
    model = tiny_model(seed=2)
    mean, std = AUTHORS_NORMALIZATION
    pixels = torch.from_numpy(np.asarray(Image.open(image), np.float32) / 255).permute(2, 0, 1)
    x = ((pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[None]
    expected = perception_probabilities(model, x)[0]
    assert record['top5'][0]['class'] == int(expected.argmax())
    assert abs(record['top5'][0]['probability'] - float(expected.max())) < 1e-5


def test_edited_map_changes_the_prediction_and_the_own_map_round_trips(files, tmp_path,
                                                                      capsys):
    out = str(tmp_path / 'out')
    image = files['single']
    code, stdout, _ = cli([files['multiply'], image, '--edit',
                           str(files['root'] / 'zero_map.png'), '-o', out] + CPU, capsys)
    assert code == 0
    record = read_json(os.path.join(out, 'predictions.json'))['images'][0]
    assert record['edited']['top5'] != record['top5']
    assert os.path.exists(os.path.join(out, '0000_big_edited.png'))
    assert 'edited map:' in stdout
    # The model's own map, saved as 8 bits and given back, predicts as before.
    again = str(tmp_path / 'again')
    code, _, _ = cli([files['multiply'], image, '--edit', os.path.join(out, 'maps', '0000_big.png'),
                      '-o', again] + CPU, capsys)
    assert code == 0
    record = read_json(os.path.join(again, 'predictions.json'))['images'][0]
    assert record['edited']['top5'][0]['class'] == record['top5'][0]['class']
    assert abs(record['edited']['top5'][0]['probability']
               - record['top5'][0]['probability']) < 0.02


def test_a_plain_baseline_is_explained_by_cam_and_gradcam(files, tmp_path, capsys):
    out = str(tmp_path / 'out')
    code, _, _ = cli([files['baseline'], files['single'], '-o', out] + CPU, capsys)
    assert code == 0
    assert os.path.exists(os.path.join(out, '0000_big.png'))
    assert os.listdir(os.path.join(out, 'maps')) == []  # no attention map to edit


BAD = {
    'missing checkpoint': (lambda f, t: [str(t / 'none.pth.tar'), f['single']],
                           'no checkpoint at'),
    'directory as checkpoint': (lambda f, t: [str(t), f['single']], 'is a directory'),
    'unreadable checkpoint': (lambda f, t: [str(f['root'] / 'broken.png'), f['single']],
                              'neither a PyTorch checkpoint nor a safetensors file'),
    'unreadable image': (lambda f, t: [f['model'], str(f['root'] / 'broken.png')],
                         'cannot read image'),
    'missing image': (lambda f, t: [f['model'], str(t / 'nothing.png')], 'no image or folder'),
    'nothing to explain': (lambda f, t: [f['model']], 'nothing to explain'),
    'contradicting option': (lambda f, t: [f['model'], f['single'], '--depth', '20'],
                             'which --depth 20 contradicts: leave these options out'),
    'authors file, wrong depth': (lambda f, t: [f['authors'], f['single'], '--depth', '14'],
                                  'does not fit resnet (depth 14'),
    'edit maps miscounted': (lambda f, t: [f['model'], f['folder'], '--edit', f['single'],
                                           f['single']], 'one per input'),
    'edit without attention': (lambda f, t: [f['baseline'], f['single'], '--edit',
                                             f['single']], 'attention branch'),
    'ROAD percentile out of range': (lambda f, t: [f['model'], f['single'], '--measure',
                                                   '--road-percentiles', '0,50'],
                                     '--road-percentiles takes percentiles between 1 and 99'),
}


def test_output_naming_a_file_is_refused(files, tmp_path, capsys):
    a_file = tmp_path / 'out.png'
    a_file.write_bytes(b'x')
    code, out, err = cli([files['model'], files['single'], '-o', str(a_file)] + CPU, capsys)
    assert code == 1 and 'Traceback' not in out + err
    assert err.strip().splitlines() == [
        f'pytest: error: -o/--output {a_file} is a file: give a folder for the pictures'
        if err.startswith('pytest') else err.strip()]
    assert 'is a file: give a folder' in err


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_gives_one_line(case, files, tmp_path, capsys):
    make_argv, expected = BAD[case]
    code, out, err = cli(make_argv(files, tmp_path) + ['-o', str(tmp_path / 'out')] + CPU,
                         capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'error:' in lines[0] and expected in lines[0], err
    assert 'Traceback' not in out + err


# -- the methods ------------------------------------------------------------------------------

@pytest.mark.parametrize('arch, options', [('resnet', dict(depth=8)),
                                           ('densenet', dict(depth=10, growthRate=4)),
                                           ('wrn', dict(depth=10, widen_factor=1))])
def test_library_gradcam_is_relu_of_exact_cam(arch, options):
    """For global average pooling + linear, Grad-CAM's channel weights are the class's linear
    weights / (h*w), so Grad-CAM is ReLU(CAM) up to scale: a check that the library sees the
    perception logits and hooks the perception features (also in DenseNet and WRN, whose
    last BN + ReLU are functions)."""
    torch.manual_seed(0)
    model = randomise(CIFAR_MODELS.create(arch, num_classes=10, **options), 1).eval()
    explainer = Explainer(model, ['abn', 'cam', 'gradcam'])
    try:
        x = torch.randn(3, 3, 32, 32)
        result = explainer(x)
        _, logits, attention_map = model(x)
        assert torch.allclose(result.logits, logits, atol=1e-5)
        assert torch.allclose(result.feature_maps['abn'], attention_map)
        recorded = explainer.branch.recorded
        cam = class_activation_maps(recorded.maps, model.final_linear.weight, logits.argmax(1))
        # CAM is exact: its mean over the map plus the bias is the logit.
        chosen = logits.gather(1, logits.argmax(1, keepdim=True))[:, 0]
        bias = model.final_linear.bias[logits.argmax(1)]
        assert torch.allclose(cam.mean((1, 2, 3)) + bias, chosen, atol=1e-4)
        relu_cam = torch.from_numpy(upsample_maps(scale_to_unit(cam.clamp_min(0)), (32, 32)))
        expected = scale_to_unit(relu_cam.unsqueeze(1))[:, 0].numpy()
        assert np.abs(expected - result.maps['gradcam']).max() < 1e-4
    finally:
        explainer.close()


def test_an_all_zero_map_under_multiply_changes_the_output():
    model = tiny_model(gate='multiply')
    x = torch.randn(2, 3, 32, 32)
    _, own, _ = model(x)
    _, edited, used = model(x, attention=torch.zeros(2, 1, 4, 4))
    assert used.shape[-2:] == (16, 16) and used.abs().sum() == 0
    assert not torch.allclose(own, edited)
    # g * 0 leaves the perception branch nothing of the image: both images score alike.
    assert torch.allclose(edited[0], edited[1], atol=1e-5)


# -- the metrics, on hand-made maps -------------------------------------------------------------

def square_mask(n=2, size=8):
    masks = np.zeros((n, size, size), bool)
    masks[:, 2:4, 2:4] = True  # a 2x2 object: 4 of 64 pixels
    return masks


def test_pointing_game_on_known_maps():
    masks = square_mask()
    on, off = np.zeros((2, 8, 8)), np.zeros((2, 8, 8))
    on[:, 3, 2] = 1.0
    off[:, 6, 6] = 1.0
    assert pointing_game(on, masks).tolist() == [1.0, 1.0]
    assert pointing_game(off, masks).tolist() == [0.0, 0.0]
    tied = off.copy()
    tied[:, 2, 2] = 1.0  # two peaks, one on the object: a random tie-break hits half the time
    assert pointing_game(tied, masks).tolist() == [0.5, 0.5]
    assert pointing_game(np.full((2, 8, 8), 0.3), masks).tolist() == [4 / 64, 4 / 64]
    beside = np.zeros((2, 8, 8))
    beside[:, 2, 5] = 1.0  # 2 px right of the object: a hit only with the tolerance
    assert pointing_game(beside, masks).tolist() == [0.0, 0.0]
    assert pointing_game(beside, masks, radius=1).tolist() == [0.0, 0.0]
    assert pointing_game(beside, masks, radius=2).tolist() == [1.0, 1.0]


def test_energy_inside_on_known_maps():
    masks = square_mask()
    inside_only = masks.astype(float) * 0.7 + 0.2  # offset: removed by the min shift
    assert np.allclose(energy_inside(inside_only, masks), 1.0)
    half = np.zeros((2, 8, 8))
    half[:, 2, 2], half[:, 7, 7] = 1.0, 1.0
    assert np.allclose(energy_inside(half, masks), 0.5)
    assert np.allclose(energy_inside(np.ones((2, 8, 8)), masks), 4 / 64)  # flat: evenly spread


def test_deletion_and_insertion_rank_good_maps_above_bad_ones():
    """A toy model whose confidence is the share of the object's pixels left intact: deleting
    the object first drops it at once, deleting it last keeps it up to the end."""
    masks = torch.from_numpy(square_mask())
    checkers = (torch.arange(8).view(1, 8) + torch.arange(8).view(8, 1)) % 2 * 2 - 1.0
    inputs = checkers.expand(2, 3, 8, 8)  # +-1: neither the mean (0) nor its blur (about 0)

    def predict(images):
        kept = (images[:, 0] == inputs[:, 0]).logical_and(masks).flatten(1).sum(1) / 4
        return torch.stack([1 - kept, kept], 1)

    good = masks.numpy().astype(float)
    bad = 1 - good
    d_good, i_good, curves = deletion_insertion(predict, inputs, good, [1, 1], steps=16)
    d_bad, i_bad, _ = deletion_insertion(predict, inputs, bad, [1, 1], steps=16)
    assert curves.shape == (2, 17, 2)
    assert np.allclose(curves[0, :, 0][[0, 1, -1]], [1, 0, 0])  # 1/16 of 64 pixels = the object
    assert np.allclose(d_good, 1 / 32) and np.allclose(d_bad, 1 - 1 / 32)
    assert np.allclose(i_good, 1 - 1 / 32) and np.allclose(i_bad, 1 / 32)


def test_road_ranks_good_maps_above_bad_ones():
    """A toy model that sees the object's brightness: imputing the object away (the good map,
    most relevant first) drops its confidence, imputing the background does not."""
    mask = torch.from_numpy(square_mask(n=1)[0])
    inputs = mask.float().expand(2, 3, 8, 8) * 4.0  # a bright square on 0

    def logits(images):
        inside = (images[:, 0] * mask).flatten(1).sum(1) / mask.sum()
        return torch.stack([-inside + 2, inside - 2], 1)

    ramp = np.linspace(0, 0.1, 64, dtype=np.float32).reshape(8, 8)  # no ties
    good = np.stack([mask.numpy() + ramp] * 2)
    bad = 1 - good
    state = torch.get_rng_state()
    good_scores = road(logits, inputs, good, [1, 1], percentiles=[50, 90], seed=1)
    bad_scores = road(logits, inputs, bad, [1, 1], percentiles=[50, 90], seed=1)
    assert torch.equal(state, torch.get_rng_state())  # its noise comes from its own seed
    assert good_scores.shape == (2,) and (good_scores > 0.2).all() and (bad_scores < 0).all()
    assert np.array_equal(good_scores, road(logits, inputs, good, [1, 1], [50, 90], seed=1))


def test_pointing_game_and_energy_inside_agree_with_quantus():
    """Quantus's PointingGame, RelevanceMassAccuracy and AttributionLocalisation compute the
    same things on maps with one maximum and a minimum of 0 (ours also score ties and shift
    the minimum to 0; on other maps they differ by design: utils/explain/measures.py)."""
    quantus = optional('quantus', 'pip install --no-deps -r requirements-quantus.txt')
    rng = np.random.default_rng(0)
    maps = rng.random((40, 1, 16, 16))
    masks = np.zeros((40, 1, 16, 16))
    for i, (top, left, size) in enumerate(rng.integers([0, 0, 2], [10, 10, 7], (40, 3))):
        masks[i, 0, top:top + size, left:left + size] = 1
    maps[::3] += 3 * masks[::3]  # some maps point at the object
    maps -= maps.min(axis=(2, 3), keepdims=True)  # minimum 0: our shift changes nothing
    x = rng.random((40, 3, 16, 16))

    def score(metric):  # a copy each: Quantus may normalise the maps in place
        return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(40, int),
                                 a_batch=maps.copy(), s_batch=masks.copy(),
                                 channel_first=True), dtype=float)

    theirs = {
        'pointing': score(quantus.PointingGame(disable_warnings=True)),
        'mass': score(quantus.RelevanceMassAccuracy(normalise=False, disable_warnings=True)),
        'localisation': score(quantus.AttributionLocalisation(normalise=False,
                                                              disable_warnings=True)),
    }
    hits = pointing_game(maps[:, 0], masks[:, 0] > 0)
    assert 0 < hits.mean() < 1
    assert np.array_equal(hits, theirs['pointing'])
    energy = energy_inside(maps[:, 0], masks[:, 0] > 0)
    assert np.allclose(energy, theirs['mass'], atol=1e-9)
    assert np.allclose(energy, theirs['localisation'], atol=1e-9)


# -- the docs -----------------------------------------------------------------------------------

def documented_commands():
    """Every explain.py command in README.md, TRAINING.md and docs/*.md."""
    return [line.split('explain.py', 1)[1] for _, text in documentation()
            for line in text.splitlines() if re.match(r'\s*python3? explain\.py', line)]


def test_the_docs_have_explain_commands():
    assert len(documented_commands()) >= 6


@pytest.mark.parametrize('argv', documented_commands())
def test_documented_command_parses(argv):
    args = explain.get_args_parser().parse_args(shlex.split(argv))
    explain.check_arguments(args)


# -- --target-class: what CAM and Grad-CAM explain ------------------------------------------

def test_cam_and_gradcam_explain_the_chosen_class_and_the_abn_map_stays(files):
    model = tiny_model(gate='multiply')
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    explainer = Explainer(model, ['abn', 'cam', 'gradcam'])
    try:
        own = explainer(x)
        predicted = own.logits.argmax(1)
        chosen = (predicted + 3) % 10  # another class than the prediction, for every image
        other = explainer(x, classes=chosen)
        mixed = explainer(x, classes=torch.tensor([-1, -1, int(chosen[2]), int(chosen[3])]))
    finally:
        explainer.close()
    assert torch.equal(other.classes, chosen) and torch.equal(own.classes, predicted)
    assert np.array_equal(other.maps['abn'], own.maps['abn'])  # the map knows no class
    # CAM of class k, computed here from the model's pieces: sum_c w[k, c] * maps[c].
    with torch.no_grad():
        features = model.extract_features(x)
        _, attention_map = model.attention_branch(features)
        maps = model.perception_features(model.apply_attention(features, attention_map))
        cam = torch.einsum('nchw,nc->nhw', maps, model.final_linear.weight[chosen])[:, None]
    expected = upsample_maps(scale_to_unit(cam), (32, 32))
    assert np.allclose(other.maps['cam'], expected, atol=1e-5)
    assert not np.allclose(other.maps['cam'], own.maps['cam'], atol=1e-3)
    assert not np.allclose(other.maps['gradcam'], own.maps['gradcam'], atol=1e-3)
    # -1: that image's prediction.
    assert mixed.classes.tolist() == [int(predicted[0]), int(predicted[1]),
                                      int(chosen[2]), int(chosen[3])]
    assert np.allclose(mixed.maps['cam'][:2], own.maps['cam'][:2], atol=1e-6)
    assert np.allclose(mixed.maps['cam'][2:], other.maps['cam'][2:], atol=1e-6)


@pytest.mark.parametrize('target', ['star', '6', 'true'])
def test_target_class_on_the_command_line(target, files, tmp_path, capsys):
    out = str(tmp_path / 'out')
    code, _, err = cli([files['multiply'], files['folder'], '--compare', '--target-class',
                        target, '-o', out] + CPU, capsys)
    assert code == 0, err
    records = read_json(os.path.join(out, 'predictions.json'))['images']
    for record in records:
        expected = record['true'] if target == 'true' else 'star'
        assert record['explained_class'] == expected


def test_a_target_class_the_model_lacks_is_one_line(files, tmp_path, capsys):
    code, _, err = cli([files['model'], files['folder'], '--target-class', 'dragon',
                        '-o', str(tmp_path / 'out')] + CPU, capsys)
    assert code == 1
    assert "--target-class dragon: give a class name (circle, square" in err
    assert "an index 0..9, or 'true'" in err and len(err.strip().splitlines()) == 1


def test_target_class_with_a_multitask_model_is_one_line(tmp_path, capsys):
    from models import MULTITASK_MODELS
    from tests.fakedata import save_run_checkpoint
    from utils.weights.modelspec import ModelSpec
    spec = ModelSpec('celeba', 'mtabn_v1_resnet18', MULTITASK_MODELS.model_args(
        'mtabn_v1_resnet18', num_classes=2, width=8), class_names=['a', 'b'],
        normalization=NORMALIZATION['shapes'], image_size=32, objective='multi-label')
    path = save_run_checkpoint(spec, str(tmp_path / 'multi.pth.tar'))
    code, _, err = cli([path, '--dataset', 'shapes-multi', '--target-class', 'a'] + CPU, capsys)
    assert code == 1 and 'choose them with --task' in err
    assert len(err.strip().splitlines()) == 1


# -- --masks: the mask measures on any images -------------------------------------------------

MASK_METRICS = ('pointing_game', 'pointing_game_tolerant', 'energy_inside')


def test_masks_from_a_folder_give_the_builtin_shapes_scores(files, tmp_path, capsys):
    """The shapes test split's own masks written as PNGs (white = object) and read back with
    --masks: every mask measure is the same as with the built-in masks."""
    from utils.data.datasets import base_dataset, build_small_image_data
    bundle = build_small_image_data('shapes', '', evaluate_only=True)
    masks = base_dataset(bundle.test).masks
    folder = tmp_path / 'masks'
    folder.mkdir()
    for index in range(6):
        Image.fromarray(np.asarray(masks[index], np.uint8) * 255).save(folder / f'{index}.png')
    common = [files['multiply'], '--dataset', 'shapes', '-n', '6', '--measure', '--steps', '2',
              '--road-percentiles', 'none', '--save-images', '0'] + CPU
    results = []
    for extra in ([], ['--masks', str(folder)]):
        out = str(tmp_path / f'out{len(extra)}')
        code, _, err = cli(common + ['-o', out] + extra, capsys)
        assert code == 0, err
        results.append(read_json(os.path.join(out, 'metrics.json'))['results'])
    for name, scores in results[0].items():
        for metric in MASK_METRICS:
            assert scores[metric] == results[1][name][metric], (name, metric)
    # The folder's masks are what is read: their inverse scores otherwise.
    for index in range(6):
        Image.fromarray(255 - np.asarray(masks[index], np.uint8) * 255).save(
            folder / f'{index}.png')
    out = str(tmp_path / 'inverse')
    code, _, err = cli(common + ['-o', out, '--masks', str(folder)], capsys)
    assert code == 0, err
    inverse = read_json(os.path.join(out, 'metrics.json'))['results']['ABN attention']
    assert inverse['energy_inside'] != results[0]['ABN attention']['energy_inside']


def test_masks_of_some_image_files_score_those_and_say_so(files, tmp_path, capsys):
    """Masks by <class folder>/<stem>: two of the four images have one."""
    photos = sorted(os.path.join(root, name) for root, _, names in os.walk(files['folder'])
                    for name in names)
    folder = tmp_path / 'masks'
    for path in photos[:2]:
        stem = os.path.splitext(os.path.basename(path))[0]
        target = folder / os.path.basename(os.path.dirname(path)) / f'{stem}.png'
        target.parent.mkdir(parents=True, exist_ok=True)
        mask = np.zeros((64, 64), np.uint8)  # any size: resized as the image is
        mask[16:48, 16:48] = 255
        Image.fromarray(mask).save(target)
    out = str(tmp_path / 'out')
    code, stdout, err = cli([files['multiply'], files['folder'], '--measure', '--steps', '2',
                             '--masks', str(folder), '-o', out] + CPU, capsys)
    assert code == 0, err
    assert 'has masks of 2 of the 4 images' in stdout
    scores = read_json(os.path.join(out, 'metrics.json'))['results']['ABN attention']
    assert scores['pointing_game']['n'] == 2 and scores['deletion_auc']['n'] == 4


def test_without_masks_the_mask_measures_are_left_out_and_said_so(files, tmp_path, capsys):
    out = str(tmp_path / 'out')
    code, stdout, err = cli([files['multiply'], files['folder'], '--measure', '--steps', '2',
                             '-o', out] + CPU, capsys)
    assert code == 0, err
    assert 'pointing game and energy inside are left out' in stdout
    scores = read_json(os.path.join(out, 'metrics.json'))['results']['ABN attention']
    assert not set(MASK_METRICS) & set(scores) and scores['insertion_auc']['n'] == 4
    code, _, err = cli([files['multiply'], files['folder'], '--masks', str(tmp_path)] + CPU,
                       capsys)
    assert code == 1 and 'give --measure too' in err
