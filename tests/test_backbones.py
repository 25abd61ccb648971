"""timm and torchvision models as ABNs (models.backbones, imagenet.py -a timm:NAME): every
listed family is split where the library says its stages are, its plain twin is the library's
own model, a training step, a checkpoint and its reload, ONNX; pretrained files loaded
bitwise; the downsampling rules; the refusals; the whole way through imagenet.py, explain.py,
the Python API, export.py, teaching and torch.hub."""
import copy
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import explain
import export
import imagenet
from models import IMAGENET_MODELS
from models.abn import freeze_feature_extractor
from models.backbones import library_model
from models.backbones.split import SamePaddedConv2d, remove_downsampling
from tests.helpers import ROOT, assert_refused, run_script
from utils.data.shapes import write_image_folder
from utils.objectives import get_objective
from utils.weights import checkpoint as ckpt
from utils.weights.export import ExportedAbn, export_program, write_onnx
from utils.weights.loading import load_model
from utils.weights.modelspec import ModelSpec
from utils.weights.pretrained import init_library_pretrained

pytestmark = pytest.mark.usefixtures('one_thread')

# The families the docs list (docs/imagenet.md): (name, stages, map stride)
FAMILIES = [('timm:resnet18', 5, 16), ('timm:convnext_atto', 4, 16),
            ('timm:efficientnet_b0', 5, 16), ('timm:mobilenetv3_small_100', 5, 16),
            ('timm:regnety_002', 5, 16), ('timm:vit_tiny_patch16_224', 12, 16),
            ('timm:deit_tiny_patch16_224', 12, 16), ('torchvision:resnet50', 5, 16),
            ('torchvision:convnext_tiny', 4, 16), ('torchvision:efficientnet_b0', 5, 16),
            ('torchvision:mobilenet_v3_large', 5, 16), ('torchvision:regnet_y_400mf', 5, 16),
            # split on their traced graphs (models.backbones.graph): pooling in forward
            ('torchvision:shufflenet_v2_x0_5', 5, 16), ('torchvision:densenet121', 5, 16),
            ('torchvision:squeezenet1_1', 4, 9),
            # timm's traced graph (its stages are (N, H, W, C): the graph's own permutes)
            ('timm:test_mambaout', 4, 16),
            # transformers split between their blocks (models.backbones.tokens)
            ('timm:convit_tiny', 12, 16), ('timm:xcit_nano_12_p8_224', 12, 8),
            # ... in their last stage, the grid changing between stages (block_lists)
            ('timm:mvitv2_tiny', 2, 32)]
# the others (the ViTs: their own tests below; a graph split daily: its own test below and
# tests/test_backbone_coverage.py): the full suite
DAILY = {'timm:resnet18'}
SIZE = 64


def family_params():
    return [pytest.param(name, stages, stride, id=name,
                         marks=[] if name in DAILY else [pytest.mark.slow])
            for name, stages, stride in FAMILIES]


