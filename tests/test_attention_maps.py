"""Teaching the map (utils/teach/attention_maps.py, models.abn.freeze_feature_extractor): maps read
from folders or the shapes masks, moved with their images' crops and flips, the map loss on
hand-made maps, and a frozen feature extractor that does not move."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from models import CIFAR_MODELS, IMAGENET_MODELS
from models.abn import freeze_feature_extractor
from tests.fakedata import write_cifar10, write_image_folder
from utils.data.datasets import build_small_image_data
from utils.data.loaders import make_train_loader
from utils.data.shapes import ShapesDataset
from utils.distributed import Runtime
from utils.errors import AbnError
from utils.objectives.map_loss import map_loss
from utils.teach.attention_maps import (MapDeviceLoader, WithAttentionMaps, load_map_set,
                                        map_device_loader, parse_source, read_map,
                                        shapes_mask_subset)
from utils.teach.attention_maps import main as export_main

CPU = Runtime(device=torch.device('cpu'))


# Tiny models: one thread is fastest, and on a busy machine far faster.
pytestmark = pytest.mark.usefixtures('one_thread')


# -- the loss -------------------------------------------------------------------------------

def test_map_loss_on_hand_made_maps():
    model_map = torch.zeros(2, 1, 2, 2)
    model_map[0, 0, 0, 0] = 1.0  # one cell of four on
    given = torch.zeros(2, 1, 4, 4)
    given[0, 0, :2, :2] = 1.0  # the same cell, at twice the resolution: no error
    given[1] = 0.5  # image 1: every cell off by 0.5 -> 0.25
    has = torch.tensor([True, True])
    assert map_loss(model_map, given, has).item() == pytest.approx((0 + 0.25) / 2)
    # A cell half covered counts 0.5 (area resizing), so 0.25 of squared error in one cell.
    half = torch.zeros(1, 1, 4, 4)
    half[0, 0, 0, 0] = half[0, 0, 1, 0] = 1.0
    assert map_loss(torch.zeros(1, 1, 2, 2), half, torch.tensor([True])).item() == \
        pytest.approx(0.25 / 4)


def test_map_loss_averages_over_the_images_with_a_map_only():
    model_map = torch.full((3, 1, 2, 2), 0.5, requires_grad=True)
    given = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    loss = map_loss(model_map, given, torch.tensor([True, False, False]))
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert model_map.grad[1:].abs().sum() == 0 and model_map.grad[0].abs().sum() > 0
    none = map_loss(model_map, given, torch.tensor([False, False, False]))
    assert none.item() == 0 and none.requires_grad


# -- freezing -------------------------------------------------------------------------------

def small_models():
    yield 'resnet', CIFAR_MODELS.create('resnet', depth=8, num_classes=3)
    yield 'densenet', CIFAR_MODELS.create('densenet', depth=10, growthRate=4, num_classes=3)
    yield 'wrn', CIFAR_MODELS.create('wrn', depth=10, widen_factor=1, num_classes=3)
    yield 'resnext', CIFAR_MODELS.create('resnext', depth=11, cardinality=2, widen_factor=1,
                                         num_classes=3)


def called_modules(model, x):
    """The leaf modules that extract_features runs, found by hooks."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(m))
             for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model.extract_features(x)
    for hook in hooks:
        hook.remove()
    return {id(m) for m in seen}


@pytest.mark.parametrize('family', ['resnet', 'densenet', 'wrn', 'resnext', 'resnet18',
                                    'vgg16_bn'])
def test_feature_extractor_modules_are_what_extract_features_runs(family):
    with torch.device('meta'):  # shapes only: no memory, no time
        if family in CIFAR_MODELS:
            model, x = dict(small_models())[family], torch.empty(2, 3, 32, 32)
        else:
            model, x = IMAGENET_MODELS.create(family, num_classes=3), torch.empty(1, 3, 64, 64)
    listed = {id(leaf) for module in model.feature_extractor_modules()
              for leaf in module.modules() if not list(leaf.children())}
    assert listed == called_modules(model.eval(), x)


def extractor_keys(model):
    """state_dict keys (parameters and buffers) of the feature extractor."""
    names = {id(module): name for name, module in model.named_modules()}
    return {f'{names[id(module)]}.{key}' for module in model.feature_extractor_modules()
            for key in module.state_dict()}


