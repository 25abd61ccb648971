"""Pictures of attention maps: for each image the input, the map and their blend, with the
true and predicted class; and one grid of many images.

Inputs are un-normalised with the data set's own mean and std, the map (values in [0, 1],
at the feature resolution) is upsampled bilinearly to the image and blended with alpha, not
added with saturation, and every folder is created before writing."""
import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from utils.kinds import class_label  # noqa: E402

ALPHA = 0.5
COLORMAP = 'jet'


def denormalize(images, mean, std):
    """(N, 3, H, W) normalised tensors -> (N, H, W, 3) float arrays in [0, 1]."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().float().numpy()


def upsample_maps(maps, size):
    """(N, 1, h, w) maps -> (N, H, W) float arrays, bilinear."""
    maps = maps.detach().float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode='bilinear', align_corners=False)
    return maps[:, 0].clamp(0, 1).cpu().numpy()


def blend(image, attention_map, alpha=ALPHA, cmap=COLORMAP):
    """(H, W, 3) image and (H, W) map in [0, 1] -> (H, W, 3) overlay."""
    heat = plt.get_cmap(cmap)(attention_map)[..., :3]
    return (1 - alpha) * image + alpha * heat


def save_attention_images(out_dir, images, maps, captions, mean, std, start_index=0,
                          grid_name='grid.png', title=''):
    """Writes one PNG per image (input | map | overlay) into out_dir and, for the batch, the
    grid `grid_name`. `captions`: per image (true text or None, predicted text, confidence
    or None), as an objective's `captions` makes them. Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    pictures = denormalize(images, mean, std)
    heat = upsample_maps(maps, images.shape[-2:])
    paths = []
    for i, (picture, attention_map) in enumerate(zip(pictures, heat)):
        true_name, pred_name, confidence = captions[i]
        confidence = f' ({float(confidence):.0%})' if confidence is not None else ''
        fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
        axes[0].imshow(picture, interpolation='nearest')
        axes[0].set_title(f'input, true: {true_name}' if true_name else 'input', fontsize=9)
        shown = axes[1].imshow(attention_map, cmap=COLORMAP, vmin=0, vmax=1)
        axes[1].set_title(f'attention map ({maps.shape[-2]}x{maps.shape[-1]})', fontsize=9)
        fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
        axes[2].imshow(blend(picture, attention_map))
        correct = true_name is None or true_name == pred_name
        axes[2].set_title(f'pred: {pred_name}{confidence}', fontsize=9,
                          color='black' if correct else 'red')
        for ax in axes:
            ax.axis('off')
        fig.tight_layout()
        name = f'{start_index + i:04d}'
        if true_name is not None:
            name += f'_true-{safe_name(true_name)}'
        name += f'_pred-{safe_name(pred_name)}.png'
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    if grid_name:
        paths.append(save_caption_grid(os.path.join(out_dir, grid_name), pictures, heat,
                                       captions, title))
    return paths


def save_grid(path, pictures, heat, targets, predictions, class_names, title='', columns=8):
    """Inputs over their overlays, `columns` images a row; wrong predictions in red."""
    captions = [(class_label(class_names, int(targets[i])) if targets is not None else None,
                 class_label(class_names, int(predictions[i])), None) for i in range(len(pictures))]
    return save_caption_grid(path, pictures, heat, captions, title, columns)


