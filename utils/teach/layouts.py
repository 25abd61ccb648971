"""Where the maps of a training split lie in a folder for `--attention-maps`, one layout for
each kind of split (utils.kinds), chosen once (`layout_of`) and asked by the one loader
(utils.teach.attention_maps.load_map_set) and by the boxes (utils.teach.boxes):

- single-label (`ClassLayout`), one map an image: `DIR/<class>/<image stem>.png` for image
  folders, `DIR/<index>.png` for the built-in sets (the index into the full training
  split). A folder of the test or validation split's maps is refused.
- per attribute (`AttributeLayout`), a map an attribute, the attention editor's layout for
  multi-task maps (utils.teach.map_store):

      DIR/<attribute>/train/<key>.png     maps of the training split (the page's layout)
      DIR/<attribute>/<key>.png           the same without the split folder

  `<attribute>` is the attribute's name as the page writes it (characters other than
  letters, digits, '-' and '_' become '-'), `<key>` the image's index into the training
  split (shapes-multi) or its file stem (CelebA, an attribute CSV). Maps of the test and
  validation splits (`DIR/<attribute>/test/`, `valid/`, `val/`) are never read: training on
  them would train on held-out images. An image may have maps for some attributes only; the
  others train with the classification losses alone.

  The values are gray levels in [0, 1], white = attend: the page draws an unbounded
  multi-task map M as M / (2 max|M|) + 0.5 (the authors' "both" picture) and saves what was
  painted on it. The map loss stretches both the given picture and the model's map to
  [0, 1] and compares their patterns (utils.objectives.task_map_loss): the map's scale and
  offset, whose mean is the attention logit, stay the model's own.

`shapes-masks:P%` gives the ground-truth masks of a seeded P% of the training images: the
object's of `shapes` (and `shapes-decoy`), each attribute's present in the image of
`shapes-multi`.
"""
import os

import numpy as np

from utils.errors import AbnError
from utils.kinds import PER_ATTRIBUTE, SINGLE_LABEL, kind_of_split
from utils.visualize import safe_name

# Folders of maps of images no run may train on: the page saves test-split maps there.
HELD_OUT_SPLITS = ('test', 'val')
HELD_OUT_SPLIT_NAMES = ('test', 'valid', 'val')  # CelebA's validation split is 'valid'


def check_not_held_out(folder):
    """Refuses a folder of maps of the test or validation split, or one that holds such a
    folder: fine-tuning on corrections of test images would train on the test set."""
    name = os.path.basename(os.path.normpath(folder))
    inside = [d for d in HELD_OUT_SPLITS if os.path.isdir(os.path.join(folder, d))]
    if name in HELD_OUT_SPLITS or inside:
        where = folder if name in HELD_OUT_SPLITS else os.path.join(folder, inside[0])
        parent = os.path.dirname(os.path.normpath(folder)) if name in HELD_OUT_SPLITS \
            else folder
        raise AbnError(f'--attention-maps {folder}: {where} holds maps of the '
                       f'{os.path.basename(where)} split, and training on them would train on '
                       f'held-out images: give the training split\'s maps, '
                       f'{os.path.join(parent, "train")}')


class ClassLayout:
    """A single-label split's maps: one channel, keyed '<class>/<stem>' or by index."""
    mask_datasets = ('shapes', 'shapes-decoy')  # the data sets with ground-truth masks
    channels = 1
    channel_names = None  # a box names no attribute

    def __init__(self, base):
        samples = getattr(base, 'samples', None)
        self.numbered = samples is None  # images known by index: '0007' is image 7
        self.by_key = {}  # the image's key -> its indices into the base split
        if samples is not None:  # an image folder
            for index, (path, class_index) in enumerate(samples):
                stem = os.path.splitext(os.path.basename(path))[0]
                self.by_key.setdefault(f'{base.classes[class_index]}/{stem}', []).append(index)
            self.pattern = '<class>/<image stem>.png'
        else:  # a built-in set
            self.by_key = {str(i): [i] for i in range(len(base))}
            self.pattern = f'<index>.png with index 0..{len(base) - 1}'

    def check_folder(self, folder):
        check_not_held_out(folder)

    def address(self, key, path, folder):
        """(channel, the image's key) of a map file (`key`: its path in the folder without
        the extension), or None for a held-out split's map."""
        return 0, key

    def mask_channels(self, mask):
        """{channel: float32 mask} of one image's ground-truth mask."""
        return {0: mask.astype(np.float32)}


class AttributeLayout:
    """A multi-task split's maps: a channel per attribute, in the attribute's folder."""
    mask_datasets = ('shapes-multi',)

    def __init__(self, base):
        self.channel_names = list(base.attribute_names)
        self.channels = len(self.channel_names)
        self.by_folder = {safe_name(name): t for t, name in enumerate(self.channel_names)}
        self.by_key, stem = image_keys(base)
        self.numbered = True
        self.pattern = os.path.join('<attribute>', 'train', stem)

    def check_folder(self, folder):
        """Nothing to refuse: the held-out splits' folders inside are skipped."""

    def address(self, key, path, folder):
        parts = key.split('/')
        if parts[0] not in self.by_folder or len(parts) not in (2, 3):
            raise AbnError(f'--attention-maps: {path} is not a map of an attribute: the maps '
                           f'of a multi-task model are {os.path.join(folder, self.pattern)} '
                           f'with <attribute> one of {", ".join(sorted(self.by_folder))}')
        if len(parts) == 3 and parts[1] in HELD_OUT_SPLIT_NAMES:
            return None
        if len(parts) == 3 and parts[1] != 'train':
            raise AbnError(f'--attention-maps: {path}: the split folder of a map is train '
                           f'(test, valid and val are held out and not read)')
        return self.by_folder[parts[0]], parts[-1]

    def mask_channels(self, masks):
        """{attribute: float32 mask} of the attributes present in one image ((T, H, W))."""
        return {t: mask.astype(np.float32) for t, mask in enumerate(masks) if mask.any()}


LAYOUTS = {SINGLE_LABEL.name: ClassLayout, PER_ATTRIBUTE.name: AttributeLayout}


def layout_of(base):
    """The layout of the maps of a base training split, by its kind."""
    return LAYOUTS[kind_of_split(base).name](base)


def image_keys(base):
    """({key: [indices]}, the file pattern) of a multi-task training split: file stems where
    the data set has files (CelebA, an attribute CSV), else the index."""
    names = getattr(base, 'filename', None)  # torchvision's CelebA
    if names is None:
        names = getattr(base, 'files', None)  # AttributeFolder
    if names is None:
        return {str(i): [i] for i in range(len(base))}, '<index>.png'
    keys = {}
    for index, name in enumerate(names):
        keys.setdefault(os.path.splitext(os.path.basename(name))[0], []).append(index)
    return keys, '<image stem>.png'
