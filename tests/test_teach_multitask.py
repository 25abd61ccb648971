"""celeba.py --attention-maps: maps per attribute in the attention editor's layout, the map
loss on the editor's picture of the unbounded maps, maps that follow their images, a frozen
feature extractor, a fine-tuning run end to end, and one-line refusals."""
import json
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import celeba
import cifar
from models import AbnOutput, MULTITASK_MODELS
from models.abn import freeze_feature_extractor
from tests.helpers import assert_refused, run_script
from utils.data.attributes import ShapesMultiDataset
from utils.errors import AbnError
from utils.objectives import get_objective
from utils.objectives.task_map_loss import MultiLabelMapObjective, stretched, task_map_loss
from utils.serve.pictures import to_gray
from utils.teach.attention_maps import WithAttentionMaps
from utils.teach.attention_maps import load_map_set
from utils.weights import checkpoint as ckpt

TINY = ['--dataset', 'shapes-multi', '--image-size', '32', '--width', '8', '--train-size', '32',
        '--test-size', '8', '--train-batch', '8', '--test-batch', '8', '--gpu-id', 'cpu',
        '--manualSeed', '1', '-j', '0', '--save-attention', '0']
KINDS = ('circle', 'triangle', 'plus', 'frame')

pytestmark = pytest.mark.usefixtures('one_thread')


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


# -- the loss -------------------------------------------------------------------------------

def test_the_loss_compares_patterns_not_scale_or_offset():
    maps = torch.zeros(2, 3, 2, 2)
    maps[0, 0] = torch.tensor([[100., -100.], [0., 50.]])
    picture, span = stretched(maps)
    assert picture[0, 0].tolist() == [[1.0, 0.0], [0.5, 0.75]] and span[0, 0] == 200
    # The page's picture of a map stretches back to the map's own pattern: no pull.
    page = torch.from_numpy(to_gray(maps[0, 0].numpy(), 100.0))
    given = torch.zeros(2, 3, 4, 4)
    given[0, 0] = page.repeat_interleave(2, 0).repeat_interleave(2, 1)
    given[1, 1, :, :2] = 1.0  # image 1, attribute 1: the left half
    has = torch.tensor([[True, False, False], [False, True, False]])
    maps[1, 1] = torch.tensor([[3., -1.], [3., -1.]])  # already the left half, other scale
    assert task_map_loss(maps, given, has).item() == pytest.approx(0, abs=1e-6)
    assert task_map_loss(maps * 7 - 40, given, has).item() == pytest.approx(0, abs=1e-5)
    maps[1, 1] = torch.tensor([[-1., 3.], [-0.5, 2.]])  # stretched: [[0, 1], [1/8, 3/4]]
    off = (1 + 1 + (1 - 1 / 8) ** 2 + (3 / 4) ** 2) / 4  # against the left half
    assert task_map_loss(maps, given, has).item() == pytest.approx((0 + off) / 2)
    learnable = maps.clone().requires_grad_()
    task_map_loss(learnable, given, has).backward()
    assert learnable.grad[0, 1:].abs().sum() == 0 and learnable.grad[1, 0].abs().sum() == 0
    assert learnable.grad[1, 1].abs().sum() > 0
    # The gradient is scaled by the map's span: a map 10x larger moves as fast.
    larger = (maps * 10).requires_grad_()
    task_map_loss(larger, given, has).backward()
    assert torch.allclose(larger.grad[1, 1] * 10, learnable.grad[1, 1] * 10, rtol=1e-4)
    # A picture of one gray level says nothing of where: left out.
    flat = torch.full_like(given, 0.3)
    assert task_map_loss(learnable, flat, has).item() == 0
    none = task_map_loss(learnable, given, torch.zeros(2, 3, dtype=torch.bool))
    assert none.item() == 0 and none.requires_grad


def test_the_objective_adds_the_weighted_map_loss_and_keeps_the_focal_loss():
    objective = get_objective('multi-label-attention-maps', weight=2.0)
    assert isinstance(objective, MultiLabelMapObjective)
    labels = torch.tensor([[1., 0.], [0., 1.]])
    logits = torch.tensor([[2., -2.], [-2., 2.]])
    output = AbnOutput(logits, logits, torch.zeros(2, 2, 2, 2))
    left = torch.zeros(2, 2, 2, 2)
    left[..., 0] = 1.0
    target = {'label': labels, 'map': left,
              'has_map': torch.tensor([[True, False], [False, False]])}
    losses = objective.losses(output, target)
    plain = get_objective('multi-label').losses(output, labels)
    assert losses['per_loss'] == plain['per_loss']
    # the model's map of zeros stretches to zeros: half the cells off by 1
    assert losses['map_loss'].item() == pytest.approx(2.0 * 0.5)
    assert set(objective.losses(output, labels)) == {'att_loss', 'per_loss'}
    meter = objective.new_meter(torch.device('cpu'))
    meter.update(0, output, target, losses)
    summary = meter.summary()
    assert summary['maps'] == 1 and summary['map_loss'] == pytest.approx(1.0)
    assert 'map loss' in objective.summary_text(summary, True)

    focal = get_objective('multi-label-attention-maps', focal=True)

    class Data:
        extras = {'attribute_targets': torch.tensor([[1., 0.], [1., 1.], [1., 0.]])}
    focal.bind(Data)
    reference = get_objective('multi-label-focal')
    reference.bind(Data)
    assert torch.equal(focal.losses(output, target)['per_loss'],
                       reference.losses(output, labels)['per_loss'])


