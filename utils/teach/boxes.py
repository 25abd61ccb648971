"""Boxes for teaching the map: `--attention-boxes FILE` (cifar.py, imagenet.py, celeba.py).

Bounding boxes are cheap to draw and ship with many data sets (CUB-200, ImageNet's
localisation boxes, Pascal VOC, most detection sets). Each image's boxes become a map of it
at its own pixels, white inside the union of its boxes (an edge pixel as much as the box
covers it), and from there they are maps like those of `--attention-maps`: resized, cropped
and flipped with their image, compared with the model's map by the same loss.

Two sources:
- a CSV file with a header `image,x0,y0,x1,y1`: a box from (x0, y0) to (x1, y1) in the
  image's own pixels (x to the right, y down, (0, 0) the top-left corner of the first pixel,
  (width, height) the bottom-right corner of the last), any number of rows per image. `image`
  is the index of an image of the training split, or for image folders its path relative to
  the data folder (`train/<class>/<file>`) or to the training folder (`<class>/<file>`).
  celeba.py's boxes are per attribute: an `attribute` column names it.
- a folder of Pascal VOC XML files (what most annotation tools write, and ImageNet's
  localisation boxes): `<filename>` names the image (its file name, or its stem), each
  `<object>`'s `<bndbox>` is a box in VOC's 1-based inclusive pixels; for celeba.py the
  object's `<name>` is the attribute.

Refused in one line that names the row (or the file and object): a box outside its image,
x1 <= x0 or y1 <= y0, an image that is not in the training split (an image of the test or
validation folder says so), an unknown attribute, a missing column.
"""
import argparse
import copy
import csv
import math
import os
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.data.images import CorruptImageError, open_image
from utils.errors import AbnError
from utils.progress import Progress
from utils.teach.attention_maps import (MapSet, add_share_arguments, flatten_subsets,
                                        shapes_mask_subset)
from utils.teach.layouts import HELD_OUT_SPLIT_NAMES, image_keys, layout_of
from utils.visualize import safe_name

COLUMNS = ('image', 'x0', 'y0', 'x1', 'y1')
FLAG = '--attention-boxes'
GRABCUT_ITERATIONS = 5
GRABCUT_SIDE = 128  # larger images are cut at this longer side, the cut then resized back


def box_map(width, height, boxes):
    """The map (height, width) float32 of the union of `boxes` ((x0, y0, x1, y1) in pixels):
    each pixel the share of it the most covering box covers, 1 inside, 0 outside."""
    out = np.zeros((height, width), np.float32)
    columns, rows = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
    for x0, y0, x1, y1 in boxes:
        across = np.clip(np.minimum(columns + 1, x1) - np.maximum(columns, x0), 0, 1)
        down = np.clip(np.minimum(rows + 1, y1) - np.maximum(rows, y0), 0, 1)
        np.maximum(out, np.outer(down, across).astype(np.float32), out=out)
    return out


def grabcut_map(image, boxes):
    """The union of the foreground GrabCut finds in each box (Rother et al. 2004, OpenCV's
    cv2.grabCut: colour models of the pixels outside the box and inside it, a graph cut),
    as a 0/1 float32 map of `image` (PIL, RGB); a box GrabCut cannot cut (one that leaves no
    pixel outside it, or where it finds nothing) counts whole. Seeded: the same map every
    run."""
    import cv2

    width, height = image.size
    scale = min(1.0, GRABCUT_SIDE / max(width, height))
    if scale < 1:  # the map is compared at 16x16 or so: a cut at GRABCUT_SIDE is plenty
        small = image.convert('RGB').resize((max(1, round(width * scale)),
                                             max(1, round(height * scale))), Image.BILINEAR)
        cut = grabcut_map(small, [tuple(v * small.size[i % 2] / image.size[i % 2]
                                        for i, v in enumerate(box)) for box in boxes])
        return np.asarray(Image.fromarray(cut).resize((width, height), Image.BILINEAR),
                          np.float32).round()
    pixels = np.ascontiguousarray(np.asarray(image.convert('RGB'))[..., ::-1])  # BGR
    out = np.zeros((height, width), np.float32)
    for x0, y0, x1, y1 in boxes:
        left, top = int(math.floor(x0)), int(math.floor(y0))
        right, bottom = int(math.ceil(x1)), int(math.ceil(y1))
        whole = box_map(width, height, [(x0, y0, x1, y1)])
        found = None
        if (right - left) < width or (bottom - top) < height:
            cv2.setRNGSeed(0)
            mask = np.zeros((height, width), np.uint8)
            models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            try:
                cv2.grabCut(pixels, mask, (left, top, right - left, bottom - top), *models,
                            GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_RECT)
                found = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.float32)
            except cv2.error:
                found = None
        np.maximum(out, whole if found is None or not found.any() else found * whole, out=out)
    return out


