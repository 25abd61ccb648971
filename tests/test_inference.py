"""utils.inference, the one way a loaded ABN answers without gradients (the Python API,
explain.py's measures): every runtime gives the model's own outputs for every family, the
graph of a checkpoint is exported once, the default picks onnxruntime where it is installed;
and utils.cpus, the threads that fit the CPUs this process may use."""
import os
import types

import pytest
import torch
import torch.nn as nn

import cifar
import explain
import utils.inference as inference
from models import CIFAR_MODELS, IMAGENET_MODELS, MULTITASK_MODELS
from tests.fakedata import randomise
from tests.helpers import (SMALLEST, family_params, run_script, save_project_checkpoint,
                           tiny_model)
from utils import cpus
from utils.api import load
from utils.weights.loading import LoadedModel

pytestmark = pytest.mark.usefixtures('one_thread')

REGISTRIES = {'cifar': CIFAR_MODELS, 'imagenet': IMAGENET_MODELS, 'celeba': MULTITASK_MODELS}
# the smallest model of each family, and the libraries' and SE-ResNet's
FAMILIES = {name: (REGISTRIES[script], arch, options, 32 if script == 'cifar' else 64)
            for name, (script, arch, options) in SMALLEST.items()}
FAMILIES.update({
    'imagenet-se_resnet18': (IMAGENET_MODELS, 'se_resnet18', {}, 64),
    'timm-resnet18': (IMAGENET_MODELS, 'timm:resnet18', dict(image_size=64), 64),
    'timm-vit': (IMAGENET_MODELS, 'timm:vit_tiny_patch16_224', dict(image_size=64), 64)})


def loaded(registry, arch, options, size):
    torch.manual_seed(0)
    model = randomise(registry.create(arch, num_classes=4, **options), seed=1).eval()
    return LoadedModel(model, arch, None, ((0.5,) * 3, (0.25,) * 3), size, size > 32, None,
                       size)


@pytest.mark.parametrize('name', family_params(FAMILIES))
@pytest.mark.parametrize('runtime', ['folded', 'onnxruntime'])
def test_every_runtime_gives_the_models_own_outputs(name, runtime):
    """Within 1e-5 of each output's scale (at least 1, a map's values being shares of
    [0, 1]): the logits of both branches and the map, at batch 1 and 5."""
    registry, arch, options, size = FAMILIES[name]
    model = loaded(registry, arch, options, size)
    run = inference.make_runtime(model, runtime)
    assert run.name == runtime
    for batch in (1, 5):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = model.model(x)
        got = run(x)
        for a, b in zip(got, want):
            assert a.shape == b.shape and inference.agree(a, b, 1e-5), (name, runtime)


def test_batchnorm_is_folded_where_it_only_normalises_a_convolution():
    model = loaded(CIFAR_MODELS, 'resnet', dict(depth=8), 32).model
    norms = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    folded = inference.fold_batchnorm(model, torch.randn(2, 3, 32, 32))
    # bn_att normalises the attention stage's output (a residual sum), not a convolution's
    assert sum(type(m) is nn.BatchNorm2d for m in folded.modules()) == 1 < norms
    assert sum(type(m) is nn.BatchNorm2d for m in model.modules()) == norms  # a copy

    class ReadTwice(nn.Module):  # the convolution's output goes to the norm and elsewhere
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
            randomise(self)

        def forward(self, x):
            y = self.conv(x)
            return types.SimpleNamespace(perception_logits=self.norm(y) + y,
                                         attention_map=None)
    twice = ReadTwice().eval()
    kept = inference.fold_batchnorm(twice, torch.randn(2, 3, 4, 4))
    assert isinstance(kept.norm, nn.BatchNorm2d)  # left unfolded: folding would change it


def test_a_checkpoints_graph_is_exported_once(tmp_path, monkeypatch):
    monkeypatch.setenv('ABN_CACHE', str(tmp_path / 'cache'))
    path = save_project_checkpoint(tiny_model(), str(tmp_path / 'abn.pth.tar'))
    exports = []
    import utils.weights.export as export
    original = export.export_program
    monkeypatch.setattr(export, 'export_program',
                        lambda *a, **k: exports.append(1) or original(*a, **k))
    first = load(path)
    first.explain([torch.rand(3, 32, 32)])
    second = load(path)
    result = second.explain([torch.rand(3, 32, 32)])
    assert isinstance(second.runtime, inference.OnnxRuntime) and exports == [1]
    assert os.listdir(tmp_path / 'cache') == [f'{inference.cache_key(path)}.onnx']
    assert result.maps[0].shape == (32, 32)