def images(batch=2, seed=0, size=SIZE):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('arch, stages, stride', family_params())
def test_every_family_is_split_trained_saved_reloaded_and_exported(arch, stages, stride,
                                                                   tmp_path):
    source, name = arch.split(':')
    torch.manual_seed(0)  # the same weights on every run, whatever ran before
    model = IMAGENET_MODELS.create(arch, num_classes=3, image_size=SIZE)
    # the map at the feature extractor's resolution, its plain twin the library's model
    out = model.eval()(images())
    assert out.attention_map.shape == (2, 1, SIZE // stride, SIZE // stride)
    assert out.attention_logits.shape == out.perception_logits.shape == (2, 3)
    plain = IMAGENET_MODELS.create(arch, num_classes=3, image_size=SIZE, attention=False)
    vit = name.startswith(('vit', 'deit'))
    library = library_model(source, name, 3, SIZE, vit=vit or hasattr(model, 'layouts')).eval()
    library.load_state_dict(plain.backbone.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(images()).perception_logits, library(images()),
                                   rtol=0, atol=0)
    # the attention stage starts as a copy of the perception's last stage
    stage = model.att_blocks if vit else model.att_stage
    assert list(stage.parameters()) and not any(p is q for p in stage.parameters()
                                                for q in model.backbone.parameters())
    # one training step moves both branches
    model.train()
    objective = get_objective('single-label')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # a small step: one step of a large rate leaves some families' BatchNorm statistics so
    # far off that float32 rounding, in ONNX as in PyTorch, decides the logits
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    objective.total_loss(objective.losses(model(images(4, 1)), torch.tensor([0, 1, 2, 0]))
                         ).backward()
    optimizer.step()
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith(('att_stage', 'att_blocks')) for k in moved)
    assert any(k.startswith('backbone.') for k in moved) and 'att_conv.weight' in moved
    # saved with its spec, reloaded from the file alone, exported
    spec = ModelSpec('imagenet', arch, IMAGENET_MODELS.model_args(
        arch, num_classes=3, image_size=SIZE), image_size=SIZE, resize_size=SIZE + 8,
        normalization=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    path = str(tmp_path / 'abn.pth.tar')
    ckpt.save_checkpoint({'epoch': 1, 'state_dict': model.state_dict(), 'acc': 1.0,
                          'best_acc': 1.0, 'model_spec': spec.to_dict(), 'arch': arch,
                          'model_args': spec.model_args, 'format': ckpt.FORMAT}, path)
    loaded = load_model(path)
    assert loaded.description.startswith(arch)
    with torch.no_grad():
        again = loaded.model(images())
        original = model.eval()(images())
    for a, b in zip(again, original):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    import onnxruntime as ort
    program = export_program(ExportedAbn(loaded.model, loaded.normalization).eval(), loaded,
                             False)
    write_onnx(program, str(tmp_path / 'abn.onnx'), ['attention_logits', 'logits',
                                                     'attention_map'], {})
    session = ort.InferenceSession(str(tmp_path / 'abn.onnx'),
                                   providers=['CPUExecutionProvider'])
    x = images(3, 2)
    got = session.run(None, {'image': x.numpy()})
    want = ExportedAbn(loaded.model, loaded.normalization).eval()(x)
    for g, w in zip(got, want):
        scale = w.abs().max().item()
        assert np.abs(g - w.detach().numpy()).max() <= 1e-4 * scale


def test_stages_come_from_timms_feature_info_and_torchvisions_strides():
    model = IMAGENET_MODELS.create('timm:efficientnet_b0', num_classes=3, image_size=SIZE)
    # timm: blocks.4 ends the stride-16 stage; the last stage is blocks.5, blocks.6, the
    # head convolution and its norm
    assert model.stage_paths == ('blocks.5', 'blocks.6', 'conv_head', 'bn2')
    assert model.extractor_paths[-1] == 'blocks.4'
    model = IMAGENET_MODELS.create('torchvision:convnext_tiny', num_classes=3, image_size=SIZE)
    assert model.stage_paths == ('features.6', 'features.7')  # downsampling, then the blocks
    model = IMAGENET_MODELS.create('timm:resnet18', num_classes=3, image_size=SIZE, split=-2)
    assert model.stage_paths == ('layer3', 'layer4')
    assert model(images()).attention_map.shape[-1] == SIZE // 8


def test_a_graph_split_model_runs_on_its_own_weights_after_to_and_deepcopy():
    from models.backbones import GraphBackboneABN
    torch.manual_seed(0)
    model = IMAGENET_MODELS.create('torchvision:shufflenet_v2_x0_5', num_classes=3,
                                   image_size=SIZE).eval()
    assert isinstance(model, GraphBackboneABN)
    # each weight has one name: the segments run the backbone's own modules
    assert not any(k.startswith('code') for k in model.state_dict())
    assert model.classifier_path == 'fc' and model.cam_exact  # its head: a mean, then fc
    import pickle
    with torch.no_grad():  # pickled whole (torch.save of the model) and back
        torch.testing.assert_close(pickle.loads(pickle.dumps(model))(images()).perception_logits,
                                   model(images()).perception_logits, rtol=0, atol=0)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.backbone.fc.weight.add_(1)
        assert not torch.equal(twin(images()).perception_logits,
                               model(images()).perception_logits)
        wide = model.to(torch.float64)(images().double())
    assert wide.perception_logits.dtype == torch.float64
    frozen = freeze_feature_extractor(model)
    assert frozen and not model.backbone.conv1[0].weight.requires_grad
    assert model.backbone.conv5[0].weight.requires_grad  # the last stage trains


@pytest.mark.parametrize('arch', ['timm:skresnet18', 'timm:swiftformer_xs'])
def test_a_probe_of_one_image_and_a_distilled_head_are_no_obstacle(arch):
    # the attention stage is probed in eval mode (one 1x1 map is no batch to normalise);
    # a distilled model's two heads: the first is the classifier to replace
    torch.manual_seed(0)
    model = IMAGENET_MODELS.create(arch, num_classes=3, image_size=SIZE).eval()
    out = model(images())
    assert out.attention_map.shape == (2, 1, SIZE // 16, SIZE // 16)
    assert model.final_linear.out_features == 3


def test_the_downsampling_rules_keep_the_resolution():
    stage = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1),
                          nn.Conv2d(4, 8, 2, stride=2),  # ConvNeXt's downsampling layer
                          nn.AvgPool2d(2, 2),  # ResNet-D's shortcut pooling
                          nn.MaxPool2d(3, stride=2, padding=1))
    weights = copy.deepcopy(stage[1].weight)
    remove_downsampling(stage)
    assert stage(torch.zeros(1, 4, 7, 7)).shape == (1, 8, 7, 7)
    assert isinstance(stage[1], SamePaddedConv2d) and torch.equal(stage[1].weight, weights)
    assert isinstance(stage[2], nn.Identity) and stage[3].stride == 1