# -- the maps -------------------------------------------------------------------------------

def test_maps_in_the_editors_layout_per_attribute(tmp_path):
    train = ShapesMultiDataset(train=True, size=10)
    folder = tmp_path / 'edited_maps'
    write_png(str(folder / 'circle' / 'train' / '3.png'), np.full((8, 8), 255))
    write_png(str(folder / 'frame' / 'train' / '3.png'), np.zeros((4, 4)))
    write_png(str(folder / 'frame' / 'train' / '3~2.png'), np.full((4, 4), 255))  # averaged
    write_png(str(folder / 'plus' / '0007.png'), np.full((4, 4), 128))  # no split folder
    write_png(str(folder / 'circle' / 'test' / '1.png'), np.full((4, 4), 255))  # held out
    maps = load_map_set(str(folder), train, 'shapes-multi')
    assert maps.indices() == [3, 7] and len(maps) == 3 and maps.held_out == 1
    assert maps.present(3).tolist() == [True, False, False, True]
    three = maps.get(3)
    assert three.shape == (4, 8, 8) and np.allclose(three[0], 1) and np.allclose(three[3], 0.5)
    assert np.allclose(three[1], 0) and np.allclose(maps.get(7)[2], 128 / 255)
    assert maps.get(5) is None and not maps.present(5).any()


def test_shapes_masks_give_the_masks_of_the_attributes_present():
    train = ShapesMultiDataset(train=True, size=40)
    maps = load_map_set('shapes-masks:50%', train, 'shapes-multi')
    assert 15 <= len(maps.indices()) <= 20
    for index in maps.indices():
        assert maps.present(index).tolist() == train.masks[index].any((1, 2)).tolist()
        assert np.array_equal(maps.get(index) > 0.5, train.masks[index])


@pytest.mark.parametrize('make, expected', [
    (lambda f: write_png(str(f / 'square' / 'train' / '1.png'), np.zeros((4, 4))),
     'not a map of an attribute'),
    (lambda f: write_png(str(f / 'circle' / 'train' / '99.png'), np.zeros((4, 4))),
     'names no training image'),
    (lambda f: write_png(str(f / 'circle' / 'test' / '1.png'), np.zeros((4, 4))),
     'no training maps in it (1 of held-out splits'),
    (lambda f: write_png(str(f / 'circle' / 'later' / '1.png'), np.zeros((4, 4))),
     'the split folder of a map is train'),
    (lambda f: (f / 'circle' / 'train').mkdir(parents=True) or
     (f / 'circle' / 'train' / '1.png').write_bytes(b'no png'), 'cannot read'),
])
def test_bad_map_folders_are_refused(tmp_path, make, expected):
    folder = tmp_path / 'maps'
    folder.mkdir()
    make(folder)
    with pytest.raises(AbnError, match=None) as refused:
        load_map_set(str(folder), ShapesMultiDataset(train=True, size=10), 'shapes-multi')
    assert expected in str(refused.value)


def test_every_attributes_map_follows_its_images_resize_and_flip():
    """Maps equal to a colour channel of their image go through the same resize and flip."""
    torch.manual_seed(0)
    train = ShapesMultiDataset(train=True, size=6, transform=T.Compose([
        T.Resize((32, 32)), T.RandomHorizontalFlip(), T.ToTensor()]))

    class Channels:  # attribute t's map: colour channel t % 3 of the image
        channels = 4

        def get(self, index):
            image = train.data[index].astype(np.float32) / 255
            return np.stack([image[..., t % 3] for t in range(4)])

        def present(self, index):
            return np.array([True, True, False, True])
    with_maps = WithAttentionMaps(train, Channels())
    flipped = 0
    for index in range(6):
        inputs, target = with_maps[index]
        assert target['map'].shape == (4, 32, 32)
        assert target['has_map'].tolist() == [True, True, False, True]
        for t in range(4):  # PIL and tensor resizing differ by rounding only
            assert (target['map'][t] - inputs[t % 3]).abs().max() < 0.08
        unflipped = T.ToTensor()(Image.fromarray(train.data[index]).resize((32, 32),
                                                                         Image.BILINEAR))
        flipped += (inputs - unflipped).abs().mean() > 0.01
    assert 0 < flipped < 6  # some flipped, some not: each with its own maps


def test_the_multitask_feature_extractor_is_frozen():
    model = MULTITASK_MODELS.create('mtabn_v1_resnet18', num_classes=2, width=8)
    assert freeze_feature_extractor(model) > 0
    model.train()
    assert not model.layer3.training and not model.bn1.training and model.layer4_att.training
    assert not any(p.requires_grad for p in model.layer1.parameters())


