"""The images the page serves: a data set's test and training splits (built on first use,
through the evaluation transform) and the command line's image files, each as a `Picture`;
and the class names, the checkpoint's or the data set's."""
import os
from dataclasses import dataclass

import torch

from utils.data.datasets import base_dataset
from utils.data.images import CorruptImageError, find_images
from utils.errors import AbnError
from utils.serve.kinds import check_dataset
from utils.serve.pictures import read_image


@dataclass
class Picture:
    """One image on the page, as the model sees it."""
    tensor: torch.Tensor  # (3, H, W), normalised as in the model's training
    name: str  # shown on the page and used as the saved map's stem
    label: int = -1  # the true class, -1 when unknown
    split: str = None  # 'train' or 'test' for images of a built-in data set
    index: int = None  # the image's index within that split
    note: str = ''  # e.g. that the image was resized


class Gallery:
    def __init__(self, kind, loaded, transform, names, dataset=None, data_root='./data',
                 files=(), max_pixels=None):
        self.kind, self.loaded, self.transform = kind, loaded, transform
        self.names = names  # the class (attribute) names
        self.size = loaded.image_size
        self.max_pixels = max_pixels  # larger images are refused from their header
        self.files = find_images(list(files)) if files else []
        self.dataset, self.data_root = dataset, data_root
        self.splits = {}
        if dataset:
            check_dataset(kind, dataset)
            if loaded.imagenet:
                raise AbnError('--dataset holds small-image sets; give an ImageNet model image '
                               'files or folders, or upload them on the page')
            self.splits = {'test': None, 'train': None}  # built on first use: a fast start
            self.split('test')  # the test split now: a missing data set is a start-up error

    def share(self, other):
        """Serves `other`'s data set splits (a model of the same input: a taught copy),
        without reading or generating them again."""
        self.dataset, self.data_root, self.splits = other.dataset, other.data_root, other.splits
        if other.loaded.class_names is None:
            self.names[:] = list(other.names)

    def split(self, name):
        """The split's images through the evaluation transform (no augmentation)."""
        if name not in self.splits:
            raise AbnError(f"no split '{name}': this page serves "
                           f"{', '.join(self.splits) or 'uploaded images only'}")
        if self.splits[name] is None and self.kind.per_attribute:  # generated
            self.splits[name] = self.kind.generated_split(name, self.transform)
        if self.splits[name] is None:
            chosen, classes, test = self.kind.open_split(self.dataset, self.data_root, name,
                                                         self.size, self.loaded.normalization)
            known = self.loaded.class_names
            if known is not None and classes != list(known):
                raise AbnError(f'the model was trained on other classes ({", ".join(known[:4])}'
                               f', ...) than {self.dataset} has ({", ".join(classes[:4])}, ...)')
            base_dataset(chosen).transform = base_dataset(test).transform
            self.splits[name] = chosen
            if known is None and len(classes) == len(self.names):
                self.names[:] = classes
        return self.splits[name]

    def picture_from_split(self, split, index):
        data = self.split(split)
        try:
            index = int(index)
        except (TypeError, ValueError):
            raise AbnError(f'the image index must be a whole number, got {index!r}') from None
        if not 0 <= index < len(data):
            raise AbnError(f'the {split} split has images 0 to {len(data) - 1}, not {index}')
        try:
            tensor, label = data[index]
        except CorruptImageError as error:
            raise AbnError(str(error)) from None
        name = f'{self.dataset}-{split}-{index}'
        if self.kind.per_attribute:  # attributes (T,): no single true class
            return Picture(tensor, name, -1, split, index)
        samples = getattr(base_dataset(data), 'samples', None)  # image folders: the file's name
        if samples is not None:
            name = os.path.splitext(os.path.basename(samples[index][0]))[0]
        return Picture(tensor, name, int(label), split, index)

    def picture_from_file(self, path, label=None):
        """Any image file, as explain.py reads files: resized to the model's input."""
        if not path or not os.path.isfile(path):
            raise AbnError('no file was given')
        image = read_image(path, self.max_pixels)
        if label is None:  # an image in a folder named after a class has that label
            folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
            label = self.names.index(folder) if folder in self.names else -1
        note = ''
        if image.size != (self.size, self.size):
            how = 'resized and centre-cropped' if self.loaded.imagenet else 'resized'
            note = (f'{image.size[0]}x{image.size[1]} image {how} to the model\'s '
                    f'{self.size}x{self.size}')
        stem = os.path.splitext(os.path.basename(path))[0]
        return Picture(self.transform(image), stem, label, note=note)

    def training_labels(self):
        """The training split's class of each image (single-label data sets), or None."""
        return getattr(base_dataset(self.split('train')), 'targets', None)