def test_a_vit_gates_its_patch_tokens_and_freezes_its_embeddings():
    model = IMAGENET_MODELS.create('timm:vit_tiny_patch16_224', num_classes=3, image_size=SIZE)
    assert model.first_branch_block == 9 and len(model.att_blocks) == 3  # default: last 3
    tokens = torch.randn(2, 1 + 16, 192)
    half = torch.full((2, 1, 4, 4), 0.5)
    gated = model.apply_attention(tokens, half)
    assert torch.equal(gated[:, 0], tokens[:, 0])  # the class token passes ungated
    torch.testing.assert_close(gated[:, 1:], tokens[:, 1:] * 1.5)
    freeze_feature_extractor(model)
    assert not model.backbone.pos_embed.requires_grad and not model.backbone.cls_token.requires_grad
    assert not any(p.requires_grad for p in model.backbone.blocks[8].parameters())
    assert all(p.requires_grad for p in model.backbone.blocks[9].parameters())


def test_a_transformer_is_split_between_its_blocks_what_they_share_passed_along():
    """XCiT's blocks take the grid's height and width besides the tokens: the features are
    the tokens and those; the map gates the patch tokens; the split is the model."""
    from models.backbones import TokenGraphABN
    from models.backbones.tokens import check_whole
    torch.manual_seed(0)
    model = IMAGENET_MODELS.create('timm:xcit_nano_12_p8_224', num_classes=3, image_size=SIZE)
    assert isinstance(model, TokenGraphABN) and model.layouts == ('tokens', 'tokens')
    features = model.eval().extract_features(images())
    assert features[0].shape == (2, 64, 128) and len(features) == 3  # tokens, height, width
    half = torch.full((2, 1, 8, 8), 0.5)
    gated = model.apply_attention(features, half)
    torch.testing.assert_close(gated[0], features[0] * 1.5)
    assert gated[1:] == features[1:]
    check_whole(model, SIZE)  # passes: ungated, the segments are the model
    with torch.no_grad():
        out = model(images())
    assert out.attention_map.shape == (2, 1, 8, 8)
    freeze_feature_extractor(model)
    assert not any(p.requires_grad for p in model.backbone.patch_embed.parameters())
    assert not model.backbone.blocks[8].mlp.fc1.weight.requires_grad
    assert model.backbone.blocks[9].mlp.fc1.weight.requires_grad
    assert model.att_stage is not None and not any(
        p is q for p in model.att_stage.parameters() for q in model.backbone.parameters())