# -- celeba.py end to end --------------------------------------------------------------------

@pytest.fixture(scope='module')
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp('teach-multi')
    torch.set_num_threads(1)
    code = celeba.main(TINY + ['--epochs', '1', '--residual-attention', '-c',
                               str(root / 'base')])
    assert code == 0
    # The masks of the first 12 training images, saved as the editor saves them.
    train = ShapesMultiDataset(train=True, size=32)
    for index in range(12):
        for t, kind in enumerate(KINDS):
            if train.masks[index, t].any():
                write_png(str(root / 'edited_maps' / kind / 'train' / f'{index}.png'),
                          train.masks[index, t] * 255)
    write_png(str(root / 'edited_maps' / 'frame' / 'test' / '0.png'), np.zeros((4, 4)))
    return root


@pytest.mark.slow
def test_fine_tuning_teaches_every_attributes_map(base, tmp_path, capsys):
    out = str(tmp_path / 'taught')
    start = str(base / 'base' / 'checkpoint.pth.tar')
    # The gate and the width are the file's: not typed.
    argv = TINY + ['--epochs', '2', '--lr', '0.05', '--weights', start, '--attention-maps',
                   str(base / 'edited_maps'), '-c', out]
    code, stdout, _ = run_script(celeba.main, argv, capsys)
    assert code == 0
    masks = ShapesMultiDataset(train=True, size=12).masks.any((2, 3))
    assert (f'{masks.sum()} maps of {masks.any(1).sum()} of 32 training images' in stdout
            and '1 of held-out splits left out' in stdout)
    assert 'every weight' in stdout and 'feature extractor fixed' in stdout
    before = ckpt.load_checkpoint(start)
    after = ckpt.load_checkpoint(os.path.join(out, 'checkpoint.pth.tar'))
    assert after['model_spec']['model_args']['gate'] == 'residual'
    assert after['model_spec']['objective'] == 'multi-label-attention-maps'
    frozen = [k for k in before['state_dict'] if k.split('.')[0] in
              ('conv1', 'bn1', 'layer1', 'layer2', 'layer3')]
    assert any('running_mean' in k for k in frozen)
    assert all(torch.equal(before['state_dict'][k], after['state_dict'][k]) for k in frozen)
    assert not torch.equal(before['state_dict']['conv_att.weight'],
                           after['state_dict']['conv_att.weight'])
    with open(os.path.join(out, 'args.json')) as f:
        recorded = json.load(f)
    assert recorded['attention_maps_images'] == [str(i) for i in range(12) if masks[i].any()]
    with open(os.path.join(out, 'log.txt')) as f:
        header, *rows = f.read().splitlines()
    assert header.split('\t')[-2:] == ['Train Map Loss', 'Taught Score'] and len(rows) == 2
    map_losses = [float(row.split('\t')[-2]) for row in rows]
    assert map_losses[1] < map_losses[0]


BAD = {
    'baseline': (['--attention-maps', 'shapes-masks:10%', '-a', 'resnet18'],
                 'plain multi-label baseline'),
    'missing folder': (['--attention-maps', 'nowhere'], 'no such folder'),
    'shapes masks elsewhere': (['--attention-maps', 'shapes-masks:10%', '--dataset',
                                'attributes', '--data', '{tmp}'], 'attribute table'),
    'weight without maps': (['--map-loss-weight', '2'], 'needs --attention-maps'),
    'counterfactuals per attribute': (['--attention-maps', 'shapes-masks:10%', '--teach-by',
                                       'counterfactual'], 'use --teach-by map'),
    'rrr per attribute': (['--attention-maps', 'shapes-masks:10%', '--teach-by', 'rrr'],
                          'is for single-label runs'),
    'weights of another width': (['--attention-maps', 'shapes-masks:10%', '--weights',
                                  '{base}/base/checkpoint.pth.tar', '--width', '16'],
                                 'contradicts'),
    'weights of cifar.py': (['--attention-maps', 'shapes-masks:10%', '--weights',
                             '{tmp}/cifar.pth.tar'], 'is a checkpoint of cifar.py'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_gives_one_line(case, base, tmp_path, capsys):
    extra, expected = BAD[case]
    if case == 'weights of cifar.py':
        assert cifar.main(['--dataset', 'shapes', '--depth', '8', '--train-size', '8',
                           '--test-size', '8', '--epochs', '1', '-j', '0', '--gpu-id', 'cpu',
                           '--save-attention', '0', '-c', str(tmp_path / 'c')]) == 0
        os.replace(tmp_path / 'c' / 'checkpoint.pth.tar', tmp_path / 'cifar.pth.tar')
        capsys.readouterr()
    extra = [a.format(base=base, tmp=tmp_path) for a in extra]
    argv = TINY + ['--epochs', '1', '-c', str(tmp_path / 'run')] + extra
    if case == 'baseline':  # torchvision's ResNet has no --width
        at = argv.index('--width')
        argv = argv[:at] + argv[at + 2:]
    assert_refused(celeba.main, argv, expected, str(base), capsys)
    assert not os.path.exists(tmp_path / 'run' / 'checkpoint.pth.tar')
