"""Attention maps given by a person (or by ground truth) for fine-tuning: `--attention-maps`.

Mitsuhara et al. ("Embedding Human Knowledge into Deep Neural Network via Attention Map",
the authors' follow-up) fine-tune an ABN so that its map matches maps a person edited. This
module reads such maps and attaches them to the training images:

- a folder of grayscale images, white = attend, black = not, any size, laid out like the
  training data: `DIR/<class>/<image stem>.<ext>` for image folders, `DIR/<index>.<ext>` for
  the built-in sets (the index into the full training split). Images without a map train
  with the classification losses only. The maps explain.py writes (`maps/`) are such images.
- `shapes-masks:P%`: the ground-truth object masks of a seeded P% of the `shapes` training
  images, as if a person had drawn them (`python -m utils.teach.attention_maps DIR --percent P`
  writes the same maps as a folder).

Each training item's target becomes {'label', 'map' (1, H, W) float in [0, 1] at the input's
resolution, 'has_map'}. The map goes through the same random crop and flip as its image: the
transform's geometric steps are replayed on the map from the same random state (the faithful
path), or the map rides as a fourth channel through the device-side crop and flip (--fast).
"""
import argparse
import copy
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data as tud
import torchvision.transforms as T
from PIL import Image, UnidentifiedImageError

from utils.data.fastdata import DeviceLoader, reproducible_split
from utils.data.images import image_files_by_key, open_image
from utils.errors import AbnError
from utils.teach.layouts import layout_of
from utils.teach.map_store import images_named

SHAPES_MASKS = 'shapes-masks'
# The subset of `shapes-masks:P%` is drawn with this seed, not --manualSeed: every run of
# every seed teaches with the same images' masks.
SHAPES_MASKS_SEED = 20190617
# Steps of a training transform that move pixels (replayed on the map), and steps that only
# convert or normalise the image (skipped for the map).
GEOMETRIC = (T.RandomCrop, T.RandomHorizontalFlip, T.RandomResizedCrop, T.Resize, T.CenterCrop)
PIXEL_ONLY = (T.ToTensor, T.Normalize)


# -- the maps -------------------------------------------------------------------------------

class MapSet:
    """Maps by index into the base training split, one channel each (single-label: channel 0)
    or one per attribute. `get(index)` returns a float32 array in [0, 1], (h, w) for one
    channel and (T, h, w) for several (zeros where an attribute has none), or None;
    `present(index)` a (channels,) bool array; `source` says where they came from, `keys`
    which images (stems or indices) have one, for the record."""

    def __init__(self, source, channels=1, maps=None, paths=None, keys=None):
        self.source, self.channels = source, channels
        self.maps = maps or {}  # index -> {channel: array} (shapes masks: held in memory)
        self.paths = paths or {}  # index -> {channel: (file, ...)} (read when the item is)
        self.keys = keys or {}  # index -> how the run's record names the image
        self.unused = self.held_out = 0  # map files of images outside the run, of held-out splits

    def __len__(self):
        return sum(len(given) for part in (self.maps, self.paths) for given in part.values())

    def __contains__(self, index):
        return index in self.maps or index in self.paths

    def indices(self):
        return sorted(set(self.maps) | set(self.paths))

    def given(self, index):
        """{channel: float32 (h, w) array} of one image's maps."""
        given = dict(self.maps.get(index, {}))
        for channel, files in self.paths.get(index, {}).items():
            given[channel] = read_maps(files)
        return given

    def present(self, index):
        out = np.zeros(self.channels, bool)
        for part in (self.maps, self.paths):
            for channel in part.get(index, ()):
                out[channel] = True
        return out

    def get(self, index):
        return stacked(self.given(index), self.channels)

    def record(self):
        """What a run keeps of its maps (args.json, the checkpoint): enough to know which."""
        return {'source': self.source, 'count': len(self),
                'images': [self.keys.get(i, i) for i in self.indices()]}


