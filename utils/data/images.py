"""Image files: the one list of extensions and the one reader that training, explain.py and
the attention editor share.

Pillow picks its reader from a file's content, not its name: left to itself it would open
an EPS file named `x.png` by running Ghostscript. `load_rgb` and `identify_image` therefore
accept only the raster formats below, whatever the file is called.
"""
import os

from PIL import Image, UnidentifiedImageError

from utils.errors import AbnError

# Pillow's names of the formats read (JPEG's reader also opens cameras' MPO files)
RASTER_FORMATS = ('PNG', 'JPEG', 'BMP', 'GIF', 'WEBP', 'TIFF', 'PPM')
# torchvision's ImageFolder extensions, plus GIF
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.pbm', '.pgm', '.png', '.pnm', '.ppm',
                    '.tif', '.tiff', '.webp')
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


class CorruptImageError(Exception):
    """An image file that cannot be decoded; the message names the file."""


def is_image_file(path):
    return path.lower().endswith(IMAGE_EXTENSIONS)


def open_image(file):
    """PIL's Image.open restricted to the raster formats (a path or a binary file)."""
    return Image.open(file, formats=RASTER_FORMATS)


def load_rgb(path):
    try:
        with open(path, 'rb') as f:
            return open_image(f).convert('RGB')
    except _READ_ERRORS as error:
        raise CorruptImageError(f'cannot read image {path} ({error})') from None


def identify_image(path):
    """None when PIL identifies the file from its header, else the reason it cannot."""
    try:
        with open_image(path) as image:
            image.size  # noqa: B018 (parsed with the header)
        return None
    except _READ_ERRORS as error:
        return str(error) or type(error).__name__


def find_images(paths):
    """The image files among `paths` (files, and folders searched recursively in name
    order); AbnError for a missing path or when there are none."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            for folder, subfolders, names in os.walk(path):
                subfolders.sort()
                found += [os.path.join(folder, n) for n in sorted(names) if is_image_file(n)]
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise AbnError(f'no image or folder at {path}')
    if not found:
        raise AbnError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {", ".join(paths)}')
    return found
