"""The explanation methods, one registered object each (`METHODS`, in the order they are
drawn; `register` adds one): its name, its title, which models it applies to, when explain.py
uses it, and how it draws its maps, for a single-label model (`maps`, `feature_maps`) and for
a multi-task one (`task_maps`). explain.py (its pictures, --compare, --measure, single-label
and multi-task) and the attention editor ask the registry, never a method's name; an
`Explainer` runs the chosen ones on a batch, one forward (and, for Grad-CAM, one backward)
for all of them.

- `abn`: the model's own attention map M(x) (sigmoid, in [0, 1], at the feature extractor's
  resolution); it is the same for every class.
- `cam`: Class Activation Mapping of the perception branch, exact for a branch that ends in
  global average pooling + a linear layer: the explained class's weights of `final_linear`
  applied to `perception_features`, min-max scaled to [0, 1].
- `gradcam`: Grad-CAM of the perception branch, computed by pytorch-grad-cam (the `grad-cam`
  package) on `PerceptionBranch`, which shows the library only the perception logits.
- `random`: uniform noise, one value per input pixel, the floor every method should beat
  (drawn at the input's size: an upsampled coarse noise map peaks at the border more often,
  where bilinear upsampling keeps the edge values whole).

CAM and Grad-CAM explain the class the perception branch predicts (the model's answer), or
the classes asked for. Every map comes back as (N, H, W) float arrays in [0, 1] at the
input's size, upsampled bilinearly; the measures in utils/explain/measures.py only compare
values within one map, so the scaling does not change them.
"""
from dataclasses import dataclass, field

import numpy as np
import torch

from utils.data.attributes import map_picture
from utils.explain.cam import (PerceptionBranch, class_activation_maps, scale_to_unit,
                               supports_cam, task_cams)
from utils.visualize import upsample_maps


@dataclass
class Batch:
    """What one forward of the model gives every method."""
    inputs: torch.Tensor
    logits: torch.Tensor  # (N, K) perception logits
    recorded: object  # PerceptionBranch's record: the attention map and the perception maps
    classes: torch.Tensor  # (N,) the classes CAM and Grad-CAM explain


@dataclass
class Explanation:
    logits: torch.Tensor  # (N, K) perception logits, on the CPU
    maps: dict  # method -> (N, H, W) float32 array in [0, 1]
    feature_maps: dict  # method -> (N, 1, h, w) tensor at the map's own resolution
    classes: torch.Tensor = None  # (N,) the class CAM and Grad-CAM explain, on the CPU


@dataclass
class TaskBatch:
    """What one forward of a multi-task model gives every method: the maps of `tasks`."""
    model: torch.nn.Module
    inputs: torch.Tensor
    tasks: list
    attention_maps: torch.Tensor  # (N, T, h, w): every task's ABN map
    generator: torch.Generator  # the seeded draws of the random maps
    _cams: tuple = field(default=None, repr=False)

    def cams(self):
        """(CAM, Grad-CAM) of the chosen tasks, (N, K, h', w') each: computed once."""
        if self._cams is None:
            self._cams = task_cams(self.model, self.inputs, self.tasks)
        return self._cams


class Method:
    """One way of drawing a map; a subclass draws at the map's own resolution
    (`feature_maps`), or at the input's (`maps`), or drives the forward itself (`run`); for
    a multi-task model, each chosen task's map (`task_maps`; None: single-label only).
    `short`: its name in tables where the columns are attributes (multi-task measures)."""
    name = title = short = ''
    drives_forward = False  # Grad-CAM runs the model (and its backward) itself
    own = False  # the model's own map: drawn on its own scale, saved as a file, painted on
    drawn = True  # in pictures, in where the maps look and on the page (a floor: measured only)
    per_class = False  # explains one class: titled with it where --target-class chose it

    def __init__(self, branch, seed=0):
        self.branch = branch

    @classmethod
    def refusal(cls, model):
        """Why `model` cannot be explained this way, or None."""
        return None

    @classmethod
    def wanted(cls, model, baseline, compare, measure):
        """Whether explain.py uses it for `model` (the baseline's, where `baseline`): by
        default beside the ABN map (--compare, --measure), or alone for a plain model."""
        return compare or measure or not model.has_attention

    @classmethod
    def task_maps(cls, batch):
        """(N, K, h, w) maps of `batch.tasks` of a multi-task model, or None."""
        return None

    def feature_maps(self, batch):
        """(N, 1, h, w) at the map's own resolution, or None (the method draws `maps`)."""
        return None

    def maps(self, batch, size):
        return upsample_maps(self.feature_maps(batch), size)

    def close(self):
        pass


class AbnMap(Method):
    name, title, short = 'abn', 'ABN attention', 'ABN'
    own = True

    @classmethod
    def refusal(cls, model):
        return None if model.has_attention else 'a model without attention branch has no ABN map'

    @classmethod
    def wanted(cls, model, baseline, compare, measure):
        return model.has_attention and not baseline

    def feature_maps(self, batch):
        return batch.recorded.attention_map.float().cpu()

    @classmethod
    def task_maps(cls, batch):
        """The authors' `pos` picture of each task's map (it is unbounded)."""
        return map_picture(batch.attention_maps[:, batch.tasks], 'pos', dims=(-2, -1))


