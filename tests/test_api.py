"""utils.api and hubconf.py: docs/api.md's examples run as written; explain() gives what
explain.py gives, with maps at each image's own size in [0, 1] (the crop of an ImageNet model
placed where it was cut), per-attribute answers for multi-task files, and one line for what it
cannot take; torch.hub loads a checkpoint from a local clone."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import explain
from models import CIFAR_MODELS, IMAGENET_MODELS, MULTITASK_MODELS
from tests.fakedata import save_run_checkpoint
from tests.helpers import ROOT, run_script
from utils.api import load
from utils.data.datasets import NORMALIZATION
from utils.data.shapes import SHAPE_CLASSES
from utils.errors import AbnError
from utils.weights.modelspec import ModelSpec


def shapes_spec(depth=8):
    return ModelSpec('cifar', 'resnet', CIFAR_MODELS.model_args(
        'resnet', depth=depth, num_classes=10, attention=True, gate='multiply'),
        class_names=list(SHAPE_CLASSES), normalization=NORMALIZATION['shapes'], image_size=32,
        dataset='shapes')


def write_photo(path, size=(80, 48), seed=0):
    """An RGB picture of `size` (width, height) with a bright square in it."""
    pixels = np.random.RandomState(seed).randint(0, 80, (size[1], size[0], 3)).astype(np.uint8)
    pixels[10:30, 20:40] = 230
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope='module')
def shapes_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp('api')
    return save_run_checkpoint(shapes_spec(), str(folder / 'model_best.pth.tar'))


def python_blocks(text):
    return re.findall(r'```python\n(.*?)```', text, re.S)


def test_the_docs_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/api.md's first example, in a folder holding what it names."""
    monkeypatch.chdir(tmp_path)
    os.makedirs('checkpoints/shapes/resnet-20')
    save_run_checkpoint(shapes_spec(depth=20), 'checkpoints/shapes/resnet-20/model_best.pth.tar')
    write_photo('photo.png')
    with open(os.path.join(ROOT, 'docs', 'api.md')) as f:
        example = python_blocks(f.read())[0]
    scope = {}
    exec(compile(example, 'docs/api.md', 'exec'), scope)
    result = scope['result']
    assert len(result) == 4 and len(result.classes) == 4
    assert all(name in SHAPE_CLASSES for name in result.classes)
    assert [m.shape for m in result.maps] == [(48, 80), (48, 80), (64, 64), (64, 64)]
    out = capsys.readouterr().out
    assert 'torch.Size([4, 10])' in out


@pytest.mark.slow
def test_the_docs_onnx_example_runs_as_written(shapes_checkpoint, tmp_path, monkeypatch, capsys):
    import export
    monkeypatch.chdir(tmp_path)
    code, _, err = run_script(export.main, [shapes_checkpoint, '-o', 'abn.onnx'], capsys)
    assert code == 0, err
    write_photo('photo.png')
    with open(os.path.join(ROOT, 'docs', 'api.md')) as f:
        example = [b for b in python_blocks(f.read()) if 'onnxruntime' in b][0]
    scope = {}
    exec(compile(example, 'docs/api.md', 'exec'), scope)
    want = load(shapes_checkpoint).explain('photo.png')
    # The same prediction as the API's (PIL's resize of a 80x48 photo to 32x32 in both).
    assert np.allclose(scope['logits'], want.logits.numpy(), atol=1e-4)
    abn = load(shapes_checkpoint)
    with torch.no_grad():
        own_map = abn(abn.preprocess('photo.png')[0]).attention_map
    assert np.allclose(scope['attention_map'], own_map.numpy(), atol=1e-4)


