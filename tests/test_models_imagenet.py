"""ImageNet model families: outputs equal to the authors' forward pass (tests/reference.py),
their checkpoints, plain baselines that are torchvision's models, the split of each family,
and parameter counts. Small inputs (64 px) and few classes keep it fast; whatever needs only
shapes runs on the meta device."""
import pytest
import torch
import torchvision

from models import IMAGENET_MODELS, count_parameters
from tests import reference
from tests.fakedata import authors_checkpoint, randomise
from utils.weights import checkpoint as ckpt

R18 = dict(layers=[2, 2, 2, 2], bottleneck=False)
R50 = dict(layers=[3, 4, 6, 3], bottleneck=True)
# (name, mode, reference options); ResNet-50 in eval mode is the checkpoint test's
AUTHORS = [
    ('resnet18', 'eval', R18), ('resnet18', 'train', R18), ('resnet50', 'train', R50),
    ('se_resnet18', 'eval', dict(R18, se=True)), ('se_resnet18', 'train', dict(R18, se=True)),
]
# every family's name with torchvision's model of the same backbone
TORCHVISION = [
    ('resnet18', {}, 'resnet18'), ('resnet34', {}, 'resnet34'), ('resnet50', {}, 'resnet50'),
    ('resnet101', {}, 'resnet101'), ('resnet152', {}, 'resnet152'),
    ('resnext50', dict(cardinality=32, base_width=4), 'resnext50_32x4d'),
    ('resnext101', dict(cardinality=32, base_width=8), 'resnext101_32x8d'),
    ('resnext101', dict(cardinality=64, base_width=4), 'resnext101_64x4d'),
    ('vgg16_bn', {}, 'vgg16_bn'),
]


def shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize('name,mode,ref_options', AUTHORS, ids=[f'{a[0]}-{a[1]}' for a in AUTHORS])
def test_outputs_equal_the_authors_forward(name, mode, ref_options):
    model = randomise(IMAGENET_MODELS.create(name, num_classes=5))
    getattr(model, mode)()
    x = torch.randn(2, 3, 64, 64)
    weights = reference.Weights(model.state_dict(), training=(mode == 'train'))
    with torch.no_grad():
        expected = reference.imagenet_resnet(weights, x, **ref_options)
        got = model(x)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    assert got[2].shape == (2, 1, 4, 4)  # the feature extractor's resolution, 1/16
    assert set(model.state_dict()) == weights.used


def test_multiply_gate_is_the_papers_ablation():
    model = randomise(IMAGENET_MODELS.create('resnet18', num_classes=5, gate='multiply')).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.imagenet_resnet(reference.Weights(model.state_dict()), x,
                                             mode='multiply', **R18)
        got = model(x)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-5)


def test_authors_resnet50_checkpoint_loads_strictly_with_their_outputs(tmp_path):
    """Their published ImageNet files: DataParallel keys, torch 0.4's CUDA serialisation."""
    source = randomise(IMAGENET_MODELS.create('resnet50', num_classes=10), seed=1)
    path = authors_checkpoint(source, str(tmp_path / 'model_best.pth.tar'), epoch=90, acc=76.9)
    loaded = ckpt.load_checkpoint(path)
    assert ckpt.is_legacy(loaded) and ckpt.checkpoint_num_classes(loaded) == 10
    model = IMAGENET_MODELS.create('resnet50', num_classes=10)
    ckpt.load_model_state(model, loaded, path, 'resnet50')  # strict
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.imagenet_resnet(reference.Weights(source.state_dict()), x, **R50)
        got = model(x)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_parameter_count_of_abn_resnet50():
    with torch.device('meta'):
        abn = IMAGENET_MODELS.create('resnet50', num_classes=1000)
        plain = IMAGENET_MODELS.create('resnet50', num_classes=1000, attention=False)
    # 43.58M printed with two decimals, as the authors' script prints it; ABN.md's
    # "43.59M" rounds 43.585.
    assert count_parameters(abn) == 43_584_866
    assert count_parameters(plain) == 25_557_032  # torchvision's resnet50


@pytest.mark.parametrize('name,options,torchvision_name', TORCHVISION,
                         ids=[t[2] for t in TORCHVISION])
def test_baseline_is_torchvisions_model_key_for_key(name, options, torchvision_name):
    with torch.device('meta'):
        ours = IMAGENET_MODELS.create(name, num_classes=1000, attention=False, **options)
        theirs = torchvision.models.get_model(torchvision_name)
    assert shapes(ours) == shapes(theirs)
    assert ours.torchvision_name == torchvision_name


