"""Where the maps look over many images, without masks: each method's maps averaged over all
images and per predicted class (average_maps.png), and a one-line note when most maps (of all
images, or of the images of some classes) peak in a few places away from the image's centre:
where a shortcut sits (a corner patch, a watermark, a border), not where objects, which move
from image to image, are expected.

The peaks are counted on a GRID x GRID grid of the image. A set of images is concentrated
when the PEAK_CELLS most frequent cells hold at least CONCENTRATED of its maps' peaks and none
of them lies in the central half of the image (where centred photographs keep their
objects); a class is looked at when at least MIN_IMAGES images are predicted as it."""
import os

import numpy as np

GRID = 8
PEAK_CELLS = 4
CONCENTRATED = 0.6
MIN_IMAGES = 10  # fewer images tell nothing about a place


class WhereMapsLook:
    """Sums of each method's maps (each scaled to [0, 1]) over all images and per predicted
    class, and each map's peak cell."""

    def __init__(self, class_names):
        self.names = class_names
        self.sums, self.counts, self.peaks = {}, {}, {}

    def add(self, method, maps, classes):
        """maps: (N, H, W) at the input's size; classes: (N,) the explained classes."""
        maps = np.asarray(maps, dtype=np.float64)
        low = maps.min((1, 2), keepdims=True)
        span = maps.max((1, 2), keepdims=True) - low
        scaled = (maps - low) / np.where(span > 0, span, 1)
        sums = self.sums.setdefault(method, {})
        counts = self.counts.setdefault(method, {})
        for unit, c in zip(scaled, np.asarray(classes).tolist()):
            for key in ('all', int(c)):
                sums[key] = sums.get(key, 0) + unit
                counts[key] = counts.get(key, 0) + 1
        height, width = maps.shape[1:]
        flat = maps.reshape(len(maps), -1).argmax(1)
        rows, cols = flat // width * GRID // height, flat % width * GRID // width
        self.peaks.setdefault(method, []).extend(
            zip(rows.tolist(), cols.tolist(), np.asarray(classes).tolist()))

    def concentrated(self, peaks):
        """The places (in words) where `peaks` [(row, col), ...] concentrate away from the
        centre, with their share of the peaks; None where they do not."""
        if len(peaks) < MIN_IMAGES:
            return None
        cells, counts = np.unique(np.asarray(peaks), axis=0, return_counts=True)
        top = np.argsort(-counts, kind='stable')[:PEAK_CELLS]
        share = counts[top].sum() / counts.sum()
        central = range(GRID // 4, GRID - GRID // 4)
        if share < CONCENTRATED or any(cells[i][0] in central and cells[i][1] in central
                                       for i in top):
            return None
        return sorted({place(*cells[i]) for i in top}), share

    def note(self, method, shown=None):
        """The one-line note about `method`'s maps (called `shown`), or None."""
        peaks = self.peaks.get(method, [])
        found = self.concentrated([(r, c) for r, c, _ in peaks])
        tail = ('a shortcut there? Objects move from image to image (see average_maps.png; '
                'explain.py --measure with object masks tells what the decision rests on)')
        if found is not None:
            places, share = found
            return (f'note: the {shown or method} maps of {100 * share:.0f}% of the images '
                    f'peak in the same few places ({", ".join(places)}), away from the centre, '
                    f'whatever the class: {tail}')
        classes, places = [], set()
        for key in sorted({k for _, _, k in peaks}):
            found = self.concentrated([(r, c) for r, c, k in peaks if k == key])
            if found is not None:
                classes.append(self.class_name(key))
                places.update(found[0])
        if not classes:
            return None
        return (f'note: the {shown or method} maps of the images predicted as '
                f'{", ".join(classes)} peak in the same few places ({", ".join(sorted(places))}),'
                f' away from the centre: {tail}')

    def write(self, out_dir, titles):
        """average_maps.png: a row per method, the average over all images, then per class
        (the most frequent ones, up to 10). Returns its path."""
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        methods = list(self.sums)
        classes = sorted((k for k in self.counts[methods[0]] if k != 'all'),
                         key=lambda k: -self.counts[methods[0]][k])[:10]
        columns = ['all'] + sorted(classes)
        fig, axes = plt.subplots(len(methods), len(columns), squeeze=False,
                                 figsize=(1.6 * len(columns), 1.8 * len(methods)))
        for row, method in enumerate(methods):
            for col, key in enumerate(columns):
                ax = axes[row][col]
                ax.axis('off')
                if key not in self.sums[method]:
                    continue
                ax.imshow(self.sums[method][key] / self.counts[method][key], cmap='jet',
                          vmin=0, vmax=1)
                name = 'all images' if key == 'all' else self.class_name(key)
                ax.set_title(f'{name} ({self.counts[method][key]})', fontsize=7)
            axes[row][0].text(-0.1, 0.5, titles.get(method, method), rotation=90,
                              transform=axes[row][0].transAxes, ha='right', va='center',
                              fontsize=8)
        fig.suptitle('Where the maps look: the average map (each scaled to [0, 1]) over the '
                     'images predicted as each class', fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, 'average_maps.png')
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def class_name(self, key):
        if self.names is not None and 0 <= key < len(self.names):
            return str(self.names[key])[:14]
        return str(key)


def place(row, col):
    """A grid cell in words: 'top-left corner', 'left edge', ..."""
    vertical = 'top' if row < GRID // 4 else 'bottom' if row >= GRID - GRID // 4 else ''
    horizontal = 'left' if col < GRID // 4 else 'right' if col >= GRID - GRID // 4 else ''
    if vertical and horizontal:
        return f'{vertical}-{horizontal} corner'
    return f'{vertical or horizontal} edge'
