"""Maps that explain a model's decision, for the same images and comparable with each other.

- `abn`: the model's own attention map M(x) (sigmoid, in [0, 1], at the feature extractor's
  resolution); it is the same for every class.
- `cam`: Class Activation Mapping of the perception branch, exact for a branch that ends in
  global average pooling + a linear layer: the predicted class's weights of `final_linear`
  applied to `perception_features`, min-max scaled to [0, 1].
- `gradcam`: Grad-CAM of the perception branch, computed by pytorch-grad-cam (the `grad-cam`
  package) on `PerceptionBranch`, which shows the library only the perception logits.
- `random`: uniform noise, one value per input pixel, the floor every method should beat
  (drawn at the input's size: an upsampled coarse noise map peaks at the border more often,
  where bilinear upsampling keeps the edge values whole).

CAM and Grad-CAM explain the class the perception branch predicts (the model's answer).
Every map comes back as (N, H, W) float arrays in [0, 1] at the input's size, upsampled
bilinearly; the measures in utils/explain/measures.py only compare values within one map, so the
scaling does not change them.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.abn import AttentionBranchNetwork
from utils.visualize import upsample_maps

TITLES = {'abn': 'ABN attention', 'cam': 'CAM', 'gradcam': 'Grad-CAM', 'random': 'random'}


class PerceptionBranch(nn.Module):
    """The model as the Grad-CAM library must see it: `forward(x)` returns only the
    perception logits.

    `maps` is an identity module on the output of `perception_features`, the maps that are
    pooled and classified: it is Grad-CAM's target layer. A hook on the last stage itself would
    miss the final BN + ReLU that DenseNet-BC and WRN apply as functions after it (no module
    outputs their perception features), so the tap is the one target that is right for every
    family. Each forward also records the attention map and the perception maps, which CAM
    and the ABN map are read from (no second pass)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.maps = nn.Identity()
        self.recorded = None

    def forward(self, x):
        model = self.model
        features = model.extract_features(x)
        attention_map = None
        if model.has_attention:
            _, attention_map = model.attention_branch(features)
            features = model.apply_attention(features, attention_map)
        maps = self.maps(model.perception_features(features))
        self.recorded = Recorded(attention_map=None if attention_map is None
                                 else attention_map.detach(), maps=maps.detach())
        return model.classify(maps)


@dataclass
class Recorded:
    attention_map: torch.Tensor  # (N, 1, h, w) or None
    maps: torch.Tensor  # (N, C, h', w'): the perception features


@dataclass
class Explanation:
    logits: torch.Tensor  # (N, K) perception logits, on the CPU
    maps: dict  # method -> (N, H, W) float32 array in [0, 1]
    feature_maps: dict  # method -> (N, 1, h, w) tensor at the map's own resolution
    classes: torch.Tensor = None  # (N,) the class CAM and Grad-CAM explain, on the CPU


def supports_cam(model):
    """CAM is exact only for a classifier that is global average pooling, then
    `final_linear`: the base class's, or a library model's whose own head was found to be
    that (`cam_exact`, models.backbones)."""
    return getattr(model, 'cam_exact', type(model).classify is AttentionBranchNetwork.classify)