def save_caption_grid(path, pictures, heat, captions, title='', columns=8):
    """save_grid with per-image (true text or None, predicted text, confidence) captions."""
    n = len(pictures)
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(1.6 * columns, 3.3 * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    for i in range(n):
        r, c = divmod(i, columns)
        true_name, pred_name = captions[i][:2]
        axes[2 * r, c].imshow(pictures[i], interpolation='nearest')
        axes[2 * r + 1, c].imshow(blend(pictures[i], heat[i]))
        if true_name is not None:
            axes[2 * r, c].set_title(true_name, fontsize=8)
            axes[2 * r + 1, c].set_title(pred_name, fontsize=8,
                                         color='black' if pred_name == true_name else 'red')
        else:
            axes[2 * r + 1, c].set_title(pred_name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def safe_name(name):
    """A class or file name cut down to characters every file system takes."""
    return ''.join(ch if ch.isalnum() or ch in '-_' else '-' for ch in str(name))[:40]


def as_uint8(image):
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


# -- explain.py's pictures: one row per image, its maps and its top-k beside it

def _draw_top_k(ax, ranking, true_class, title):
    names = [r['name'] for r in ranking][::-1]
    values = [100 * r['probability'] for r in ranking][::-1]
    colours = ['tab:green' if r['class'] == true_class else 'tab:blue' for r in ranking][::-1]
    ax.barh(range(len(names)), values, color=colours)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, 100)
    ax.tick_params(axis='x', labelsize=7)
    for y, v in enumerate(values):
        ax.text(min(v + 2, 70), y, f'{v:.1f}%', va='center', fontsize=7)
    ax.set_title(title, fontsize=9)


def save_explanation(path, picture, panels, rankings, true_class, true_name):
    """One row: the input, then `panels` (title, image array, colour range or None), then
    one top-k chart per entry of `rankings` (title, ranking)."""
    columns = 1 + len(panels) + len(rankings)
    widths = [1] * (1 + len(panels)) + [1.5] * len(rankings)
    fig, axes = plt.subplots(1, columns, figsize=(sum(widths) * 2.1, 2.5),
                             gridspec_kw={'width_ratios': widths})
    axes[0].imshow(picture, interpolation='nearest')
    axes[0].set_title(f'input, true: {true_name}' if true_name else 'input', fontsize=9)
    for ax, (title, image, value_range) in zip(axes[1:], panels):
        if value_range is None:
            ax.imshow(image, interpolation='bilinear')
        else:
            ax.imshow(image, cmap='jet', vmin=value_range[0], vmax=value_range[1])
        ax.set_title(title, fontsize=9)
    for ax in axes[:1 + len(panels)]:
        ax.axis('off')
    for ax, (title, ranking) in zip(axes[1 + len(panels):], rankings):
        _draw_top_k(ax, ranking, true_class, title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_comparison_grid(path, pictures, heats, row_titles, title=''):
    """Rows of images: the input and one overlay per map (`heats`: title -> (N, H, W))."""
    rows, columns = len(pictures), 1 + len(heats)
    fig, axes = plt.subplots(rows, columns, figsize=(1.55 * columns, 1.6 * rows + 0.4),
                             squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(pictures[r], interpolation='nearest')
        axes[r, 0].set_ylabel(row_titles[r], fontsize=7, rotation=0, ha='right', va='center')
        for c, (name, heat) in enumerate(heats.items(), start=1):
            axes[r, c].imshow(blend(pictures[r], heat[r]))
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
        if r == 0:
            axes[r, 0].set_title('input', fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_map_image(path, attention_map):
    """The model's map at its own resolution, as 8-bit grayscale: edit it, give it to --edit."""
    Image.fromarray(as_uint8(attention_map.numpy())).save(path)


# -- multi-task maps (N, T, h, w): one panel per task -----------------------------------------

def task_heat(maps, size, map_style='pos'):
    """(N, T, h, w) unbounded multi-task maps -> (N, T, H, W) arrays in [0, 1]: the authors'
    picture `map_style` ('pos', 'neg', 'both'; scaled over all T maps of an image), upsampled
    bilinearly to the image."""
    from utils.data.attributes import map_picture
    pictures = map_picture(maps.detach().float(), map_style)
    if tuple(pictures.shape[-2:]) != tuple(size):
        pictures = F.interpolate(pictures, size=tuple(size), mode='bilinear',
                                 align_corners=False)
    return pictures.clamp(0, 1).cpu().numpy()


def _task_title(name, probability, truth):
    """'circle 0.97 (1)': the task's probability and, when known, its truth; wrong in red."""
    text = f'{name} {probability:.2f}'
    if truth is None:
        return text, 'black'
    wrong = (probability >= 0.5) != (truth > 0.5)
    return f'{text} ({int(truth > 0.5)})', 'red' if wrong else 'black'


def save_task_attention_images(out_dir, images, maps, probabilities, targets, task_names, mean,
                               std, start_index=0, grid_name='grid.png', title='',
                               map_style='pos', max_tasks=8, grid_images=8):
    """Multi-task ABN pictures. Per image, `NNNN_tasks.png`: the input, then the overlay of
    each task's map (the first `max_tasks` tasks), titled with the task's probability and its
    truth (1/0; red when the prediction at 0.5 is wrong). `grid_name`: the first
    `grid_images` images, one a row, the same panels. Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    pictures = denormalize(images, mean, std)
    heat = task_heat(maps, images.shape[-2:], map_style)
    shown = min(max_tasks, heat.shape[1])
    names = [class_label(task_names, t) for t in range(shown)]
    probabilities = probabilities.float().numpy()
    truths = targets.float().numpy() if targets is not None else None
    paths = []

    def draw_row(axes, i):
        axes[0].imshow(pictures[i], interpolation='nearest')
        axes[0].set_title('input', fontsize=8)
        for t in range(shown):
            axes[1 + t].imshow(blend(pictures[i], heat[i, t]))
            text, colour = _task_title(names[t], float(probabilities[i, t]),
                                       None if truths is None else float(truths[i, t]))
            axes[1 + t].set_title(text, fontsize=8, color=colour)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])

    for i in range(len(pictures)):
        fig, axes = plt.subplots(1, 1 + shown, figsize=(1.6 * (1 + shown), 2.0), squeeze=False)
        draw_row(axes[0], i)
        more = f' (first {shown} of {heat.shape[1]} tasks)' if shown < heat.shape[1] else ''
        fig.suptitle(f'{map_style} maps{more}', fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f'{start_index + i:04d}_tasks.png')
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    if grid_name:
        rows = min(grid_images, len(pictures))
        fig, axes = plt.subplots(rows, 1 + shown, figsize=(1.6 * (1 + shown), 1.75 * rows + 0.4),
                                 squeeze=False)
        for i in range(rows):
            draw_row(axes[i], i)
        if title:
            fig.suptitle(f'{title} ({map_style} maps)', fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, grid_name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
