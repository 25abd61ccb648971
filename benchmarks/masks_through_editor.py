"""Ground-truth masks saved through the attention editor's own functions, as if a person had
painted each one on the page: the `shapes` masks of the images `shapes-masks:P%` takes (or,
for a multi-task model, the `shapes-multi` masks of every attribute present in them), each
painted at the input's resolution, read back as the page reads a painted map (averaged over
each cell of the model's map) and saved where the page saves (edited_maps/...). docs/teach.md
measures a model taught from them against the same masks given as `shapes-masks:P%`.

    python benchmarks/masks_through_editor.py CHECKPOINT --percent 1 -o outputs/teach-page
    python cifar.py --dataset shapes --weights CHECKPOINT \\
        --attention-maps outputs/teach-page/edited_maps/train ...
"""
import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.serve.editor import MapEditor  # noqa: E402
from utils.teach.attention_maps import shapes_mask_subset  # noqa: E402
from utils.weights.loading import load_model  # noqa: E402


def paint(editor, index, attribute, mask):
    """One mask painted over training image `index` (channel `attribute`) and saved."""
    explained = editor.explain(editor.gallery.picture_from_split('train', index), attribute)
    painted = Image.fromarray(mask.astype(np.uint8) * 255)  # white: attend
    edited = editor.map_from_image(painted, explained.scale)
    return editor.save(explained, edited)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoint')
    parser.add_argument('--percent', type=float, default=1.0)
    parser.add_argument('-o', '--output', default='outputs/teach-page')
    args = parser.parse_args(argv)
    loaded = load_model(args.checkpoint)
    dataset = 'shapes-multi' if loaded.multitask else 'shapes'
    editor = MapEditor(loaded, torch.device('cpu'), os.path.join(args.output, 'edited_maps'),
                       dataset=dataset)
    train = editor.gallery.split('train')
    base = getattr(train, 'dataset', train)
    chosen = shapes_mask_subset(len(train), args.percent)
    written = 0
    for index in chosen:
        masks = base.masks[index]
        if not loaded.multitask:
            paint(editor, index, 0, masks)
            written += 1
            continue
        for attribute in range(masks.shape[0]):
            if masks[attribute].any():
                paint(editor, index, attribute, masks[attribute])
                written += 1
    folder = os.path.join(args.output, 'edited_maps')
    print(f'{written} maps of {len(chosen)} training images saved through the editor in '
          f'{folder}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
