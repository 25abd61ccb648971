"""Attention maps given per attribute, for teaching a multi-task ABN: `celeba.py
--attention-maps DIR`.

The layout is the one the attention editor saves multi-task maps in (utils.teach.map_store):

    DIR/<attribute>/train/<key>.png     maps of the training split (the page's layout)
    DIR/<attribute>/<key>.png           the same without the split folder

`<attribute>` is the attribute's name as the page writes it (characters other than letters,
digits, '-' and '_' become '-'), `<key>` the image's index into the training split
(shapes-multi) or its file stem (CelebA, an attribute CSV). Maps of the test and validation
splits (`DIR/<attribute>/test/`, `valid/`, `val/`) are never read: training on them would
train on held-out images. An image may have maps for some attributes only; the others train
with the classification losses alone.

The values are gray levels in [0, 1], white = attend: the page draws an unbounded multi-task
map M as M / (2 max|M|) + 0.5 (the authors' "both" picture) and saves what was painted on it.
The map loss stretches both the given picture and the model's map to [0, 1] and compares
their patterns (utils.objectives.task_map_loss): the map's scale and offset, whose mean is the
attention logit, stay the model's own. A 0/1 object mask asks for the map's highest values
on the object.

`shapes-masks:P%` gives the shapes-multi ground-truth masks of a seeded P% of the training
images, for each attribute present in them.
"""
import os

import numpy as np
from PIL import Image

from utils.data.images import image_files_by_key
from utils.errors import AbnError
from utils.teach.attention_maps import (SHAPES_MASKS, flatten_subsets, parse_source, read_map,
                                        read_maps, shapes_mask_subset)
from utils.teach.map_store import images_named
from utils.visualize import safe_name

HELD_OUT = ('test', 'valid', 'val')


class TaskMapSet:
    """Maps by index into the base training split, per attribute. `get(index)` returns a
    float32 array (T, h, w) in [0, 1] (zeros where an attribute has none) or None;
    `present(index)` a (T,) bool array: which attributes have a map."""

    def __init__(self, source, tasks, maps=None, paths=None, keys=None):
        self.source, self.tasks = source, tasks
        self.maps = maps or {}  # index -> {task: array} (masks held in memory)
        self.paths = paths or {}  # index -> {task: (file, ...)} (read when the item is)
        self.keys = keys or {}  # index -> how the run's record names the image
        self.channels = tasks
        self.unused = 0

    def __len__(self):
        return sum(len(per_task) for part in (self.maps, self.paths)
                   for per_task in part.values())

    def indices(self):
        return sorted(set(self.maps) | set(self.paths))

    def present(self, index):
        out = np.zeros(self.tasks, bool)
        for part in (self.maps, self.paths):
            for task in part.get(index, ()):
                out[task] = True
        return out

    def get(self, index):
        given = dict(self.maps.get(index, {}))
        for task, files in self.paths.get(index, {}).items():
            given[task] = read_maps(files)
        if not given:
            return None
        height, width = next(iter(given.values())).shape
        out = np.zeros((self.tasks, height, width), np.float32)
        for task, array in given.items():
            if array.shape != (height, width):
                array = np.asarray(Image.fromarray(array).resize((width, height),
                                                                 Image.BILINEAR), np.float32)
            out[task] = array
        return out

    def record(self):
        return {'source': self.source, 'count': len(self),
                'images': [self.keys.get(i, i) for i in self.indices()]}


def image_keys(base):
    """{key: [indices]} of a multi-task training split: file stems where the data set has
    files (CelebA, an attribute CSV), else the index."""
    names = getattr(base, 'filename', None)  # torchvision's CelebA
    if names is None:
        names = getattr(base, 'files', None)  # AttributeFolder
    if names is None:
        return {str(i): [i] for i in range(len(base))}, '<index>.png'
    keys = {}
    for index, name in enumerate(names):
        keys.setdefault(os.path.splitext(os.path.basename(name))[0], []).append(index)
    return keys, '<image stem>.png'


def is_multitask(dataset):
    """Whether a training split (through its Subsets) is a multi-task (attribute) one."""
    return hasattr(flatten_subsets(dataset)[0], 'attribute_names')


def load_task_map_set(text, dataset, dataset_name):
    """The maps of `--attention-maps text` for a multi-task training split (a DataBundle's
    train: any Subset of a base split)."""
    base, indices = flatten_subsets(dataset)
    names = list(base.attribute_names)
    kind, value = parse_source(text)
    if kind == SHAPES_MASKS:
        masks = getattr(base, 'masks', None)
        if dataset_name != 'shapes-multi' or masks is None:
            raise AbnError(f'--attention-maps {text}: the ground-truth masks exist only for '
                           f'--dataset shapes-multi')
        maps = {}
        for i in (indices[k] for k in shapes_mask_subset(len(indices), value)):
            present = {t: masks[i, t].astype(np.float32) for t in range(len(names))
                       if masks[i, t].any()}
            if present:
                maps[i] = present
        return TaskMapSet(text, len(names), maps=maps)
    folder = value
    if not os.path.isdir(folder):
        raise AbnError(f'--attention-maps {folder}: no such folder')
    by_folder = {safe_name(name): t for t, name in enumerate(names)}
    by_key, layout = image_keys(base)
    used = set(indices)
    paths, keys, held_out, unused = {}, {}, 0, 0
    files = image_files_by_key(folder)
    expected = os.path.join(folder, '<attribute>', 'train', layout)
    for key, path in files:
        parts = key.split('/')
        if parts[0] not in by_folder or len(parts) not in (2, 3):
            raise AbnError(f'--attention-maps: {path} is not a map of an attribute: the maps '
                           f'of a multi-task model are {expected} with <attribute> one of '
                           f'{", ".join(sorted(by_folder))}')
        if len(parts) == 3 and parts[1] in HELD_OUT:
            held_out += 1
            continue
        if len(parts) == 3 and parts[1] != 'train':
            raise AbnError(f'--attention-maps: {path}: the split folder of a map is train '
                           f'(test, valid and val are held out and not read)')
        task = by_folder[parts[0]]
        stem, targets = images_named(by_key, parts[-1], numbered=True)
        if targets is None:
            raise AbnError(f'--attention-maps: {path} names no training image (the maps of '
                           f'this data set are {expected})')
        read_map(path)  # refuse an unreadable file now, not in the middle of an epoch
        for index in targets:
            if index not in used:
                unused += 1
                continue
            per_task = paths.setdefault(index, {})
            per_task[task] = per_task.get(task, ()) + (path,)
            keys[index] = stem
    if not paths:
        found = len(files) - held_out
        raise AbnError(f'--attention-maps {folder}: '
                       + (f'none of its {found} training maps is of an image this run trains '
                          f'on (see --train-size)' if found else
                          f'no training maps in it ({held_out} of held-out splits, which are '
                          f'not read); the layout is '
                          f'{os.path.join("<attribute>", "train", layout)}'))
    maps = TaskMapSet(folder, len(names), paths=paths, keys=keys)
    maps.unused, maps.held_out = unused, held_out
    return maps
