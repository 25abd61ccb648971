"""`shapes`: an offline, procedural 10-class data set of 32x32 RGB images.

Each image holds one shape (its class) at a random position, size and colour on clutter
(noise, strokes and blobs) that is drawn the same way for every class, so only the shape
tells the class. The ground-truth mask of every object is kept, which lets the attention maps
be measured (pointing game, energy inside the object). Generation is vectorised: 10,000
images take about a second, and the same seed gives the same images everywhere.
"""
import numpy as np
import torch
from PIL import Image

SHAPE_CLASSES = ('circle', 'square', 'triangle', 'diamond', 'plus', 'ring', 'star', 'frame',
                 'crescent', 'cross')
IMAGE_SIZE = 32
# Seeds of the two splits: fixed, so every run sees the same data whatever --manualSeed is.
SPLIT_SEEDS = {'train': 20190616, 'test': 20190617}
DEFAULT_SIZES = {'train': 10000, 'test': 2000}
CLUTTER_ALPHA = 0.35
MIN_CONTRAST = 0.9  # L1 distance between the object's and the background's colours
# `shapes-decoy`: a shortcut (the recipe of Decoy MNIST, Ross et al. 2017, in colour). Each
# image gets a DECOY_SIZE-pixel square patch in a random corner; in the training split its
# colour is its class's (DECOY_COLOURS[label]), in the test split a random class's, so a
# model that learnt the patch fails the test split. The object masks leave the patch out.
DECOY_SIZE = 4
DECOY_INSET = 4
DECOY_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255],
                          [0, 255, 255], [255, 128, 0], [128, 0, 255], [255, 255, 255],
                          [0, 0, 0]], dtype=np.uint8)
DECOY_SEEDS = {'train': 20190618, 'test': 20190619}


def _mix(colour, image):
    return CLUTTER_ALPHA * colour + (1 - CLUTTER_ALPHA) * image


def _inside(kind, u, v):
    """Whether the shape `kind` covers the point (u, v), in units of its size (v points
    down, as image rows do)."""
    r = np.hypot(u, v)
    box = np.maximum(np.abs(u), np.abs(v))
    if kind == 'circle':
        return r < 0.9
    if kind == 'square':
        return box < 0.75
    if kind == 'triangle':
        return (v < 0.75) & (np.abs(u) < (v + 0.95) * 0.55)
    if kind == 'diamond':
        return np.abs(u) + np.abs(v) < 1.0
    if kind == 'plus':
        return ((np.abs(u) < 0.3) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.3) & (np.abs(u) < 0.95))
    if kind == 'ring':
        return (r > 0.55) & (r < 0.95)
    if kind == 'star':
        theta = np.arctan2(v, u) + np.pi / 2
        return r < 0.38 + 0.62 * ((np.cos(5 * theta) + 1) / 2) ** 3
    if kind == 'frame':
        return (box > 0.5) & (box < 0.85)
    if kind == 'crescent':
        return (r < 0.95) & (np.hypot(u - 0.45, v) > 0.7)
    if kind == 'cross':
        return (((np.abs(u - v) < 0.38) | (np.abs(u + v) < 0.38)) & (box < 0.85))
    raise ValueError(kind)


CHUNK = 500  # images drawn at once: the arrays stay in cache