def stacked(given, channels):
    """{channel: (h, w) map} as one map: (h, w) for one channel, (channels, h, w) for several,
    each resized to the first one's size (zeros where a channel has none); None if empty."""
    if not given:
        return None
    if channels == 1:
        return given[0]
    height, width = next(iter(given.values())).shape
    out = np.zeros((channels, height, width), np.float32)
    for channel, array in given.items():
        out[channel] = resized(array, height, width)
    return out


def resized(array, height, width):
    """A float32 (h, w) map at (height, width), bilinear."""
    if array.shape == (height, width):
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR), np.float32)


def read_map(path):
    """A map file as float32 (h, w) in [0, 1]: grayscale (colour is converted; an alpha
    channel is ignored). Raises AbnError naming the file when it cannot be decoded."""
    try:
        with open_image(path) as image:
            image.load()
            gray = image.convert('L') if image.mode not in ('L', 'I;16', 'I', 'F') else image
            array = np.asarray(gray, dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise AbnError(f'--attention-maps: cannot read {path} ({error})') from None
    if gray.mode == 'L':
        return array / 255
    high = float(array.max()) if array.size else 0.0
    return array / (65535 if gray.mode.startswith('I') and high > 255 else
                    255 if high > 1 else 1)


def read_maps(paths):
    """One map from one file, or the mean of an image's several maps (the page keeps a
    second correction of an image as `<stem>~2.png` rather than replace the first), each
    resized to the first one's size."""
    if isinstance(paths, str) or len(paths) == 1:
        return read_map(paths if isinstance(paths, str) else paths[0])
    maps = [read_map(path) for path in paths]
    height, width = maps[0].shape
    return np.mean([resized(m, height, width) for m in maps], axis=0).astype(np.float32)


def parse_source(text):
    """('shapes-masks', percent) for `shapes-masks:P%`, else ('folder', path)."""
    if text.startswith(SHAPES_MASKS + ':') or text == SHAPES_MASKS:
        value = text[len(SHAPES_MASKS) + 1:].strip().rstrip('%')
        try:
            percent = float(value)
        except ValueError:
            raise AbnError(f"--attention-maps {text}: write shapes-masks:P% with P a "
                           f"percentage, e.g. shapes-masks:10%") from None
        if not 0 < percent <= 100:
            raise AbnError(f'--attention-maps {text}: the percentage must be in (0, 100]')
        return SHAPES_MASKS, percent
    return 'folder', text


def shapes_mask_subset(count, percent):
    """The indices (sorted) of the seeded `percent`% of `count` training images, at least
    one: the same for every run."""
    chosen = max(1, round(count * percent / 100))
    order = np.random.default_rng(SHAPES_MASKS_SEED).permutation(count)
    return sorted(int(i) for i in order[:chosen])


def load_map_set(text, dataset, dataset_name):
    """The maps of `--attention-maps text` for the training split `dataset` (a DataBundle's
    train: any Subset of a base split), laid out as its kind's are (utils.teach.layouts).
    Raises AbnError for a file that cannot be read or that names no training image."""
    kind, value = parse_source(text)
    base, indices = flatten_subsets(dataset)
    layout = layout_of(base)
    if kind == SHAPES_MASKS:
        masks = getattr(base, 'masks', None)
        if dataset_name not in layout.mask_datasets or masks is None:
            raise AbnError(f'--attention-maps {text}: the ground-truth masks exist only for '
                           f'--dataset {" and ".join(layout.mask_datasets)}')
        chosen = [indices[i] for i in shapes_mask_subset(len(indices), value)]
        given = {i: layout.mask_channels(masks[i]) for i in chosen}
        return MapSet(text, layout.channels, maps={i: g for i, g in given.items() if g})
    folder = value
    if not os.path.isdir(folder):
        raise AbnError(f'--attention-maps {folder}: no such folder')
    layout.check_folder(folder)
    files = image_files_by_key(folder)
    if not files:
        raise AbnError(f'--attention-maps {folder}: no map images in it (grayscale PNG or JPEG '
                       f'files laid out like the training images)')
    used = set(indices)
    maps = MapSet(folder, layout.channels)
    for key, path in files:
        address = layout.address(key, path, folder)
        if address is None:
            maps.held_out += 1
            continue
        channel, key = address
        key, targets = images_named(layout.by_key, key, layout.numbered)
        if targets is None:
            raise AbnError(f'--attention-maps: {path} names no training image (the maps of '
                           f'this data set are {os.path.join(folder, layout.pattern)})')
        read_map(path)  # refuse an unreadable file now, not in the middle of an epoch
        for index in targets:
            if index not in used:
                maps.unused += 1
                continue
            # Several maps of one image (siblings) are averaged when the item is read.
            per_channel = maps.paths.setdefault(index, {})
            per_channel[channel] = per_channel.get(channel, ()) + (path,)
            maps.keys[index] = key
    if not maps.paths:
        found = len(files) - maps.held_out
        raise AbnError(f'--attention-maps {folder}: '
                       + (f'none of its {found} training maps is of an image this run trains '
                          f'on (see --train-size)' if found else
                          f'no training maps in it ({maps.held_out} of held-out splits, which '
                          f'are not read); the layout is {layout.pattern}'))
    return maps


def flatten_subsets(dataset):
    """(the base data set, the base index of each of `dataset`'s items) through Subsets."""
    indices = None
    while isinstance(dataset, tud.Subset):
        inner = list(dataset.indices)
        indices = inner if indices is None else [inner[i] for i in indices]
        dataset = dataset.dataset
    return dataset, (list(range(len(dataset))) if indices is None else indices)


# -- training items with their maps ---------------------------------------------------------

def geometric_steps(transform):
    """The steps of `transform` that move pixels; AbnError if it has a step this module
    cannot replay on a map (a colour change is harmless but draws random numbers too)."""
    steps = list(transform.transforms) if isinstance(transform, T.Compose) else [transform]
    moving = []
    for step in steps:
        if isinstance(step, GEOMETRIC):
            moving.append(step)
        elif not isinstance(step, PIXEL_ONLY):
            raise AbnError(f'--attention-maps cannot move the maps with the training transform '
                           f'step {type(step).__name__}')
    return moving


def _resize(array_map, size):
    """(h, w) or (C, h, w) array -> (C, H, W) tensor at `size` (H, W), bilinear (area when
    shrinking)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array_map, dtype=np.float32))
    tensor = tensor[None, None] if tensor.dim() == 2 else tensor[None]
    if tuple(tensor.shape[-2:]) != tuple(size):
        shrinking = tensor.shape[-2] >= size[0] and tensor.shape[-1] >= size[1]
        tensor = F.interpolate(tensor, size=tuple(size), mode='area' if shrinking else 'bilinear',
                               align_corners=None if shrinking else False)
    return tensor[0].clamp_(0, 1)


class WithAttentionMaps(tud.Dataset):
    """A training split whose targets are {'label', 'map', 'has_map'}. Built on a shallow
    copy of the base data set without its transform, whose steps this applies to the image
    and, from the same random state, to the map (resized first to the image's size): the same
    crop and the same flip. Images draw exactly what they draw without maps.

    One map per image (a MapSet of one channel): 'map' (1, H, W), 'has_map' a bool. One per
    attribute (T channels): 'map' (T, H, W), 'has_map' (T,) bool."""
    wraps_split = True  # utils.data.check_images looks through it, at `dataset`

    def __init__(self, dataset, maps):
        self.dataset = dataset  # kept for the fast path (reproducible_split)
        base, self.indices = flatten_subsets(dataset)
        self.transform = base.transform
        self.geometric = geometric_steps(self.transform) if self.transform is not None else []
        self.base = copy.copy(base)
        self.base.transform = None
        self.maps = maps

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        base_index = self.indices[index]
        item = self.base[base_index]
        if item is None:  # an unreadable image, skipped (--skip-bad-images)
            return None
        image, label = item
        state = torch.get_rng_state()
        inputs = self.transform(image) if self.transform is not None else image
        array_map = self.maps.get(base_index)
        channels = self.maps.channels
        if channels == 1:
            has_map = array_map is not None
        else:
            has_map = torch.from_numpy(self.maps.present(base_index))
        if array_map is None:
            attention = torch.zeros((channels,) + tuple(inputs.shape[-2:]))
        else:
            after = torch.get_rng_state()
            torch.set_rng_state(state)  # the image's draws, replayed on the map
            width, height = image.size
            attention = _resize(array_map, (height, width))
            for step in self.geometric:
                attention = step(attention)
            torch.set_rng_state(after)
        return inputs, {'label': label, 'map': attention.float(), 'has_map': has_map}


class MapDeviceLoader(DeviceLoader):
    """The fast path's loader (utils.fastdata) with maps: they are held on the device as
    uint8 next to the images and cropped and flipped with them, as a fourth channel."""

    def __init__(self, images, labels, maps, has_map, augmentation, batch_size, runtime,
                 seed=0):
        super().__init__(images, labels, augmentation, batch_size, runtime, seed, train=True)
        self.maps = maps.to(self.device)
        self.has_map = has_map.to(self.device)

    def batch(self, order, step):
        index = order[step * self.batch_size:(step + 1) * self.batch_size]
        images = self.images.index_select(0, index)
        maps = self.maps.index_select(0, index)
        both = self.augment(torch.cat([images, maps], 1), step)
        channels = images.shape[1]
        target = {'label': self.labels.index_select(0, index),
                  'map': both[:, channels:].float().div_(255),
                  'has_map': self.has_map.index_select(0, index)}
        return self.normalize(both[:, :channels]), target


def map_device_loader(dataset, batch_size, runtime, seed=0):
    """(MapDeviceLoader, None) for a WithAttentionMaps over CIFAR/SVHN/shapes, or (None, the
    reason) where the fast path cannot reproduce the data set."""
    if dataset.maps.channels != 1:
        return None, 'maps per attribute take the standard path'
    split, reason = reproducible_split(dataset.dataset)
    if split is None:
        return None, reason
    images, labels, augmentation = split
    size = tuple(images.shape[2:])
    maps = torch.zeros((len(images), 1) + size, dtype=torch.uint8)
    has_map = torch.zeros(len(images), dtype=torch.bool)
    for row, base_index in enumerate(dataset.indices):
        array_map = dataset.maps.get(base_index)
        if array_map is not None:
            maps[row] = (_resize(array_map, size) * 255).round().to(torch.uint8)
            has_map[row] = True
    return MapDeviceLoader(images, labels, maps, has_map, augmentation, batch_size, runtime,
                           seed), None


# -- export of the shapes masks -------------------------------------------------------------

def export_shapes_masks(folder, percent, train_size=None):
    """Writes the masks of `shapes-masks:P%` as a maps folder (`<index>.png`, 0 or 255);
    returns the number written."""
    from utils.data.shapes import ShapesDataset

    train = ShapesDataset(train=True, size=train_size)
    os.makedirs(folder, exist_ok=True)
    chosen = shapes_mask_subset(len(train), percent)
    for index in chosen:
        Image.fromarray(train.masks[index].astype(np.uint8) * 255).save(
            os.path.join(folder, f'{index}.png'))
    return len(chosen)


def add_share_arguments(parser):
    """--percent and --train-size: which seeded share of the shapes training images (the
    images of shapes-masks:P%), for the commands that write their masks or boxes."""
    parser.add_argument('--percent', type=float, default=10,
                        help='share of the training images (default: %(default)s)')
    parser.add_argument('--train-size', type=int, metavar='N',
                        help='as the training run\'s --train-size (the share is of these)')


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m utils.teach.attention_maps',
        description='write the ground-truth masks of a seeded share of the shapes training '
                    'images as a folder for --attention-maps (the same maps as '
                    'shapes-masks:P%)')
    parser.add_argument('folder', metavar='DIR')
    add_share_arguments(parser)
    args = parser.parse_args(argv)
    parse_source(f'{SHAPES_MASKS}:{args.percent}')
    count = export_shapes_masks(args.folder, args.percent, args.train_size)
    print(f'{count} masks written to {args.folder}')
    return 0


if __name__ == '__main__':
    from utils.errors import run

    sys.exit(run(main))
