"""What explain.py explains: image files and folders (labelled by their class folder where
they sit in one), or a data set's test split with its object masks; each image prepared as
the model's evaluation prepared it. Also the maps a user edited and class-name files."""
import os
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms as T

from utils.data.datasets import base_dataset, build_small_image_data, first_n
from utils.data.images import CorruptImageError, find_images, image_files_by_key, load_rgb
from utils.data.shapes import SHAPE_CLASSES
from utils.errors import AbnError

def read_class_names(path, count):
    try:
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as error:
        raise AbnError(f'cannot read --class-names {path}: {error.strerror}') from None
    if len(names) != count:
        raise AbnError(f'--class-names {path} holds {len(names)} names, the model has {count} '
                       f'classes')
    return names


@dataclass
class Inputs:
    """What to explain: `dataset[i]` is (normalised image, label or -1); `masks` the objects'
    ground truth or None; `sources` names each image."""
    dataset: object
    sources: list
    masks: object  # (N, S, S) bool array, a list with None where an image has none, or None
    class_names: list
    masks_by_index: bool = False  # a data set's split: its masks are named by index

    def __len__(self):
        return len(self.sources)

    def batch(self, start, stop):
        try:
            items = [self.dataset[i] for i in range(start, stop)]
        except CorruptImageError as error:
            raise AbnError(str(error)) from None
        inputs = torch.stack([x for x, _ in items])
        targets = torch.tensor([int(y) for _, y in items])
        masks = None if self.masks is None else self.masks[start:stop]
        if masks is not None and all(m is not None for m in masks):
            masks = np.asarray(masks)
        return inputs, targets, masks


class ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.transform(load_rgb(self.paths[index])), self.labels[index]


def image_transform(loaded):
    """The evaluation transform of the model's training: small images are resized to the
    square they were trained at; ImageNet models get resize + centre crop."""
    size = loaded.image_size
    head = ([T.Resize(loaded.resize_size), T.CenterCrop(size)] if loaded.imagenet
            else [T.Resize((size, size))])
    return T.Compose(head + [T.ToTensor(), T.Normalize(*loaded.normalization)])


def build_inputs(args, loaded):
    if args.inputs and args.dataset:
        raise AbnError('give image files/folders or --dataset, not both')
    if args.dataset:
        if loaded.imagenet:
            raise AbnError('--dataset holds small-image sets; give an ImageNet model image files '
                           'or folders')
        # The whole split, then its first N: `shapes` draws another set for another size.
        bundle = build_small_image_data(args.dataset, args.data, evaluate_only=True,
                                        image_size=loaded.image_size,
                                        normalization=loaded.normalization)
        if loaded.class_names is not None and list(bundle.classes) != loaded.class_names:
            theirs, ours = ', '.join(loaded.class_names[:4]), ', '.join(bundle.classes[:4])
            raise AbnError(f'the model was trained on other classes ({theirs}, ...) than '
                           f'{args.dataset} has ({ours}, ...)')
        if loaded.class_names is None and len(bundle.classes) == loaded.model.num_classes:
            loaded.class_names = list(bundle.classes)
        masks = getattr(base_dataset(bundle.test), 'masks', None)
        test = first_n(bundle.test, args.num_images)
        n = len(test)
        return Inputs(test, [f'{args.dataset}-test-{i}' for i in range(n)],
                      None if masks is None else masks[:n], loaded.class_names,
                      masks_by_index=True)
    if not args.inputs:
        raise AbnError('nothing to explain: give image files or folders, or --dataset NAME')
    paths = find_images(args.inputs)[:args.num_images]
    # An image inside a folder named after a class (ImageFolder layout) has that label.
    index = {name: i for i, name in enumerate(loaded.class_names or [])}
    labels = [index.get(os.path.basename(os.path.dirname(os.path.abspath(p))), -1) for p in paths]
    return Inputs(ImageFiles(paths, labels, image_transform(loaded)), paths, None,
                  loaded.class_names)


def read_masks(folder, inputs, loaded):
    """Object masks from `folder` (white = object, any size, the layout of --attention-maps)
    for each image of `inputs`, put through the evaluation's resize and crop as the image
    was: a list of (S, S) bool arrays, None where an image has none. An image of a data set's
    split is `<index>.png`; an image file `<class folder>/<stem>.png` or `<stem>.png`."""
    if not os.path.isdir(folder):
        raise AbnError(f'--masks {folder}: no such folder')
    files = {}
    for key, path in image_files_by_key(folder):
        files.setdefault(key, path)
        if key.isdigit():
            files.setdefault(str(int(key)), path)  # 0007 is image 7
    geometric = T.Compose([t for t in image_transform(loaded).transforms
                           if not isinstance(t, (T.ToTensor, T.Normalize))])
    masks = []
    for index, source in enumerate(inputs.sources):
        stem = os.path.splitext(os.path.basename(source))[0]
        folder_name = os.path.basename(os.path.dirname(os.path.abspath(source)))
        keys = ([str(index)] if inputs.masks_by_index else []) + [f'{folder_name}/{stem}', stem]
        path = next((files[k] for k in keys if k in files), None)
        if path is None:
            masks.append(None)
            continue
        try:
            gray = load_rgb(path).convert('L')
        except CorruptImageError as error:
            raise AbnError(f'--masks: {error}') from None
        masks.append(np.asarray(geometric(gray)) >= 128)
    return masks


def read_edited_maps(paths, count):
    """Grayscale images as (1, 1, h, w) maps in [0, 1]; one for all inputs or one each."""
    if len(paths) not in (1, count):
        raise AbnError(f'--edit takes one map for all {count} inputs or one per input, got '
                       f'{len(paths)}')
    maps = []
    for path in paths:
        try:
            gray = np.asarray(load_rgb(path).convert('L'), dtype=np.float32) / 255
        except CorruptImageError as error:
            raise AbnError(str(error)) from None
        maps.append(torch.from_numpy(gray)[None, None])
    return maps * count if len(maps) == 1 else maps
