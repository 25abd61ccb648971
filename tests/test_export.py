"""export.py: ONNX (through onnxruntime) and torch.export programs give PyTorch's three outputs
for every CIFAR family, an ImageNet ResNet and a multi-task model, at batch 1 and 5 from one
file; the preprocessing is in the metadata or baked in; safetensors round-trips bitwise; bad
requests get one line. The files are run by onnxruntime and torch.export.load here, not by the
project's own --check, which has its own test."""
import json
import os

import numpy as np
import pytest
import torch

import export
from models import CIFAR_MODELS, IMAGENET_MODELS, MULTITASK_MODELS
from tests.fakedata import save_run_checkpoint
from tests.helpers import SMALLEST, family_params, run_script
from utils.data.datasets import NORMALIZATION
from utils.data.shapes import SHAPE_CLASSES
from utils.errors import AbnError
from utils.weights.export import ExportedAbn, export_program, write_onnx, write_pt2
from utils.weights.loading import load_model
from utils.weights.modelspec import ModelSpec

import onnx  # noqa: E402  (requirements-export.txt, in requirements-dev.txt)
import onnxruntime as ort  # noqa: E402

TOLERANCE = 1e-4
OUTPUTS = ['attention_logits', 'logits', 'attention_map']

# (script, arch, builder options, image size): the smallest model of each family.
CLASSES = {'cifar': 10, 'imagenet': 3, 'celeba': 4}
MODELS = {name: (script, arch, dict(options, num_classes=CLASSES[script]),
                 64 if script == 'imagenet' else 32)
          for name, (script, arch, options) in SMALLEST.items()}
REGISTRIES = {'cifar': CIFAR_MODELS, 'imagenet': IMAGENET_MODELS, 'celeba': MULTITASK_MODELS}


def write_checkpoint(name, folder):
    script, arch, options, size = MODELS[name]
    model_args = REGISTRIES[script].model_args(arch, attention=True, **options)
    spec = ModelSpec(script, arch, model_args, normalization=NORMALIZATION['shapes'],
                     image_size=size, resize_size=size + size // 8 if script == 'imagenet'
                     else None, dataset='shapes' if script == 'cifar' else None,
                     class_names=list(SHAPE_CLASSES) if script == 'cifar' else None,
                     objective='multi-label' if script == 'celeba' else 'single-label')
    return save_run_checkpoint(spec, os.path.join(folder, f'{name}.pth.tar'))


def inputs(loaded, batch, seed):
    return torch.randn(batch, 3, loaded.image_size, loaded.image_size,
                       generator=torch.Generator().manual_seed(seed))


def assert_close(got, want, what):
    got = torch.as_tensor(np.asarray(got))
    assert tuple(got.shape) == tuple(want.shape), what
    scale = want.abs().max().item()
    assert scale > 0, what  # a zero output would make the comparison empty
    difference = (got.float() - want.float()).abs().max().item()
    assert difference <= TOLERANCE * scale, f'{what}: {difference:.3g} at scale {scale:.3g}'


@pytest.mark.parametrize('name', family_params(sorted(MODELS)))
def test_onnx_and_pt2_give_pytorchs_three_outputs_at_batch_1_and_5(name, tmp_path):
    loaded = load_model(write_checkpoint(name, str(tmp_path)))
    model = loaded.model
    program = export_program(ExportedAbn(model, loaded.normalization).eval(), loaded, False)
    onnx_path, pt2_path = str(tmp_path / 'abn.onnx'), str(tmp_path / 'abn.pt2')
    write_onnx(program, onnx_path, OUTPUTS, {'abn.note': 'x'})
    write_pt2(program, pt2_path, {'abn.note': 'x'})

    session = ort.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == ['image']
    assert [o.name for o in session.get_outputs()] == OUTPUTS
    reloaded = torch.export.load(pt2_path).module()
    for batch in (1, 5):
        x = inputs(loaded, batch, seed=batch)
        with torch.no_grad():
            want = model(x)
            from_pt2 = reloaded(x)
        from_onnx = session.run(None, {'image': x.numpy()})
        for i, output in enumerate(OUTPUTS):
            assert_close(from_onnx[i], want[i], f'{name} onnx {output} batch {batch}')
            assert_close(from_pt2[i], want[i], f'{name} pt2 {output} batch {batch}')
    maps = want.attention_map
    tasks = MODELS[name][2]['num_classes'] if name.startswith('celeba') else 1
    assert maps.shape[:2] == (5, tasks)  # multi-task: one map channel per attribute


@pytest.fixture(scope='module')
def shapes_checkpoint(tmp_path_factory):
    return write_checkpoint('cifar-resnet', str(tmp_path_factory.mktemp('ck')))


