"""Data sets, transforms and loaders.

Small-image sets (cifar.py): CIFAR-10/100 and SVHN through torchvision (downloaded into
--data when missing), the offline `shapes` set, and image folders. Loaders are built so that an
epoch's data is a pure function of (seed, epoch): the order comes from a sampler seeded by
the epoch, and each sample's augmentation from its own seed (seed, epoch, index). A run
resumed mid-epoch therefore sees exactly the batches it would have seen, whatever the number
of worker processes.
"""
import os
import pickle
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.utils.data as tud
import torchvision.datasets as tvd
import torchvision.transforms as T
from PIL import Image, UnidentifiedImageError
from torch.utils.data.distributed import DistributedSampler

from .errors import AbnError
from .shapes import ShapesDataset
from .signals import ignore_stop_signals, stop_signals_blocked

# Per-data-set channel statistics. CIFAR-10's are the authors' values (used for every data
# set in their script, so also for their published checkpoints: see AUTHORS_NORMALIZATION).
NORMALIZATION = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'svhn': ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    'shapes': ((0.4978, 0.4997, 0.4988), (0.2855, 0.2832, 0.2851)),
    'imagefolder': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
AUTHORS_NORMALIZATION = NORMALIZATION['cifar10']
SMALL_IMAGE_DATASETS = ('cifar10', 'cifar100', 'svhn', 'shapes', 'imagefolder')


@dataclass
class DataBundle:
    name: str
    train: object  # a Dataset, or None when only evaluating
    test: object
    classes: list
    mean: tuple
    std: tuple
    image_size: int
    # Filled by the fast path: whole splits as uint8 tensors (N, 3, H, W) and labels.
    extras: dict = field(default_factory=dict)
    # imagenet.py: evaluation resizes the shorter side to this before the centre crop
    resize_size: Optional[int] = None
    # a validation split: when present, it picks model_best each epoch, and the best model
    # is evaluated once on `test` at the end (celeba.py); else `test` picks model_best
    valid: object = None


# -- transforms -----------------------------------------------------------------------------

