"""The fast path's device-resident loader (utils/data/fastdata.py): the faithful path's pixels,
order and augmentation distribution, and batches that are a pure function of
(seed, epoch, step) whatever the number of processes."""
import json

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import chi2_contingency, chisquare

import cifar
import imagenet
from tests.fakedata import write_cifar10, write_svhn
from utils.cli import run
from utils.data.datasets import build_small_image_data, small_image_transforms
from utils.data.fastdata import (Augmentation, DeviceLoader, augmentation_of, crop_flip,
                                 device_loader, draw_crops, uint8_split)
from utils.data.loaders import make_train_loader
from utils.data.shapes import ShapesDataset
from utils.distributed import Runtime
from utils.train.options import apply_fast

CPU = Runtime(device=torch.device('cpu'))
NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def shard(rank, world_size):
    return Runtime(device=torch.device('cpu'), rank=rank, world_size=world_size)


def batches(loader, epoch, start_step=0):
    loader.set_epoch(epoch, start_step)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_crop_and_flip_give_torchvisions_pixels():
    images = torch.from_numpy(ShapesDataset(train=True, size=12).data).permute(0, 3, 1, 2)
    top = torch.tensor([0, 8, 3, 0, 8, 4, 1, 7, 2, 6, 5, 0])
    left = torch.tensor([0, 8, 5, 8, 0, 4, 6, 2, 7, 1, 3, 4])
    flip = torch.tensor([False, True, True, False, True, False, True, False, True, True,
                         False, True])
    got = crop_flip(images.contiguous(), top, left, flip, padding=4)
    for i in range(len(images)):
        image = TF.crop(TF.pad(TF.to_pil_image(images[i]), 4), int(top[i]), int(left[i]), 32, 32)
        if flip[i]:
            image = TF.hflip(image)
        assert torch.equal(got[i], TF.pil_to_tensor(image)), i


def coordinate_image():
    """Red = row + 1, green = column + 1: a crop's offsets and mirroring can be read back
    from its pixels (padding is 0)."""
    rows, cols = np.mgrid[1:33, 1:33].astype(np.uint8)
    return np.stack([rows, cols, np.full_like(rows, 255)], axis=-1)


def read_back(crop, scale=1):
    """(top, left, flipped) of a (3, 32, 32) crop of coordinate_image, padding 4, whose
    pixels are the image's times `scale`."""
    row, col, right = (round(float(crop[c, 16, x]) / scale) for c, x in ((0, 16), (1, 16),
                                                                         (1, 17)))
    flipped = right < col
    return row - 13, col - (12 if flipped else 13), flipped


def test_offsets_and_flips_follow_the_torchvision_distribution():
    """The faithful transform's draws (read back from its output) against the fast path's,
    on the same grid of 9 x 9 offsets x flip: same distribution, and each uniform."""
    train_tf, _ = small_image_transforms((0, 0, 0), (1, 1, 1))
    image = Image.fromarray(coordinate_image())
    count = 2000
    torch.manual_seed(0)
    faithful = [read_back(train_tf(image), scale=1 / 255) for _ in range(count)]
    generator = torch.Generator().manual_seed(1)
    top, left, flip = draw_crops(count, 4, 0.5, generator, 'cpu')
    batch = torch.from_numpy(coordinate_image()).permute(2, 0, 1).expand(count, 3, 32, 32)
    fast = [read_back(crop) for crop in crop_flip(batch.contiguous(), top, left, flip, 4)]
    assert [(int(t), int(l), bool(f)) for t, l, f in zip(top, left, flip)] == fast

    def cells(draws):
        return np.bincount([(t * 9 + l) * 2 + f for t, l, f in draws], minlength=162)

    table = np.stack([cells(faithful), cells(fast)])
    assert chi2_contingency(table).pvalue > 1e-3
    for draws in (faithful, fast):
        tops, lefts, flips = zip(*draws)
        assert set(tops) == set(lefts) == set(range(9))
        assert chisquare(np.bincount(tops)).pvalue > 1e-3
        assert chisquare(np.bincount(lefts)).pvalue > 1e-3
        assert chisquare(np.bincount(flips)).pvalue > 1e-3


def test_evaluation_inputs_are_bitwise_the_faithful_ones(tmp_path):
    write_cifar10(str(tmp_path / 'c10'))
    write_svhn(str(tmp_path / 'svhn'))  # stored (N, 3, H, W): another layout
    for name, root in (('cifar10', tmp_path / 'c10'), ('svhn', tmp_path / 'svhn'),
                       ('shapes', None)):
        data = build_small_image_data(name, str(root), test_size=30)
        loader, _ = device_loader(data.test, 8, CPU, train=False)
        inputs = torch.cat([x for x, _ in loader])
        targets = torch.cat([y for _, y in loader]).tolist()
        assert len(inputs) == 30
        for i in range(30):
            x, y = data.test[i]
            assert torch.equal(inputs[i], x) and targets[i] == y, (name, i)


def test_the_faithful_transforms_are_read_and_svhn_is_not_flipped(tmp_path):
    write_svhn(str(tmp_path))
    shapes = build_small_image_data('shapes', None, train_size=10, test_size=10)
    svhn = build_small_image_data('svhn', str(tmp_path))
    assert augmentation_of(shapes.train.transform) == Augmentation(shapes.mean, shapes.std, 4, 0.5,
                                                                   (32, 32))
    assert augmentation_of(svhn.train.transform) == Augmentation(svhn.mean, svhn.std, 4, 0.0,
                                                                 (32, 32))
    assert augmentation_of(shapes.test.transform) == Augmentation(shapes.mean, shapes.std)
    smaller_crop = T.Compose([T.RandomCrop(24, padding=4), T.ToTensor(), T.Normalize(*NORM)])
    assert device_loader(ShapesDataset(train=True, size=4, transform=smaller_crop), 2, CPU) \
        == (None, f'it cannot reproduce the transform {smaller_crop}')


