"""The saved-map store: where a map of an image lives, written by the attention editor's page
and read by `--attention-maps` (utils.teach.attention_maps, layouts), one layout for both.

    <folder>/<split>/<index>.png                a built-in data set's image (its split, index)
    <folder>/<split>/<class>/<stem>.png         an image folder's image
    <folder>/<class>/<stem>.png                 an image file or upload, the class chosen
    <folder>/<attribute>/<split>/<index>.png    multi-task models: a folder per attribute
    <folder>/<attribute>/<stem>.png             (no class folder: attributes are not classes)

A map never replaces a different one: another map of the same image is kept beside it as a
numbered sibling, `<stem>~2.png`, and `--attention-maps` averages an image's maps; the same
map saved again changes nothing. Names are made visible single files (`visible_stem`).
"""
import io
import os
import re
import threading

from PIL import Image

from utils.data.images import image_files_by_key
from utils.errors import AbnError
from utils.visualize import safe_name

SIBLING_MARK = '~'  # <stem>~2.png: the second map of one image
SIBLING = re.compile(r'^(.*)~(\d+)$')  # <stem>~2: another map of the image <stem>
TRAINING_SPLIT = 'train'


def visible_stem(name):
    """A file stem that stays one visible file: no folder separators or control characters,
    no leading dot or space (an upload named `.png` would be a hidden file); 'image' if
    nothing is left."""
    cleaned = ''.join('-' if ch in '/\\' or ord(ch) < 32 else ch for ch in str(name))
    return cleaned.lstrip('. ')[:120] or 'image'


def image_stem(stem):
    """The image a map file's stem names: `<stem>~2` is a second map of `<stem>`."""
    sibling = SIBLING.match(stem)
    return sibling.group(1) if sibling else stem


def images_named(by_key, key, numbered):
    """(the key of the image a map file names, that image's indices or None), `by_key` the
    training split's {key: indices}: `<stem>~2` is a second map of `<stem>`; with
    `numbered` (images known by index), `0007` is image 7."""
    targets = by_key.get(key)
    sibling = SIBLING.match(key)
    if targets is None and sibling:
        key = sibling.group(1)
        targets = by_key.get(key)
    if targets is None and numbered and key.isdigit():
        targets = by_key.get(str(int(key)))
    return key, targets


def map_path(folder, stem, split=None, index=None, class_name=None, attribute=None):
    """Where a map belongs in the layout above: an image of a data set split by its `index`
    (or, for an image folder's split, by `class_name`/`stem`), else by `class_name`/`stem`;
    `attribute` (a multi-task model's) puts it in that attribute's folder, without a class
    folder."""
    if attribute is not None:  # as layouts.AttributeLayout reads the attribute's folder back
        folder = os.path.join(folder, safe_name(attribute))
    if split is not None and index is not None:
        return os.path.join(folder, split, f'{index}.png')
    if attribute is not None:
        return os.path.join(folder, f'{visible_stem(stem)}.png')
    if split is not None:  # an image folder's split, as for the built-in sets
        folder = os.path.join(folder, split)
    # The class's own name, as --attention-maps and --masks look it up (made one visible
    # folder only where it would not be one).
    return os.path.join(folder, visible_stem(class_name), f'{visible_stem(stem)}.png')


def training_folder(folder, per_attribute):
    """The folder `--attention-maps` reads the training maps from: the attribute folders
    themselves (their `train/` inside), else `<folder>/train`."""
    return folder if per_attribute else os.path.join(folder, TRAINING_SPLIT)


def saved_training_maps(folder, per_attribute):
    """{(attribute or None, the image's key): [files]} of the maps saved in `folder` (as
    training_folder gives it): multi-task maps `<attribute>/train/<key>.png`; single-task
    ones `<key>.png` (a built-in split's index) or `<class>/<stem>.png` (an image folder's,
    keyed '<class>/<stem>'). An image's siblings go together."""
    if not os.path.isdir(folder):
        return {}
    grouped = {}
    for key, path in image_files_by_key(folder):
        parts = key.split('/')
        if per_attribute:
            if len(parts) != 3 or parts[1] != TRAINING_SPLIT:
                continue
            entry = (parts[0], image_stem(parts[2]))
        elif len(parts) in (1, 2):
            entry = (None, '/'.join(parts[:-1] + [image_stem(parts[-1])]))
        else:
            continue
        grouped.setdefault(entry, []).append(path)
    return dict(sorted(grouped.items(), key=lambda item: (str(item[0][0]), item[0][1])))


def store_map(path, gray, shown_path):
    """Saves the (h, w) uint8 map as PNG at `path`; (the path written, a note for the page).
    A map never replaces a different one: the same map again is left as it is, another map
    of the same image becomes a numbered sibling `<stem>~2.png` (`--attention-maps` averages
    an image's maps), and the note says so. `shown_path`: a path as a visitor may see it."""
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format='PNG')
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        written, same = write_new_map(path, buffer.getvalue())
    except OSError as error:
        raise AbnError(f'cannot write {shown_path(path)}: {error.strerror}') from None
    if same:
        return written, 'the same map was already saved there; nothing changed'
    if written != path:
        return written, (f'a different map of this image was already saved as '
                         f'{shown_path(path)}: both are kept (--attention-maps averages them)')
    return written, ''


def write_new_map(path, data):
    """Writes `data` to `path`, or to the first free numbered sibling when `path` holds other
    bytes; (the path written or found, whether identical bytes were already there). The
    claim of a name is atomic (a hard link of a finished file), so two visitors saving at
    once never write one file."""
    stem, ext = os.path.splitext(path)
    partial = f'{path}.{os.getpid()}.{threading.get_ident()}.partial'
    with open(partial, 'wb') as f:
        f.write(data)
    try:
        number = 1
        while True:
            candidate = path if number == 1 else f'{stem}{SIBLING_MARK}{number}{ext}'
            if _claim(partial, candidate, data):
                return candidate, False
            with open(candidate, 'rb') as f:
                if f.read() == data:
                    return candidate, True
            number += 1
    finally:
        os.remove(partial)


def _claim(partial, candidate, data):
    """True when `candidate` was free and now holds `data`; False when it exists. A hard link
    of the finished file, or, where the file system has none (FAT, some network mounts), an
    exclusive create."""
    try:
        os.link(partial, candidate)
        return True
    except FileExistsError:
        return False
    except OSError:
        try:
            handle = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, 'wb') as f:
            f.write(data)
        return True