def test_cam_is_exact_where_the_head_is_pooling_and_one_linear_layer():
    from utils.explain.cam import supports_cam
    assert supports_cam(IMAGENET_MODELS.create('timm:resnet18', num_classes=3, image_size=SIZE))
    assert supports_cam(IMAGENET_MODELS.create('timm:vit_tiny_patch16_224', num_classes=3,
                                               image_size=SIZE))
    # ConvNeXt's head normalises after pooling, MobileNetV3's has a layer after it
    for arch in ('timm:convnext_atto', 'timm:mobilenetv3_small_100'):
        assert not supports_cam(IMAGENET_MODELS.create(arch, num_classes=3, image_size=SIZE))


# -- pretrained starts -------------------------------------------------------------------------

@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes64'))
    write_image_folder(root, size=SIZE, train=60, val=40)  # every class in both
    return root


TINY = ['--image-size', str(SIZE), '--epochs', '1', '--train-batch', '20', '--test-batch', '10',
        '-j', '0', '--gpu-id', 'cpu', '--manualSeed', '1', '--save-attention', '2']


def run_imagenet(argv, capsys):
    return run_script(imagenet.main, argv, capsys)


@pytest.mark.parametrize('arch', ['timm:resnet18', 'torchvision:resnet18',
                                  'timm:vit_tiny_patch16_224', 'torchvision:shufflenet_v2_x0_5',
                                  'timm:xcit_nano_12_p8_224'])
def test_a_pretrained_file_loads_bitwise_and_starts_the_attention_stage(arch, tmp_path,
                                                                         offline):
    """The file the library would download (here written by the test, with ImageNet's 1000
    classes): every backbone weight bitwise, the attention stage a copy of the last stage,
    the classifier fresh for the data's classes."""
    source, name = arch.split(':')
    vit = name.startswith('vit')
    torch.manual_seed(7)
    weights = library_model(source, name, 1000, 224, vit=vit or name.startswith('xcit')
                            ).state_dict()
    path = str(tmp_path / 'weights.pth')
    torch.save(weights, path)
    model = IMAGENET_MODELS.create(arch, num_classes=10, image_size=SIZE)
    printed = []
    init_library_pretrained(model, SimpleNamespace(weights=None, pretrained=False,
                                                   pretrained_file=path),
                            SimpleNamespace(print=printed.append))
    own = model.backbone.state_dict()
    classifier = model.classifier_path + '.'
    for key, tensor in own.items():
        if key.startswith(classifier) or (vit and key == 'pos_embed'):
            continue  # fresh; a ViT's position embedding resampled to the 4x4 grid
        assert torch.equal(tensor, weights[key]), key
    assert own[classifier + 'weight'].shape[0] == 10
    stage = model.att_blocks if vit else model.att_stage
    if vit:
        perception = model.backbone.blocks[9:]
    elif hasattr(model, 'stage_paths'):
        perception = [model.part(p) for p in model.stage_paths]
    else:  # a split of its traced graph: one segment and its copy
        stage, perception = [stage], [model.segment(1)]
    for copied, original in zip(stage, perception):
        for (k, a), (_, b) in zip(copied.state_dict().items(), original.state_dict().items()):
            assert torch.equal(a, b), k
    assert 'attention stage copied from the last stage' in printed[0]


def test_a_pretrained_file_of_another_model_is_one_line(folder, tmp_path, capsys):
    path = str(tmp_path / 'other.pth')
    torch.save(library_model('timm', 'resnet34', 1000, 224).state_dict(), path)
    assert_refused(imagenet.main, ['--data', folder, '-a', 'timm:resnet18', '--pretrained-file',
                                   path, '-c', str(tmp_path / 'run')] + TINY,
                   '--pretrained-file', str(tmp_path), capsys)


