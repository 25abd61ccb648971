"""The attention editor: a local web page to look at, edit and correct attention maps.

    python explain.py CHECKPOINT --serve [--dataset shapes] [IMAGE ...] [--port 7860]

`MapEditor` holds the model and a visitor's answers and knows nothing of the page: explain a
picture (`explain`: the input, the ABN map, CAM and Grad-CAM, the top-5), run the perception
branch on an edited map (`predict`) and save the edited map where `--attention-maps DIR`
reads it (`save`, through utils.teach.map_store). Its images come from a Gallery
(utils.serve.gallery), its pictures from utils.serve.pictures; what differs for a multi-task
model is its kind (utils.serve.kinds). `build_page` (utils.serve.page) puts it on a Gradio
page; `serve` (utils.serve.server) starts it on localhost.

Editing: the map is shown as a grayscale picture (white: attend) at a whole multiple of its
own resolution; a person paints on it with the white brush (add) or the black one (remove) and
any brush size; the painted picture is averaged back over each cell of the map (so a stroke
that covers half a cell moves it half way). Multi-task maps (T > 1 channels, unbounded values)
are shown as M / (2 max|M|) + 0.5 (their authors' "both" picture) and read back the same way.

Saved maps are grayscale PNGs at the map's resolution in the layout of `--attention-maps`
(utils.teach.map_store): a data set split's image by its index, so `--attention-maps
DIR/train` reads the training split's corrections and corrections of test images stay apart
from training data; an image file by its class, chosen on the page (by default the image's
folder when it names a class, else the prediction); a multi-task model's under each
attribute's folder.
"""
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from utils.data.inputs import image_transform
from utils.errors import AbnError
from utils.explain.methods import METHODS, title
from utils.serve.gallery import Gallery, Picture  # noqa: F401  (Picture: the page's image)
from utils.serve.kinds import page_kind
from utils.serve.pictures import (enlarged, input_pixels, map_scale, overlay, read_painted_map,
                                  to_gray)
from utils.teach.map_store import map_path, store_map
from utils.visualize import as_uint8

DISPLAY = 256  # pixels the pictures on the page are drawn at, at least


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


class MapEditor:
    """The model, loaded once, its images, and the answers of the page."""

    def __init__(self, loaded, device, maps_dir, dataset=None, data_root='./data', files=(),
                 max_pixels=None):
        self.loaded, self.device, self.maps_dir = loaded, device, maps_dir
        self.model = loaded.model.to(device).eval()
        self.size = loaded.image_size
        self.lock = threading.Lock()  # Grad-CAM's hooks serve one request at a time
        with torch.no_grad():
            probe = self.model(torch.zeros(1, 3, self.size, self.size, device=device))
        if probe.attention_map is None:
            raise AbnError(f'--serve edits attention maps: {loaded.description} is a plain '
                           f'baseline without attention branch')
        self.tasks, self.map_height, self.map_width = probe.attention_map.shape[1:]
        self.kind = page_kind(self.tasks)
        count = probe.perception_logits.shape[1]
        names = (list(loaded.class_names) if loaded.class_names
                 and len(loaded.class_names) == count else self.kind.default_names(count))
        self.methods = self.kind.methods(self.model)
        self.explainer = self.kind.explainer(self.model)
        self.gallery = Gallery(self.kind, loaded, image_transform(loaded), names, dataset,
                               data_root, files, max_pixels)

    # the page's images, their splits and files: self.gallery (utils.serve.gallery)
    @property
    def names(self):
        """The model's class (attribute) names, as the gallery labels its images."""
        return self.gallery.names

    @property
    def multitask(self):
        return self.kind.per_attribute

    def share_images(self, other):
        """Serves `other`'s images (a model of the same input: a taught copy)."""
        self.gallery.share(other.gallery)

    def close(self):
        if self.explainer is not None:
            self.explainer.close()

    # ---- explain ----
    def explain(self, picture, attribute=0, target=None):
        """The page's view of `picture`; CAM and Grad-CAM explain the class named `target`
        (None: the prediction). The ABN map is the same for every class."""
        attribute = self._attribute(attribute)
        if target is not None and target not in self.names:
            raise AbnError(f"'{target}' is not one of the model's classes")
        x = picture.tensor[None].to(self.device)
        chosen = None if target is None else torch.tensor([self.names.index(target)])
        with self.lock:
            maps, logits, own, classes = self.kind.answer(self, x, chosen)
        channel = own[attribute]
        scale = map_scale(channel)
        pixels = self.pixels(picture)
        shown_map = to_gray(channel, scale)
        panels = {'input': as_uint8(pixels)}
        for method, heat in maps.items():  # the registry's order: the ABN map first
            panels[title(method)] = overlay(pixels, shown_map if METHODS[method].own else heat[0])
        editor = enlarged(as_uint8(shown_map), self.cell())
        true_name = self.names[picture.label] if 0 <= picture.label < len(self.names) else None
        explained_class = None if classes is None else self.names[int(classes[0])]
        return Explained(picture, own, scale, attribute, panels, editor,
                         self.ranking(logits[0]), true_name, explained_class)

    def panel_titles(self):
        """The pictures the page shows: the input, then each method's overlay."""
        return ['input'] + [title(method) for method in self.methods]

    def display_size(self):
        return self.size * max(1, -(-DISPLAY // self.size))

    def cell(self):
        """Editor pixels per map cell: the editor shows the map at a whole multiple."""
        return max(1, -(-DISPLAY // max(self.map_height, self.map_width)))

    def pixels(self, picture):
        """The input as the model sees it, enlarged without smoothing, (D, D, 3) float."""
        return input_pixels(picture.tensor, self.loaded.normalization,
                            self.display_size() // self.size)

    def ranking(self, logits):
        """Top-5 classes (softmax), or every attribute's probability (sigmoid)."""
        return self.kind.ranking(logits, self.names)

    def headline(self, ranking, attribute=None):
        """'**cat** 87.5%': the top class, or the chosen attribute's probability."""
        name = self.kind.headline_name(ranking, self.names, attribute)
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
        return overlay(self.pixels(explained.picture),
                       to_gray(np.asarray(edited), explained.scale))

    # ---- save ----
    def save_path(self, explained, class_name=None):
        """Where a map of `explained` belongs (utils.teach.map_store's layout); the file
        may already hold another map: `save` then keeps both."""
        picture = explained.picture
        index = picture.index if self.gallery.dataset != 'imagefolder' else None
        if self.kind.per_attribute:
            return map_path(self.maps_dir, picture.name, picture.split, index,
                            attribute=self.names[explained.attribute])
        if picture.split is None or index is None:
            if class_name is None:
                class_name = explained.true_name or max(explained.ranking,
                                                        key=explained.ranking.get)
            if class_name not in self.names:
                raise AbnError(f"'{class_name}' is not one of the model's classes")
        return map_path(self.maps_dir, picture.name, picture.split, index, class_name)

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