class Cam(Method):
    name, title, short = 'cam', 'CAM', 'CAM'
    per_class = True

    @classmethod
    def refusal(cls, model):
        if supports_cam(model):
            return None
        return (f'CAM needs a perception branch that ends in global average pooling and '
                f'final_linear; {type(model).__name__} classifies otherwise')

    def feature_maps(self, batch):
        cam = class_activation_maps(batch.recorded.maps, self.branch.model.final_linear.weight,
                                    batch.classes)
        return scale_to_unit(cam).cpu()

    @classmethod
    def task_maps(cls, batch):
        return batch.cams()[0]


class GradCam(Method):
    name, title, short = 'gradcam', 'Grad-CAM', 'Grad-CAM'
    drives_forward = True
    per_class = True

    def __init__(self, branch, seed=0):
        super().__init__(branch)
        from pytorch_grad_cam import GradCAM  # imported here: only --compare/--measure need it
        self.gradcam = GradCAM(model=branch, target_layers=[branch.maps])

    def run(self, inputs, classes):
        """(the maps, the logits) of one forward and backward: the library explains each
        image's top class (np.argmax, the first maximum, as torch.argmax picks elsewhere),
        i.e. the prediction, unless `classes` chooses."""
        targets = None
        if classes is not None:
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
            targets = [ClassifierOutputTarget(int(c)) for c in classes]
        with torch.enable_grad():
            maps = self.gradcam(input_tensor=inputs, targets=targets).astype(np.float32)
        return maps, self.gradcam.outputs.detach()

    def close(self):
        self.gradcam.activations_and_grads.release()

    @classmethod
    def task_maps(cls, batch):
        return batch.cams()[1]


class RandomMap(Method):
    name, title, short = 'random', 'random', 'random'
    drawn = False

    def __init__(self, branch, seed=0):
        super().__init__(branch)
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def wanted(cls, model, baseline, compare, measure):
        return measure and not baseline  # the floor of the measures

    def maps(self, batch, size):
        return torch.rand((len(batch.inputs),) + tuple(size), generator=self.generator).numpy()

    @classmethod
    def task_maps(cls, batch):
        """At the perception maps' resolution, as CAM's."""
        return torch.rand(len(batch.inputs), len(batch.tasks), *batch.cams()[0].shape[-2:],
                          generator=batch.generator)


METHODS = {}


def register(method):
    """Adds a Method subclass to the registry (drawn after those before it); returns it."""
    METHODS[method.name] = method
    return method


for _method in (AbnMap, Cam, GradCam, RandomMap):
    register(_method)


def title(name):
    return METHODS[name].title


def available_methods(model, names=None):
    """The names of the methods (of `names`, default all) that `model` allows."""
    return [name for name in (names or METHODS) if METHODS[name].refusal(model) is None]


def own_method():
    """The name of the method that is the model's own map (the ABN's)."""
    return next(name for name, method in METHODS.items() if method.own)


def drawn_methods(model):
    """The methods `model` allows that are drawn (every one but the measures' floor)."""
    return [name for name in available_methods(model) if METHODS[name].drawn]


def multitask_methods(model, compare, measure):
    """The methods explain.py measures for the multi-task `model`: those that draw a map per
    task, in the registry's order."""
    return [name for name, method in METHODS.items()
            if method.task_maps.__func__ is not Method.task_maps.__func__ and
            method.wanted(model, False, compare, measure)]


class Explainer:
    """Computes the maps of `methods` (names in METHODS) for batches of images with one
    model: one forward (and, for Grad-CAM, one backward) per batch yields the logits, the
    attention map and the perception maps together."""

    def __init__(self, model, methods, seed=0):
        self.model = model.eval()
        self.methods = tuple(methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown map method '{unknown[0]}': choose from "
                             f"{', '.join(METHODS)}")
        for name in self.methods:
            reason = METHODS[name].refusal(model)
            if reason:
                raise ValueError(reason)
        self.branch = PerceptionBranch(model)
        self.active = [METHODS[name](self.branch, seed) for name in self.methods]

    def title(self, name):
        return title(name)

    def close(self):
        for method in self.active:
            method.close()
        self.active = [m for m in self.active if not m.drives_forward]

    def __call__(self, inputs, classes=None):
        """The maps of `inputs`; CAM and Grad-CAM explain `classes` ((N,) indices; -1 or
        None: the image's prediction). The ABN map is the same whatever the class."""
        size = inputs.shape[-2:]
        if classes is not None:
            classes = torch.as_tensor(classes).long().cpu()
            if bool((classes < 0).any()):  # the prediction, known after a forward
                with torch.no_grad():
                    predicted = self.branch(inputs).argmax(1).cpu()
                classes = torch.where(classes < 0, predicted, classes)
        maps, feature_maps = {}, {}
        driver = next((m for m in self.active if m.drives_forward), None)
        if driver is not None:
            maps[driver.name], logits = driver.run(inputs, classes)
        else:
            with torch.no_grad():
                logits = self.branch(inputs)
        explained = logits.argmax(1) if classes is None else \
            torch.as_tensor(classes, device=logits.device).long()
        batch = Batch(inputs, logits, self.branch.recorded, explained)
        for method in self.active:
            if method is driver:
                continue
            low_resolution = method.feature_maps(batch)
            if low_resolution is not None:
                feature_maps[method.name] = low_resolution
                maps[method.name] = upsample_maps(low_resolution, size)
            else:
                maps[method.name] = method.maps(batch, size)
        ordered = {m: maps[m] for m in self.methods}
        return Explanation(logits=logits.float().cpu(), maps=ordered, feature_maps=feature_maps,
                           classes=explained.cpu())
