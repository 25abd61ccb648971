"""CIFAR model families: shapes, parameter counts and names, and outputs equal to the
authors' forward pass (tests/reference.py) for the same weights."""
import pytest
import torch

from models import CIFAR_MODELS, IMAGENET_MODELS, MULTITASK_MODELS, AbnOutput, count_parameters
from tests import reference
from tests.fakedata import randomise
from utils.train.options import DROPOUT_MODELS

# (family, options, reference function, reference options); tiny depths for speed.
SMALL = [
    ('resnet', dict(depth=8), reference.cifar_resnet, dict(depth=8)),
    ('resnet', dict(depth=44), reference.cifar_resnet, dict(depth=44)),  # bottlenecks
    ('densenet', dict(depth=16, growthRate=6), reference.cifar_densenet, dict(depth=16)),
    ('wrn', dict(depth=10, widen_factor=2), reference.cifar_wrn, dict(depth=10)),
    ('resnext', dict(depth=11, cardinality=4, widen_factor=4), reference.cifar_resnext,
     dict(depth=11, cardinality=4)),
]


@pytest.mark.parametrize('family,options,ref,ref_options', SMALL,
                         ids=[f'{s[0]}-{s[1]["depth"]}' for s in SMALL])
@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_outputs_equal_the_authors_forward(family, options, ref, ref_options, mode):
    model = randomise(CIFAR_MODELS.create(family, num_classes=10, **options))
    getattr(model, mode)()
    x = torch.randn(3, 3, 32, 32)
    weights = reference.Weights(model.state_dict(), training=(mode == 'train'))
    with torch.no_grad():
        expected = ref(weights, x, **ref_options)
        got = model(x)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    unused = {k for k in model.state_dict() if k not in weights.used}
    if family == 'resnext':  # defined by the authors, never applied
        assert unused == {'bn_att.weight', 'bn_att.bias', 'bn_att.running_mean',
                          'bn_att.running_var', 'bn_att.num_batches_tracked'}
    else:
        assert unused == set()


@pytest.mark.parametrize('family,options,ref,ref_options', SMALL[:1] + SMALL[2:3],
                         ids=['resnet', 'densenet'])
def test_multiply_gate_is_the_papers_ablation(family, options, ref, ref_options):
    model = randomise(CIFAR_MODELS.create(family, num_classes=10, gate='multiply', **options))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref(reference.Weights(model.state_dict()), x, mode='multiply', **ref_options)
        got = model(x)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-5)


# The four reference configurations: parameter counts in millions (ABN, plain backbone).
REFERENCE_COUNTS = [
    ('resnet', dict(depth=110), 3.06, 1.73),
    ('densenet', dict(depth=100, growthRate=12), 1.12, 0.80),
    ('wrn', dict(depth=28, widen_factor=10, dropRate=0.3), 64.48, 36.54),
    ('resnext', dict(depth=29, cardinality=8, widen_factor=4), 60.88, 34.52),
]


@pytest.mark.parametrize('family,options,abn,plain', REFERENCE_COUNTS,
                         ids=[r[0] for r in REFERENCE_COUNTS])
def test_parameter_counts_of_the_reference_configurations(family, options, abn, plain):
    with torch.device('meta'):
        model = CIFAR_MODELS.create(family, num_classes=100, **options)
        baseline = CIFAR_MODELS.create(family, num_classes=100, attention=False, **options)
    assert round(count_parameters(model) / 1e6, 2) == abn
    assert round(count_parameters(baseline) / 1e6, 2) == plain


@pytest.mark.parametrize('family,stage,map_size', [
    ('resnet', 'att_layer3', 16), ('densenet', 'att_dense3', 8), ('wrn', 'att_block3', 16),
    ('resnext', 'stage_att', 16)])
