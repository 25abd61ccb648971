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
- image files, image folders and uploads: `DIR/<class>/<image stem>.png`, the class chosen on
  the page (by default the image's folder when it names a class, else the prediction);
- multi-task models: `DIR/<attribute>/<split>/<index>.png` and `DIR/<attribute>/<image
  stem>.png` (no class folder: attributes are not classes).
"""
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.cam import Explainer, supports_cam
from utils.cli import AbnError
from utils.data import (SMALL_IMAGE_DATASETS, CorruptImageError, base_dataset,
                        build_small_image_data, load_rgb)
from utils.distributed import setup_runtime
from utils.visualize import as_uint8, blend, safe_name

from utils.inputs import IMAGE_EXTENSIONS, find_images, image_transform
# explain.py's model loading (the model-spec function with its refusals) and top-5 ranking.
from explain import load_model, top_k  # noqa: I001

INSTALL_HINT = 'pip install -r requirements-serve.txt'
DISPLAY = 256  # pixels the pictures on the page are drawn at, at least
SPLITS = ('test', 'train')


def require_gradio():
    """Gradio, without telemetry or update checks; one line saying what to install when it
    is missing (training users need not have it)."""
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    try:
        import gradio
    except ImportError:
        raise AbnError(f'--serve needs Gradio, which is not installed: {INSTALL_HINT}') from None
    return gradio


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


class MapEditor:
    """The model, loaded once, and the operations of the page."""

    def __init__(self, loaded, device, maps_dir, dataset=None, data_root='./data', files=()):
        self.loaded, self.device, self.maps_dir = loaded, device, maps_dir
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
        if name not in SMALL_IMAGE_DATASETS:
            raise AbnError(f"unknown data set '{name}'")
        if self.loaded.imagenet:
            raise AbnError('--dataset holds small-image sets; give an ImageNet model image '
                           'files or folders, or upload them on the page')
        self._data_args = (name, root)
        self.splits['test'] = None  # built on first use: the page starts at once
        self.splits['train'] = None
        self.split('test')  # the test split now: a missing data set is a start-up error

    def split(self, name):
        """The split's images through the evaluation transform (no augmentation)."""
        if name not in self.splits:
            raise AbnError(f"no split '{name}': this page serves "
                           f"{', '.join(self.splits) or 'uploaded images only'}")
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
        base = base_dataset(data)
        samples = getattr(base, 'samples', None)  # image folders: the file's own name
        if samples is not None:
            name = os.path.splitext(os.path.basename(samples[index][0]))[0]
        return Picture(tensor, name, int(label), split, index)

    def picture_from_file(self, path, label=None):
        """Any image file, as explain.py reads files: resized to the model's input."""
        if not path or not os.path.isfile(path):
            raise AbnError('no file was given')
        try:
            image = load_rgb(path)
        except CorruptImageError:
            raise AbnError(f'{os.path.basename(path)} is not an image this page can read '
                           f'({", ".join(IMAGE_EXTENSIONS)})') from None
        except Image.DecompressionBombError:
            raise AbnError(f'{os.path.basename(path)} is too large an image') from None
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
    def explain(self, picture, attribute=0):
        attribute = self._attribute(attribute)
        x = picture.tensor[None].to(self.device)
        with self.lock:
            if self.multitask:
                with torch.no_grad():
                    out = self.model(x)
                maps, logits = {}, out.perception_logits.float().cpu()
                own = out.attention_map[0].float().cpu()
            else:
                explanation = self.explainer(x)
                maps, logits = explanation.maps, explanation.logits
                own = explanation.feature_maps['abn'][0]
        own = own.numpy()
        channel = own[attribute]
        scale = None
        if channel.min() < 0 or channel.max() > 1:
            scale = float(np.abs(channel).max()) or 1.0
        pixels = self.pixels(picture)
        panels = {'input': as_uint8(pixels)}
        shown_map = self.to_gray(channel, scale)
        panels['ABN attention'] = self.overlay(pixels, shown_map)
        for method, title in (('cam', 'CAM'), ('gradcam', 'Grad-CAM')):
            if method in maps:
                panels[title] = self.overlay(pixels, maps[method][0])
        editor = np.kron(as_uint8(shown_map), np.ones((self.cell(), self.cell()), np.uint8))
        true_name = self.names[picture.label] if 0 <= picture.label < len(self.names) else None
        return Explained(picture, own, scale, attribute, panels, editor,
                         self.ranking(logits[0]), true_name)

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

    def to_gray(self, channel, scale):
        """A map channel as gray levels in [0, 1] (white: attend)."""
        if scale is None:
            return np.clip(channel, 0, 1)
        return np.clip(channel / (2 * scale) + 0.5, 0, 1)

    def from_gray(self, gray, scale):
        return gray if scale is None else (gray - 0.5) * 2 * scale

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
        """A painted or uploaded map picture (any size with the map's aspect ratio, gray or
        colour) -> (h, w) map values, each cell the mean over its pixels."""
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
        if abs(w * self.map_height - h * self.map_width) > max(w, h) * 0.02 * max(
                self.map_height, self.map_width):
            raise AbnError(f'a {w}x{h} map does not fit this model\'s {self.map_width}x'
                           f'{self.map_height} map: give one of the same shape (any size)')
        small = gray.resize((self.map_width, self.map_height), Image.BOX)
        values = np.asarray(small, np.float32) / 255
        return self.from_gray(values, scale).astype(np.float32)

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
        return self.overlay(pixels, self.to_gray(np.asarray(edited), explained.scale))

    # ---- save ----
    def save_path(self, explained, class_name=None):
        picture = explained.picture
        folder = self.maps_dir
        if self.multitask:
            folder = os.path.join(folder, safe_name(self.names[explained.attribute]))
        if picture.split is not None and self.dataset != 'imagefolder':
            return os.path.join(folder, picture.split, f'{picture.index}.png')
        if self.multitask:  # attributes are not classes: no class folder
            return os.path.join(folder, f'{picture.name}.png')
        if class_name is None:
            class_name = explained.true_name or max(explained.ranking,
                                                    key=explained.ranking.get)
        if class_name not in self.names:
            raise AbnError(f"'{class_name}' is not one of the model's classes")
        return os.path.join(folder, class_name, f'{picture.name}.png')

    def save(self, explained, edited, class_name=None):
        """Writes the edited map as 8-bit grayscale at the map's resolution; returns the
        path."""
        path = self.save_path(explained, class_name)
        gray = as_uint8(self.to_gray(np.asarray(edited, np.float32), explained.scale))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = path + '.partial'
        try:
            Image.fromarray(gray).save(partial, format='PNG')
            os.replace(partial, path)
        except OSError as error:
            raise AbnError(f'cannot write {path}: {error.strerror}') from None
        return path


# -- the page ---------------------------------------------------------------------------------

def build_page(editor, gr):
    """The Gradio page over `editor`. Every handler answers bad input with a message on the
    page (never a traceback in the terminal)."""
    skip = gr.skip
    ranked = editor.tasks if editor.multitask else 5
    ranking_label = 'P(attribute)' if editor.multitask else 'top-5'

    def guarded(handler, outputs):
        """Runs `handler`; on an error, the message box says why and the rest stays."""
        def run(*values):
            try:
                return handler(*values)
            except AbnError as error:
                text = str(error)
            except Exception as error:  # noqa: BLE001 - the page must stay up and say why
                text = f'{type(error).__name__}: {error}'
                print(f'serve: error: {text}', flush=True)
            return [f'**Error:** {text}'] + [skip()] * (len(outputs) - 1)
        return run

    with gr.Blocks(title='ABN attention editor') as page:
        state = gr.State(None)
        gr.Markdown(f'### Attention editor: {editor.loaded.description}\n'
                    'Pick an image, look at where the network looks, paint on the map '
                    '(white brush: attend, black brush: ignore, any size) and see how the '
                    'perception branch answers; save the edited map as training data.')
        message = gr.Markdown('Pick an image to begin.', elem_id='message')
        with gr.Row():
            if editor.splits:
                with gr.Column(min_width=200):
                    split = gr.Radio(list(SPLITS), value='test', label=f'{editor.dataset} split',
                                     elem_id='split')
                    index = gr.Number(value=0, precision=0, label='image index', elem_id='index')
                    load = gr.Button('Show this image', elem_id='load', variant='primary')
            if editor.files:
                with gr.Column(min_width=200):
                    chosen_file = gr.Dropdown(editor.files, value=editor.files[0],
                                              label='image file', elem_id='file')
                    load_file = gr.Button('Show this file', elem_id='load-file')
            with gr.Column(min_width=200):
                upload = gr.File(label='or upload an image', type='filepath', elem_id='upload')
            attribute = gr.Dropdown(editor.names, value=editor.names[0], label='attribute',
                                    visible=editor.multitask, elem_id='attribute')
        with gr.Row():
            titles = ['input', 'ABN attention'] + [t for m, t in (('cam', 'CAM'),
                                                                   ('gradcam', 'Grad-CAM'))
                                                     if m in editor.explainer.methods]
            images = {t: gr.Image(label=t, type='numpy', interactive=False, format='png',
                                  elem_id=f'panel-{safe_name(t).lower()}', min_width=120)
                      for t in titles}
            own_ranking = gr.Label(num_top_classes=ranked, label=f'{ranking_label}, own map',
                                   elem_id='own-ranking')
        size = editor.cell() * max(editor.map_height, editor.map_width)
        with gr.Row():
            painter = gr.ImageEditor(
                label=f'the map ({editor.map_width}x{editor.map_height}): paint on it',
                type='pil', image_mode='RGB', sources=(), transforms=(), layers=False,
                brush=gr.Brush(colors=['#ffffff', '#000000'], default_color='#ffffff',
                               color_mode='fixed', default_size=max(2, size // 10)),
                eraser=gr.Eraser(default_size=max(2, size // 10)),
                canvas_size=(editor.cell() * editor.map_width,
                             editor.cell() * editor.map_height),
                fixed_canvas=True, format='png', elem_id='painter')
            edited_image = gr.Image(label='edited map over the input', type='numpy',
                                    interactive=False, format='png', elem_id='panel-edited')
            edited_ranking = gr.Label(num_top_classes=ranked,
                                      label=f'{ranking_label}, edited map',
                                      elem_id='edited-ranking')
        with gr.Row():
            apply = gr.Button('Run on the edited map', elem_id='apply', variant='primary')
            map_file = gr.File(label='or load a map (grayscale, white: attend)',
                               type='filepath', elem_id='map-upload')
            class_name = gr.Dropdown(editor.names, value=None, label='class (folder of the '
                                     'saved map)', elem_id='class', visible=False)
            save = gr.Button('Save the edited map', elem_id='save')
        saved = gr.Markdown('', elem_id='saved')

        shown = [message, state] + list(images.values()) + [own_ranking, painter, edited_image,
                                                            edited_ranking, class_name]

        def show(picture, chosen_attribute):
            explained = editor.explain(picture, chosen_attribute)
            note = f' ({picture.note})' if picture.note else ''
            true = f', true class **{explained.true_name}**' if explained.true_name else ''
            text = f'Showing **{picture.name}**{true}{note}.'
            if explained.scale is not None:
                text += (f' Map values in [-{explained.scale:.3g}, {explained.scale:.3g}]: '
                         'gray is 0.')
            class_update = gr.update(visible=not editor.multitask and (
                                         picture.split is None
                                         or editor.dataset == 'imagefolder'),
                                     value=explained.true_name
                                     or max(explained.ranking, key=explained.ranking.get))
            return ([text, explained] + [explained.panels[t] for t in images]
                    + [explained.ranking, Image.fromarray(explained.editor_image).convert('RGB'),
                       explained.panels['ABN attention'], explained.ranking, class_update])

        def show_split(chosen_split, chosen_index, chosen_attribute):
            return show(editor.picture_from_split(chosen_split, chosen_index), chosen_attribute)

        def show_file(path, chosen_attribute):
            return show(editor.picture_from_file(path), chosen_attribute)

        def reshow(explained, chosen_attribute):
            if explained is None:
                raise AbnError('pick an image first')
            return show(explained.picture, chosen_attribute)

        def painted_map(explained, value):
            if explained is None:
                raise AbnError('pick an image first')
            picture = None
            if isinstance(value, dict):
                picture = value.get('composite') or value.get('background')
            elif value is not None:
                picture = value
            if picture is None:
                raise AbnError('the map editor is empty: pick an image first')
            return editor.map_from_image(picture, explained.scale)

        def run_edit(explained, value):
            edited = painted_map(explained, value)
            ranking = editor.predict(explained, edited)
            own = editor.headline(explained.ranking, explained.attribute)
            new = editor.headline(ranking, explained.attribute)
            return [f'Perception branch: own map {own}; edited map {new}.',
                    editor.edited_overlay(explained, edited), ranking]

        def load_map(explained, path):
            if explained is None:
                raise AbnError('pick an image first')
            if not path:
                return [skip()] * 4
            try:
                image = load_rgb(path)
            except CorruptImageError:
                raise AbnError(f'{os.path.basename(path)} is not an image') from None
            edited = editor.map_from_image(image, explained.scale)
            gray = as_uint8(editor.to_gray(edited, explained.scale))
            enlarged = np.kron(gray, np.ones((editor.cell(), editor.cell()), np.uint8))
            return ['Map loaded: run the perception branch on it, or paint on it.',
                    Image.fromarray(enlarged).convert('RGB'),
                    editor.edited_overlay(explained, edited), skip()]

        def save_edit(explained, value, chosen_class):
            edited = painted_map(explained, value)
            path = editor.save(explained, edited, chosen_class or None)
            return [f'Saved the edited map to `{path}`.', f'Saved: `{path}`']

        attribute_inputs = [attribute]
        if editor.splits:
            load.click(guarded(show_split, shown), [split, index] + attribute_inputs, shown)
        if editor.files:
            load_file.click(guarded(show_file, shown), [chosen_file] + attribute_inputs, shown)
        upload.upload(guarded(show_file, shown), [upload] + attribute_inputs, shown)
        attribute.change(guarded(reshow, shown), [state] + attribute_inputs, shown)
        edit_outputs = [message, edited_image, edited_ranking]
        apply.click(guarded(run_edit, edit_outputs), [state, painter], edit_outputs)
        # Each stroke answers too; strokes faster than the model queue up as the latest one.
        painter.input(guarded(run_edit, edit_outputs), [state, painter], edit_outputs,
                      trigger_mode='always_last', show_progress='hidden')
        map_outputs = [message, painter, edited_image, edited_ranking]
        map_file.upload(guarded(load_map, map_outputs), [state, map_file], map_outputs)
        save_outputs = [message, saved]
        save.click(guarded(save_edit, save_outputs), [state, painter, class_name], save_outputs)
    return page


def serve(args, loaded, device, host='127.0.0.1', port=7860):
    """Starts the page and blocks until interrupted."""
    gr = require_gradio()
    if device.type == 'cpu' and loaded.image_size <= 64:
        # One small image is too little work to share: on a busy machine a second thread
        # only waits (ResNet-110, CIFAR: 0.16 s with one thread, seconds with two).
        torch.set_num_threads(1)
    editor = MapEditor(loaded, device, os.path.join(args.output, 'edited_maps'),
                       dataset=args.dataset, data_root=args.data, files=args.inputs)
    page = build_page(editor, gr)
    page.queue(default_concurrency_limit=1)
    try:
        try:
            page.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                        quiet=True, show_error=False, ssr_mode=False, footer_links=[],
                        prevent_thread_lock=True)
        except OSError as error:
            raise AbnError(f'cannot serve on {host}:{port} (is the port taken? --port P '
                           f'picks another): {error}') from None
        print(f'==> {loaded.description} on {device.type}: the attention editor at '
              f'http://{host}:{port} (Ctrl+C stops it); edited maps go to '
              f'{editor.maps_dir}', flush=True)
        try:
            while page.is_running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            exit_at_the_latest_after(CLOSE_SECONDS, 130)
            raise
        finally:
            page.close()
    finally:
        editor.close()
    return 0


CLOSE_SECONDS = 15


def exit_at_the_latest_after(seconds, status):
    """Ctrl+C must end the command: the page's server normally closes at once, but a request
    still running on a loaded machine has kept it open for minutes (the browser test under
    the full suite). After `seconds` the process exits with `status` whatever is still open."""
    def force():
        print(f'note: the page did not close within {seconds} s; exiting', flush=True)
        os._exit(status)
    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def serve_command(args):
    """`explain.py CHECKPOINT --serve`: the model loaded once, on the GPU when there is one,
    then the page until Ctrl+C."""
    require_gradio()  # before loading anything: one line saying what to install
    runtime = setup_runtime(args.gpu_id)
    return serve(args, load_model(args.checkpoint, args), runtime.device, args.host, args.port)
