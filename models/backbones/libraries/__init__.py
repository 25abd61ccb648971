"""The libraries whose classifiers become ABNs, one object each, registered by name
(`LIBRARIES`, asked through `library(source)`): what models.backbones asks of a library is
its model names, its model, where that model's stages are and what its head is, its
feature extraction on the traced graph, the size it builds a model for, and its pretrained
weights. Each library is one module of this package, a `Library` registered with
`@register` (timm_models.py, torchvision_models.py); every module here is imported with the
package, so a third library is one new file and nothing else names one.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Optional, Union

import torch
import torch.nn as nn

from ..split import Trunk

LIBRARIES: dict[str, 'Library'] = {}


def register(library_class: type) -> type:
    LIBRARIES[library_class.name] = library_class()
    return library_class


def library(source: str) -> 'Library':
    return LIBRARIES[source]


class Library:
    """What a library gives: override each of these."""
    name = ''
    # its children are only a guess of its forward path (a refusal then gives the traced
    # graph's reason, the more precise)
    children_are_a_guess = False
    reads_pretrained_files = False  # whether its own loader reads --pretrained-file

    def names(self, pattern: str = '*') -> list[str]:
        """The classifiers it can build whose name matches `pattern`."""
        raise NotImplementedError

    def model(self, name: str, num_classes: int, image_size: int, pools_tokens: bool = False,
              pretrained: bool = False, pretrained_file: Optional[str] = None) -> nn.Module:
        """Its own model with `num_classes` outputs, for `image_size` where it takes one;
        where `pools_tokens`, a transformer built pooling its patch tokens if it can be."""
        raise NotImplementedError

    def is_vit(self, name: str) -> bool:
        """Whether `name` is split as timm's VisionTransformer (models.backbones.vit)."""
        return False

    def trunk(self, model: nn.Module, image_size: int,
              device: Union[str, torch.device]) -> Trunk:
        """Its model's stages, run one after another (models.backbones.split)."""
        raise NotImplementedError

    def head(self, backbone: nn.Module) -> tuple[tuple[str, ...], bool, str]:
        """(the paths of the head's modules after pooling, whether to flatten first, the
        classifier's path) of its model."""
        raise NotImplementedError

    def classify(self, backbone: nn.Module, maps: torch.Tensor, paths: tuple[str, ...],
                 flatten: bool) -> torch.Tensor:
        """The model's own head on the last stage's maps."""
        raise NotImplementedError

    def feature_extraction(self) -> tuple[Callable, Callable]:
        """(create_feature_extractor, get_graph_node_names) of its traced graphs."""
        raise NotImplementedError

    def own_size(self, name: str) -> Optional[int]:
        """The input size it gives the model, if it says one."""
        return None

    def has_pretrained(self, name: str) -> bool:
        """Whether it publishes ImageNet weights of `name`."""
        return False

    def pretrained_state_dict(self, name: str, num_classes: int, image_size: int,
                              pretrained_file: Optional[str] = None,
                              pools_tokens: bool = False) -> dict[str, torch.Tensor]:
        """Its pretrained weights for the model, as a state_dict of its own model."""
        raise NotImplementedError


def path_of(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


# every library of the package, registered as it is imported
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f'{__name__}.{_module.name}')

__all__ = ['LIBRARIES', 'Library', 'library', 'path_of', 'register']
