"""Image files: the one list of extensions and the one reader that training, explain.py and
the attention editor share.

Pillow picks its reader from a file's content, not its name: left to itself it would open
an EPS file named `x.png` by running Ghostscript. `load_rgb`, `identify_image` and
`open_image` therefore accept only the raster formats below, whatever the file is called, and
Ghostscript is switched off for the whole process.
"""
import os

from PIL import EpsImagePlugin, Image, UnidentifiedImageError

from utils.errors import AbnError

# Nothing in this project may run Ghostscript, whoever opens a file (Gradio decodes the
# painter's images with a plain Image.open): Pillow then refuses PostScript without calling
# `gs`, even to ask for its version.
EpsImagePlugin.gs_binary = False

# Pillow's names of the formats read (JPEG's reader also opens cameras' MPO files)
RASTER_FORMATS = ('PNG', 'JPEG', 'BMP', 'GIF', 'WEBP', 'TIFF', 'PPM')
# torchvision's ImageFolder extensions, plus GIF
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.pbm', '.pgm', '.png', '.pnm', '.ppm',
                    '.tif', '.tiff', '.webp')
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


class CorruptImageError(Exception):
    """An image file that cannot be decoded; the message names the file."""


def read_only_raster_formats():
    """Leaves Pillow in this process only the raster formats' readers, so that even a plain
    Image.open elsewhere (a library's) cannot pick PostScript, PDF or another reader from a
    file's content. For processes that read untrusted files (the attention editor's page)."""
    Image.init()  # every plugin registered now: a later init() adds none back
    for name in list(Image.ID):
        if name not in RASTER_FORMATS and name != 'MPO':
            Image.ID.remove(name)
            Image.OPEN.pop(name, None)


def is_image_file(path):
    return path.lower().endswith(IMAGE_EXTENSIONS)


def open_image(file):
    """PIL's Image.open restricted to the raster formats (a path or a binary file)."""
    return Image.open(file, formats=RASTER_FORMATS)


class ImageTooLargeError(CorruptImageError):
    """An image with more pixels than the caller takes, found from its header."""


def load_rgb(path, max_pixels=None):
    """The image at `path` as RGB (raster formats only). `max_pixels`: refuse a larger image
    from its header, before decoding a byte of it (a small file can hold a huge image)."""
    try:
        with open(path, 'rb') as f:
            image = open_image(f)
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
                    f'{os.path.basename(path)} is {width}x{height} pixels, more than the '
                    f'{max_pixels / 1e6:g} megapixels taken here: make it smaller first')
            return image.convert('RGB')
    except Image.DecompressionBombError:  # Pillow's own limit, met while reading the header
        if max_pixels is None:
            raise
        raise ImageTooLargeError(f'{os.path.basename(path)} has more than the '
                                 f'{max_pixels / 1e6:g} megapixels taken here: make it '
                                 f'smaller first') from None
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


def image_files_by_key(folder):
    """Every image file under `folder` (hidden ones left out), as (its path relative to the
    folder without the extension, with '/', e.g. 'cat/3'; its path): how maps and masks
    name the image they belong to."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if name.startswith('.') or ext.lower() not in IMAGE_EXTENSIONS:
                continue
            relative = os.path.relpath(os.path.join(root, stem), folder)
            found.append((relative.replace(os.sep, '/'), os.path.join(root, name)))
    return found


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