def test_explain_agrees_with_explain_py(shapes_checkpoint, tmp_path, capsys):
    photos = [write_photo(tmp_path / f'p{i}.png', seed=i) for i in range(3)]
    out_dir = str(tmp_path / 'out')
    code, _, err = run_script(explain.main, [shapes_checkpoint, *photos, '-o', out_dir,
                                             '--gpu-id', 'cpu', '--save-images', '0'], capsys)
    assert code == 0, err
    with open(os.path.join(out_dir, 'predictions.json')) as f:
        predictions = json.load(f)
    result = load(shapes_checkpoint).explain(photos)
    for entry, top in zip(predictions['images'], result.top(5)):
        theirs = entry['top5']
        assert [t['name'] for t in theirs] == [name for name, _ in top]
        assert np.allclose([t['probability'] for t in theirs], [p for _, p in top], atol=1e-5)
    assert torch.allclose(result.probabilities.sum(1), torch.ones(3))
    for unit_map in result.maps:
        assert unit_map.shape == (48, 80) and unit_map.dtype == np.float32
        assert 0 <= unit_map.min() and unit_map.max() <= 1


def test_pil_images_arrays_and_tensors_give_the_same_answer(shapes_checkpoint, tmp_path):
    """One picture at the model's own size, given six ways (no resize involved)."""
    path = write_photo(tmp_path / 'small.png', size=(32, 32))
    picture = Image.open(path)
    pixels = np.array(picture.convert('RGB'))
    as_uint8 = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    abn = load(shapes_checkpoint)
    result = abn.explain([path, picture, pixels, as_uint8, as_uint8[None].float() / 255,
                          pixels.astype(np.float32) / 255])
    assert torch.allclose(result.logits, result.logits[:1].expand(6, -1), atol=1e-5)
    assert result.sources[:3] == [path, 'PIL image 1', 'array 2']
    assert result.sources[4] == 'tensor 4[0]'


@pytest.mark.parametrize('bad, expected', [
    (torch.randn(2, 3, 16, 16) * 3, 'before normalisation'),
    ('missing.png', 'no image at missing.png'),
    (torch.rand(2, 4, 16, 16), 'give (3, H, W) or (N, 3, H, W) RGB'),
    (3.5, 'cannot explain a float'),
    ([], 'nothing to explain'),
])
def test_what_explain_cannot_take_gets_one_line(shapes_checkpoint, bad, expected):
    with pytest.raises(AbnError, match=re.escape(expected)):
        load(shapes_checkpoint).explain(bad)


def test_a_corrupt_image_is_named(shapes_checkpoint, tmp_path):
    path = tmp_path / 'broken.png'
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 20)
    with pytest.raises(AbnError, match='broken.png'):
        load(shapes_checkpoint).explain(str(path))


def test_an_imagenet_models_map_covers_only_the_centre_crop(tmp_path):
    """Shorter side to 36, centre crop 32: an 80x40 (w x h) photo is scaled to 72x36 and
    cropped at columns 20..52 and rows 2..34, which are columns 22..58 and rows 2..38 of the
    original; outside them the map is 0, inside it is the model's map (> 0: a sigmoid)."""
    spec = ModelSpec('imagenet', 'resnet18', IMAGENET_MODELS.model_args(
        'resnet18', num_classes=3, attention=True), class_names=['cat', 'dog', 'fox'],
        normalization=NORMALIZATION['imagefolder'], image_size=32, resize_size=36)
    path = save_run_checkpoint(spec, str(tmp_path / 'imagenet.pth.tar'))
    result = load(path).explain(write_photo(tmp_path / 'wide.png', size=(80, 40)))
    unit_map = result.maps[0]
    assert unit_map.shape == (40, 80)
    assert np.all(unit_map[:, :20] == 0) and np.all(unit_map[:, 61:] == 0)
    assert np.all(unit_map[:2] == 0) and np.all(unit_map[39:] == 0)
    assert np.all(unit_map[4:36, 25:55] > 0.3)
    assert result.classes[0] in ('cat', 'dog', 'fox')