def test_image_folders_fall_back_to_the_standard_loader(tmp_path):
    from tests.fakedata import write_image_folder
    write_image_folder(str(tmp_path))
    data = build_small_image_data('imagefolder', str(tmp_path))
    loader, reason = device_loader(data.train, 4, CPU)
    assert loader is None and 'CIFAR-10/100, SVHN and shapes' in reason


def test_train_size_takes_the_first_images(tmp_path):
    _, images, labels = write_cifar10(str(tmp_path))
    data = build_small_image_data('cifar10', str(tmp_path), train_size=30)
    assert isinstance(data.train, torch.utils.data.Subset)
    held, held_labels, _ = uint8_split(data.train)
    assert torch.equal(held, torch.from_numpy(images[:30]).permute(0, 3, 1, 2))
    assert held_labels.tolist() == labels[:30].tolist()


@pytest.fixture(scope='module')
def shapes():
    return build_small_image_data('shapes', None, train_size=48, test_size=8)


@pytest.mark.parametrize('world_size', [1, 2])
def test_order_is_the_epoch_samplers(shapes, world_size):
    for rank in range(world_size):
        faithful = make_train_loader(shapes.train, 8, shard(rank, world_size), seed=5, workers=0)
        fast, _ = device_loader(shapes.train, 8, shard(rank, world_size), seed=5)
        for epoch in (0, 3):
            assert [y.tolist() for _, y in batches(fast, epoch)] == \
                   [y.tolist() for _, y in batches(faithful, epoch)]


def test_batches_are_a_function_of_seed_epoch_and_step(shapes):
    loader, _ = device_loader(shapes.train, 16, CPU, seed=5)
    threads = torch.get_num_threads()
    torch.manual_seed(1)  # the process's generator must not matter
    first = batches(loader, 2)
    assert torch.get_num_threads() == threads  # augmentation on one thread, then restored
    torch.manual_seed(2)
    again = batches(loader, 2)
    tail = batches(loader, 2, start_step=1)  # resumed at step 1
    assert len(first) == 3 and len(tail) == 2 and len(loader) == 2
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for (x1, y1), (x2, y2) in zip(first[1:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = batches(loader, 3)
    assert not torch.equal(torch.cat([x for x, _ in other]), torch.cat([x for x, _ in first]))


def test_processes_see_one_process_batches_of_the_global_size(shapes):
    """DistributedSampler deals the permutation out round-robin, and each process takes its
    own samples' crops from the global batch's draws: two processes with batch 8 see,
    interleaved, exactly the batches of one process with batch 16."""
    single, _ = device_loader(shapes.train, 16, CPU, seed=7)
    ranks = [device_loader(shapes.train, 8, shard(r, 2), seed=7)[0] for r in range(2)]
    whole = batches(single, 1)
    parts = [batches(loader, 1) for loader in ranks]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 3
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)


def test_evaluation_shards_every_image_once(shapes):
    seen = []
    for rank in range(3):
        loader, _ = device_loader(shapes.test, 2, shard(rank, 3), train=False)
        seen += [y for _, y in loader]
    assert sorted(torch.cat(seen).tolist()) == sorted(shapes.test.targets)
    assert len(torch.cat(seen)) == 8


def test_device_loader_without_augmentation_yields_the_images():
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    loader = DeviceLoader(images, torch.arange(6), Augmentation((0, 0, 0), (1, 1, 1)), 4, CPU,
                          seed=0)
    x, y = next(iter(loader))
    assert torch.equal(x, images[y].float() / 255)


def test_fast_flag_trains_through_cifar_py(tmp_path, capsys):
    code = run(cifar.main, ['--dataset', 'shapes', '--train-size', '64', '--test-size', '16',
                            '--depth', '8', '--epochs', '1', '--train-batch', '16', '-j', '0',
                            '--manualSeed', '2', '--save-attention', '0', '--gpu-id', 'cpu',
                            '--fast', '-c', str(tmp_path / 'run')])
    out = capsys.readouterr().out
    assert code == 0 and 'Best acc' in out
    assert (tmp_path / 'run' / 'model_best.pth.tar').exists()
    recorded = json.loads((tmp_path / 'run' / 'args.json').read_text())
    assert recorded['fast_data'] and recorded['channels_last']
    assert not recorded['amp'] and not recorded['compile']  # not on the CPU


@pytest.mark.parametrize('script', [cifar, imagenet])
@pytest.mark.parametrize('device', ['cpu', 'cuda'])
def test_fast_sets_the_devices_fast_path(script, device):
    """--fast: channels-last everywhere, the device-resident data where the script has
    it, and AMP and compilation on CUDA only (they slow a CPU without bf16 down)."""
    args = script.get_args_parser().parse_args(['--fast'] + (
        ['--data', 'DIR'] if script is imagenet else []))
    apply_fast(args, torch.device(device))
    assert args.channels_last
    assert getattr(args, 'fast_data', script is cifar) == (script is cifar)
    assert args.amp == args.compile == (device == 'cuda')