class BoxMapSet(MapSet):
    """The maps of an image's boxes, drawn when the item is read (boxes are small; their maps
    at the images' own size would not be): `boxes` {index: (width, height, {channel: [box,
    ...]})}, channel 0 for a single-label split, the attribute's for a multi-task one. With
    `refined` ({index: {channel: uint8 map}}), the boxes' GrabCut foreground instead."""

    def __init__(self, source, channels, boxes, keys, refined=None):
        super().__init__(source, channels, keys=keys)
        self.boxes, self.refined = boxes, refined

    def __len__(self):
        return sum(len(per_channel) for _, _, per_channel in self.boxes.values())

    def __contains__(self, index):
        return index in self.boxes

    def indices(self):
        return sorted(self.boxes)

    def present(self, index):
        out = np.zeros(self.channels, bool)
        for channel in self.boxes.get(index, (0, 0, {}))[2]:
            out[channel] = True
        return out

    def given(self, index):
        if index not in self.boxes:
            return {}
        width, height, per_channel = self.boxes[index]
        if self.refined is not None:
            return {channel: self.refined[index][channel].astype(np.float32)
                    for channel in per_channel}
        return {channel: box_map(width, height, boxes) for channel, boxes in per_channel.items()}


# -- reading the rows -----------------------------------------------------------------------