def test_baseline_outputs_equal_torchvisions():
    theirs = randomise(torchvision.models.resnet18(num_classes=5)).eval()
    ours = IMAGENET_MODELS.create('resnet18', num_classes=5, attention=False).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        attention_logits, logits, attention_map = ours(x)
        torch.testing.assert_close(logits, theirs(x), rtol=1e-4, atol=1e-5)
    assert attention_logits is None and attention_map is None


@pytest.mark.parametrize('name', ['resnet18', 'resnet50', 'se_resnet50', 'resnext50',
                                  'vgg16_bn'])
def test_forward_triple_split_and_names(name):
    """At 64 px: the map at 1/16 (4x4); the perception maps that CAM/Grad-CAM explain at 1/32
    for ResNets (layer4), 1/16 for VGG (conv5, before pool5)."""
    with torch.device('meta'):
        model = IMAGENET_MODELS.create(name, num_classes=7).eval()
        attention_logits, perception_logits, attention_map = model(torch.empty(2, 3, 64, 64))
        features = model.extract_features(torch.empty(2, 3, 64, 64))
        maps = model.perception_features(features)
        logits = model.classify(maps)
    assert attention_logits.shape == perception_logits.shape == logits.shape == (2, 7)
    assert attention_map.shape == (2, 1, 4, 4) and features.shape[-2:] == (4, 4)
    assert maps.shape[-2:] == ((4, 4) if name.startswith('vgg') else (2, 2))
    keys = {k: v.shape for k, v in model.state_dict().items()}
    stage, copy = model.last_stage + '.', 'att_' + model.last_stage + '.'
    copies = [k for k in keys if k.startswith(copy)]
    assert copies and all(keys[k] == keys[stage + k[len(copy):]] for k in copies)
    assert {'bn_att.weight', 'att_conv.weight', 'bn_att2.weight', 'att_conv2.weight',
            'att_conv3.weight', 'bn_att3.weight'} <= set(keys)


def test_se_blocks_use_the_authors_names_and_reduction():
    with torch.device('meta'):
        se18 = IMAGENET_MODELS.create('se_resnet18', num_classes=10)
        se50 = IMAGENET_MODELS.create('se_resnet50', num_classes=10)
    assert se18.layer1[0].fc1.weight.shape == (4, 64)  # round(planes / 16)
    assert se18.att_layer4[1].fc2.weight.shape == (512, 32)
    assert se50.layer1[0].fc1.weight.shape == (16, 256)  # round(planes / 4), planes * 4 in
    assert se50.layer4[2].fc2.weight.shape == (2048, 128)


def test_vgg_split_is_torchvisions_forward():
    """With an all-zero map the residual gate passes the features unchanged, so the perception
    branch must be torchvision's vgg16_bn forward."""
    model = IMAGENET_MODELS.create('vgg16_bn', num_classes=3).eval()  # random enough
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _, logits, _ = model(x, attention=torch.zeros(1, 1, 2, 2))
        whole = model.classifier(torch.flatten(model.avgpool(model.features(x)), 1))
    torch.testing.assert_close(logits, whole)
    assert list(model.att_features.state_dict())[0] == '34.weight'  # copies features.34


def test_smallest_image_size():
    with torch.device('meta'):
        for name in ('resnet18', 'vgg16_bn'):
            model = IMAGENET_MODELS.create(name, num_classes=3).eval()
            size = model.min_image_size
            assert model(torch.empty(1, 3, size, size))[1].shape == (1, 3)
        with pytest.raises(RuntimeError, match='too small'):
            model(torch.empty(1, 3, size - 1, size - 1))  # VGG's pool5 has nothing left


def test_any_input_size_works():
    model = IMAGENET_MODELS.create('resnet18', num_classes=3).eval()
    _, logits, attention_map = model(torch.randn(1, 3, 96, 64))
    assert logits.shape == (1, 3) and attention_map.shape == (1, 1, 6, 4)


def test_invalid_options_and_names():
    with pytest.raises(ValueError, match='positive --cardinality'):
        IMAGENET_MODELS.create('resnext50', cardinality=0, num_classes=10)
    with pytest.raises(ValueError, match="unknown ImageNet architecture 'resnet20'"):
        IMAGENET_MODELS.create('resnet20', num_classes=10)


def test_the_registry_answers_alike_for_every_name_it_builds():
    # in, [] and get agree, a library's name included; iteration is its own families
    for name in ('resnet50', 'timm:resnet18', 'torchvision:resnet18'):
        assert name in IMAGENET_MODELS and IMAGENET_MODELS.get(name) is not None
        assert IMAGENET_MODELS.get(name).__name__ == IMAGENET_MODELS[name].__name__
    assert 'timm:no_such_model' not in IMAGENET_MODELS
    assert IMAGENET_MODELS.get('timm:no_such_model', 'none') == 'none'
    assert 'resnet50' in list(IMAGENET_MODELS) and 'timm:resnet18' not in list(IMAGENET_MODELS)