@pytest.mark.parametrize('family', ['resnet', 'densenet', 'wrn', 'resnext'])
def test_frozen_feature_extractor_is_unchanged_after_a_training_step(family):
    torch.manual_seed(0)
    model = dict(small_models())[family]
    assert freeze_feature_extractor(model) > 0
    frozen = extractor_keys(model)
    assert any('running_mean' in key for key in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    model.train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))
    for _ in range(2):
        out = model(x)
        loss = (nn.functional.cross_entropy(out.attention_logits, y)
                + nn.functional.cross_entropy(out.perception_logits, y)
                + out.attention_map.mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    for key in frozen:
        assert torch.equal(before[key], after[key]), key  # weights and BN statistics
    assert any(not torch.equal(before[k], after[k]) for k in set(after) - frozen)
    assert all(not m.training for module in model.feature_extractor_modules()
               for m in module.modules())
    assert model.training and model.attention_stage.training


# -- maps read and attached -----------------------------------------------------------------

def test_shapes_masks_pseudo_folder_and_its_export_agree(tmp_path):
    train = ShapesDataset(train=True, size=200)
    maps = load_map_set('shapes-masks:10%', train, 'shapes')
    assert len(maps) == 20 and maps.indices() == shapes_mask_subset(200, 10)
    assert len(shapes_mask_subset(200, 1)) == 2 and len(shapes_mask_subset(50, 1)) == 1
    assert export_main([str(tmp_path / 'masks'), '--percent', '10', '--train-size', '200']) == 0
    folder = load_map_set(str(tmp_path / 'masks'), train, 'shapes')
    assert folder.indices() == maps.indices()
    for index in maps.indices():
        assert np.array_equal(folder.get(index), maps.get(index))
        assert np.array_equal(maps.get(index), train.masks[index].astype(np.float32))
    with pytest.raises(AbnError, match='only for --dataset shapes'):
        load_map_set('shapes-masks:10%', train, 'cifar10')
    with pytest.raises(AbnError, match='percentage'):
        parse_source('shapes-masks:ten')


def write_map(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_a_subset_of_images_have_maps_and_a_map_of_another_size_is_resized(tmp_path):
    data = build_small_image_data('shapes', '', train_size=8, test_size=4)
    big = np.zeros((64, 64), np.uint8)
    big[:32, :] = 255  # the top half, at twice the size
    write_map(str(tmp_path / 'maps' / '3.png'), big)
    write_map(str(tmp_path / 'maps' / '5.png'), np.full((8, 8), 255))
    maps = load_map_set(str(tmp_path / 'maps'), data.train, 'shapes')
    assert maps.indices() == [3, 5] and maps.record()['images'] == ['3', '5']
    dataset = WithAttentionMaps(data.train, maps)
    _, target = dataset[3]
    assert target['has_map'] and target['map'].shape == (1, 32, 32)
    _, plain = dataset[0]
    assert not plain['has_map'] and plain['map'].abs().sum() == 0
    # Resized and put through the crop: the top rows (less the crop's shift) attend.
    assert target['map'][0, 6:10, 4:28].min() > 0.95 and target['map'][0, 24:].max() < 0.05
    _, full = dataset[5]
    assert full['map'][0, 4:28, 4:28].min() == pytest.approx(1.0)


def test_unreadable_maps_and_maps_of_no_training_image_are_refused(tmp_path):
    data = build_small_image_data('shapes', '', train_size=8, test_size=4)
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / '2.png').write_bytes(b'not a png')
    with pytest.raises(AbnError, match=r'cannot read .*2\.png'):
        load_map_set(str(bad), data.train, 'shapes')
    stray = tmp_path / 'stray'
    write_map(str(stray / 'cat.png'), np.zeros((4, 4)))
    with pytest.raises(AbnError, match=r'cat\.png names no training image .*<index>\.png'):
        load_map_set(str(stray), data.train, 'shapes')
    beyond = tmp_path / 'beyond'
    write_map(str(beyond / '50000.png'), np.zeros((4, 4)))
    with pytest.raises(AbnError, match='names no training image'):
        load_map_set(str(beyond), data.train, 'shapes')
    with pytest.raises(AbnError, match='no such folder'):
        load_map_set(str(tmp_path / 'missing'), data.train, 'shapes')


def test_image_folder_maps_by_class_and_stem(tmp_path):
    write_image_folder(str(tmp_path / 'data'), splits=(('train', 3), ('val', 1)), size=40)
    data = build_small_image_data('imagefolder', str(tmp_path / 'data'))
    write_map(str(tmp_path / 'maps' / 'dog' / '1.png'), np.full((10, 10), 255))
    maps = load_map_set(str(tmp_path / 'maps'), data.train, 'imagefolder')
    index = next(i for i, (p, c) in enumerate(data.train.samples)
                 if data.train.classes[c] == 'dog' and os.path.basename(p).startswith('1.'))
    assert maps.indices() == [index] and maps.record()['images'] == ['dog/1']
    _, target = WithAttentionMaps(data.train, maps)[index]
    assert target['has_map'] and target['map'].shape == (1, 32, 32)
    write_map(str(tmp_path / 'maps' / 'emu' / '1.png'), np.zeros((4, 4)))
    with pytest.raises(AbnError, match=r'emu/1\.png names no training image .*<class>/'):
        load_map_set(str(tmp_path / 'maps'), data.train, 'imagefolder')


def test_a_second_map_of_an_image_is_averaged_with_the_first(tmp_path):
    """The editor keeps a second correction of an image as <stem>~2.png rather than replace
    the first: both teach, averaged."""
    data = build_small_image_data('shapes', '', train_size=8, test_size=4)
    write_map(str(tmp_path / 'maps' / '3.png'), np.full((8, 8), 255))
    write_map(str(tmp_path / 'maps' / '3~2.png'), np.zeros((16, 16)))  # another size too
    maps = load_map_set(str(tmp_path / 'maps'), data.train, 'shapes')
    assert maps.indices() == [3] and len(maps.paths[3][0]) == 2  # channel 0: both files
    assert np.allclose(maps.get(3), 0.5)
    write_map(str(tmp_path / 'maps' / 'x~2.png'), np.zeros((4, 4)))  # ~2 of no image
    with pytest.raises(AbnError, match=r'x~2\.png names no training image'):
        load_map_set(str(tmp_path / 'maps'), data.train, 'shapes')


@pytest.mark.parametrize('given', ['edited_maps', 'edited_maps/test', 'edited_maps/val'])
def test_maps_of_held_out_images_are_refused(tmp_path, given):
    """The editor saves maps of test images under test/ (val/ for folders' validation
    split): a folder that is, or holds, one of them would train on held-out images."""
    data = build_small_image_data('shapes', '', train_size=8, test_size=4)
    for split in ('train', 'test', 'val'):
        write_map(str(tmp_path / 'edited_maps' / split / '1.png'), np.zeros((4, 4)))
    with pytest.raises(AbnError, match=r'split, and training on them would train on held-out '
                                       r'images: give the training split\'s maps, .*train'):
        load_map_set(str(tmp_path / given), data.train, 'shapes')
    maps = load_map_set(str(tmp_path / 'edited_maps' / 'train'), data.train, 'shapes')
    assert maps.indices() == [1]


def channel_map_set(images, channel):
    """Maps equal to one colour channel of each image: after a crop and flip, the map must
    still equal that channel of the augmented image."""
    from utils.teach.attention_maps import MapSet
    return MapSet('test', maps={i: {0: images[i, :, :, channel].astype(np.float32) / 255}
                                for i in range(len(images))})


def unnormalised_channel(inputs, mean, std, channel):
    return inputs[:, channel] * std[channel] + mean[channel]


def test_the_map_gets_the_same_crop_and_flip_as_its_image(tmp_path):
    write_cifar10(str(tmp_path))
    data = build_small_image_data('cifar10', str(tmp_path), train_size=24)
    images = data.train.dataset.data
    dataset = WithAttentionMaps(data.train, channel_map_set(images, 0))
    loader = make_train_loader(dataset, 8, CPU, seed=3, workers=0)
    loader.set_epoch(1)
    for inputs, target in loader:
        red = unnormalised_channel(inputs, data.mean, data.std, 0)
        # Padding is black in the image and 0 in the map; both are the same crop and flip.
        assert torch.allclose(red, target['map'][:, 0], atol=1e-5)
    # The images are those the run draws without maps (same seed, same epoch).
    plain = make_train_loader(data.train, 8, CPU, seed=3, workers=0)
    plain.set_epoch(1)
    loader.set_epoch(1)
    for (a, _), (b, target) in zip(plain, loader):
        assert torch.equal(a, b)


def test_the_fast_path_crops_and_flips_the_map_with_its_image(tmp_path):
    write_cifar10(str(tmp_path))
    data = build_small_image_data('cifar10', str(tmp_path), train_size=24)
    images = data.train.dataset.data
    dataset = WithAttentionMaps(data.train, channel_map_set(images, 1))
    loader, reason = map_device_loader(dataset, 8, CPU, seed=3)
    assert isinstance(loader, MapDeviceLoader), reason
    loader.set_epoch(2)
    batches = 0
    for inputs, target in loader:
        green = unnormalised_channel(inputs, data.mean, data.std, 1)
        assert torch.allclose(green, target['map'][:, 0], atol=1e-5)
        assert target['has_map'].all() and target['label'].dtype == torch.int64
        batches += 1
    assert batches == 3


def test_read_map_of_colour_and_sixteen_bit_files(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = 255
    Image.fromarray(rgb).save(tmp_path / 'rgb.png')
    assert read_map(str(tmp_path / 'rgb.png'))[0, 0] == pytest.approx(1.0)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / 'deep.png')
    assert read_map(str(tmp_path / 'deep.png')).max() == pytest.approx(1.0)