def test_forward_triple_and_names(family, stage, map_size):
    options = dict(resnet=dict(depth=20), densenet=dict(depth=22, growthRate=4),
                   wrn=dict(depth=10, widen_factor=1), resnext=dict(depth=11, cardinality=2))
    model = CIFAR_MODELS.create(family, num_classes=7, **options[family])
    model.eval()
    output = model(torch.randn(2, 3, 32, 32))
    assert isinstance(output, AbnOutput)  # a named tuple that still unpacks as the triple
    attention_logits, perception_logits, attention_map = output
    assert output.perception_logits is perception_logits
    assert output.attention_map is attention_map
    assert attention_logits.shape == perception_logits.shape == (2, 7)
    assert attention_map.shape == (2, 1, map_size, map_size)
    assert 0 <= attention_map.min() and attention_map.max() <= 1
    keys = set(model.state_dict())
    head = {'bn_att.weight', 'att_conv.weight', 'bn_att2.weight', 'att_conv2.weight',
            'att_conv3.weight', 'bn_att3.weight'}
    assert head <= keys
    assert any(k.startswith(stage + '.') for k in keys)


@pytest.mark.parametrize('family', ['resnet', 'densenet', 'wrn', 'resnext'])
def test_baseline_has_no_attention_branch(family):
    options = dict(resnet=dict(depth=8), densenet=dict(depth=16, growthRate=4),
                   wrn=dict(depth=10, widen_factor=1), resnext=dict(depth=11, cardinality=2))
    model = CIFAR_MODELS.create(family, num_classes=5, attention=False, **options[family])
    attention_logits, perception_logits, attention_map = model(torch.randn(2, 3, 32, 32))
    assert attention_logits is None and attention_map is None
    assert perception_logits.shape == (2, 5)
    assert not any('att' in k for k in model.state_dict())


def test_edited_attention_map_drives_the_perception_branch():
    model = randomise(CIFAR_MODELS.create('resnet', depth=8, num_classes=10, gate='multiply'))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, own, own_map = model(x)
        _, same, _ = model(x, attention=own_map)
        _, zeroed, used = model(x, attention=torch.zeros(2, 1, 4, 4))  # resized to 16x16
        blank = model.perceive(torch.zeros(2, 32, 16, 16))
    torch.testing.assert_close(same, own)
    assert used.shape == (2, 1, 16, 16)
    torch.testing.assert_close(zeroed, blank)
    assert not torch.allclose(zeroed, own)


def test_any_input_size_works():
    model = CIFAR_MODELS.create('resnet', depth=8, num_classes=3)
    _, logits, attention_map = model(torch.randn(1, 3, 48, 64))
    assert logits.shape == (1, 3) and attention_map.shape == (1, 1, 24, 32)


@pytest.mark.parametrize('family,depth,message', [
    ('resnet', 29, '6n+2'), ('resnet', 2, '6n+2'), ('densenet', 25, '6n+4'),
    ('wrn', 27, '6n+4'), ('resnext', 30, '9n+2')])
def test_invalid_depth_is_refused(family, depth, message):
    with pytest.raises(ValueError, match=message.replace('+', r'\+')):
        CIFAR_MODELS.create(family, depth=depth, num_classes=10)


def test_resnext_refuses_dropout_it_would_ignore():
    with pytest.raises(ValueError, match='no dropout'):
        CIFAR_MODELS.create('resnext', depth=11, num_classes=10, dropRate=0.3)


def test_drop_applies_to_the_models_with_dropout():
    """The scripts' --drop refusal names DROPOUT_MODELS: the builders that take dropRate
    (ResNeXt takes it only to refuse it); no ImageNet or multi-task builder takes it."""
    takes = {name for name in CIFAR_MODELS if 'dropRate' in CIFAR_MODELS.options_of(name)}
    assert takes - {'resnext'} == set(DROPOUT_MODELS)
    for registry in (IMAGENET_MODELS, MULTITASK_MODELS):
        assert not [name for name in registry if 'dropRate' in registry.options_of(name)]
    for name in DROPOUT_MODELS:
        model = CIFAR_MODELS.create(name, depth=10, num_classes=10, dropRate=0.5)
        model.train()
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        # Dropout draws differ between two training-mode passes; eval mode is repeatable.
        assert not torch.equal(model(x).perception_logits, model(x).perception_logits), name
        model.eval()
        assert torch.equal(model(x).perception_logits, model(x).perception_logits), name


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown CIFAR architecture 'resnet20'"):
        CIFAR_MODELS.create('resnet20', num_classes=10)