def test_pretrained_offline_says_what_to_do(folder, tmp_path, capsys, offline, monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    assert_refused(imagenet.main, ['--data', folder, '-a', 'timm:resnet18', '--pretrained',
                                   '-c', str(tmp_path / 'run')] + TINY,
                   'pass --pretrained-file FILE', str(tmp_path), capsys)


# -- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize('argv, expected', [
    (['-a', 'timm:resnt18'], "timm has no model 'resnt18': did you mean timm:resnet18"),
    (['-a', 'torchvision:resnet5'], 'did you mean torchvision:resnet50'),
    # neither its stages nor its blocks: both reasons, in one line
    (['-a', 'timm:pit_ti_224'], 'not enough values to unpack (expected 2, got 1); '
                                'nor between its blocks: no node after its blocks holds'),
    (['-a', 'timm:resnet18', '--split', '5'], '--split 5 is out of range for timm:resnet18, '
                                              'which has 5 stages'),
    (['-a', 'timm:vit_tiny_patch16_224', '--split', '-12'], 'which has 12 blocks'),
    (['-a', 'resnet18', '--split', '-2'], '--split applies to the models of timm'),
    (['-a', 'torchvision:inception_v3'], '; nor between its blocks: it has no list of blocks'),
    (['-a', 'timm:halonet_h1'], 'does not run at 64 px (its forward asserts a size; its own '
                                'is 256 px: try --image-size 256)'),
    (['-a', 'timm:convit_tiny', '--split', '-12'], 'which has 12 blocks'),  # between them
])
def test_what_cannot_be_split_is_refused_in_one_line(argv, expected, folder, tmp_path, capsys):
    assert_refused(imagenet.main, ['--data', folder, '-c', str(tmp_path / 'run')] + TINY + argv,
                   expected, str(tmp_path), capsys)


def test_list_models_lists_the_libraries_too(capsys):
    code, out, _ = run_script(imagenet.main, ['--list-models', 'timm:convnext_at*'], capsys)
    assert code == 0 and out.split() == ['timm:convnext_atto', 'timm:convnext_atto_ols',
                                         'timm:convnext_atto_rms']
    code, out, _ = run_script(imagenet.main, ['--list-models', 'resnet5*'], capsys)
    assert code == 0 and 'resnet50' in out.split() and 'timm:resnet50' in out.split() and \
        'torchvision:resnet50' in out.split()


