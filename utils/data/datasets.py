"""Data sets and transforms.

What the project knows of each small-image data set, in one table (`DATASETS`: statistics,
classes, flips, how torchvision reads it). Small-image sets (cifar.py): CIFAR-10/100 and SVHN through torchvision (downloaded into
--data when missing), the offline `shapes` set, and image folders; the image-folder splits
of imagenet.py; the check of every image file before the first step.
"""
import os
import pickle
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch.utils.data as tud
import torchvision.datasets as tvd
import torchvision.transforms as T

from utils.data.images import CorruptImageError, identify_image, is_image_file, load_rgb
from utils.data.shapes import SHAPE_CLASSES, ShapesDataset
from utils.errors import AbnError
from utils.progress import Progress

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


@dataclass(frozen=True)
class DatasetFacts:
    """What the project knows of one data set of cifar.py, in one place: its channel
    statistics, its classes, its training flips and, for torchvision's, how it is read and
    what to fetch by hand offline."""
    normalization: tuple  # (mean, std)
    classes: object = None  # the names (the files' own, where they have them, come first);
    # their count where only the files name them; None where the files say both (a folder)
    flip: bool = True  # horizontal flips in training
    title: str = ''  # torchvision's: its name, the files to put in --data, their folder
    files: str = ''
    folder: Optional[str] = None
    split: Optional[Callable] = None  # (root, train, transform, download) -> the split

    @property
    def class_count(self):
        return self.classes if isinstance(self.classes, int) else \
            (len(self.classes) if self.classes else None)

    @property
    def class_names(self):
        return list(self.classes) if isinstance(self.classes, tuple) else None


SHAPES_NORMALIZATION = ((0.4978, 0.4997, 0.4988), (0.2855, 0.2832, 0.2851))
# CIFAR-10's statistics are the authors' values (used for every data set in their script, so
# also for their published checkpoints: see AUTHORS_NORMALIZATION).
DATASETS = {
    'cifar10': DatasetFacts(
        ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
         'truck'),
        title='CIFAR-10', files='cifar-10-python.tar.gz (or its folder cifar-10-batches-py/) '
        'from https://www.cs.toronto.edu/~kriz/cifar.html', folder='cifar-10-batches-py',
        split=lambda root, train, transform, download: _CIFAR10(
            root, train=train, transform=transform, download=download)),
    'cifar100': DatasetFacts(
        ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)), 100,  # names: from its files
        title='CIFAR-100', files='cifar-100-python.tar.gz (or its folder cifar-100-python/) '
        'from https://www.cs.toronto.edu/~kriz/cifar.html', folder='cifar-100-python',
        split=lambda root, train, transform, download: _CIFAR100(
            root, train=train, transform=transform, download=download)),
    # SVHN digits flip into other shapes (a mirrored 2 is no digit; a 5 looks like a 2).
    'svhn': DatasetFacts(
        ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)), tuple(str(d) for d in range(10)),
        flip=False, title='SVHN', files='train_32x32.mat and test_32x32.mat from '
        'http://ufldl.stanford.edu/housenumbers/',
        split=lambda root, train, transform, download: _SVHN(
            root, split='train' if train else 'test', transform=transform, download=download)),
    'shapes': DatasetFacts(SHAPES_NORMALIZATION, tuple(SHAPE_CLASSES)),
    'shapes-decoy': DatasetFacts(SHAPES_NORMALIZATION, tuple(SHAPE_CLASSES)),  # shapes' own
    'imagefolder': DatasetFacts(((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
}
NORMALIZATION = {name: facts.normalization for name, facts in DATASETS.items()}
AUTHORS_NORMALIZATION = NORMALIZATION['cifar10']
SMALL_IMAGE_DATASETS = tuple(DATASETS)


def known_classes(name):
    """The class names of data set `name` where they do not come with its files, or None."""
    facts = DATASETS.get(name)
    return facts.class_names if facts else None


def class_count(name):
    """The number of classes of data set `name`, where it is fixed, or None."""
    facts = DATASETS.get(name)
    return facts.class_count if facts else None


_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError,
                 UnicodeDecodeError, OSError, NotImplementedError)

def _torchvision_split(name, root, train, transform):
    facts = DATASETS[name]
    title, files, folder = facts.title, facts.files, facts.folder

    def make(download):
        return facts.split(root, train, transform, download)
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


class ImageFolder(tvd.ImageFolder):
    """torchvision's ImageFolder of every format PIL reads, whose unreadable images raise
    CorruptImageError naming the file, or, with skip_bad=True, come back as None to be
    dropped (and counted) by the loader."""

    def __init__(self, root, transform=None, skip_bad=False):
        super().__init__(root, transform=transform, loader=load_rgb,
                         is_valid_file=is_image_file)
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
    resize = name == 'imagefolder'
    train_tf, test_tf = small_image_transforms(mean, std, DATASETS[name].flip, image_size,
                                               resize)
    if name in ('shapes', 'shapes-decoy'):
        decoy = name == 'shapes-decoy'  # a class-coloured patch in training only
        test = ShapesDataset(train=False, size=test_size, transform=test_tf, decoy=decoy)
        train = None if evaluate_only else ShapesDataset(train=True, size=train_size,
                                                          transform=train_tf, decoy=decoy)
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
        named = getattr(test, 'classes', None)  # the files' own names, where they have them
        classes = [str(c) for c in named] if named else DATASETS[name].class_names
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
