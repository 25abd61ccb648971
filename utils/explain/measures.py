"""Measures of explanation maps, and the report they go into.

With ground-truth object masks (the `shapes` set):
- pointing game: does the map's peak fall on the object? Strict (on the object's pixels), and
  with the tolerance of its authors (Zhang et al., 2016: 15 px around the object at 224 px,
  so 2 px at 32 px), which forgives a peak just beside a thin part (a ring's, a star's).
  When several pixels share the maximum (a saturated sigmoid, a flat map), the score is the
  share of them on the object: what breaking the tie at random scores on average. So a single
  peak scores 1 or 0 and a flat map scores the object's share of the image, as chance.
- energy inside the object: sum(map * mask) / sum(map), with the map first shifted so its
  minimum is 0 (scale- and offset-free, so maps of different ranges compare); a flat map
  spreads evenly and scores the object's share of the image.

On any data, faithfulness by deletion and insertion (Petsiuk et al., RISE, 2018): pixels are
removed (set to the data set's mean colour) or inserted (into a blurred copy of the image),
most important first, in `steps` equal steps; the area under the curve of the explained
class's probability is the score. Deletion: lower is better; insertion: higher is better.
Ties in the ordering are broken at random (seeded), so a flat map is a random order.

ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
ICML 2022), computed by pytorch-grad-cam (`ROADCombined`): at each percentile p, the pixels
above the map's p-th percentile (most relevant first, MoRF) or below its (100 - p)-th (least
relevant first, LeRF) are replaced by noisy linear imputation from their neighbours, which
leaks less of the removed shape than a constant colour; the score is the mean over the
percentiles of (drop of the explained class's probability with LeRF - with MoRF) / 2: higher
is better, 0 is what a map unrelated to the model scores.
Every map is (N, H, W) at the input's size; masks are (N, H, W) booleans.
"""
import json
import os

import numpy as np
import torch
import torchvision.transforms.functional as TF
from scipy import ndimage

from utils.kinds import SINGLE_LABEL

BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's insertion baseline


def _flat(maps):
    maps = np.asarray(maps, dtype=np.float64)
    return maps.reshape(len(maps), -1)


def pointing_tolerance(image_size):
    """Zhang et al.'s 15 pixels at 224 px, scaled to the image: 2 px at 32 px."""
    return round(15 * image_size / 224)


def pointing_game(maps, masks, radius=0, tie_tolerance=1e-6):
    """Per image, in [0, 1]: the share of the map's maximal pixels (within `tie_tolerance` of
    the map's range) that lie on the object or within `radius` pixels of it."""
    masks = np.asarray(masks, dtype=bool)
    if radius > 0:
        disk = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
        masks = np.stack([ndimage.binary_dilation(mask, disk) for mask in masks])
    flat, inside = _flat(maps), masks.reshape(len(maps), -1)
    peak = flat.max(1, keepdims=True)
    span = peak - flat.min(1, keepdims=True)
    at_peak = flat >= peak - tie_tolerance * np.maximum(span, 1e-12)
    return (at_peak & inside).sum(1) / at_peak.sum(1)


def energy_inside(maps, masks):
    """Per image, in [0, 1]: the share of the min-shifted map's mass on the object."""
    flat, inside = _flat(maps), np.asarray(masks, dtype=bool).reshape(len(maps), -1)
    shifted = flat - flat.min(1, keepdims=True)
    total = shifted.sum(1)
    flat_map = total <= 0
    share = (shifted * inside).sum(1) / np.where(flat_map, 1, total)
    return np.where(flat_map, inside.mean(1), share)


def importance_ranks(maps, generator):
    """(N, H*W) rank of each pixel, 0 for the most important; ties in random order."""
    flat = _flat(maps)
    tie_break = generator.random(flat.shape)
    order = np.lexsort((tie_break, -flat), axis=1)  # last key first: value, then tie break
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None].repeat(len(flat), 0), 1)
    return ranks


def deletion_insertion(predict, inputs, maps, classes, steps=16, seed=0):
    """Returns (deletion AUC, insertion AUC), each (N,), and the curves (2, steps + 1, N).

    predict: (N, 3, H, W) normalised images -> (N, K) probabilities; inputs: (N, 3, H, W)
    normalised, so 0 is the data set's mean colour; classes: (N,) the explained classes."""
    n, _, height, width = inputs.shape
    ranks = torch.from_numpy(importance_ranks(maps, np.random.default_rng(seed)))
    ranks = ranks.view(n, 1, height, width).to(inputs.device)
    blurred = TF.gaussian_blur(inputs, [BLUR_KERNEL] * 2, [BLUR_SIGMA] * 2)
    mean_colour = torch.zeros_like(inputs)
    index = torch.as_tensor(classes, device=inputs.device).view(-1, 1)
    curves = np.zeros((2, steps + 1, n))
    for step in range(steps + 1):
        chosen = ranks < round(step / steps * height * width)  # the most important pixels
        deleted = torch.where(chosen, mean_colour, inputs)
        inserted = torch.where(chosen, inputs, blurred)
        for row, images in enumerate((deleted, inserted)):
            curves[row, step] = predict(images).gather(1, index)[:, 0].float().cpu().numpy()
    # Trapezoidal area over the removed/inserted fraction 0..1.
    auc = (curves.sum(1) - (curves[:, 0] + curves[:, -1]) / 2) / steps
    return auc[0], auc[1], curves


