"""What every registered model promises the engine, explain.py and the checkpoints, checked for
each name in CIFAR_MODELS and IMAGENET_MODELS: a family is tested by being registered.

Shapes, types and names are checked on the meta device (no memory, no compute) for every
name; the values (a map in [0, 1], finite logits) once per set of module types (one per block
design), on its smallest registered name. A family whose default size is large gets small options in SMALL_OPTIONS;
the families' own numbers (the authors' forward passes, parameter counts) are in
test_models_cifar.py and test_models_imagenet.py."""
import pytest
import torch

from models import CIFAR_MODELS, IMAGENET_MODELS, AbnOutput, count_parameters
from tests.helpers import SMALLEST

# Small sizes that still build each family's stages (tests.helpers.SMALLEST; unlisted
# families: their defaults).
SMALL_OPTIONS = {('CIFAR' if script == 'cifar' else 'ImageNet', arch): options
                 for script, arch, options in SMALLEST.values() if script != 'celeba'}
INPUT_SIZE = {'CIFAR': 32, 'ImageNet': 32}  # ImageNet models: their smallest input
HEAD = {'bn_att', 'att_conv', 'bn_att2', 'att_conv2', 'att_conv3', 'bn_att3'}
CLASSES = 3
REGISTERED = [(registry, name) for registry in (CIFAR_MODELS, IMAGENET_MODELS)
              for name in sorted(registry)]
IDS = [f'{r.title}-{n}' for r, n in REGISTERED]


def options(registry, name):
    return dict(SMALL_OPTIONS.get((registry.title, name), {}), num_classes=CLASSES)


def on_meta(registry, name, **extra):
    with torch.device('meta'):
        return registry.create(name, **options(registry, name), **extra)


def images(registry, device='cpu'):
    size = INPUT_SIZE[registry.title]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    return x.to(device)


def smallest_of_each_class():
    """(registry, name) of the smallest registered name of each set of module types."""
    chosen = {}
    for registry, name in REGISTERED:
        model = on_meta(registry, name)
        size = count_parameters(model)
        key = (registry.title, frozenset(type(module) for module in model.modules()))
        if key not in chosen or size < chosen[key][0]:
            chosen[key] = (size, registry, name)
    return [(registry, name) for _, registry, name in chosen.values()]


REPRESENTATIVES = smallest_of_each_class()


def test_both_registries_are_filled():
    assert {'resnet', 'densenet', 'wrn', 'resnext'} <= set(CIFAR_MODELS)
    assert {'resnet18', 'resnet50', 'se_resnet18', 'resnext50', 'vgg16_bn'} <= set(IMAGENET_MODELS)
    # CIFAR: 4 families; ImageNet: ResNet (basic and bottleneck), SE-ResNet, VGG at least
    assert len(REPRESENTATIVES) >= 8


@pytest.mark.parametrize('registry,name', REGISTERED, ids=IDS)
def test_abn_output_shapes_and_head_names(registry, name):
    """An AbnOutput of (N, K) logits and an (N, 1, h, w) map at the feature extractor's
    resolution; the attention head under the authors' names."""
    model = on_meta(registry, name)
    x = images(registry, 'meta')
    output = model(x)
    features = model.extract_features(x)
    assert isinstance(output, AbnOutput) and model.has_attention
    assert model.num_classes == CLASSES
    assert output.attention_logits.shape == output.perception_logits.shape == (2, CLASSES)
    assert output.attention_map.shape == (2, 1) + tuple(features.shape[-2:])
    assert HEAD <= {key.split('.')[0] for key in model.state_dict()}


@pytest.mark.parametrize('registry,name', REGISTERED, ids=IDS)
def test_baseline_is_the_abn_without_its_attention_branch(registry, name):
    """attention=False: no attention output, no 'att' parameter, and every parameter name
    and shape that of the ABN (so backbone weights move between the two)."""
    model = on_meta(registry, name, attention=False)
    output = model(images(registry, 'meta'))
    assert isinstance(output, AbnOutput) and not model.has_attention
    assert output.attention_logits is None and output.attention_map is None
    assert output.perception_logits.shape == (2, CLASSES)
    plain = {k: v.shape for k, v in model.state_dict().items()}
    assert not any('att' in key for key in plain)
    abn = {k: v.shape for k, v in on_meta(registry, name).state_dict().items()}
    assert {k: abn.get(k) for k in plain} == plain


@pytest.mark.parametrize('registry,name', REGISTERED, ids=IDS)
def test_model_args_rebuild_the_same_state_dict(registry, name):
    """A checkpoint stores model_args; building from them alone gives the same names."""
    first = on_meta(registry, name)
    with torch.device('meta'):
        again = registry.create(name, **registry.model_args(name, **options(registry, name)))
    assert [(k, v.shape) for k, v in first.state_dict().items()] == \
        [(k, v.shape) for k, v in again.state_dict().items()]


@pytest.mark.parametrize('registry,name', REPRESENTATIVES,
                         ids=[f'{r.title}-{n}' for r, n in REPRESENTATIVES])
def test_attention_map_is_a_gate_in_0_1(registry, name):
    torch.manual_seed(0)
    model = registry.create(name, **options(registry, name)).eval()
    with torch.no_grad():
        output = model(images(registry))
    assert 0 <= output.attention_map.min() and output.attention_map.max() <= 1
    assert torch.isfinite(output.attention_logits).all()
    assert torch.isfinite(output.perception_logits).all()
