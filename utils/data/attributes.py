"""Multi-label (attribute) data sets: each item is (image tensor, float 0/1 target (T,)), and
each data set has `attribute_names` (T names) and `targets` (an (N, T) float tensor).

- `celeba`: CelebA through torchvision.datasets.CelebA (target_type='attr'; torchvision maps
  CelebA's -1/1 to 0/1), offline, with one line naming the missing files;
- `attributes`: your own images, a folder plus one CSV (file name, split, one 0/1 column per
  attribute; the header names the attributes);
- `shapes-multi`: an offline generated demo: each image holds a random subset of SHAPE_KINDS on
  clutter, attribute t = "a shape of kind t is present", with the ground-truth mask of every
  kind (`masks`, (N, T, H, W) bool), so that each task's attention map can be measured.

`map_picture(maps, mode)` scales the unbounded multi-task maps to [0, 1] as the authors'
pictures do ('pos', 'neg', 'both').
"""
import csv
import os

import numpy as np
import torch
import torch.utils.data as tud
import torchvision.datasets as tvd
import torchvision.transforms as T
from PIL import Image, UnidentifiedImageError

from utils.data.shapes import MIN_CONTRAST, _clutter, _inside
from utils.errors import AbnError

# -- shapes-multi -----------------------------------------------------------------------------

SHAPE_KINDS = ('circle', 'triangle', 'plus', 'frame')
MULTI_IMAGE_SIZE = 64
POSITIVE_RATE = 0.5  # each kind is present in an image with this probability, independently
MULTI_SPLIT_SEEDS = {'train': 20190618, 'test': 20190619}
MULTI_DEFAULT_SIZES = {'train': 10000, 'test': 2000}
CHUNK = 500


