"""The attention editor: a local web page to look at, edit and correct attention maps.

    python explain.py CHECKPOINT --serve [--dataset shapes] [IMAGE ...] [--port 7860]

`MapEditor` holds the functions behind the page and knows nothing of the page: load an image
(`picture_from_split`, `picture_from_file`), explain it (`explain`: the input, the ABN map,
CAM and Grad-CAM, the top-5), run the perception branch on an edited map (`predict`) and save
the edited map where `--attention-maps DIR` reads it (`save`). `build_page` puts them on a
Gradio page; `serve` starts it on localhost.

Editing: the map is shown as a grayscale picture (white: attend) at a whole multiple of its
own resolution; a person paints on it with the white brush (add) or the black one (remove) and
any brush size; the painted picture is averaged back over each cell of the map (so a stroke
that covers half a cell moves it half way). Multi-task maps (T > 1 channels, unbounded values)
are shown as M / (2 max|M|) + 0.5 (their authors' "both" picture) and read back the same way.

Saved maps (grayscale PNG at the map's resolution, the layout of `--attention-maps`):
- images of a built-in data set: `DIR/<split>/<index>.png`, the index within that split, so
  `--attention-maps DIR/train` reads the training split's corrections and corrections of test
  images stay apart from training data;
- image folders' images: `DIR/<split>/<class>/<image stem>.png`; image files and uploads:
  `DIR/<class>/<image stem>.png`, the class chosen on the page (by default the image's folder
  when it names a class, else the prediction); another map of the same image is kept beside
  the first as `<stem>~2.png`;
- multi-task models: `DIR/<attribute>/<split>/<index>.png` and `DIR/<attribute>/<image
  stem>.png` (no class folder: attributes are not classes).
"""
import io
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.data.attributes import ShapesMultiDataset
from utils.data.datasets import SMALL_IMAGE_DATASETS, base_dataset, build_small_image_data
from utils.data.images import (IMAGE_EXTENSIONS, CorruptImageError, ImageTooLargeError,
                               find_images, load_rgb)
from utils.data.inputs import image_transform
from utils.errors import AbnError
from utils.explain.cam import Explainer, supports_cam

# explain.py's model loading (the model-spec function with its refusals) and top-5 ranking.
from utils.explain.run import top_k  # noqa: I001
from utils.visualize import as_uint8, blend, safe_name

DISPLAY = 256  # pixels the pictures on the page are drawn at, at least
MULTITASK_DATASET = 'shapes-multi'  # the multi-task data set the page serves splits of


@dataclass
class Picture:
    """One image on the page, as the model sees it."""
    tensor: torch.Tensor  # (3, H, W), normalised as in the model's training
    name: str  # shown on the page and used as the saved map's stem
    label: int = -1  # the true class, -1 when unknown
    split: str = None  # 'train' or 'test' for images of a built-in data set
    index: int = None  # the image's index within that split
    note: str = ''  # e.g. that the image was resized


@dataclass
class Explained:
    """What the page shows for one picture."""
    picture: Picture
    own_map: np.ndarray  # (T, h, w) the model's map, as the model computed it
    scale: float  # None: a map in [0, 1]; else max|M| of the chosen channel (see module doc)
    attribute: int  # the channel shown (0 for single-task models)
    panels: dict  # title -> (D, D, 3) uint8: the input and the overlays
    editor_image: np.ndarray  # (E, E) uint8 grayscale: the map to paint on
    ranking: dict  # name -> probability: top-5 (or every attribute's probability)
    true_name: str = None
    explained_class: str = None  # the class CAM and Grad-CAM explain (single-label models)


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
    if abs(w * height - h * width) > max(w, h) * 0.02 * max(
            height, width):
        raise AbnError(f'a {w}x{h} map does not fit this model\'s {width}x'
                       f'{height} map: give one of the same shape (any size)')
    small = gray.resize((width, height), Image.BOX)
    values = np.asarray(small, np.float32) / 255
    return from_gray(values, scale).astype(np.float32)


