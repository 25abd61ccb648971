"""What `--attention-boxes` costs at the start of a run: GrabCut (the default `--box-refine
grabcut`) cuts each image's boxes once, before the first step. Milliseconds per image of one
box, at three image sizes (a ring on noise, its box around it; images above 128 px are cut at
128 px and the cut resized back), median of the rounds, against drawing the plain box.

    python benchmarks/bench_boxes.py --images 50 --rounds 3
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import machine  # noqa: E402
from utils.teach.boxes import box_map, grabcut_map  # noqa: E402

SIZES = ((32, 32), (224, 224), (500, 375))


def ring_image(width, height, seed):
    """A red ring on dark noise and its bounding box."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    radius = np.hypot(yy - height / 2, xx - width / 2)
    outer = min(width, height) * 0.3
    pixels[(radius >= outer * 0.6) & (radius <= outer)] = (230, 40, 40)
    box = (width / 2 - outer - 1, height / 2 - outer - 1, width / 2 + outer + 1,
           height / 2 + outer + 1)
    return Image.fromarray(pixels), box


def per_image_ms(images, draw):
    started = time.perf_counter()
    for image, box in images:
        draw(image, box)
    return (time.perf_counter() - started) * 1000 / len(images)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=int, default=50, help='images timed a round')
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args(argv)
    print(machine())
    for width, height in SIZES:
        images = [ring_image(width, height, seed) for seed in range(args.images)]
        cut, plain = [], []
        for _ in range(args.rounds):
            cut.append(per_image_ms(images, lambda image, box: grabcut_map(image, [box])))
            plain.append(per_image_ms(images, lambda image, box: box_map(
                image.size[0], image.size[1], [box])))
        print(f'{width}x{height}: GrabCut {statistics.median(cut):.2f} ms per image, the plain '
              f'box {statistics.median(plain):.3f} ms ({args.images} images, median of '
              f'{args.rounds} rounds)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