def generate_multi_shapes(n, seed, size=MULTI_IMAGE_SIZE, kinds=SHAPE_KINDS,
                          positive_rate=POSITIVE_RATE):
    """Returns (images uint8 (n, size, size, 3), targets float32 (n, T) 0/1, masks bool
    (n, T, size, size)). The image is split into a 2x2 grid of cells; every present kind gets
    its own cell (a random one), so shapes never overlap, at a random scale, position and
    colour inside it, on the clutter of the `shapes` set. Drawn in chunks of CHUNK images from
    streams (seed, k): the first n images are the same whatever n is."""
    if len(kinds) > 4:
        raise ValueError('at most 4 kinds fit the 2x2 grid of cells')
    images, targets, masks = [], [], []
    for k in range(-(-n // CHUNK)):
        rng = np.random.default_rng([seed, k])
        chunk = _draw_multi(CHUNK, rng, size, kinds, positive_rate)
        for out, part in zip((images, targets, masks), chunk):
            out.append(part)
    if not images:
        return (np.zeros((0, size, size, 3), np.uint8), np.zeros((0, len(kinds)), np.float32),
                np.zeros((0, len(kinds), size, size), bool))
    return tuple(np.concatenate(part)[:n] for part in (images, targets, masks))


def _draw_multi(n, rng, size, kinds, positive_rate):
    images, background, _, _ = _clutter(n, rng, size)
    present = rng.random((n, len(kinds))) < positive_rate
    cells = np.argsort(rng.random((n, 4)), axis=1)  # a random cell for each kind
    half = size // 2
    scale = rng.uniform(0.19, 0.33, (n, len(kinds))) * half
    offset_x = rng.uniform(scale, half - scale)
    offset_y = rng.uniform(scale, half - scale)
    colours = rng.uniform(0, 1, (n, len(kinds), 3)).astype(np.float32)
    too_close = np.abs(colours - background[:, 0]).sum(-1, keepdims=True) < MIN_CONTRAST
    colours = np.where(too_close, 1.0 - background[:, 0], colours)
    # Each shape is drawn inside its cell only (a quarter of the pixels), then put in place.
    ys, xs = np.mgrid[0:half, 0:half].astype(np.float32) + 0.5
    masks = np.zeros((n, len(kinds), size, size), dtype=bool)
    for t, kind in enumerate(kinds):
        s = scale[:, t, None, None]
        u = (xs - offset_x[:, t, None, None]) / s
        v = (ys - offset_y[:, t, None, None]) / s
        local = _inside(kind, u, v) & present[:, t, None, None]
        for c in range(4):
            chosen = cells[:, t] == c
            y0, x0 = (c // 2) * half, (c % 2) * half
            masks[chosen, t, y0:y0 + half, x0:x0 + half] = local[chosen]
    grain = 0.03 * rng.standard_normal((n, size, size, 3), dtype=np.float32)
    shade = np.einsum('nthw,ntc->nhwc', masks.astype(np.float32), colours) + grain
    images = np.where(masks.any(1)[..., None], shade, images)
    images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    return images, present.astype(np.float32), masks


class ShapesMultiDataset(tud.Dataset):
    """The `shapes-multi` split: `data` (N, 64, 64, 3) uint8, `targets` (N, T) float 0/1,
    `masks` (N, T, 64, 64) bool (mask t: the pixels of kind t, empty when absent),
    `attribute_names`. Items are (transform(PIL image), target (T,) float)."""

    attribute_names = list(SHAPE_KINDS)

    def __init__(self, train=True, size=None, transform=None, seed=None):
        split = 'train' if train else 'test'
        n = MULTI_DEFAULT_SIZES[split] if size is None else size
        self.data, targets, self.masks = generate_multi_shapes(
            n, MULTI_SPLIT_SEEDS[split] if seed is None else seed)
        self.targets = torch.from_numpy(targets)
        self.transform = transform if transform is not None else T.ToTensor()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.data[index])
        return (self.transform(image) if self.transform is not None else image,
                self.targets[index])


# -- CelebA -----------------------------------------------------------------------------------

CELEBA_FILES = ('list_attr_celeba.txt', 'list_eval_partition.txt', 'identity_CelebA.txt',
                'list_bbox_celeba.txt', 'list_landmarks_align_celeba.txt')
CELEBA_SPLITS = ('train', 'valid', 'test', 'all')


class CelebAAttributes(tvd.CelebA):
    """torchvision's CelebA with target_type='attr', the target as float 0/1 (T,).

    torchvision reads all five text files (CELEBA_FILES, each md5-checked) and the folder
    img_align_celeba. Here present files are trusted and parsed (a corrupt one fails to parse),
    and a missing one is named in one line. `attribute_names`: the 40 names of the header."""

    file_list = [(file_id, None, name) for file_id, _, name in tvd.CelebA.file_list]

    def __init__(self, root, split='train', transform=None):
        folder = os.path.join(root, self.base_folder)
        missing = [name for name in CELEBA_FILES if not os.path.isfile(os.path.join(folder, name))]
        if not os.path.isdir(os.path.join(folder, 'img_align_celeba')):
            missing.insert(0, 'img_align_celeba/*.jpg')
        if missing:
            raise AbnError(f'CelebA not found: {", ".join(missing)} missing in {folder} (it needs '
                           f'img_align_celeba/*.jpg and {", ".join(CELEBA_FILES)}, from the '
                           f'CelebA site\'s Img/img_align_celeba.zip, Anno/ and Eval/)')
        if split not in CELEBA_SPLITS:
            raise AbnError(f"CelebA has no split '{split}': choose one of "
                           f"{', '.join(CELEBA_SPLITS)}")
        try:
            super().__init__(root, split=split, target_type='attr',
                             transform=transform if transform is not None else T.ToTensor())
        except (ValueError, IndexError, RuntimeError, TypeError) as error:
            raise AbnError(f'cannot read the CelebA files in {folder}: {error}') from None
        # The real header line ends with a space: csv gives a trailing empty name.
        self.attribute_names = [name for name in self.attr_names if name]
        self.targets = self.attr.float()
        if self.targets.shape[1] != len(self.attribute_names):
            raise AbnError(f'{os.path.join(folder, "list_attr_celeba.txt")}: '
                           f'{len(self.attribute_names)} attribute names but '
                           f'{self.targets.shape[1]} values a row')

    def __getitem__(self, index):
        path = os.path.join(self.root, self.base_folder, 'img_align_celeba', self.filename[index])
        try:
            image, _ = super().__getitem__(index)
        except (OSError, UnidentifiedImageError) as error:
            raise AbnError(f'cannot read CelebA image {path}: {error}') from None
        return image, self.targets[index]


# -- a folder of images with one CSV ----------------------------------------------------------

ATTRIBUTES_CSV = 'attributes.csv'
FILE_COLUMN, SPLIT_COLUMN = 'file', 'split'


def read_attribute_csv(path):
    """Reads the CSV: header `file,split,<attribute>,...`; returns (attribute names,
    rows [(file, split, [0/1 ints])]). Raises AbnError naming the file and row."""
    if not os.path.isfile(path):
        raise AbnError(f'no attribute table at {path}: write a CSV with the header '
                       f'"{FILE_COLUMN},{SPLIT_COLUMN},<attribute>,..." and one row per image')
    with open(path, newline='') as f:
        reader = csv.reader(f)
        header = [name.strip() for name in next(reader, [])]
        for column in (FILE_COLUMN, SPLIT_COLUMN):
            if column not in header:
                raise AbnError(f'{path}: the header has no "{column}" column (it needs '
                               f'{FILE_COLUMN},{SPLIT_COLUMN},<attribute>,...)')
        names = [name for name in header if name not in (FILE_COLUMN, SPLIT_COLUMN)]
        if not names or any(not name for name in names):
            raise AbnError(f'{path}: the header must name every attribute column')
        file_at, split_at = header.index(FILE_COLUMN), header.index(SPLIT_COLUMN)
        value_at = [header.index(name) for name in names]
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise AbnError(f'{path}, row {line}: {len(row)} columns, the header has '
                               f'{len(header)}')
            cells = [cell.strip() for cell in row]
            if not cells[split_at]:
                raise AbnError(f'{path}, row {line}: no split')
            values = []
            for name, at in zip(names, value_at):
                if cells[at] not in ('0', '1'):
                    raise AbnError(f'{path}, row {line}: {name} is "{cells[at]}", not 0 or 1')
                values.append(int(cells[at]))
            rows.append((cells[file_at], cells[split_at], values))
    return names, rows


class AttributeFolder(tud.Dataset):
    """Your own multi-label data: `root`/attributes.csv names the images (paths relative to
    `root`), their split and their 0/1 attributes. Items are (transform(RGB image), target
    (T,) float)."""

    def __init__(self, root, split='train', transform=None, csv_name=ATTRIBUTES_CSV):
        path = os.path.join(root, csv_name)
        self.attribute_names, rows = read_attribute_csv(path)
        chosen = [(f, values) for f, s, values in rows if s == split]
        if not chosen:
            found = sorted({s for _, s, _ in rows})
            raise AbnError(f"{path}: no image in split '{split}' (splits found: "
                           f"{', '.join(found) or 'none'})")
        for name, _ in chosen:
            if not os.path.isfile(os.path.join(root, name)):
                raise AbnError(f'{path}: image {os.path.join(root, name)} (split {split}) does '
                               f'not exist')
        self.root = root
        self.files = [name for name, _ in chosen]
        self.targets = torch.tensor([values for _, values in chosen], dtype=torch.float32)
        self.transform = transform if transform is not None else T.ToTensor()

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        path = os.path.join(self.root, self.files[index])
        try:
            with Image.open(path) as image:
                image = image.convert('RGB')
        except (OSError, UnidentifiedImageError) as error:
            raise AbnError(f'cannot read image {path}: {error}') from None
        return (self.transform(image) if self.transform is not None else image,
                self.targets[index])


# -- pictures of the unbounded maps -----------------------------------------------------------

MAP_MODES = ('pos', 'neg', 'both')


def map_picture(maps, mode='pos', dims=(-3, -2, -1)):
    """The authors' scaling of the unbounded multi-task maps to [0, 1]: 'pos' sets negatives
    to 0, then min-max; 'neg' sets positives to 0, then min-max (the most negative value at 0);
    'both' is M / (2 max|M|) + 0.5. The extremes are taken over `dims`: by default the last
    three, all T maps of one image (N, T, h, w) together, as the authors do, so the maps of one
    image stay comparable; (-2, -1) scales each map on its own. Nothing to scale (all 0 after
    clipping) gives 0 ('both': 0.5)."""
    if mode not in MAP_MODES:
        raise ValueError(f"unknown map picture '{mode}': choose one of {', '.join(MAP_MODES)}")
    maps = maps.detach().float()
    if mode == 'both':
        largest = maps.abs().amax(dims, keepdim=True)
        return torch.where(largest > 0, maps / (2 * largest.clamp(min=1e-12)) + 0.5,
                           torch.full_like(maps, 0.5))
    clipped = maps.clamp(min=0) if mode == 'pos' else maps.clamp(max=0)
    low = clipped.amin(dims, keepdim=True)
    spread = clipped.amax(dims, keepdim=True) - low
    return torch.where(spread > 0, (clipped - low) / spread.clamp(min=1e-12),
                       torch.zeros_like(clipped))
