"""Multi-task ABN V1 (small inputs keep it fast): outputs equal the authors' per-task loop
(tests/reference.py), the folded layer4 call equals the loop in eval and in training mode
(BatchNorm statistics included), their checkpoint format loads strictly, and the multi-label
baseline is torchvision's ResNet."""
import io
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from models import MULTITASK_MODELS, AbnOutput
from models.multitask import TaskBatchNorm2d
from tests import reference
from tests.fakedata import randomise
from utils.errors import AbnError
from utils.weights import checkpoint as ckpt

R18 = dict(layers=[2, 2, 2, 2], bottleneck=False)
R50 = dict(layers=[3, 4, 6, 3], bottleneck=True)
CASES = [('mtabn_v1_resnet18', 'eval', True, True, R18),
         ('mtabn_v1_resnet18', 'train', True, True, R18),
         ('mtabn_v1_resnet18', 'train', False, True, R18),
         ('mtabn_v1_resnet18', 'eval', False, False, R18),
         ('mtabn_v1_resnet18', 'train', True, False, R18),
         ('mtabn_v1_resnet50', 'train', False, True, R50)]


def close(got, expected):
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name,mode,residual,fold,ref_options', CASES,
                         ids=[f'{c[0][9:]}-{c[1]}-{"res" if c[2] else "mul"}-'
                              f'{"fold" if c[3] else "loop"}' for c in CASES])