def scale_to_unit(maps):
    """Per-map min-max scaling to [0, 1]; a flat map becomes all zeros."""
    flat = maps.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1, 1)
    span = (flat.max(1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-12)
    return (maps - low) / span


def class_activation_maps(perception_maps, weight, classes):
    """(N, C, h, w) perception maps, (K, C) linear weights, (N,) classes -> (N, 1, h, w):
    sum_c w[class, c] * maps[c], the class score before pooling (its mean over the map is the
    logit, less the bias)."""
    return torch.einsum('nchw,nc->nhw', perception_maps.float(),
                        weight.detach().float()[classes]).unsqueeze(1)


class Explainer:
    """Computes the maps of `methods` for batches of images with one model.

    One forward (and, for Grad-CAM, one backward) per batch yields the logits, the attention
    map and the perception maps together."""

    def __init__(self, model, methods, seed=0):
        self.model = model.eval()
        self.methods = tuple(methods)
        unknown = [m for m in self.methods if m not in TITLES]
        if unknown:
            raise ValueError(f"unknown map method '{unknown[0]}': choose from {', '.join(TITLES)}")
        if 'abn' in self.methods and not model.has_attention:
            raise ValueError('a model without attention branch has no ABN map')
        if 'cam' in self.methods and not supports_cam(model):
            raise ValueError(f'CAM needs a perception branch that ends in global average pooling '
                             f'and final_linear; {type(model).__name__} classifies otherwise')
        self.branch = PerceptionBranch(model)
        self.generator = torch.Generator().manual_seed(seed)
        self.gradcam = None
        if 'gradcam' in self.methods:
            from pytorch_grad_cam import GradCAM  # imported here: only --compare/--measure need it
            self.gradcam = GradCAM(model=self.branch, target_layers=[self.branch.maps])

    def close(self):
        if self.gradcam is not None:
            self.gradcam.activations_and_grads.release()
            self.gradcam = None

    def __call__(self, inputs, classes=None):
        """The maps of `inputs`; CAM and Grad-CAM explain `classes` ((N,) indices; -1 or
        None: the image's prediction). The ABN map is the same whatever the class."""
        size = inputs.shape[-2:]
        maps, feature_maps = {}, {}
        if classes is not None:
            classes = torch.as_tensor(classes).long().cpu()
            if bool((classes < 0).any()):  # the prediction, known after a forward
                with torch.no_grad():
                    predicted = self.branch(inputs).argmax(1).cpu()
                classes = torch.where(classes < 0, predicted, classes)
        if self.gradcam is not None:
            # targets=None: the library explains each image's top class (np.argmax, the first
            # maximum, as torch.argmax picks below), i.e. the perception branch's prediction.
            targets = None
            if classes is not None:
                from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
                targets = [ClassifierOutputTarget(int(c)) for c in classes]
            with torch.enable_grad():
                maps['gradcam'] = self.gradcam(input_tensor=inputs,
                                               targets=targets).astype(np.float32)
            logits = self.gradcam.outputs.detach()
        else:
            with torch.no_grad():
                logits = self.branch(inputs)
        recorded = self.branch.recorded
        explained = logits.argmax(1) if classes is None else \
            torch.as_tensor(classes, device=logits.device).long()
        if 'abn' in self.methods:
            feature_maps['abn'] = recorded.attention_map.float().cpu()
        if 'cam' in self.methods:
            cam = class_activation_maps(recorded.maps, self.model.final_linear.weight,
                                        explained)
            feature_maps['cam'] = scale_to_unit(cam).cpu()
        for method, low_resolution in feature_maps.items():
            maps[method] = upsample_maps(low_resolution, size)
        if 'random' in self.methods:
            maps['random'] = torch.rand((len(inputs),) + tuple(size),
                                        generator=self.generator).numpy()
        ordered = {m: maps[m] for m in self.methods}
        return Explanation(logits=logits.float().cpu(), maps=ordered, feature_maps=feature_maps,
                           classes=explained.cpu())


def renormalize(inputs, source, target):
    """Images normalised with `source` (mean, std) re-expressed with `target`'s statistics,
    for a second model trained with other ones."""
    if source == target:
        return inputs
    device, dtype = inputs.device, inputs.dtype

    def column(values):
        return torch.as_tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1)

    pixels = inputs * column(source[1]) + column(source[0])
    return (pixels - column(target[0])) / column(target[1])


def perception_probabilities(model, inputs, attention=None):
    """Softmax of the perception logits (the model's answer); `attention` edits the map."""
    with torch.no_grad():
        if attention is None:
            _, logits, _ = model(inputs)
        else:
            _, logits, _ = model(inputs, attention=attention)
        return F.softmax(logits.float(), dim=1)