def test_a_library_is_one_registered_object_that_every_consumer_asks(monkeypatch, tmp_path,
                                                                     capsys):
    """A third library is one class (in its own file of models.backbones.libraries): here
    one registered inside the test, torchvision's two smallest ResNets under another name,
    is listed, built, saved and rebuilt from its file alone, with no other file touched."""
    from models.backbones import libraries
    from models.backbones.libraries.torchvision_models import Torchvision

    class Tiny(Torchvision):
        name = 'tiny'

        def names(self, pattern='*'):
            return [n for n in super().names(pattern) if n in ('resnet18', 'resnet34')]

    monkeypatch.setitem(libraries.LIBRARIES, 'tiny', Tiny())
    code, out, _ = run_script(imagenet.main, ['--list-models', 'tiny:*'], capsys)
    assert code == 0 and out.split() == ['tiny:resnet18', 'tiny:resnet34']
    assert 'tiny:resnet18' in IMAGENET_MODELS and 'tiny:resnet50' not in IMAGENET_MODELS
    with pytest.raises(ValueError, match="tiny has no model 'resnet50'"):
        IMAGENET_MODELS.check_name('tiny:resnet50')
    torch.manual_seed(0)
    model = IMAGENET_MODELS.create('tiny:resnet18', num_classes=3, image_size=SIZE).eval()
    assert model.source == 'tiny' and model.map_stride == 16
    spec = ModelSpec('imagenet', 'tiny:resnet18', IMAGENET_MODELS.model_args(
        'tiny:resnet18', num_classes=3, image_size=SIZE), image_size=SIZE,
        normalization=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    path = str(tmp_path / 'abn.pth.tar')
    ckpt.save_checkpoint({'epoch': 1, 'state_dict': model.state_dict(), 'acc': 1.0,
                          'best_acc': 1.0, 'model_spec': spec.to_dict(),
                          'format': ckpt.FORMAT}, path)
    loaded = load_model(path)
    with torch.no_grad():
        for a, b in zip(loaded.model(images()), model(images())):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- the whole way through the tools ----------------------------------------------------------

# (arch, its first weight, whether its CAM is exact): a split of its children, one of its
# traced graph, and a transformer split between its blocks (its features a tuple)
THROUGH_THE_TOOLS = [('timm:convnext_atto', 'backbone.stem.0.weight', False),
                     ('torchvision:shufflenet_v2_x0_5', 'backbone.conv1.0.weight', True),
                     ('timm:xcit_nano_12_p8_224', 'backbone.patch_embed.proj.0.0.weight', True),
                     # its tokens (N, H, W, C) between its blocks
                     ('timm:swin_tiny_patch4_window7_224', 'backbone.patch_embed.proj.weight',
                      False)]


@pytest.fixture(scope='module', params=THROUGH_THE_TOOLS, ids=[a for a, _, _ in THROUGH_THE_TOOLS])
def trained(folder, tmp_path_factory, request):
    from utils.cli import run
    arch = request.param[0]
    directory = str(tmp_path_factory.mktemp('runs') / arch.replace(':', '-'))
    assert run(imagenet.main, ['--data', folder, '-a', arch, '-c', directory] + TINY) == 0
    return (directory,) + request.param


@pytest.mark.slow
def test_a_trained_backbone_evaluates_resumes_explains_exports_and_teaches(trained, folder,
                                                                          tmp_path, capsys):
    trained, arch, first_weight, cam_exact = trained
    best = os.path.join(trained, 'model_best.pth.tar')
    spec = ckpt.load_checkpoint(best)['model_spec']
    assert spec['arch'] == arch and spec['model_args']['image_size'] == SIZE
    code, out, err = run_imagenet(['--data', folder, '-e', '--resume', best, '-j', '0',
                                   '--gpu-id', 'cpu', '-c', str(tmp_path / 'eval')], capsys)
    assert code == 0 and 'Test Acc' in out, err
    code, out, err = run_imagenet(['--data', folder, '--resume',
                                   os.path.join(trained, 'checkpoint.pth.tar'), '--epochs', '2',
                                   '-j', '0', '--gpu-id', 'cpu', '--save-attention', '0'],
                                  capsys)
    assert code == 0 and 'resuming at epoch 2' in out, err
    masks = os.path.join(folder, 'masks', 'val')
    code, out, err = run_script(explain.main, [best, os.path.join(folder, 'val'), '--compare',
                                               '--measure', '--masks', masks, '-n', '6',
                                               '--road-percentiles', 'none', '--gpu-id', 'cpu',
                                               '-o', str(tmp_path / 'explain')], capsys)
    assert code == 0 and ('no CAM for' in out) != cam_exact, out + err  # ConvNeXt's head
    # normalises after pooling
    assert (tmp_path / 'explain' / 'metrics.json').exists()
    code, out, err = run_script(export.main, [best, '-o', str(tmp_path / 'abn.onnx'),
                                              '--check'], capsys)
    assert code == 0 and 'agrees with PyTorch' in out, out + err
    from utils.api import load
    result = load(best).explain([os.path.join(folder, 'val', 'circle', name) for name in
                                 sorted(os.listdir(os.path.join(folder, 'val', 'circle')))[:2]])
    assert result.maps[0].shape == (SIZE, SIZE) and len(result.classes) == 2
    code, out, err = run_imagenet(['--data', folder, '--weights', best, '--attention-maps',
                                   os.path.join(folder, 'masks', 'train'), '-c',
                                   str(tmp_path / 'taught')] + TINY, capsys)
    assert code == 0 and 'teaching by counterfactual' in out and 'attention maps: ' in out, \
        out + err
    taught = ckpt.load_checkpoint(str(tmp_path / 'taught' / 'checkpoint.pth.tar'))['state_dict']
    start = ckpt.load_checkpoint(best)['state_dict']
    # the default method trains the extractor too (the paper's, --teach-by map, keeps it)
    assert not torch.equal(taught[first_weight], start[first_weight])
    assert not torch.equal(taught['att_conv.weight'], start['att_conv.weight'])


def test_torch_hub_builds_a_library_model():
    hub = torch.hub.load(ROOT, 'timm', 'resnet18', num_classes=4, image_size=SIZE,
                         source='local')
    assert hub(images()).attention_map.shape == (2, 1, 4, 4)
    with pytest.raises(TypeError, match='not depth'):
        torch.hub.load(ROOT, 'torchvision', 'resnet18', depth=3, source='local')