def test_auto_takes_onnxruntime_where_installed_else_the_folded_model(monkeypatch):
    model = loaded(CIFAR_MODELS, 'resnet', dict(depth=8), 32)
    assert inference.make_runtime(model).name == 'onnxruntime'
    monkeypatch.setattr(inference, 'installed', lambda module: False)
    assert inference.make_runtime(model).name == 'folded'
    with pytest.raises(inference.AbnError, match='--runtime onnxruntime needs onnxruntime'):
        inference.make_runtime(model, 'onnxruntime')
    assert inference.make_runtime(model, 'eager').name == 'eager'


def test_the_api_answers_through_the_runtime_as_the_model_does(tmp_path):
    path = save_project_checkpoint(tiny_model(), str(tmp_path / 'abn.pth.tar'))
    images = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i))
              for i in range(3)]
    fast, plain = load(path).explain(images), load(path, runtime='eager').explain(images)
    assert inference.agree(fast.logits, plain.logits)
    assert all(abs(a - b).max() <= 1e-5 for a, b in zip(fast.maps, plain.maps))
    assert fast.classes == plain.classes
    with pytest.raises(inference.AbnError, match="unknown runtime 'fast'"):
        load(path, runtime='fast')


# -- the CPUs this process may use ---------------------------------------------------------

def test_the_budget_is_the_affinity_capped_by_the_cgroup_quota(tmp_path, monkeypatch):
    """A job of 1.5 CPUs on an 8-core node runs 2 threads, not 8."""
    v2 = tmp_path / 'cpu.max'
    monkeypatch.setattr(cpus, 'affinity_cpus', lambda: 8)
    monkeypatch.setattr(cpus, 'CGROUP_V2', str(v2))
    monkeypatch.setattr(cpus, 'CGROUP_V1', (str(tmp_path / 'none'), str(tmp_path / 'none')))
    assert cpus.cpu_budget() == 8  # no cgroup file: the affinity
    for written, budget in (('max 100000', 8), ('150000 100000', 2), ('300000 100000', 3),
                            ('2000000 100000', 8), ('50000 100000', 1)):
        v2.write_text(written + '\n')
        assert cpus.cpu_budget() == budget, written
    quota, period = tmp_path / 'quota', tmp_path / 'period'
    period.write_text('100000\n')
    for written, cpus_worth in (('400000', 4.0), ('-1', None)):
        quota.write_text(written + '\n')
        assert cpus.quota_cpus(str(tmp_path / 'none'), (str(quota), str(period))) == cpus_worth


def test_threads_follow_the_budget_less_the_workers(monkeypatch):
    monkeypatch.setattr(cpus, 'cpu_budget', lambda: 4)
    before = torch.get_num_threads()
    try:
        assert cpus.use_threads() == 4 and torch.get_num_threads() == 4
        assert cpus.use_threads(reserved=2) == 2
        assert cpus.use_threads(reserved=9) == 1
        assert cpus.use_threads(3, reserved=2) == 3  # --threads wins
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize('main', [cifar.main, explain.main])
def test_threads_below_one_are_refused(main, tmp_path, capsys):
    argv = ['--threads', '0'] + (['x.pth.tar'] if main is explain.main else
                                 ['-c', str(tmp_path / 'run')])
    code, _, err = run_script(main, argv, capsys)
    assert code == 1 and '--threads must be at least 1, got 0' in err


def test_a_run_gives_the_callers_threads_back(tmp_path):
    before = torch.get_num_threads()
    assert cifar.main(['--dataset', 'shapes', '--depth', '8', '--train-size', '64',
                       '--test-size', '32', '--epochs', '1', '-j', '0', '--gpu-id', 'cpu',
                       '--threads', '3', '--save-attention', '0', '-c',
                       str(tmp_path / 'run')]) == 0
    assert torch.get_num_threads() == before