def generate_shapes(n, seed, size=IMAGE_SIZE):
    """Returns (images uint8 (n, size, size, 3), labels int64 (n,), masks bool (n, size, size)).

    Drawn in whole chunks of CHUNK images, each from its own stream (seed, k) and holding every
    class equally often, then cut to n: the first n images of a split are the same whatever n
    is, so --train-size/--test-size take a prefix of the full split."""
    images, labels, masks = [], [], []
    for k in range(-(-n // CHUNK)):
        rng = np.random.default_rng([seed, k])
        chunk_labels = rng.permutation(np.arange(CHUNK) % len(SHAPE_CLASSES))
        chunk_images, chunk_masks = _draw(chunk_labels, rng, size)
        images.append(chunk_images)
        labels.append(chunk_labels)
        masks.append(chunk_masks)
    if not images:
        return (np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64),
                np.zeros((0, size, size), bool))
    return (np.concatenate(images)[:n], np.concatenate(labels)[:n].astype(np.int64),
            np.concatenate(masks)[:n])


def _clutter(n, rng, size):
    """Background and clutter of n images: (images float (n, size, size, 3), background colours
    (n, 1, 1, 3), pixel x and y coordinates). Shared with the multi-label generator."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    # Clutter, independent of the class: a background colour, pixel noise, a few strokes
    # and blobs of other colours, all smaller or thinner than any shape, and half-transparent
    # (CLUTTER_ALPHA), so the shape is the one full-contrast thing in the image.
    background = rng.uniform(0, 1, (n, 1, 1, 3)).astype(np.float32)
    images = background + 0.06 * rng.standard_normal((n, size, size, 3), dtype=np.float32)
    for _ in range(3):
        # strokes: thin lines of random direction
        colour = rng.uniform(0, 1, (n, 1, 1, 3)).astype(np.float32)
        angle = rng.uniform(0, np.pi, (n, 1, 1))
        offset = rng.uniform(-size / 2, size / 2, (n, 1, 1))
        distance = ((xs - size / 2) * np.sin(angle) - (ys - size / 2) * np.cos(angle)) - offset
        line = np.abs(distance) < 0.6
        images = np.where(line[..., None], _mix(colour, images), images)
    for _ in range(4):
        # blobs: small discs
        colour = rng.uniform(0, 1, (n, 1, 1, 3)).astype(np.float32)
        cx, cy = rng.uniform(0, size, (2, n, 1, 1))
        radius = rng.uniform(0.8, 2.0, (n, 1, 1))
        blob = np.hypot(xs - cx, ys - cy) < radius
        images = np.where(blob[..., None], _mix(colour, images), images)
    return images, background, xs, ys


def _draw(labels, rng, size):
    n = len(labels)
    images, background, xs, ys = _clutter(n, rng, size)

    # The object: random scale (in proportion to the image: 6 to 11 px at 32 px) and
    # position fully inside the image, and a colour that differs clearly from the background.
    scale = rng.uniform(6.0, 11.0, (n, 1, 1)) * (size / IMAGE_SIZE)
    cx = rng.uniform(scale[:, 0, 0], size - scale[:, 0, 0])[:, None, None]
    cy = rng.uniform(scale[:, 0, 0], size - scale[:, 0, 0])[:, None, None]
    colour = rng.uniform(0, 1, (n, 1, 1, 3)).astype(np.float32)
    too_close = np.abs(colour - background).sum(-1, keepdims=True) < MIN_CONTRAST
    colour = np.where(too_close, 1.0 - background, colour)
    u, v = (xs - cx) / scale, (ys - cy) / scale
    masks = np.zeros((n, size, size), dtype=bool)
    for k, kind in enumerate(SHAPE_CLASSES):
        idx = labels == k
        masks[idx] = _inside(kind, u[idx], v[idx])
    shade = colour + 0.03 * rng.standard_normal((n, size, size, 3), dtype=np.float32)
    images = np.where(masks[..., None], shade, images)
    images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    return images, masks


def add_decoy(images, labels, masks, seed, train):
    """Paints the shortcut patch into `images` (n, S, S, 3) uint8, in place, and clears it
    from `masks`: a DECOY_SIZE square (scaled with the image) in a corner chosen by two fair
    coins, the colour of the image's class in training and of a random class in testing."""
    n, size = len(images), images.shape[1]
    side = max(1, DECOY_SIZE * size // IMAGE_SIZE)
    inset = DECOY_INSET * size // IMAGE_SIZE
    # drawn per chunk, as the images: the first n images get the same patches whatever n is
    draws = [np.random.default_rng([seed, k]).integers(0, 2 * 2 * len(SHAPE_CLASSES), CHUNK)
             for k in range(-(-n // CHUNK))]
    draws = np.concatenate(draws)[:n] if draws else np.zeros(0, np.int64)
    bottom, right, other = draws % 2, draws // 2 % 2, draws // 4
    shown = labels if train else other
    for i in range(n):
        rows = slice(size - inset - side, size - inset) if bottom[i] else slice(inset, inset + side)
        cols = slice(size - inset - side, size - inset) if right[i] else slice(inset, inset + side)
        images[i, rows, cols] = DECOY_COLOURS[shown[i]]
        masks[i, rows, cols] = False
    return images, masks


class ShapesDataset(torch.utils.data.Dataset):
    """The `shapes` split as a torchvision-style data set: `data` (N, 32, 32, 3) uint8,
    `targets`, `classes`, and `masks` (N, 32, 32) bool, the objects' ground truth.
    Items are (PIL image, label) passed through `transform`, like torchvision's CIFAR10."""

    classes = list(SHAPE_CLASSES)

    def __init__(self, train=True, size=None, transform=None, seed=None, decoy=False):
        split = 'train' if train else 'test'
        n = DEFAULT_SIZES[split] if size is None else size
        self.data, targets, self.masks = generate_shapes(n, SPLIT_SEEDS[split] if seed is None
                                                         else seed)
        if decoy:
            add_decoy(self.data, targets, self.masks, DECOY_SEEDS[split], train)
        self.targets = targets.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def write_image_folder(folder, size=96, train=5000, val=1000, masks=True):
    """`shapes` as an image folder for imagenet.py at `size` px: folder/train/<class>/<i>.png
    and folder/val/<class>/<i>.png, and with `masks` the objects' masks in the layout of
    explain.py --masks and --attention-maps: folder/masks/<split>/<class>/<i>.png. Returns
    the number of images written."""
    import os
    written = 0
    for split, count, seed in (('train', train, SPLIT_SEEDS['train']),
                               ('val', val, SPLIT_SEEDS['test'])):
        images, labels, objects = generate_shapes(count, seed, size)
        for index, (image, label, mask) in enumerate(zip(images, labels, objects)):
            name = SHAPE_CLASSES[label]
            targets = [(os.path.join(folder, split, name), image)]
            if masks:
                targets.append((os.path.join(folder, 'masks', split, name),
                                mask.astype(np.uint8) * 255))
            for directory, pixels in targets:
                os.makedirs(directory, exist_ok=True)
                Image.fromarray(pixels).save(os.path.join(directory, f'{index}.png'))
            written += 1
    return written


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(
        prog='python -m utils.data.shapes',
        description='write the shapes data set as an image folder for imagenet.py (train/ and '
                    'val/, one folder per class), with the objects\' masks (masks/)')
    parser.add_argument('folder', metavar='DIR')
    parser.add_argument('--size', type=int, default=96, help='image side in pixels '
                                                             '(default: %(default)s)')
    parser.add_argument('--train', type=int, default=5000, metavar='N',
                        help='training images (default: %(default)s)')
    parser.add_argument('--val', type=int, default=1000, metavar='N',
                        help='validation images (default: %(default)s)')
    parser.add_argument('--no-masks', action='store_true', help='leave the masks out')
    args = parser.parse_args(argv)
    if args.size < 16 or args.train < 1 or args.val < 1:
        parser.error('--size must be at least 16, --train and --val at least 1')
    count = write_image_folder(args.folder, args.size, args.train, args.val, not args.no_masks)
    print(f'{count} images of {args.size} px written to {args.folder} (train/, val/'
          + (', masks/' if not args.no_masks else '') + ')')
    return 0


if __name__ == '__main__':
    import sys
    sys.exit(main())