def test_a_multitask_file_gives_each_attribute_its_probability_and_map(tmp_path):
    spec = ModelSpec('celeba', 'mtabn_v1_resnet18', MULTITASK_MODELS.model_args(
        'mtabn_v1_resnet18', num_classes=4, width=8), class_names=['a', 'b', 'c', 'd'],
        normalization=NORMALIZATION['shapes'], image_size=32, objective='multi-label')
    path = save_run_checkpoint(spec, str(tmp_path / 'multi.pth.tar'))
    abn = load(path)
    assert abn.loaded.multitask
    result = abn.explain([write_photo(tmp_path / 'm.png', size=(50, 40))])
    assert result.names == ['a', 'b', 'c', 'd']
    assert torch.allclose(result.probabilities, torch.sigmoid(result.logits))
    assert result.classes[0] == [n for n, p in zip(result.names, result.probabilities[0])
                                 if p >= 0.5]
    assert result.maps[0].shape == (4, 40, 50)
    assert result.maps[0].min() >= 0 and result.maps[0].max() <= 1
    assert result.maps[0].max() > 0


def test_the_authors_file_loads_with_their_flags_as_keywords(tmp_path):
    from tests.fakedata import authors_checkpoint, randomise
    model = randomise(CIFAR_MODELS.create('resnet', depth=8, num_classes=10), 1)
    path = authors_checkpoint(model, str(tmp_path / 'authors.pth.tar'))
    abn = load(path, arch='resnet', depth=8, dataset='cifar10')
    assert abn.names[0] == 'airplane'
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(abn(abn.preprocess(x)[0]).perception_logits,
                           model.eval()(abn.preprocess(x)[0]).perception_logits)
    with pytest.raises(AbnError, match='contradict'):
        load(save_run_checkpoint(shapes_spec(), str(tmp_path / 'own.pth.tar')), depth=20)


@pytest.mark.slow
def test_torch_hub_loads_a_checkpoint_and_builds_every_architecture(shapes_checkpoint,
                                                                    tmp_path):
    """In a fresh interpreter, from another folder, as a user of the hub would."""
    photo = write_photo(tmp_path / 'photo.png')
    script = f"""
import torch
abn = torch.hub.load({ROOT!r}, 'from_checkpoint', {shapes_checkpoint!r}, source='local')
print('classes', abn.explain({photo!r}).classes)
model = torch.hub.load({ROOT!r}, 'cifar_resnet', depth=8, num_classes=3, source='local')
print('built', type(model).__name__, model.num_classes)
try:
    torch.hub.load({ROOT!r}, 'cifar_resnet', dept=8, source='local')
except TypeError as error:
    print('refused', error)
"""
    done = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"classes \['\w+'\]", done.stdout)
    assert 'built CifarResNet 3' in done.stdout
    assert 'refused cifar_resnet takes' in done.stdout and 'not dept' in done.stdout

    sys.path.insert(0, ROOT)
    try:
        import hubconf
    finally:
        sys.path.remove(ROOT)
    entries = {name for name in dir(hubconf)
               if callable(getattr(hubconf, name)) and not name.startswith('_')}
    expected = {f'{script}_{arch}' for script, registry in (
        ('cifar', CIFAR_MODELS), ('imagenet', IMAGENET_MODELS), ('celeba', MULTITASK_MODELS))
        for arch in registry} | {'from_checkpoint', 'timm', 'torchvision'}  # + the libraries'
    assert entries == expected


@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (3, 8, 8), (8, 8, 5)])
def test_arrays_of_another_shape_are_one_line(shapes_checkpoint, shape):
    for dtype in (np.uint8, np.float32):
        with pytest.raises(AbnError, match=r'array 0: give \(H, W, 3\) pixels'):
            load(shapes_checkpoint).explain([np.zeros(shape, dtype)])
    gray = load(shapes_checkpoint).explain([np.zeros((8, 8), np.uint8),
                                            np.zeros((8, 8), np.float32)])
    assert [m.shape for m in gray.maps] == [(8, 8), (8, 8)]


def test_importing_the_api_leaves_the_plotting_library_out():
    """`utils.api` (and torch.hub's hubconf) load a model and answer for images: matplotlib,
    which only the scripts' pictures need, is not imported with them."""
    code = ('import sys, utils.api, hubconf; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib"))')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == '[]'
