"""Where a timm or torchvision CNN is split, read from the library's own description of it.

A backbone's *trunk* is the forward path to the maps its head pools: the modules its
features' forward calls, in order, each with the total stride of its output. Its *stages*
are runs of those modules, as each library says (its `trunk`, models.backbones.libraries):
- timm: every model that supports `features_only` lists its stages in `feature_info` (the
  module that ends each one, its channels and reduction); modules after the last one and
  before the head (EfficientNet's conv_head, ConvNeXt's norm_pre) join the last stage;
- torchvision: the children of the model before its global pooling (their nn.Sequential
  containers opened one level: `features`, `trunk_output`, `layer4`), cut where the stride
  changes.

Which modules a forward calls, and their strides, are recorded with forward hooks on a
probe image on the meta device (no memory, no arithmetic), and the split is checked: the
modules in order must give the library's own features.

The attention branch is a copy of the stages after the split with their downsampling
removed, so that the map keeps the feature extractor's resolution. One table of rules does
it for every family (DOWNSAMPLING_RULES); a copy whose output still shrinks is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Part:
    path: str  # the module's dotted name in the backbone
    stride: int  # the total stride of its output
    channels: int


@dataclass
class Trunk:
    parts: list[Part]  # Part, in the order the forward calls them
    stage_ends: list[int]  # index of each stage's last part

    def stage_start(self, stage: int) -> int:
        """The index of the first part of stage `stage` (0-based, negative from the end)."""
        return 0 if stage == 0 else self.stage_ends[stage - 1] + 1


def called_children(model: nn.Module, run: Callable[[torch.Tensor], Any],
                    probe: torch.Tensor) -> list[tuple[str, Any]]:
    """[(name, output)] of `model`'s direct children, in the order `run(probe)` calls them
    (a child called twice is kept once, at its first call)."""
    calls, handles = [], []
    for name, child in model.named_children():
        handles.append(child.register_forward_hook(
            lambda module, inputs, output, name=name: calls.append((name, output))))
    try:
        with torch.no_grad():
            run(probe)
    finally:
        for handle in handles:
            handle.remove()
    seen, ordered = set(), []
    for name, output in calls:
        if name not in seen:
            seen.add(name)
            ordered.append((name, output))
    return ordered


def opened(model: nn.Module, names: Iterable[str],
           should_open: Callable[[str], bool]) -> list[str]:
    """`names` of children, each nn.Sequential that `should_open(name)` opened into its own
    children ('features' -> 'features.0', 'features.1', ...)."""
    out = []
    for name in names:
        child = model.get_submodule(name)
        if isinstance(child, nn.Sequential) and should_open(name):
            out += [f'{name}.{inner}' for inner, _ in child.named_children()]
        else:
            out.append(name)
    return out


def trace_parts(model: nn.Module, paths: Iterable[str],
                probe: torch.Tensor) -> tuple[list[Part], torch.Tensor]:
    """Runs the modules at `paths` one after another on `probe`, returning
    the Parts and the output; raises ValueError where an output is not an NCHW map."""
    size = probe.shape[-1]
    x, parts = probe, []
    with torch.no_grad():
        for path in paths:
            x = model.get_submodule(path)(x)
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"its part '{path}' outputs {shape}, not feature maps "
                                 f"(N, C, H, W)")
            parts.append(Part(path, max(size // max(x.shape[-1], 1), 1), x.shape[1]))
    return parts, x


def check_same(expected: torch.Tensor, got: torch.Tensor) -> None:
    if tuple(expected.shape) != tuple(got.shape):
        raise ValueError(f'its modules, run in order, give maps of shape {tuple(got.shape)}, '
                         f'its own features {tuple(expected.shape)}: it does not run its '
                         f'stages one after another')


# How a copy of the last stages loses its downsampling, so that the attention map keeps
# the feature extractor's resolution (docs/imagenet.md has the table):
# - a strided convolution (ResNet, RegNet, the depthwise convolutions of EfficientNet and
#   MobileNet, ConvNeXt's 2x2 downsampling layer) gets stride 1, and 'same' padding where
#   its own padding would shrink the map (an even kernel: ConvNeXt's);
# - a pooling whose kernel is its stride (ResNet-D's average-pooling shortcut) becomes an
#   identity: it only downsamples;
# - another strided pooling gets stride 1, and an odd kernel the padding that keeps the size.
DOWNSAMPLING_RULES = ('strided convolution -> stride 1 (same padding for even kernels)',
                      'pooling with kernel = stride -> identity',
                      'other strided pooling -> stride 1 (padding k // 2 for odd kernels)')


def pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class SamePaddedConv2d(nn.Conv2d):
    """A stride-1 convolution whose output keeps its input's size however even its kernel:
    the missing padding goes right and below (as 'same' padding does). The same parameters
    as nn.Conv2d; a converted convolution keeps its weights (its class is changed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for p, d, k in reversed(list(zip(pair(self.padding), pair(self.dilation),
                                          pair(self.kernel_size)))):
            missing = d * (k - 1) - 2 * p
            pads += [0, missing]
        return super().forward(F.pad(x, pads))


def remove_downsampling(stage: nn.Module) -> nn.Module:
    """Applies DOWNSAMPLING_RULES to every module of `stage` (in place); returns it."""
    for name, module in list(stage.named_modules()):
        if isinstance(module, nn.Conv2d) and max(pair(module.stride)) > 1:
            module.stride = (1, 1)
            kernel, dilation = pair(module.kernel_size), pair(module.dilation)
            padding = pair(module.padding) if not isinstance(module.padding, str) else None
            if type(module) is nn.Conv2d and padding is not None and \
                    any(2 * p < d * (k - 1) for p, d, k in zip(padding, dilation, kernel)):
                module.__class__ = SamePaddedConv2d
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) and \
                max(pair(module.stride)) > 1:
            if pair(module.kernel_size) == pair(module.stride):
                parent, _, child = name.rpartition('.')
                setattr(stage.get_submodule(parent) if parent else stage, child, nn.Identity())
            else:
                module.stride, module.ceil_mode = 1, False
                module.padding = size_keeping_padding(module.kernel_size, module.padding)
    return stage


def size_keeping_padding(kernel_size, padding):
    """The padding of a stride-1 pooling of `kernel_size` that keeps its input's size: k // 2
    for odd kernels (an even one cannot: `padding` is kept)."""
    kernel = pair(kernel_size)
    return tuple(k // 2 for k in kernel) if all(isinstance(k, int) and k % 2 for k in kernel) \
        else padding