def test_the_onnx_file_says_how_to_feed_it_and_with_preprocessing_takes_0_255(
        shapes_checkpoint, tmp_path, capsys):
    path = str(tmp_path / 'pre.onnx')
    code, out, err = run_script(export.main, [shapes_checkpoint, '-o', path,
                                              '--with-preprocessing', '--check'], capsys)
    assert code == 0, err
    assert 'agrees with PyTorch' in out and 'batch 5 attention_map' in out
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    mean, std = NORMALIZATION['shapes']
    assert json.loads(meta['abn.normalization']) == {'mean': list(mean), 'std': list(std)}
    assert json.loads(meta['abn.with_preprocessing']) is True
    assert json.loads(meta['abn.class_names']) == list(SHAPE_CLASSES)
    assert meta['abn.preprocessing'] == 'resize to 32x32'
    assert json.loads(meta['abn.model_spec'])['arch'] == 'resnet'

    # 0-255 pixels into the file = normalised pixels into the model.
    loaded = load_model(shapes_checkpoint)
    pixels = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(3))
    normalised = (pixels / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = session.run(None, {'image': pixels.float().numpy()})
    with torch.no_grad():
        want = loaded.model(normalised)
    for i, output in enumerate(OUTPUTS):
        assert_close(got[i], want[i], output)


def test_the_pt2_file_carries_the_same_metadata(shapes_checkpoint, tmp_path, capsys):
    path = str(tmp_path / 'abn.pt2')
    code, out, err = run_script(export.main, [shapes_checkpoint, '-o', path], capsys)
    assert code == 0, err
    extra = {'abn.json': ''}
    torch.export.load(path, extra_files=extra)
    meta = json.loads(extra['abn.json'])
    assert meta['abn.input'].startswith('image: float32 (N, 3, 32, 32)')
    assert json.loads(meta['abn.with_preprocessing']) is False
    assert meta['abn.outputs'] == 'attention_logits, logits, attention_map'


def test_safetensors_round_trip_bitwise_and_load_reads_them(shapes_checkpoint, tmp_path,
                                                            capsys):
    path = str(tmp_path / 'abn.safetensors')
    code, out, err = run_script(export.main, [shapes_checkpoint, '-o', path, '--check'], capsys)
    assert code == 0, err
    assert 'bitwise identical' in out
    original, again = load_model(shapes_checkpoint), load_model(path)
    ours, theirs = original.model.state_dict(), again.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert again.spec.arch == 'resnet' and again.class_names == list(SHAPE_CLASSES)
    assert again.normalization == original.normalization


def test_the_authors_checkpoint_exports_with_their_flags(tmp_path, capsys):
    from tests.fakedata import authors_checkpoint, randomise
    model = randomise(CIFAR_MODELS.create('resnet', depth=8, num_classes=10), 2)
    path = authors_checkpoint(model, str(tmp_path / 'authors.pth.tar'))
    out_path = str(tmp_path / 'authors.safetensors')
    code, out, err = run_script(export.main, [path, '-o', out_path, '--depth', '8',
                                              '--dataset', 'cifar10'], capsys)
    assert code == 0, err
    loaded = load_model(out_path)  # needs no flags now: the spec is in the file
    assert loaded.spec.model_args['depth'] == 8 and loaded.class_names[0] == 'airplane'
    assert all(torch.equal(loaded.model.state_dict()[k], v)
               for k, v in model.state_dict().items())


@pytest.mark.parametrize('argv, expected', [
    (['-o', 'x.onnx', '--format', 'pt2'], 'names a .onnx file but --format is pt2'),
    (['-o', 'x.bin'], 'give the suffix of a format'),
    (['-o', 'x.safetensors', '--with-preprocessing'], 'safetensors holds weights only'),
])
def test_contradicting_requests_get_one_line(argv, expected, shapes_checkpoint, tmp_path,
                                             capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_script(export.main, [shapes_checkpoint] + argv, capsys)
    assert code == 1 and expected in err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err
    assert not os.path.exists('x.onnx') and not os.path.exists('x.bin')


def test_without_the_packages_one_line_says_what_to_install(shapes_checkpoint, tmp_path,
                                                             capsys, monkeypatch):
    monkeypatch.setitem(__import__('sys').modules, 'onnxscript', None)
    code, out, err = run_script(export.main, [shapes_checkpoint, '-o', str(tmp_path / 'a.onnx')],
                                capsys)
    assert code == 1
    assert 'pip install -r requirements-export.txt' in err and 'Traceback' not in err


def test_the_default_output_sits_beside_the_checkpoint(shapes_checkpoint, capsys):
    code, out, err = run_script(export.main, [shapes_checkpoint, '--format', 'safetensors'],
                                capsys)
    assert code == 0, err
    expected = shapes_checkpoint[:-len('.pth.tar')] + '.safetensors'
    assert os.path.isfile(expected) and expected in out


def test_a_file_that_is_neither_gets_one_line(tmp_path):
    path = tmp_path / 'notes.txt'
    path.write_text('not weights')
    with pytest.raises(AbnError, match='neither a PyTorch checkpoint nor a safetensors file'):
        load_model(str(path))


def test_safetensors_without_a_model_spec_get_one_line(tmp_path):
    from safetensors.torch import save_file
    path = str(tmp_path / 'foreign.safetensors')
    save_file({'conv1.weight': torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(AbnError, match='holds weights without a model spec'):
        load_model(path)
    with open(path, 'r+b') as f:  # a damaged header
        f.seek(12)
        f.write(b'\xff\xff\xff')
    with pytest.raises(AbnError, match='cannot read safetensors file'):
        load_model(path)


def test_a_model_without_an_attention_branch_exports_its_logits(tmp_path, capsys):
    spec = ModelSpec('cifar', 'resnet', CIFAR_MODELS.model_args(
        'resnet', depth=8, num_classes=10, attention=False), normalization=NORMALIZATION['shapes'],
        image_size=32, dataset='shapes')
    checkpoint = save_run_checkpoint(spec, str(tmp_path / 'baseline.pth.tar'))
    path = str(tmp_path / 'baseline.onnx')
    code, out, err = run_script(export.main, [checkpoint, '-o', path, '--check'], capsys)
    assert code == 0, err
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    assert [o.name for o in session.get_outputs()] == ['logits']
    x = inputs(load_model(checkpoint), 2, seed=0)
    with torch.no_grad():
        want = load_model(checkpoint).model(x).perception_logits
    assert_close(session.run(None, {'image': x.numpy()})[0], want, 'baseline logits')
