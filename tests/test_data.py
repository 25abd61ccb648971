"""Data sets through the real loading code, on small files in the real formats; loaders whose
epochs are a pure function of (seed, epoch)."""
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from tests.fakedata import write_cifar10, write_cifar100, write_image_folder, write_svhn
from utils.data.datasets import NORMALIZATION, base_dataset, build_small_image_data
from utils.data.images import CorruptImageError
from utils.data.loaders import ShardSampler, make_eval_loader, make_train_loader
from utils.data.shapes import SHAPE_CLASSES, ShapesDataset, generate_shapes
from utils.distributed import Runtime
from utils.errors import AbnError

CPU = Runtime(device=torch.device('cpu'))


def unnormalize(x, name):
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATION[name])
    return ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def test_cifar10_pickles(tmp_path):
    _, images, labels = write_cifar10(str(tmp_path))
    data = build_small_image_data('cifar10', str(tmp_path))
    assert (len(data.train), len(data.test)) == (100, 40)
    assert data.classes == list(SHAPE_CLASSES)
    assert (data.mean, data.std) == NORMALIZATION['cifar10']
    x, y = data.test[3]
    assert y == labels[103]
    assert torch.equal(unnormalize(x, 'cifar10'), torch.from_numpy(images[103]).permute(2, 0, 1))
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in data.train.transform.transforms)


def test_cifar100_pickles_use_their_own_statistics(tmp_path):
    _, _, fine = write_cifar100(str(tmp_path))
    data = build_small_image_data('cifar100', str(tmp_path), evaluate_only=True)
    assert data.train is None and len(data.test) == 40
    assert len(data.classes) == 100 and data.classes[7] == 'class07'
    assert data.test[5][1] == fine[65]
    assert (data.mean, data.std) == NORMALIZATION['cifar100'] != NORMALIZATION['cifar10']


def test_authors_normalisation_can_be_forced(tmp_path):
    write_cifar100(str(tmp_path))
    data = build_small_image_data('cifar100', str(tmp_path), evaluate_only=True,
                                  normalization=NORMALIZATION['cifar10'])
    assert data.mean == NORMALIZATION['cifar10'][0]
    assert data.test.transform.transforms[-1].mean == NORMALIZATION['cifar10'][0]


def test_svhn_mat_files_without_flip(tmp_path):
    splits = write_svhn(str(tmp_path))
    data = build_small_image_data('svhn', str(tmp_path))
    assert (len(data.train), len(data.test)) == (50, 30)
    assert data.classes == [str(d) for d in range(10)]
    images, labels = splits['test']
    assert [data.test[i][1] for i in range(30)] == labels.tolist()  # 10 read back as 0
    x, _ = data.test[0]
    assert torch.equal(unnormalize(x, 'svhn'), torch.from_numpy(images[0]).permute(2, 0, 1))
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in data.train.transform.transforms)


def test_missing_data_offline_says_where_to_put_it(tmp_path, offline):
    with pytest.raises(AbnError, match=r'could not get CIFAR-10 into .*Offline\? Put '
                                       r'cifar-10-python.tar.gz'):
        build_small_image_data('cifar10', str(tmp_path / 'empty'))
    with pytest.raises(AbnError, match='train_32x32.mat and test_32x32.mat'):
        build_small_image_data('svhn', str(tmp_path / 'empty'))


def test_corrupt_cifar_file(tmp_path):
    folder, _, _ = write_cifar10(str(tmp_path))
    with open(os.path.join(folder, 'test_batch'), 'wb') as f:
        f.write(b'\x80\x02}q\x00(X\x04\x00\x00\x00da')  # a pickle cut short
    with pytest.raises(AbnError, match='CIFAR-10 files in .* are corrupt .*delete them'):
        build_small_image_data('cifar10', str(tmp_path), evaluate_only=True)
    with open(os.path.join(folder, 'test_batch'), 'wb') as f:
        pickle.dump({'data': np.zeros((3, 5), np.uint8), 'labels': [0, 1, 2]}, f)  # wrong shape
    with pytest.raises(AbnError, match='corrupt'):
        build_small_image_data('cifar10', str(tmp_path), evaluate_only=True)