ROAD_PERCENTILES = (10, 30, 50, 70, 90)  # the library's default is 10..90 by 10: 2x slower


def road(logits, inputs, maps, classes, percentiles=ROAD_PERCENTILES, seed=0):
    """Per-image ROAD score, (N,) (pytorch-grad-cam's ROADCombined on softmax probabilities).

    logits: (N, 3, H, W) normalised images -> (N, K) logits; maps: (N, H, W); classes: (N,)
    the explained classes. The imputation's noise is drawn from `seed`, leaving the
    process's random state as it was."""
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    maps = np.ascontiguousarray(maps, dtype=np.float32)
    # torch.manual_seed seeds every CUDA device too: their states are kept and given back
    with torch.random.fork_rng(devices=initialized_cuda_devices()), torch.no_grad():
        torch.manual_seed(seed)
        return np.asarray(ROADCombined(percentiles=list(percentiles))(inputs, maps, targets,
                                                                      logits))


def initialized_cuda_devices():
    """The CUDA devices whose random state this process may have used (none before CUDA
    starts: asking would start it)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    return list(range(torch.cuda.device_count()))


# -- accumulation and the report -------------------------------------------------------------

def measure_maps(table, name, maps, inputs, classes, predict, logits, masks=None, radius=0,
                 steps=16, road_percentiles=ROAD_PERCENTILES, seed=0):
    """Adds every measure of `maps` (N, H, W) of `inputs` to `table` under `name`: the
    pointing game (strict and within `radius`) and energy inside where object `masks` exist
    (a list may hold None for an image without one),
    deletion/insertion AUC and ROAD always, each for its explained `classes`. `predict`:
    images -> probabilities; `logits`: images -> logits (ROAD's)."""
    if masks is not None:  # some entries may be None: those images are not scored here
        have = np.array([m is not None for m in masks])
        if have.any():
            chosen, inside = np.asarray(maps)[have], np.stack([m for m in masks if m is not None])
            table.add(name, 'pointing_game', pointing_game(chosen, inside))
            table.add(name, 'pointing_game_tolerant', pointing_game(chosen, inside,
                                                                    radius=radius))
            table.add(name, 'energy_inside', energy_inside(chosen, inside))
    deletion, insertion, _ = deletion_insertion(predict, inputs, maps, classes, steps=steps,
                                                seed=seed)
    table.add(name, 'deletion_auc', deletion)
    table.add(name, 'insertion_auc', insertion)
    if road_percentiles:
        table.add(name, 'road', road(logits, inputs, maps, classes, road_percentiles, seed=seed))


def object_kept(images, inside):
    """Each image's object (`inside`, (N, 1, H, W) bool) amid the next image's surroundings;
    where the next image's own object was, the image's own pixels: one object in each."""
    other, other_inside = images.roll(1, 0), inside.roll(1, 0)
    return torch.where(inside | other_inside, images, other)


def object_removed(images, inside):
    """Each image with its object's pixels filled in from its own surroundings: a smooth
    fill, each pixel the Gaussian-weighted mean of the pixels outside the object around it
    (normalised convolution), so that neither the object nor a sharp silhouette of it is
    left."""
    outside = (~inside).to(images.dtype)
    side = images.shape[-1]
    sigma = max(1.0, side / 8)
    kernel = 2 * round(2 * sigma) + 1
    weights = TF.gaussian_blur(outside, [kernel] * 2, [sigma] * 2).clamp_min(1e-6)
    fill = TF.gaussian_blur(images * outside, [kernel] * 2, [sigma] * 2) / weights
    return torch.where(inside, fill, images)


def decision_outside(predict, inputs, masks, labels, kind=SINGLE_LABEL):
    """Whether the decision rests on the object or on what lies outside it, per image with a
    mask and a label: {variant: (correct (N,), confidence in the truth (N,))} for 'as
    given', 'object kept' (the object amid another image's surroundings, as a teaching
    counterfactual shows it) and 'outside only' (the object's pixels filled in smoothly from
    its own surroundings). A model that decides by the object keeps its accuracy on the
    first and falls to chance on the second; one that decides by a shortcut outside it does
    the reverse. `predict`: images -> probabilities; `inputs` (N, 3, H, W) normalised;
    `masks` (N, H, W) bool; `labels` as the `kind` (utils.kinds) reads them: a class each
    (N,), or 0/1 per attribute (N, T), whose answers are each image's share of attributes
    right."""
    inside = torch.as_tensor(np.asarray(masks, dtype=bool), device=inputs.device)[:, None]
    variants = {'as given': inputs, 'object kept': object_kept(inputs, inside),
                'outside only': object_removed(inputs, inside)}
    return {name: tuple(part.cpu().numpy() for part in kind.answers(predict(images).float(),
                                                                    labels))
            for name, images in variants.items()}


DECISION_VARIANTS = ('as given', 'object kept', 'outside only')


class DecisionTable:
    """decision_outside's answers per model, summed over batches: the share correct and the
    mean confidence of each variant."""

    def __init__(self):
        self.scores = {}  # model -> variant -> [correct values, confidences]

    def add(self, model, answers):
        for variant, (correct, confidence) in answers.items():
            entry = self.scores.setdefault(model, {}).setdefault(variant, [[], []])
            entry[0].extend(correct.tolist())
            entry[1].extend(confidence.tolist())

    def summary(self):
        return {model: {variant: {'top1': 100 * float(np.mean(c)),
                                  'confidence': 100 * float(np.mean(p)), 'n': len(c)}
                        for variant, (c, p) in variants.items()}
                for model, variants in self.scores.items()}

    def markdown(self):
        lines = ['| model | ' + ' | '.join(f'top-1, {v}' for v in DECISION_VARIANTS)
                 + ' | ' + ' | '.join(f'confidence, {v}' for v in DECISION_VARIANTS) + ' |',
                 '|' + '---|' * (1 + 2 * len(DECISION_VARIANTS))]
        for model, variants in self.summary().items():
            cells = [f"{variants[v]['top1']:.1f}" for v in DECISION_VARIANTS]
            cells += [f"{variants[v]['confidence']:.1f}" for v in DECISION_VARIANTS]
            lines.append(f'| {model or "model"} | ' + ' | '.join(cells) + ' |')
        return '\n'.join(lines)


METRICS = {
    # key: (title, better, unit)
    'pointing_game': ('pointing game', 'higher', '%'),
    'pointing_game_tolerant': ('pointing game, tolerant', 'higher', '%'),
    'energy_inside': ('energy inside object', 'higher', '%'),
    'deletion_auc': ('deletion AUC', 'lower', ''),
    'insertion_auc': ('insertion AUC', 'higher', ''),
    'road': ('ROAD', 'higher', ''),
}


def split_scores(answer, dataset, count, masks, size, radius, names=None, batch=100):
    """{'images', 'accuracy', 'radius', 'pointing' (and per task 'pointing_per_attribute'),
    'object_kept'} of a model on the first `count` images of `dataset` (items (image, label)):
    `answer(images, labels)` gives (the number correct, its maps (N, T, h, w) in [0, 1]);
    accuracy is a percentage of the images, the pointing game (within `radius` px, at `size`
    px) is scored where `masks` (the data set's, (N, [T,] H, W)) exist: for one map
    channel against the object, for T channels (`names`) each against its own object, over
    the images where it is present, then averaged. 'object_kept' is the accuracy with the
    objects (all of an image's masks) amid another image's surroundings (object_kept): what
    the decision keeps when a shortcut outside the object is taken away."""
    import torch.nn.functional as F
    correct, seen, pointing, per_task = 0.0, 0, [], {}
    kept_correct, kept_seen = 0.0, 0
    for start in range(0, count, batch):
        items = [dataset[i] for i in range(start, min(count, start + batch))]
        images = torch.stack([item[0] for item in items])
        labels = torch.stack([torch.as_tensor(item[1]) for item in items])
        right, maps = answer(images, labels)
        correct, seen = correct + right, seen + len(items)
        if masks is None:
            continue
        up = F.interpolate(maps.float(), size=(size, size), mode='bilinear',
                           align_corners=False).numpy()
        truth = torch.as_tensor(np.asarray(masks[start:start + len(items)])).float()
        truth = truth[:, None] if truth.dim() == 3 else truth  # (N, T, H, W)
        if truth.shape[-1] != size:
            truth = F.interpolate(truth, size=(size, size), mode='nearest')
        truth = truth.numpy() > 0.5
        if len(items) > 1 and tuple(images.shape[-2:]) == (size, size):
            kept, _ = answer(object_kept(images, torch.from_numpy(truth.any(1, keepdims=True))),
                             labels)
            kept_correct, kept_seen = kept_correct + kept, kept_seen + len(items)
        if names is None:
            pointing.extend(pointing_game(up[:, 0], truth[:, 0], radius))
            continue
        for t in range(up.shape[1]):
            present = truth[:, t].reshape(len(items), -1).any(1)
            if present.any():
                per_task.setdefault(names[t], []).extend(
                    pointing_game(up[present, t], truth[present, t], radius))
    scores = {'images': seen, 'accuracy': 100 * correct / max(seen, 1), 'radius': radius}
    if kept_seen:
        scores['object_kept'] = 100 * kept_correct / kept_seen
    if per_task:
        scores['pointing_per_attribute'] = {k: 100 * float(np.mean(v))
                                            for k, v in per_task.items()}
        scores['pointing'] = float(np.mean(list(scores['pointing_per_attribute'].values())))
    elif pointing:
        scores['pointing'] = 100 * float(np.mean(pointing))
    return scores


class MetricTable:
    """Per-image scores by (map name, metric), summarised as mean and standard error."""

    def __init__(self, titles=None):
        self.scores = {}
        self.titles = {m: title for m, (title, _, _) in METRICS.items()}
        self.titles.update(titles or {})

    def add(self, name, metric, values):
        self.scores.setdefault(name, {}).setdefault(metric, []).extend(
            float(v) for v in np.asarray(values).ravel())

    def summary(self):
        out = {}
        for name, metrics in self.scores.items():
            out[name] = {}
            for metric, values in metrics.items():
                values = np.asarray(values)
                sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
                out[name][metric] = {'mean': float(values.mean()), 'sem': float(sem),
                                     'n': int(len(values))}
        return out

    def metrics(self):
        present = {m for metrics in self.scores.values() for m in metrics}
        return [m for m in METRICS if m in present]


def _cell(entry, metric):
    if entry is None:
        return '-'
    if METRICS[metric][2] == '%':
        return f"{100 * entry['mean']:.1f} ± {100 * entry['sem']:.1f}"
    return f"{entry['mean']:.3f} ± {entry['sem']:.3f}"


def markdown_table(summary, metrics, titles):
    header = ['map'] + [f"{titles[m]} ({'↑' if METRICS[m][1] == 'higher' else '↓'})"
                        for m in metrics]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for name, entries in summary.items():
        lines.append('| ' + ' | '.join([name] + [_cell(entries.get(m), m) for m in metrics])
                     + ' |')
    return '\n'.join(lines)


def write_report(out_dir, table, meta, decision=None):
    """metrics.json (per map and metric: mean, standard error, n; plus `meta`; and with a
    DecisionTable `decision`, what the decision rests on), metrics.md (the tables) and
    metrics.png (a bar chart). Returns the three paths."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    summary, metrics, titles = table.summary(), table.metrics(), table.titles
    paths = [os.path.join(out_dir, f'metrics.{ext}') for ext in ('json', 'md', 'png')]
    with open(paths[0], 'w') as f:
        json.dump({'meta': meta, 'metrics': {m: {'title': titles[m], 'better': METRICS[m][1]}
                                             for m in metrics},
                   'results': summary,
                   **({'decision': decision.summary()} if decision and decision.scores else {})},
                  f, indent=2)
    notes = [f'{key}: {value}' for key, value in meta.items() if value is not None]
    with open(paths[1], 'w') as f:
        f.write(markdown_table(summary, metrics, titles) + '\n\n'
                + 'mean ± standard error over images. ' + '; '.join(notes) + '\n')
        if decision and decision.scores:
            count = next(iter(next(iter(decision.summary().values())).values()))['n']
            f.write('\nWhat the decision rests on (%, over the ' + str(count) + ' images with a '
                    'mask): object kept = the object amid another image\'s surroundings; outside '
                    'only = the object filled in smoothly from its own surroundings.\n\n'
                    + decision.markdown() + '\n')

    names = list(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3 * len(metrics), 3.2), squeeze=False)
    colours = plt.get_cmap('tab10')(np.arange(len(names)) % 10)
    for ax, metric in zip(axes[0], metrics):
        scale = 100 if METRICS[metric][2] == '%' else 1
        means = [scale * summary[n].get(metric, {}).get('mean', np.nan) for n in names]
        errors = [scale * summary[n].get(metric, {}).get('sem', 0) for n in names]
        ax.bar(range(len(names)), means, yerr=errors, color=colours, capsize=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha='right', fontsize=8)
        _, better, unit = METRICS[metric]
        ax.set_title(f'{titles[metric]}\n({better} is better)', fontsize=9)
        if unit == '%':
            ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths
