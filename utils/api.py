"""A trained ABN in Python: its answers and its attention maps for any image, in three lines.

    from utils.api import load
    abn = load('checkpoints/shapes/resnet-20/model_best.pth.tar')
    result = abn.explain(['photo.png', pil_image, tensor_batch])
    result.classes, result.probabilities, result.maps

`load` takes any checkpoint of cifar.py, imagenet.py or celeba.py, a safetensors file of
export.py, or one of the authors' files with their architecture flags as keywords
(`load(path, arch='resnet', depth=110, dataset='cifar100')`). The preprocessing (resize,
centre crop, normalisation) comes from the file. docs/api.md describes every field."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from utils.data.images import CorruptImageError, load_rgb
from utils.data.inputs import image_transform
from utils.errors import AbnError
from utils.inference import RUNTIMES, EagerRuntime, make_runtime
from utils.weights.loading import load_model

if TYPE_CHECKING:
    from models import AbnOutput
    from utils.weights.loading import LoadedModel

# Slack for float pixels that went through arithmetic: beyond it they are not in [0, 1].
_PIXEL_SLACK = 1e-3


def load(path: str | os.PathLike[str], device: str | torch.device = 'cpu',
         runtime: str = 'auto', **options: Any) -> Abn:
    """The model a file holds, ready to explain images (an `Abn`). `runtime`: what runs
    `explain` (utils.inference: 'auto', 'onnxruntime', 'folded' or 'eager'), made at the
    first `explain`. `options`: for the authors' checkpoints, which record nothing, their
    flags as keywords: arch ('-a'), depth, gate, cardinality, widen_factor, growthRate,
    compressionRate, and num_classes or dataset; class_names (a text file) and image_size for
    any file. Raises AbnError with one line when the file or the options do not fit."""
    if runtime not in RUNTIMES:
        raise AbnError(f"unknown runtime '{runtime}': choose one of {', '.join(RUNTIMES)}")
    return Abn(load_model(os.fspath(path), **options), device, runtime, os.fspath(path))


@dataclass
class Result:
    """What `Abn.explain` returns for N images (in the order given).

    names: the class names (multi-task: the attributes'); numbers as text where the file
    records no names. probabilities: (N, K) tensor, softmax over the classes (multi-task: each
    attribute's own sigmoid). classes: the predicted class name of each image (multi-task: the
    list of attributes with probability >= 0.5). maps: one float32 array per image at the
    image's own size, in [0, 1]: (H, W) (multi-task: (T, H, W), one per attribute); where a
    centre crop left part of the image out, that part is 0. None for a model without an
    attention branch. logits, attention_logits: the two branches' raw outputs, (N, K)."""
    names: List[str]
    probabilities: torch.Tensor
    classes: list
    maps: Optional[List[np.ndarray]]
    logits: torch.Tensor
    attention_logits: Optional[torch.Tensor]
    sources: List[str]  # what each image was: its path, 'PIL image 2', 'tensor 3[0]'

    def __len__(self) -> int:
        return len(self.sources)

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """Each image's k most probable (name, probability) pairs, most probable first."""
        values, indices = self.probabilities.topk(min(k, self.probabilities.shape[1]), dim=1)
        return [[(self.names[i], float(v)) for v, i in zip(row_v, row_i)]
                for row_v, row_i in zip(values.tolist(), indices.tolist())]


class Abn(nn.Module):
    """A loaded ABN: `abn(batch)` is the model's forward on normalised inputs (an AbnOutput);
    `abn.explain(images)` preprocesses images as the model's evaluation did and returns a
    `Result`. `abn.model` is the nn.Module itself."""

    def __init__(self, loaded: LoadedModel, device: str | torch.device = 'cpu',
                 runtime: str = 'auto', path: str | None = None) -> None:
        super().__init__()
        self.model = loaded.model
        self.runtime_name, self._path, self._runtime = runtime, path, None
        self.loaded = loaded  # its facts: description, normalization, image size, multitask
        self._pil_transform = image_transform(loaded)
        # Tensors skip ToTensor; Resize and CenterCrop work on them as on PIL images.
        self._tensor_transform = T.Compose([t for t in self._pil_transform.transforms
                                            if not isinstance(t, T.ToTensor)])
        self.to(device).eval()

    @property
    def names(self) -> list[str]:
        return list(self.loaded.class_names or map(str, range(self.model.num_classes)))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, x: torch.Tensor, attention: torch.Tensor | None = None) -> AbnOutput:
        return self.model(x) if attention is None else self.model(x, attention)

    @property
    def runtime(self) -> EagerRuntime:
        """What answers `explain` (utils.inference), made once, for the model as placed now."""
        if self._runtime is None or self._runtime.device != self.device:
            self._runtime = make_runtime(self.loaded, self.runtime_name, self._path)
            self._runtime.device = self.device
        return self._runtime

    # -- preprocessing -----------------------------------------------------------------
    def preprocess(self, images: str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor
                   | Iterable[str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor]
                   ) -> tuple[torch.Tensor, list[tuple[int, int]], list[str]]:
        """(normalised batch (N, 3, S, S), each image's (height, width), sources). `images`:
        one or a list of paths, PIL images, numpy arrays (H, W, 3) and tensors ((3, H, W) or
        a batch (N, 3, H, W); float in [0, 1] or uint8 in 0-255, before normalisation)."""
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)) \
                or not hasattr(images, '__iter__'):
            images = [images]
        prepared, sizes, sources = [], [], []
        for position, item in enumerate(images):
            for tensor, size, source in self._prepare(item, position):
                prepared.append(tensor)
                sizes.append(size)
                sources.append(source)
        if not prepared:
            raise AbnError('nothing to explain: give image paths, PIL images, arrays or tensors')
        return torch.stack(prepared), sizes, sources

    def _prepare(self, item, position):
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            if not os.path.isfile(path):
                raise AbnError(f'no image at {path}')
            try:
                item = load_rgb(path)
            except CorruptImageError as error:
                raise AbnError(str(error)) from None
            return [(self._pil_transform(item), (item.height, item.width), path)]
        if isinstance(item, Image.Image):
            return [(self._pil_transform(item.convert('RGB')), (item.height, item.width),
                     f'PIL image {position}')]
        if isinstance(item, np.ndarray):
            if not (item.ndim == 2 or item.ndim == 3 and item.shape[2] in (3, 4)):
                raise AbnError(f'array {position}: give (H, W, 3) pixels (or (H, W) gray), got '
                               f'shape {tuple(item.shape)}')
            if item.dtype == np.uint8:
                picture = Image.fromarray(item).convert('RGB')
                return [(self._pil_transform(picture), (picture.height, picture.width),
                         f'array {position}')]
            pixels = np.array(item, dtype=np.float32)
            pixels = pixels[..., None] if pixels.ndim == 2 else pixels[..., :3]
            item = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
        if isinstance(item, torch.Tensor):
            return self._prepare_tensor(item, position)
        raise AbnError(f'cannot explain a {type(item).__name__} (item {position}): give image '
                       f'paths, PIL images, numpy arrays or tensors')

    def _prepare_tensor(self, tensor, position):
        batch = tensor.unsqueeze(0) if tensor.dim() == 3 else tensor
        if batch.dim() != 4 or batch.shape[1] not in (1, 3):
            raise AbnError(f'tensor {position}: give (3, H, W) or (N, 3, H, W) RGB, got shape '
                           f'{tuple(tensor.shape)}')
        batch = batch.detach().cpu()
        if batch.dtype == torch.uint8:
            batch = batch.float() / 255
        else:
            batch = batch.float()
            low, high = batch.min().item(), batch.max().item()
            if low < -_PIXEL_SLACK or high > 1 + _PIXEL_SLACK:
                raise AbnError(f'tensor {position} spans [{low:.3g}, {high:.3g}]: give pixels '
                               f'in [0, 1] (float) or 0-255 (uint8), before normalisation; the '
                               f'normalisation comes from the checkpoint')
        batch = batch.expand(-1, 3, -1, -1)
        height, width = batch.shape[-2:]
        many = tensor.dim() == 4
        return [(self._tensor_transform(image), (height, width),
                 f'tensor {position}[{i}]' if many else f'tensor {position}')
                for i, image in enumerate(batch)]

    # -- explaining --------------------------------------------------------------------
    @torch.inference_mode()
    def explain(self, images: str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor
                | Iterable[str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor],
                batch_size: int = 64) -> Result:
        """The model's answer and attention map for each image (a `Result`)."""
        inputs, sizes, sources = self.preprocess(images)
        run = self.runtime
        outputs = [run(inputs[start:start + batch_size].to(self.device))
                   for start in range(0, len(inputs), batch_size)]
        logits = torch.cat([o.perception_logits for o in outputs]).float().cpu()
        has_attention = outputs[0].attention_map is not None
        attention_logits = (torch.cat([o.attention_logits for o in outputs]).float().cpu()
                            if has_attention else None)
        maps = None
        kind = self.loaded.kind
        if has_attention:
            raw = torch.cat([o.attention_map for o in outputs]).float().cpu()
            # Multi-task maps are unbounded: the authors' picture puts them in [0, 1].
            unit = kind.measured_maps(raw).clamp(0, 1)
            maps = [self._to_image(m, size) for m, size in zip(unit, sizes)]
        probabilities = kind.probabilities(logits)
        classes = kind.decided_names(probabilities, self.names)
        return Result(self.names, probabilities, classes, maps, logits, attention_logits, sources)

    def _to_image(self, unit_map, size):
        """(C, h, w) map of the model's input -> (C, H, W) (or (H, W) for one channel) float32
        numpy at the image's own size: the inverse of the evaluation's resize and crop."""
        height, width = size
        if not self.loaded.imagenet:  # resized to a square: stretch back
            placed = F.interpolate(unit_map[None], size=(height, width), mode='bilinear',
                                   align_corners=False)[0]
        else:  # shorter side to resize_size, then a centred square crop
            crop, short = self.loaded.image_size, self.loaded.resize_size
            scaled_h, scaled_w = ((short, int(short * width / height)) if height <= width
                                  else (int(short * height / width), short))
            square = F.interpolate(unit_map[None], size=(crop, crop), mode='bilinear',
                                   align_corners=False)[0]
            canvas = unit_map.new_zeros((unit_map.shape[0], scaled_h, scaled_w))
            top, left = int(round((scaled_h - crop) / 2.0)), int(round((scaled_w - crop) / 2.0))
            rows = slice(max(top, 0), min(top + crop, scaled_h))
            cols = slice(max(left, 0), min(left + crop, scaled_w))
            canvas[:, rows, cols] = square[:, rows.start - top:rows.stop - top,
                                           cols.start - left:cols.stop - left]
            placed = F.interpolate(canvas[None], size=(height, width), mode='bilinear',
                                   align_corners=False)[0]
        placed = placed.clamp(0, 1).numpy().astype(np.float32)
        return placed[0] if placed.shape[0] == 1 and not self.loaded.kind.per_attribute else placed