def read_csv_rows(path):
    """[(where, {column: text})] of a boxes CSV, `where` naming the row for a refusal."""
    try:
        with open(path, newline='', encoding='utf-8-sig') as file:
            reader = csv.DictReader(file)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in COLUMNS if name not in header]
            if missing:
                raise AbnError(f'{FLAG} {path}: the header must name the columns '
                               f'{",".join(COLUMNS)} (missing: {", ".join(missing)})')
            reader.fieldnames = header
            return [(f'{path} row {reader.line_num}', row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise AbnError(f'{FLAG} {path}: cannot read it ({error})') from None


def read_voc_rows(folder):
    """The boxes of a folder of Pascal VOC XML files, as rows: VOC's pixels are 1-based and
    inclusive, so (xmin, xmax) = (1, 10) is the box from 0 to 10."""
    files = sorted(name for name in os.listdir(folder) if name.lower().endswith('.xml'))
    if not files:
        raise AbnError(f'{FLAG} {folder}: no Pascal VOC .xml files in it (or give a CSV file '
                       f'with the header {",".join(COLUMNS)})')
    rows = []
    for name in files:
        path = os.path.join(folder, name)
        try:
            root = ElementTree.parse(path).getroot()
        except (OSError, ElementTree.ParseError) as error:
            raise AbnError(f'{FLAG}: cannot read {path} ({error})') from None
        image = (root.findtext('filename') or '').strip()
        if not image:
            raise AbnError(f'{FLAG}: {path} has no <filename>: it names no image')
        # ImageNet's files name the class in <folder> and the image by its stem; VOC's
        # folder is the data set's name, and its file names are unique.
        class_folder = (root.findtext('folder') or '').strip()
        for number, item in enumerate(root.iter('object'), 1):
            where = f'{path} object {number}'
            box = item.find('bndbox')
            corners = {key: (box.findtext(key) if box is not None else None)
                       for key in ('xmin', 'ymin', 'xmax', 'ymax')}
            if None in corners.values():
                raise AbnError(f'{FLAG}: {where} has no <bndbox> with xmin, ymin, xmax, ymax')
            try:
                xmin, ymin, xmax, ymax = (float(corners[k]) for k in corners)
            except ValueError:
                raise AbnError(f'{FLAG}: {where}: the box corners must be numbers') from None
            rows.append((where, {'image': image, 'folder': class_folder,
                                 'x0': xmin - 1, 'y0': ymin - 1, 'x1': xmax, 'y1': ymax,
                                 'attribute': (item.findtext('name') or '').strip()}))
    return rows


def read_rows(source):
    if os.path.isdir(source):
        return read_voc_rows(source)
    if not os.path.isfile(source):
        raise AbnError(f'{FLAG} {source}: no such file or folder')
    return read_csv_rows(source)


def parse_box(where, row):
    """(x0, y0, x1, y1) floats of a row; AbnError for text, NaN or an empty box."""
    try:
        box = tuple(float(str(row[key]).strip()) for key in COLUMNS[1:])
    except (TypeError, ValueError):
        raise AbnError(f'{FLAG}: {where}: x0, y0, x1, y1 must be numbers, got '
                       f'{", ".join(str(row.get(k)) for k in COLUMNS[1:])}') from None
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        raise AbnError(f'{FLAG}: {where}: the box {box} is not finite')
    if x1 <= x0 or y1 <= y0:
        raise AbnError(f'{FLAG}: {where}: an empty box ({x0:g}, {y0:g}, {x1:g}, {y1:g}): '
                       f'x1 must exceed x0 and y1 y0')
    return box


# -- which training image a row names -------------------------------------------------------

class ImageIndex:
    """Finds the training image a row names (`find(where, text)` -> base indices, or
    AbnError) and its size in pixels (`size(index)`)."""

    def __init__(self, base):
        self.base = base
        self.samples = getattr(base, 'samples', None)  # an image folder
        self.root = getattr(base, 'root', None)
        self.by_path, self.by_stem, self.by_class_stem = {}, {}, {}
        if self.samples is not None:
            for index, (path, class_index) in enumerate(self.samples):
                self.by_path[os.path.normcase(os.path.abspath(path))] = index
                stem = os.path.splitext(os.path.basename(path))[0]
                self.by_stem.setdefault(stem, []).append(index)
                self.by_class_stem[f'{base.classes[class_index]}/{stem}'] = index
        elif getattr(base, 'filename', None) is not None or getattr(base, 'files', None) \
                is not None:  # CelebA, an attribute CSV: images known by file name
            self.by_stem = image_keys(base)[0]
        self.plain = None  # the base without its transform, for sizes read from items

    def describe(self):
        if self.samples is not None:
            return (f'an index 0..{len(self.base) - 1} of the training split or a path like '
                    f'train/<class>/<file>')
        if self.by_stem:
            return "an image's file name or stem"
        return f'an index 0..{len(self.base) - 1} of the training split'

    def by_index(self, where, text):
        index = int(text)
        if index < len(self.base):
            return [index]
        raise AbnError(f'{FLAG}: {where}: image {text} is not in the training split (it has '
                       f'{len(self.base)} images, 0..{len(self.base) - 1})')

    def find(self, where, text, folder=''):
        """The indices of the image `text` names (`folder`: a VOC file's <folder>)."""
        text = str(text).strip()
        if self.samples is not None:
            stem = os.path.splitext(text.replace(os.sep, '/'))[0]
            if folder and f'{folder}/{os.path.basename(stem)}' in self.by_class_stem:
                return [self.by_class_stem[f'{folder}/{os.path.basename(stem)}']]
            if text.isdigit():
                return self.by_index(where, text)
            for root in (self.root, os.path.dirname(os.path.normpath(self.root))):
                path = os.path.normcase(os.path.abspath(os.path.join(root, text)))
                if path in self.by_path:
                    return [self.by_path[path]]
            if stem in self.by_class_stem:
                return [self.by_class_stem[stem]]
            self.check_not_held_out(where, text)
        stem = os.path.splitext(os.path.basename(text))[0]
        found = self.by_stem.get(stem) or self.by_stem.get(os.path.basename(text))
        if found and len(found) > 1 and self.samples is not None:
            raise AbnError(f'{FLAG}: {where}: {text} names {len(found)} training images (the '
                           f'same file name in several classes): give its path, '
                           f'<class>/{os.path.basename(text)}')
        if found:
            return found
        if text.isdigit() and self.samples is None:
            return self.by_index(where, text)
        raise AbnError(f'{FLAG}: {where}: {text} names no training image (give '
                       f'{self.describe()})')

    def check_not_held_out(self, where, text):
        first = os.path.normpath(text).split(os.sep)[0]
        if first in HELD_OUT_SPLIT_NAMES:
            raise AbnError(f'{FLAG}: {where}: {text} is an image of the {first} split, held '
                           f'out from training: boxes teach training images only')

    def image(self, index):
        """The training image as PIL, without the training transform."""
        if self.plain is None:
            self.plain = copy.copy(self.base)
            self.plain.transform = None
        try:
            image = self.plain[index][0]
        except CorruptImageError as error:
            raise AbnError(f'{FLAG}: {error}') from None
        if not isinstance(image, Image.Image):
            raise AbnError(f'{FLAG}: --box-refine grabcut needs the training images as pictures')
        return image

    def size(self, index):
        """(width, height) of a training image, from its file's header where it has a file,
        else from the item."""
        if self.samples is not None:
            path = self.samples[index][0]
            try:
                with open_image(path) as image:
                    return image.size
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
                raise AbnError(f'{FLAG}: cannot read the image {path} ({error})') from None
        if self.plain is None:
            self.plain = copy.copy(self.base)
            self.plain.transform = None
        image = self.plain[index][0]
        if isinstance(image, Image.Image):
            return image.size
        array = np.asarray(image)  # a tensor (C, H, W) or an array (H, W[, C])
        height, width = array.shape[-2:] if array.ndim == 3 and array.shape[0] in (1, 3) \
            else array.shape[:2]
        return int(width), int(height)


def check_inside(where, box, width, height):
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise AbnError(f'{FLAG}: {where}: the box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is '
                       f'outside its image ({width}x{height} px: x in 0..{width}, '
                       f'y in 0..{height})')


def collect_boxes(source, dataset, tasks=None):
    """{base index: (width, height, {channel: [box, ...]})} of the rows of `source` for the
    training split `dataset` (any Subset of a base split), with the record's keys and the
    count of rows of images outside it; per attribute (`tasks` the attribute names) the
    channel is the row's attribute, else 0."""
    base, indices = flatten_subsets(dataset)
    rows = read_rows(source)
    if not rows:
        raise AbnError(f'{FLAG} {source}: no boxes in it')
    if tasks is not None and not os.path.isdir(source) and 'attribute' not in rows[0][1]:
        raise AbnError(f'{FLAG} {source}: a multi-task model is taught per attribute: add an '
                       f'attribute column (one of {", ".join(tasks)})')
    by_name = {}
    for task, name in enumerate(tasks or ()):
        by_name[name] = by_name[safe_name(name)] = task
    lookup = ImageIndex(base)
    used = set(indices)
    found, keys, unused, sizes = {}, {}, 0, {}
    for where, row in rows:
        box = parse_box(where, row)
        targets = lookup.find(where, row['image'], row.get('folder') or '')
        task = 0
        if tasks is not None:
            name = str(row.get('attribute') or '').strip()
            if name not in by_name:
                raise AbnError(f'{FLAG}: {where}: {name!r} is not an attribute of this model '
                               f'(one of {", ".join(tasks)})')
            task = by_name[name]
        for index in targets:
            if index not in sizes:
                sizes[index] = lookup.size(index)
            check_inside(where, box, *sizes[index])
            if index not in used:
                unused += 1
                continue
            width, height = sizes[index]
            found.setdefault(index, (width, height, {}))[2].setdefault(task, []).append(box)
            keys[index] = str(row['image']).strip()
    if not found:
        raise AbnError(f'{FLAG} {source}: none of its {len(rows)} boxes is of an image this run '
                       f'trains on (see --train-size)')
    return found, keys, unused


def cut_boxes(found, dataset):
    """{index: {channel: uint8 map}} of the boxes `found` cut by GrabCut, once, with a
    progress bar: the training images are read here."""
    lookup = ImageIndex(flatten_subsets(dataset)[0])
    progress = Progress('GrabCut', len(found))
    refined = {}
    for done, (index, (_, _, boxes)) in enumerate(sorted(found.items()), 1):
        image = lookup.image(index)
        refined[index] = {channel: (grabcut_map(image, channel_boxes) > 0.5).astype(np.uint8)
                          for channel, channel_boxes in boxes.items()}
        progress.update(done)
    progress.finish(f'{len(refined)} images cut')
    return refined


def load_box_map_set(source, dataset, refine='grabcut'):
    """The maps of `--attention-boxes source` for a training split (per attribute for a
    multi-task one): the boxes cut by GrabCut (`refine='grabcut'`), or as they are
    ('none')."""
    layout = layout_of(flatten_subsets(dataset)[0])
    found, keys, unused = collect_boxes(source, dataset, tasks=layout.channel_names)
    refined = cut_boxes(found, dataset) if refine == 'grabcut' else None
    maps = BoxMapSet(source, layout.channels, found, keys, refined)
    maps.unused = unused
    return maps


# -- the boxes of the shapes masks ----------------------------------------------------------

def mask_box(mask):
    """The bounding box (x0, y0, x1, y1) of a 0/1 mask's nonzero pixels, or None."""
    rows, columns = np.nonzero(mask)
    if not len(rows):
        return None
    return int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1


def write_shapes_boxes(path, percent, train_size=None):
    """Writes the bounding boxes of the `shapes` masks of the seeded `percent`% of the
    training images (the images of `shapes-masks:P%`) as a boxes CSV; returns the count."""
    from utils.data.shapes import ShapesDataset

    train = ShapesDataset(train=True, size=train_size)
    chosen = shapes_mask_subset(len(train), percent)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, 'w', newline='') as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        count = 0
        for index in chosen:
            box = mask_box(train.masks[index])
            if box is not None:
                writer.writerow((index, *box))
                count += 1
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m utils.teach.boxes',
        description='write the bounding boxes of the shapes object masks of a seeded share of '
                    'the training images (the images of shapes-masks:P%%) as a CSV for '
                    '--attention-boxes')
    parser.add_argument('file', metavar='FILE.csv')
    add_share_arguments(parser)
    args = parser.parse_args(argv)
    if not 0 < args.percent <= 100:
        raise AbnError('--percent must be in (0, 100]')
    count = write_shapes_boxes(args.file, args.percent, args.train_size)
    print(f'{count} boxes written to {args.file}')
    return 0


if __name__ == '__main__':
    from utils.errors import run

    sys.exit(run(main))