class MapEditor:
    """The model, loaded once, and the operations of the page."""

    def __init__(self, loaded, device, maps_dir, dataset=None, data_root='./data', files=(),
                 max_pixels=None):
        self.loaded, self.device, self.maps_dir = loaded, device, maps_dir
        self.max_pixels = max_pixels  # larger images are refused from their header
        self.model = loaded.model.to(device).eval()
        self.transform = image_transform(loaded)
        self.size = loaded.image_size
        self.lock = threading.Lock()  # Grad-CAM's hooks serve one request at a time
        with torch.no_grad():
            probe = self.model(torch.zeros(1, 3, self.size, self.size, device=device))
        if probe.attention_map is None:
            raise AbnError(f'--serve edits attention maps: {loaded.description} is a plain '
                           f'baseline without attention branch')
        self.tasks, self.map_height, self.map_width = probe.attention_map.shape[1:]
        count = probe.perception_logits.shape[1]
        self.names = (list(loaded.class_names) if loaded.class_names
                      and len(loaded.class_names) == count
                      else [f'attribute {i}' if self.multitask else str(i) for i in range(count)])
        methods = ['abn']
        if not self.multitask:  # CAM and Grad-CAM explain one softmax over classes
            methods += (['cam'] if supports_cam(self.model) else []) + ['gradcam']
        self.explainer = Explainer(self.model, methods)
        self.files = find_images(list(files)) if files else []
        self.dataset = dataset
        self.splits = {}
        if dataset:
            self._open_dataset(dataset, data_root)

    @property
    def multitask(self):
        return self.tasks > 1

    def close(self):
        self.explainer.close()

    # ---- the images ----
    def _open_dataset(self, name, root):
        if self.multitask != (name == MULTITASK_DATASET):
            wanted = (MULTITASK_DATASET if self.multitask
                      else 'one of ' + ', '.join(SMALL_IMAGE_DATASETS))
            raise AbnError(f'--dataset {name} does not fit this '
                           f'{"multi-task" if self.multitask else "single-label"} model: give '
                           f'{wanted}, or image files')
        if name not in SMALL_IMAGE_DATASETS + (MULTITASK_DATASET,):
            raise AbnError(f"unknown data set '{name}'")
        if self.loaded.imagenet:
            raise AbnError('--dataset holds small-image sets; give an ImageNet model image '
                           'files or folders, or upload them on the page')
        self._data_args = (name, root)
        self.splits['test'] = None  # built on first use: the page starts at once
        self.splits['train'] = None
        self.split('test')  # the test split now: a missing data set is a start-up error

    def share_images(self, other):
        """Serves `other`'s data set splits (a model of the same input: a taught copy),
        without reading or generating them again."""
        self.dataset, self.splits = other.dataset, other.splits
        self._data_args = getattr(other, '_data_args', None)
        if other.loaded.class_names is None:
            self.names = list(other.names)

    def split(self, name):
        """The split's images through the evaluation transform (no augmentation)."""
        if name not in self.splits:
            raise AbnError(f"no split '{name}': this page serves "
                           f"{', '.join(self.splits) or 'uploaded images only'}")
        if self.splits[name] is None and self.multitask:  # shapes-multi, generated
            self.splits[name] = ShapesMultiDataset(train=name == 'train',
                                                   transform=self.transform)
        if self.splits[name] is None:
            dataset, root = self._data_args
            bundle = build_small_image_data(dataset, root, evaluate_only=name == 'test',
                                            image_size=self.size,
                                            normalization=self.loaded.normalization)
            names = self.loaded.class_names
            if not self.multitask and names is not None and list(bundle.classes) != list(names):
                raise AbnError(f'the model was trained on other classes ({", ".join(names[:4])}'
                               f', ...) than {dataset} has ({", ".join(bundle.classes[:4])}, ...)')
            chosen = bundle.test if name == 'test' else bundle.train
            base_dataset(chosen).transform = base_dataset(bundle.test).transform
            self.splits[name] = chosen
            if self.loaded.class_names is None and len(bundle.classes) == len(self.names):
                self.names = list(bundle.classes)
        return self.splits[name]

    def picture_from_split(self, split, index):
        data = self.split(split)
        try:
            index = int(index)
        except (TypeError, ValueError):
            raise AbnError(f'the image index must be a whole number, got {index!r}') from None
        if not 0 <= index < len(data):
            raise AbnError(f'the {split} split has images 0 to {len(data) - 1}, not {index}')
        try:
            tensor, label = data[index]
        except CorruptImageError as error:
            raise AbnError(str(error)) from None
        name = f'{self.dataset}-{split}-{index}'
        if self.multitask:  # attributes (T,): no single true class
            return Picture(tensor, name, -1, split, index)
        base = base_dataset(data)
        samples = getattr(base, 'samples', None)  # image folders: the file's own name
        if samples is not None:
            name = os.path.splitext(os.path.basename(samples[index][0]))[0]
        return Picture(tensor, name, int(label), split, index)

    def picture_from_file(self, path, label=None):
        """Any image file, as explain.py reads files: resized to the model's input."""
        if not path or not os.path.isfile(path):
            raise AbnError('no file was given')
        image = read_image(path, self.max_pixels)
        if label is None:  # an image in a folder named after a class has that label
            folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
            label = self.names.index(folder) if folder in self.names else -1
        note = ''
        if image.size != (self.size, self.size):
            how = 'resized and centre-cropped' if self.loaded.imagenet else 'resized'
            note = (f'{image.size[0]}x{image.size[1]} image {how} to the model\'s '
                    f'{self.size}x{self.size}')
        stem = os.path.splitext(os.path.basename(path))[0]
        return Picture(self.transform(image), stem, label, note=note)

    # ---- explain ----
    def explain(self, picture, attribute=0, target=None):
        """The page's view of `picture`; CAM and Grad-CAM explain the class named `target`
        (None: the prediction). The ABN map is the same for every class."""
        attribute = self._attribute(attribute)
        if target is not None and target not in self.names:
            raise AbnError(f"'{target}' is not one of the model's classes")
        x = picture.tensor[None].to(self.device)
        with self.lock:
            if self.multitask:
                with torch.no_grad():
                    out = self.model(x)
                maps, logits = {}, out.perception_logits.float().cpu()
                own = out.attention_map[0].float().cpu()
            else:
                chosen = None if target is None else torch.tensor([self.names.index(target)])
                explanation = self.explainer(x, classes=chosen)
                maps, logits = explanation.maps, explanation.logits
                own = explanation.feature_maps['abn'][0]
        own = own.numpy()
        channel = own[attribute]
        scale = None
        if channel.min() < 0 or channel.max() > 1:
            scale = float(np.abs(channel).max()) or 1.0
        pixels = self.pixels(picture)
        panels = {'input': as_uint8(pixels)}
        shown_map = to_gray(channel, scale)
        panels['ABN attention'] = self.overlay(pixels, shown_map)
        for method, title in (('cam', 'CAM'), ('gradcam', 'Grad-CAM')):
            if method in maps:
                panels[title] = self.overlay(pixels, maps[method][0])
        editor = np.kron(as_uint8(shown_map), np.ones((self.cell(), self.cell()), np.uint8))
        true_name = self.names[picture.label] if 0 <= picture.label < len(self.names) else None
        explained_class = None if self.multitask else self.names[int(explanation.classes[0])]
        return Explained(picture, own, scale, attribute, panels, editor,
                         self.ranking(logits[0]), true_name, explained_class)

    def display_size(self):
        return self.size * max(1, -(-DISPLAY // self.size))

    def cell(self):
        """Editor pixels per map cell: the editor shows the map at a whole multiple."""
        return max(1, -(-DISPLAY // max(self.map_height, self.map_width)))

    def pixels(self, picture):
        """The input as the model sees it, enlarged without smoothing, (D, D, 3) float."""
        mean, std = self.loaded.normalization
        image = (picture.tensor.float().cpu() * torch.tensor(std).view(3, 1, 1)
                 + torch.tensor(mean).view(3, 1, 1)).clamp(0, 1).permute(1, 2, 0).numpy()
        factor = self.display_size() // self.size
        return np.kron(image, np.ones((factor, factor, 1), np.float32))

    def overlay(self, pixels, heat):
        """A map in [0, 1] (any size) blended over the enlarged input, upsampled bilinearly."""
        heat = torch.as_tensor(np.asarray(heat, np.float32))[None, None]
        heat = F.interpolate(heat, size=pixels.shape[:2], mode='bilinear', align_corners=False)
        return as_uint8(blend(pixels, heat[0, 0].clamp(0, 1).numpy()))

    def ranking(self, logits):
        """Top-5 classes (softmax), or every attribute's probability (sigmoid)."""
        if self.multitask:
            return {name: float(p) for name, p in zip(self.names, torch.sigmoid(logits.float()))}
        return {r['name']: r['probability']
                for r in top_k(torch.softmax(logits.float(), 0), self.names)}

    def headline(self, ranking, attribute=None):
        """'**cat** 87.5%': the top class, or the chosen attribute's probability."""
        name = (self.names[attribute] if attribute is not None and self.multitask
                else max(ranking, key=ranking.get))
        return f'**{name}** {100 * ranking[name]:.1f}%'

    def _attribute(self, attribute):
        if isinstance(attribute, str):
            if attribute not in self.names:
                raise AbnError(f"no attribute '{attribute}'")
            attribute = self.names.index(attribute)
        attribute = int(attribute or 0)
        if not 0 <= attribute < self.tasks:
            raise AbnError(f'the map has {self.tasks} channels, not {attribute + 1}')
        return attribute

    # ---- edit ----
    def map_from_image(self, image, scale=None):
        """A painted or uploaded map picture -> (h, w) map values (read_painted_map)."""
        return read_painted_map(image, self.map_height, self.map_width, scale)

    def predict(self, explained, edited):
        """The perception branch on the edited map (h, w) of the chosen channel; returns the
        ranking as `explain` does."""
        edited = np.asarray(edited, np.float32)
        if edited.shape != (self.map_height, self.map_width):
            raise AbnError(f'an edited map must be {self.map_width}x{self.map_height}, got '
                           f'{edited.shape[-1]}x{edited.shape[0]}')
        maps = torch.from_numpy(explained.own_map.copy())
        maps[explained.attribute] = torch.from_numpy(edited)
        x = explained.picture.tensor[None].to(self.device)
        with self.lock, torch.no_grad():
            out = self.model(x, attention=maps[None].to(self.device))
        return self.ranking(out.perception_logits[0].float().cpu())

    def edited_overlay(self, explained, edited):
        pixels = self.pixels(explained.picture)
        return self.overlay(pixels, to_gray(np.asarray(edited), explained.scale))

    # ---- save ----
    def save_path(self, explained, class_name=None):
        """Where a map of `explained` belongs (the layout of `--attention-maps`); the file
        may already hold another map: `save` then keeps both."""
        return map_path(self, explained, class_name)

    def save(self, explained, edited, class_name=None):
        """Writes the edited map as 8-bit grayscale at the map's resolution where
        `save_path` says (store_map: never over a different map); returns (path, note)."""
        gray = as_uint8(to_gray(np.asarray(edited, np.float32), explained.scale))
        return store_map(self.save_path(explained, class_name), gray, self.shown_path)

    def shown_path(self, path):
        """A saved map's path as a visitor may see it: from the output folder down
        (`edited_maps/...`), never this machine's absolute path."""
        top = os.path.dirname(os.path.abspath(self.maps_dir))
        return os.path.relpath(os.path.abspath(path), top).replace(os.sep, '/')


def map_path(editor, explained, class_name=None):
    """MapEditor.save_path: the module's layout of saved maps (see the top)."""
    picture = explained.picture
    stem = visible_stem(picture.name)
    folder = editor.maps_dir
    if editor.multitask:
        folder = os.path.join(folder, safe_name(editor.names[explained.attribute]))
    if picture.split is not None and editor.dataset != 'imagefolder':
        return os.path.join(folder, picture.split, f'{picture.index}.png')
    if editor.multitask:  # attributes are not classes: no class folder
        return os.path.join(folder, f'{stem}.png')
    if class_name is None:
        class_name = explained.true_name or max(explained.ranking, key=explained.ranking.get)
    if class_name not in editor.names:
        raise AbnError(f"'{class_name}' is not one of the model's classes")
    if picture.split is not None:  # an image folder's split, as for the built-in sets
        folder = os.path.join(folder, picture.split)
    # The class's own name, as --attention-maps and --masks look it up (made one visible
    # folder only where it would not be one).
    return os.path.join(folder, visible_stem(class_name), f'{stem}.png')


def store_map(path, gray, shown_path):
    """Saves the (h, w) uint8 map as PNG at `path`; (the path written, a note for the page).
    A map never replaces a different one: the same map again is left as it is, another map
    of the same image becomes a numbered sibling `<stem>~2.png` (`--attention-maps` averages
    an image's maps), and the note says so."""
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


SIBLING = '~'  # <stem>~2.png: the second map of one image


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
            candidate = path if number == 1 else f'{stem}{SIBLING}{number}{ext}'
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


def visible_stem(name):
    """A file stem that stays one visible file: no folder separators or control characters,
    no leading dot or space (an upload named `.png` would be a hidden file); 'image' if
    nothing is left."""
    cleaned = ''.join('-' if ch in '/\\' or ord(ch) < 32 else ch for ch in str(name))
    return cleaned.lstrip('. ')[:120] or 'image'
