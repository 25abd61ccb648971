"""The page's pictures: images read as the page reads them (one line for what it cannot
read), maps as gray levels and back (white: attend; unbounded multi-task maps as
M / (2 max|M|) + 0.5, their authors' "both" picture), a painted picture averaged back over
each cell of the map, the input enlarged without smoothing, and overlays."""
import os
import threading

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.data.images import IMAGE_EXTENSIONS, CorruptImageError, ImageTooLargeError, load_rgb
from utils.errors import AbnError
from utils.visualize import as_uint8, blend

# One decode at a time: a few large uploads decoding at once would hold their pixels together.
_DECODING = threading.Lock()


def read_image(path, max_pixels=None):
    """An uploaded or listed image as RGB, or one line that says why not (a format this page
    does not read, PostScript included; too many pixels, found before decoding)."""
    name = os.path.basename(path)
    with _DECODING:
        try:
            return load_rgb(path, max_pixels)
        except ImageTooLargeError as error:
            raise AbnError(str(error)) from None
        except CorruptImageError:
            raise AbnError(f'{name} is not an image this page can read '
                           f'({", ".join(IMAGE_EXTENSIONS)})') from None
        except Image.DecompressionBombError:
            raise AbnError(f'{name} is too large an image') from None


def map_scale(channel):
    """None for a map in [0, 1] (the sigmoid maps), else max|M| (an unbounded map)."""
    if channel.min() < 0 or channel.max() > 1:
        return float(np.abs(channel).max()) or 1.0
    return None


def to_gray(channel, scale):
    """A map channel as gray levels in [0, 1] (white: attend): a map in [0, 1] as it is
    (`scale` None), an unbounded one as M / (2 scale) + 0.5."""
    if scale is None:
        return np.clip(channel, 0, 1)
    return np.clip(channel / (2 * scale) + 0.5, 0, 1)


def from_gray(gray, scale):
    return gray if scale is None else (gray - 0.5) * 2 * scale


def read_painted_map(image, height, width, scale=None):
    """A painted or uploaded map picture (any size with the map's aspect ratio, gray or
    colour) -> (height, width) map values, each cell the mean over its pixels; `scale` as
    in to_gray."""
    if image is None:
        raise AbnError('no map to read')
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            array = as_uint8(array.astype(np.float32) / (255.0 if array.max() > 1 else 1.0))
        image = Image.fromarray(array)
    if image.mode in ('RGBA', 'LA', 'P'):  # transparent parts are black (no attention)
        image = image.convert('RGBA')
        black = Image.new('RGBA', image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image)
    gray = image.convert('L')
    w, h = gray.size
    if abs(w * height - h * width) > max(w, h) * 0.02 * max(height, width):
        raise AbnError(f'a {w}x{h} map does not fit this model\'s {width}x'
                       f'{height} map: give one of the same shape (any size)')
    small = gray.resize((width, height), Image.BOX)
    values = np.asarray(small, np.float32) / 255
    return from_gray(values, scale).astype(np.float32)


def enlarged(gray, cell):
    """A (h, w) uint8 map at `cell` pixels a cell, without smoothing: the painter's canvas."""
    return np.kron(gray, np.ones((cell, cell), np.uint8))


def input_pixels(tensor, normalization, factor):
    """The input as the model sees it (normalised (3, H, W)), enlarged `factor` times without
    smoothing: (D, D, 3) float in [0, 1]."""
    mean, std = normalization
    image = (tensor.float().cpu() * torch.tensor(std).view(3, 1, 1)
             + torch.tensor(mean).view(3, 1, 1)).clamp(0, 1).permute(1, 2, 0).numpy()
    return np.kron(image, np.ones((factor, factor, 1), np.float32))


def overlay(pixels, heat):
    """A map in [0, 1] (any size) blended over the enlarged input, upsampled bilinearly."""
    heat = torch.as_tensor(np.asarray(heat, np.float32))[None, None]
    heat = F.interpolate(heat, size=pixels.shape[:2], mode='bilinear', align_corners=False)
    return as_uint8(blend(pixels, heat[0, 0].clamp(0, 1).numpy()))
