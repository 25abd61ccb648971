"""What the page's Teach section measures of a model, before and after teaching: test
accuracy (mean attribute accuracy for multi-task models), the pointing game of the ABN map
where the data set has object masks (utils.explain.measures.split_scores), and how far the
model's maps agree with the saved training maps (the contrast inside / outside what was
painted)."""
import numpy as np
import torch
import torch.nn.functional as F

from utils.data.datasets import base_dataset
from utils.explain.measures import pointing_tolerance, split_scores
from utils.teach.attention_maps import read_maps
from utils.teach.map_store import saved_training_maps
from utils.visualize import safe_name

MEASURE_IMAGES = 1000  # test images both models are measured on (the first ones)
PAINTED = 0.75  # a saved map's painted region: its cells at least this white


def measure(editor, test, images, maps_folder):
    """{'accuracy', 'pointing', 'contrast', counts} of `editor`'s model on the first `images`
    of the split `test`, the contrast over the saved maps of `maps_folder`."""
    kind = editor.kind

    def answer(batch, labels):
        with editor.lock, torch.no_grad():
            out = editor.model(batch.to(editor.device))
        logits, maps = out.perception_logits.float().cpu(), out.attention_map.float().cpu()
        return kind.correct(logits, labels), kind.measured_maps(maps)

    scores = split_scores(answer, test, min(len(test), images),
                          getattr(base_dataset(test), 'masks', None), editor.size,
                          pointing_tolerance(editor.size),
                          editor.names if kind.per_attribute else None)
    scores.update(contrast(editor, maps_folder))
    return scores


def contrast(editor, maps_folder):
    """{'contrast': mean over the saved training maps of (the model's map, drawn as the page
    draws it, averaged inside the painted region: the cells at least PAINTED white) minus
    (averaged outside), 'maps': how many}: how far the model's maps agree with what was
    painted. Maps of a data set's images (by index) count; those of image files do not."""
    values = []
    channels = {safe_name(name): t for t, name in enumerate(editor.names)}
    per_attribute = editor.kind.per_attribute
    for (folder, key), files in saved_training_maps(maps_folder, per_attribute).items():
        attribute = channels.get(folder, -1) if per_attribute else 0
        if attribute < 0 or not key.isdigit() or int(key) >= len(editor.gallery.split('train')):
            continue
        painted = read_maps(files) >= PAINTED
        if painted.all() or not painted.any():
            continue
        explained = editor.explain(editor.gallery.picture_from_split('train', int(key)), attribute)
        own = explained.own_map[attribute]
        scale = explained.scale
        drawn = own if scale is None else own / (2 * scale) + 0.5
        region = np.asarray(F.interpolate(
            torch.from_numpy(painted.astype(np.float32))[None, None],
            size=drawn.shape, mode='area')[0, 0]) >= 0.5
        if region.all() or not region.any():
            continue
        values.append(float(drawn[region].mean() - drawn[~region].mean()))
    return {'contrast': float(np.mean(values)) if values else None, 'maps': len(values)}