def small_image_transforms(mean, std, flip=True, image_size=32, resize=False):
    """The authors' CIFAR augmentation: random crop with 4 pixels of padding (scaled with the
    image size) and horizontal flip; evaluation only normalises."""
    head = [T.Resize((image_size, image_size))] if resize else []
    train = head + [T.RandomCrop(image_size, padding=max(1, image_size // 8))]
    if flip:
        train.append(T.RandomHorizontalFlip())
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(train + tail), T.Compose(head + tail)


# -- torchvision data sets with clear errors ------------------------------------------------

class _CIFAR10(tvd.CIFAR10):
    # Present files are trusted and parsed (a corrupt one fails to parse, with a clear
    # error); the md5 of the downloaded archive is still checked.
    train_list = [[name, None] for name, _ in tvd.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in tvd.CIFAR10.test_list]
    meta = {**tvd.CIFAR10.meta, 'md5': None}


class _CIFAR100(tvd.CIFAR100):
    train_list = [[name, None] for name, _ in tvd.CIFAR100.train_list]
    test_list = [[name, None] for name, _ in tvd.CIFAR100.test_list]
    meta = {**tvd.CIFAR100.meta, 'md5': None}


class _SVHN(tvd.SVHN):
    def _check_integrity(self):
        return os.path.isfile(os.path.join(self.root, self.filename))


_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError,
                 UnicodeDecodeError, OSError, NotImplementedError)

_SOURCES = {
    'cifar10': ('CIFAR-10', 'cifar-10-python.tar.gz (or its folder cifar-10-batches-py/) from '
                'https://www.cs.toronto.edu/~kriz/cifar.html', 'cifar-10-batches-py'),
    'cifar100': ('CIFAR-100', 'cifar-100-python.tar.gz (or its folder cifar-100-python/) from '
                 'https://www.cs.toronto.edu/~kriz/cifar.html', 'cifar-100-python'),
    'svhn': ('SVHN', 'train_32x32.mat and test_32x32.mat from '
             'http://ufldl.stanford.edu/housenumbers/', None),
}


def _torchvision_split(name, root, train, transform):
    title, files, folder = _SOURCES[name]
    if name == 'svhn':
        def make(download):
            return _SVHN(root, split='train' if train else 'test', transform=transform,
                         download=download)
    else:
        cls = _CIFAR10 if name == 'cifar10' else _CIFAR100

        def make(download):
            return cls(root, train=train, transform=transform, download=download)
    try:
        return make(download=False)
    except RuntimeError:
        pass  # not there yet: download below
    except _PARSE_ERRORS as error:
        where = os.path.join(root, folder) if folder else root
        raise AbnError(f'the {title} files in {where} are corrupt ({type(error).__name__}: '
                       f'{error}): delete them and run again to download them') from None
    try:
        os.makedirs(root, exist_ok=True)
        return make(download=True)
    except _PARSE_ERRORS + (RuntimeError,) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AbnError(f'could not get {title} into {os.path.abspath(root)} ({reason}). '
                       f'Offline? Put {files} into that folder (or pass --data DIR)') from None


class CorruptImageError(Exception):
    """An image file that cannot be decoded; the message names the file."""


def load_rgb(path):
    try:
        with open(path, 'rb') as f:
            image = Image.open(f)
            return image.convert('RGB')
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise CorruptImageError(f'cannot read image {path} ({error})') from None


def readable_extensions():
    """Every file extension PIL can open (.gif, .webp, .tif, ...), as explain.py reads."""
    Image.init()
    # stubs that need an outside handler (HDF5, GRIB, ...) or program (EPS: Ghostscript)
    foreign = {'BUFR', 'GRIB', 'HDF5', 'WMF', 'MPEG', 'EPS', 'FITS'}
    return tuple(sorted(ext.lower() for ext, fmt in Image.registered_extensions().items()
                        if fmt in Image.OPEN and fmt not in foreign))


IMAGE_EXTENSIONS = readable_extensions()


class ImageFolder(tvd.ImageFolder):
    """torchvision's ImageFolder of every format PIL reads, whose unreadable images raise
    CorruptImageError naming the file, or, with skip_bad=True, come back as None to be
    dropped (and counted) by the loader."""

    def __init__(self, root, transform=None, skip_bad=False):
        super().__init__(root, transform=transform, loader=load_rgb,
                         is_valid_file=lambda path: path.lower().endswith(IMAGE_EXTENSIONS))
        self.skip_bad = skip_bad
        self.bad = set()  # indices found unreadable by check_images, skipped unread

    def __getitem__(self, index):
        if index in self.bad:
            return None
        try:
            return super().__getitem__(index)
        except CorruptImageError:
            if self.skip_bad:
                return None
            raise


def identify_image(path):
    """None when PIL identifies the file from its header, else the reason it cannot."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 (parsed with the header)
        return None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        return str(error) or type(error).__name__


def _folder_and_indices(dataset):
    """(the ImageFolder under `dataset`, the indices of it that `dataset` uses) or None."""
    indices = None
    while isinstance(dataset, tud.Subset) or getattr(dataset, 'wraps_split', False):
        if not isinstance(dataset, tud.Subset):  # the same items in the same order
            dataset = dataset.dataset
            continue
        indices = [dataset.indices[i] for i in (indices if indices is not None
                                                else range(len(dataset)))]
        dataset = dataset.dataset
    if not isinstance(dataset, ImageFolder):
        return None
    return dataset, (range(len(dataset)) if indices is None else indices)


def check_images(bundle, skip_bad, runtime):
    """Opens and identifies (header only) every image file of both splits before the first
    step: a bad file stops the run at once naming it, or with skip_bad is counted and
    skipped. Returns the number skipped."""
    splits = [_folder_and_indices(d) for d in (bundle.train, bundle.test) if d is not None]
    splits = [s for s in splits if s is not None]
    total = sum(len(indices) for _, indices in splits)
    if not total:
        return 0
    from .progress import Progress
    progress = Progress('Checking images', total, enabled=runtime.is_main and total >= 5000)
    bad, done = [], 0
    for folder, indices in splits:
        for index in indices:
            path = folder.samples[index][0]
            reason = identify_image(path)
            if reason is not None:
                bad.append(f'{path} ({reason})')
                folder.bad.add(index)
            done += 1
            if done % 100 == 0:
                progress.update(done)
    if total >= 5000:
        progress.finish(f'{len(bad)} unreadable')
    if bad and not skip_bad:
        named = '; '.join(bad[:5]) + (f'; and {len(bad) - 5} more' if len(bad) > 5 else '')
        if len(bad) == 1:
            raise AbnError(f'cannot read image {named}: remove it, or pass --skip-bad-images '
                           f'to skip unreadable images')
        raise AbnError(f'cannot read {len(bad)} images: {named}: remove them, or pass '
                       f'--skip-bad-images to skip unreadable images')
    if bad:
        runtime.print(f'    {len(bad)} unreadable images skipped: ' + '; '.join(bad[:5])
                      + (f'; and {len(bad) - 5} more' if len(bad) > 5 else ''))
    return len(bad)


def image_folder_split(root, names, transform, skip_bad=False, role='validation'):
    """The first existing root/<name> as an ImageFolder; AbnError when none is usable."""
    for name in names:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            try:
                return ImageFolder(path, transform=transform, skip_bad=skip_bad)
            except FileNotFoundError as error:
                raise AbnError(f'{path}: {error} (each class needs its own folder of images)'
                               ) from None
    wanted = ' or '.join(f'{name}/' for name in names)
    raise AbnError(f'no {wanted} folder in {root}: --data must hold {role} images as '
                   f'{names[0]}/<class>/<image>')


def check_same_classes(train, test, root):
    if train is not None and train.classes != test.classes:
        extra = sorted(set(train.classes) ^ set(test.classes))
        raise AbnError(f'the class folders of train/ and the test folder in {root} differ '
                       f'({", ".join(extra[:5])}): both need the same classes')


def build_small_image_data(name, root, train_size=None, test_size=None, evaluate_only=False,
                           image_size=32, skip_bad=False, normalization=None):
    """The data of cifar.py. `normalization` (mean, std) overrides the data set's own, for
    a checkpoint trained with other statistics. Raises AbnError for an unknown set or
    missing/corrupt files."""
    if name not in SMALL_IMAGE_DATASETS:
        raise AbnError(f"unknown data set '{name}': choose one of {', '.join(SMALL_IMAGE_DATASETS)}")
    mean, std = normalization or NORMALIZATION[name]
    # SVHN digits flip into other shapes (a mirrored 2 is no digit; a 5 looks like a 2).
    flip = name != 'svhn'
    resize = name == 'imagefolder'
    train_tf, test_tf = small_image_transforms(mean, std, flip, image_size, resize)
    if name == 'shapes':
        test = ShapesDataset(train=False, size=test_size, transform=test_tf)
        train = None if evaluate_only else ShapesDataset(train=True, size=train_size,
                                                          transform=train_tf)
        classes = list(test.classes)
    elif name == 'imagefolder':
        test = image_folder_split(root, ('val', 'test'), test_tf, skip_bad)
        train = None if evaluate_only else image_folder_split(root, ('train',), train_tf,
                                                              skip_bad, role='training')
        check_same_classes(train, test, root)
        classes = list(test.classes)
    else:
        test = _torchvision_split(name, root, False, test_tf)
        train = None if evaluate_only else _torchvision_split(name, root, True, train_tf)
        classes = [str(c) for c in getattr(test, 'classes', range(10))]
        if name == 'svhn':
            classes = [str(d) for d in range(10)]
    test = first_n(test, test_size)
    train = first_n(train, train_size)
    return DataBundle(name, train, test, classes, mean, std, image_size)


def first_n(dataset, n):
    if dataset is None or n is None or n >= len(dataset):
        return dataset
    return tud.Subset(dataset, range(n))


def base_dataset(dataset):
    while isinstance(dataset, tud.Subset):
        dataset = dataset.dataset
    return dataset


# -- loaders --------------------------------------------------------------------------------

def _mix64(*values):
    """SplitMix64 over the values: well-spread seeds from (seed, epoch, index)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        h = (h + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class SeededAugmentation(tud.Dataset):
    """Items are fetched with keys (epoch, index); each draws its random augmentation from
    the seed (seed, epoch, index), leaving the process's own generator untouched."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_mix64(self.seed, epoch, index))
            return self.dataset[index]


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (one shard per process, reshuffled each epoch from
    seed + epoch; with one process, a plain shuffle) that yields (epoch, index) keys and can
    start an epoch part-way, for resuming."""

    def __init__(self, dataset, num_replicas, rank, seed, batch_size=None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=False)
        self.start = 0
        # A last batch of one image would fail in BatchNorm wherever the maps are 1x1
        # (imagenet.py --image-size 32): it is dropped; each epoch's shuffle drops another.
        self.length = self.num_samples
        if batch_size and batch_size > 1 and self.num_samples % batch_size == 1:
            self.length -= 1

    def set_epoch(self, epoch, start=0):
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())[:self.length][self.start:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self):
        return self.length - self.start


class ShardSampler(tud.Sampler):
    """Evaluation shard: every index exactly once across processes, no padding."""

    def __init__(self, length, num_replicas=1, rank=0):
        self.indices = range(rank, length, num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def collate_dropping_none(batch):
    """Default collation after dropping unreadable images (None); returns (inputs, targets,
    dropped)."""
    kept = [item for item in batch if item is not None]
    dropped = len(batch) - len(kept)
    if not kept:
        return None, None, dropped
    inputs, targets = tud.default_collate(kept)
    return inputs, targets, dropped


class Loader:
    """A DataLoader with an epoch: `set_epoch(epoch, start_step)` then iterate
    (inputs, targets). Counts images dropped as unreadable in `dropped`."""

    def __init__(self, dataset, batch_size, sampler, workers, pin_memory, train):
        self.batch_size = batch_size
        self.sampler = sampler
        self.dropped = 0
        self.loader = tud.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
            pin_memory=pin_memory, drop_last=False, collate_fn=collate_dropping_none,
            persistent_workers=workers > 0 and train, prefetch_factor=4 if workers else None,
            worker_init_fn=ignore_stop_signals)

    def set_epoch(self, epoch, start_step=0):
        if isinstance(self.sampler, EpochSampler):
            self.sampler.set_epoch(epoch, start_step * self.batch_size)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        with stop_signals_blocked():  # workers start with the signals held, then ignore them
            batches = iter(self.loader)
        for inputs, targets, dropped in batches:
            self.dropped += dropped
            if inputs is not None:
                yield inputs, targets


def make_train_loader(dataset, batch_size, runtime, seed, workers):
    sampler = EpochSampler(dataset, runtime.world_size, runtime.rank, seed, batch_size)
    return Loader(SeededAugmentation(dataset, seed), batch_size, sampler, workers,
                  runtime.device.type == 'cuda', train=True)


def make_eval_loader(dataset, batch_size, runtime, workers):
    sampler = ShardSampler(len(dataset), runtime.world_size, runtime.rank)
    return Loader(dataset, batch_size, sampler, workers, runtime.device.type == 'cuda',
                  train=False)