def test_image_folders(tmp_path):
    write_image_folder(str(tmp_path), splits=(('train', 4), ('test', 2)))
    data = build_small_image_data('imagefolder', str(tmp_path), image_size=24)
    assert data.classes == ['cat', 'dog', 'fox']
    assert (len(data.train), len(data.test)) == (12, 6)
    x, y = data.train[5]
    assert x.shape == (3, 24, 24) and y == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(AbnError, match=r'no val/ or test/ folder in .*: --data must hold'):
        build_small_image_data('imagefolder', str(tmp_path))
    write_image_folder(str(tmp_path), splits=(('train', 2), ('val', 1)))
    os.makedirs(tmp_path / 'val' / 'emu')
    with pytest.raises(AbnError, match="emu"):
        build_small_image_data('imagefolder', str(tmp_path))
    (tmp_path / 'val' / 'emu' / 'x.png').write_bytes(b'')
    with pytest.raises(AbnError, match='class folders of train/ and the test folder .* differ'):
        build_small_image_data('imagefolder', str(tmp_path))


def test_corrupt_image_is_named_or_skipped(tmp_path):
    paths = write_image_folder(str(tmp_path), splits=(('train', 2), ('val', 2)))
    bad = [p for p in paths if '/val/' in p][1]
    with open(bad, 'wb') as f:
        f.write(b'not an image')
    data = build_small_image_data('imagefolder', str(tmp_path), evaluate_only=True)
    index = data.test.samples.index((bad, 0))
    with pytest.raises(CorruptImageError, match=f'cannot read image {bad}'):
        data.test[index]
    skipping = build_small_image_data('imagefolder', str(tmp_path), evaluate_only=True,
                                      skip_bad=True)
    loader = make_eval_loader(skipping.test, 4, CPU, workers=0)
    seen = sum(len(y) for _, y in loader)
    assert seen == len(skipping.test) - 1 and loader.dropped == 1


def test_shapes_are_deterministic_balanced_and_masked():
    a = generate_shapes(1000, 7)
    b = generate_shapes(1000, 7)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    images, labels, masks = a
    assert np.bincount(labels, minlength=10).tolist() == [100] * 10
    assert masks.shape == (1000, 32, 32) and 0.03 < masks.mean() < 0.4
    assert all(masks[i].any() for i in range(1000))
    prefix = generate_shapes(123, 7)  # --test-size 123: the first 123 of the same split
    for whole, part in zip(a, prefix):
        assert np.array_equal(whole[:123], part)
    # the object is drawn where its mask is: one colour (plus a little shading) inside
    inside = images[0][masks[0]].astype(float)
    assert inside.std(0).max() < 20
    test = ShapesDataset(train=False, size=50)
    train = ShapesDataset(train=True, size=50)
    assert not np.array_equal(test.data, train.data)


def epoch_batches(loader, epoch, start_step=0):
    loader.set_epoch(epoch, start_step)
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize('workers', [0, 2])
def test_epoch_data_is_a_function_of_seed_and_epoch(workers):
    dataset = ShapesDataset(train=True, size=40, transform=T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()]))
    reference = make_train_loader(dataset, 8, CPU, seed=5, workers=0)
    loader = make_train_loader(dataset, 8, CPU, seed=5, workers=workers)
    torch.manual_seed(123)  # the process's generator must not matter
    first = epoch_batches(reference, 3)
    torch.manual_seed(999)
    again = epoch_batches(loader, 3)
    assert len(first) == 5
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    tail = epoch_batches(loader, 3, start_step=2)  # resuming at step 2
    assert len(tail) == 3
    for (x1, y1), (x2, y2) in zip(first[2:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = epoch_batches(loader, 4)
    assert not torch.equal(torch.cat([y for _, y in other]), torch.cat([y for _, y in first]))


def test_evaluation_shards_cover_every_image_once():
    shards = [list(ShardSampler(10, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))


def test_train_and_test_size_take_the_first_images(tmp_path):
    write_cifar10(str(tmp_path))
    data = build_small_image_data('cifar10', str(tmp_path), train_size=30, test_size=7)
    assert (len(data.train), len(data.test)) == (30, 7)
    assert isinstance(base_dataset(data.test), torch.utils.data.Dataset)