def test_outputs_equal_the_authors_forward(name, mode, residual, fold, ref_options):
    model = randomise(MULTITASK_MODELS.create(name, num_classes=3, residual_attention=residual,
                                              fold_tasks=fold))
    getattr(model, mode)()
    # Training mode at 64 px: layer4's batch statistics over 2x2 maps of 2 images (at 32 px,
    # 1x1 maps of 2 images give variances so small that rounding dominates).
    size = 64 if mode == 'train' else 32
    x = torch.randn(2, 3, size, size)
    weights = reference.Weights(model.state_dict(), training=(mode == 'train'))
    with torch.no_grad():
        expected = reference.multitask_resnet(weights, x, residual_attention=residual,
                                              **ref_options)
        got = model(x)
    assert isinstance(got, AbnOutput)
    assert got.attention_logits.shape == got.perception_logits.shape == (2, 3)
    assert got.attention_map.shape == (2, 3, size // 16, size // 16)  # one map per task
    for e, g in zip(expected, got):
        close(g, e)
    assert set(model.state_dict()) == weights.used


def _step(model, x, target):
    model.zero_grad()
    out = model(x)
    loss = (nn.functional.binary_cross_entropy_with_logits(out.perception_logits, target)
            + nn.functional.binary_cross_entropy_with_logits(out.attention_logits, target))
    loss.backward()
    return out, {k: p.grad.clone() for k, p in model.named_parameters()}


def _pair(tasks=3):
    folded = randomise(MULTITASK_MODELS.create('mtabn_v1_resnet18', num_classes=tasks)).train()
    loop = MULTITASK_MODELS.create('mtabn_v1_resnet18', num_classes=tasks, fold_tasks=False)
    loop.load_state_dict(folded.state_dict())
    return folded, loop.train()


def test_folded_training_step_equals_the_loop_bn_statistics_included():
    """The loop normalises each task's pass with its own batch statistics and updates layer4's
    running statistics T times; TaskBatchNorm2d does both in the one folded call."""
    folded, loop = _pair()
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([[1., 0, 1], [0, 0, 1]])
    out_f, grads_f = _step(folded, x, target)
    out_l, grads_l = _step(loop, x, target)
    for f, g in zip(out_f, out_l):
        close(f, g)
    for k in grads_l:
        close(grads_f[k], grads_l[k])
    state_f, state_l = folded.state_dict(), loop.state_dict()
    for k in state_l:
        if k.endswith('num_batches_tracked'):
            assert state_f[k] == state_l[k]
        else:
            close(state_f[k], state_l[k])
    assert state_l['layer4.0.bn1.num_batches_tracked'] == 3  # T updates per step
    assert state_l['layer4_att.0.bn1.num_batches_tracked'] == 1


def test_plain_folding_would_pool_the_tasks_statistics(monkeypatch):
    """Without the per-task trick, the folded call normalises with statistics over all N*T
    samples and updates the running statistics once: training outputs and statistics differ
    from the authors' loop (eval outputs do not)."""
    monkeypatch.setattr(TaskBatchNorm2d, 'forward', nn.BatchNorm2d.forward)
    folded, loop = _pair()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain, authors = folded(x), loop(x)
    assert not torch.allclose(plain.perception_logits, authors.perception_logits, atol=1e-3)
    close(plain.attention_logits, authors.attention_logits)  # layer4 only is affected
    assert folded.state_dict()['layer4.0.bn1.num_batches_tracked'] == 1
    assert not torch.allclose(folded.layer4[0].bn1.running_mean, loop.layer4[0].bn1.running_mean)
    folded.eval(), loop.eval()
    with torch.no_grad():
        folded.load_state_dict(loop.state_dict())
        close(folded(x).perception_logits, loop(x).perception_logits)


def _authors_multitask_file(model, path, numpy1=True):
    """Saves `model` as the authors' train_celeba.py does: DataParallel keys, their six
    top-level keys, best_score a numpy float64 (with numpy 1's module name, as in their
    torch 2.1 files), a MultiStepLR state with its Counter of milestones."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # momentum buffers exist, as after training
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[4, 8], gamma=0.1)
    checkpoint = {'epoch': 10, 'iteration': 203, 'best_score': np.float64(0.9125),
                  'model_state_dict': {f'module.{k}': v for k, v in model.state_dict().items()},
                  'optimizer_state_dict': optimizer.state_dict(),
                  'scheduler_state_dict': scheduler.state_dict()}
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, 'w') as out:
        for info in source.infolist():
            data = source.read(info)
            if numpy1 and info.filename.endswith('data.pkl'):
                data = data.replace(b'numpy._core.multiarray\n', b'numpy.core.multiarray\n')
                assert b'numpy.core.multiarray\n' in data
            out.writestr(info, data)
    return path


def test_authors_checkpoint_format_loads_safely_and_strictly(tmp_path):
    source = randomise(MULTITASK_MODELS.create('mtabn_v1_resnet18', num_classes=4,
                                               residual_attention=False), seed=1)
    path = _authors_multitask_file(source, str(tmp_path / 'checkpoint-best.pt'))
    loaded = ckpt.load_checkpoint(path)  # weights_only
    assert loaded['epoch'] == 10 and loaded['iteration'] == 203
    assert float(loaded['best_score']) == 0.9125
    assert ckpt.is_legacy(loaded) and ckpt.checkpoint_num_classes(loaded) == 4
    model = MULTITASK_MODELS.create('mtabn_v1_resnet18', num_classes=4, gate='multiply')
    ckpt.load_model_state(model, loaded, path, 'mtabn_v1_resnet18')  # strict
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.multitask_resnet(reference.Weights(source.state_dict()), x,
                                              residual_attention=False, **R18)
        got = model(x)
    for e, g in zip(expected, got):
        close(g, e)
    with pytest.raises(AbnError, match='trained for 4 classes, but this data set has 40'):
        ckpt.load_model_state(MULTITASK_MODELS.create('mtabn_v1_resnet18'), loaded, path, 'x')


def test_baseline_is_torchvisions_resnet_with_one_output_per_task():
    theirs = randomise(torchvision.models.resnet18(num_classes=3)).eval()
    ours = MULTITASK_MODELS.create('resnet18', num_classes=3).eval()
    same = MULTITASK_MODELS.create('mtabn_v1_resnet18', num_classes=3, attention=False)
    assert list(same.state_dict()) == list(ours.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = ours(x)
        close(out.perception_logits, theirs(x))
    assert out.attention_logits is None and out.attention_map is None
    assert not ours.has_attention and ours.num_classes == 3


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_names_and_shapes_of_every_depth(depth):
    with torch.device('meta'):
        model = MULTITASK_MODELS.create(f'mtabn_v1_resnet{depth}', num_classes=40)
    keys = model.state_dict()
    e = 1 if depth < 50 else 4
    tops = []
    for k in keys:
        if k.split('.')[0] not in tops:
            tops.append(k.split('.')[0])
    # the authors' module order: no fc, no pooling weights
    assert tops == ['conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'layer4', 'output_per',
                    'layer4_att', 'conv_att']
    assert keys['conv_att.weight'].shape == (40, 512 * e, 1, 1)
    assert keys['output_per.39.weight'].shape == (1, 512 * e)
    assert keys['layer4_att.0.downsample.0.weight'].shape == (512 * e, 256 * e, 1, 1)
    stage = [k for k in keys if k.startswith('layer4.')]
    assert [k.replace('layer4.', 'layer4_att.', 1) for k in stage] == \
        [k for k in keys if k.startswith('layer4_att.')]


def test_gate_alias_and_defaults():
    create = MULTITASK_MODELS.create
    assert create('mtabn_v1_resnet18', num_classes=2).residual_attention  # their builder's
    assert not create('mtabn_v1_resnet18', num_classes=2, gate='multiply').residual_attention
    assert create('mtabn_v1_resnet18', num_classes=2, gate='residual').gate == 'residual'
    with pytest.raises(ValueError, match='contradicts'):
        create('mtabn_v1_resnet18', num_classes=2, residual_attention=False, gate='residual')
    with pytest.raises(ValueError, match="unknown multi-task architecture 'mtabn_v2_resnet18'"):
        create('mtabn_v2_resnet18')
    args = MULTITASK_MODELS.model_args('mtabn_v1_resnet18', num_classes=5, gate='multiply',
                                       depth=20)
    assert args == dict(num_classes=5, residual_attention=None, gate='multiply', attention=True,
                        fold_tasks=True, width=64)
    assert not MULTITASK_MODELS.create('mtabn_v1_resnet18', **args).residual_attention


def test_a_narrower_model_has_the_same_names_and_scaled_channels():
    """--width: every stage's channels scale with the first's (64, the authors'); the
    parameter names stay theirs."""
    wide = MULTITASK_MODELS.create('mtabn_v1_resnet18', num_classes=3).state_dict()
    torch.manual_seed(0)
    model = MULTITASK_MODELS.create('mtabn_v1_resnet18', num_classes=3, width=8)
    narrow = model.state_dict()
    assert list(narrow) == list(wide)
    assert narrow['conv1.weight'].shape == (8, 3, 7, 7)
    assert narrow['layer3.0.conv1.weight'].shape == (32, 16, 3, 3)
    assert narrow['conv_att.weight'].shape == (3, 64, 1, 1)
    assert narrow['output_per.2.weight'].shape == (1, 64)
    output = model.eval()(torch.randn(2, 3, 64, 64))
    assert output.perception_logits.shape == (2, 3) and output.attention_map.shape == (2, 3, 4, 4)
