"""torchvision's classifiers (`-a torchvision:NAME`): its models by `get_model`, their
stages where the stride of their children changes, their head the children after the global
pooling, their pretrained weights torchvision's (a local file read by the caller)."""
from __future__ import annotations

import fnmatch
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from ..split import Trunk, pair, called_children, opened, trace_parts
from . import Library, path_of, register


@register
class Torchvision(Library):
    name = 'torchvision'
    children_are_a_guess = True

    def names(self, pattern='*'):
        names = torchvision.models.list_models(module=torchvision.models)
        return [name for name in names if fnmatch.fnmatchcase(name, pattern)]

    def model(self, name, num_classes, image_size, pools_tokens=False, pretrained=False,
              pretrained_file=None):
        options = {}  # the transformers are built for the run's size
        if name.startswith('vit_'):
            options['image_size'] = image_size
        elif name.startswith('maxvit'):
            options['input_size'] = (image_size, image_size)
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                            **options)

    def trunk(self, model, image_size, device):
        return torchvision_trunk(model, image_size, device)

    def head(self, backbone):
        """The children after its global pooling, flattened first unless the first one
        takes maps (ConvNeXt's LayerNorm2d)."""
        names = [name for name, _ in backbone.named_children()]
        pool = next(i for i, name in enumerate(names)
                    if isinstance(backbone.get_submodule(name), nn.AdaptiveAvgPool2d))
        head = names[pool + 1:]
        leaves = [m for name in head for m in backbone.get_submodule(name).modules()
                  if not list(m.children())]
        flatten = bool(leaves) and isinstance(leaves[0], (nn.Linear, nn.Dropout))
        linears = [m for m in leaves if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError('its head has no linear classifier to replace')
        return tuple(head), flatten, path_of(backbone, linears[-1])

    def classify(self, backbone, maps, paths, flatten):
        x = F.adaptive_avg_pool2d(maps, 1)
        if flatten:
            x = torch.flatten(x, 1)
        for path in paths:
            x = backbone.get_submodule(path)(x)
        return x

    def feature_extraction(self):
        from torchvision.models.feature_extraction import (create_feature_extractor,
                                                           get_graph_node_names)
        return create_feature_extractor, get_graph_node_names

    def has_pretrained(self, name):
        try:
            return torchvision.models.get_model_weights(name) is not None
        except ValueError:
            return False

    def pretrained_state_dict(self, name, num_classes, image_size, pretrained_file=None,
                              pools_tokens=False):
        if pretrained_file:
            raise NotImplementedError  # its files are read by the caller (a state_dict)
        weights = torchvision.models.get_model_weights(name).DEFAULT
        return weights.get_state_dict(progress=True, check_hash=True)


def torchvision_trunk(model: nn.Module, image_size: int,
                      device: Union[str, torch.device] = 'meta') -> Trunk:
    """The trunk of a torchvision classifier: its children before the global pooling,
    containers opened one level, stages where the stride changes."""
    probe = torch.zeros(1, 3, image_size, image_size, device=device)
    called = called_children(model, model, probe)
    names = []
    for name, _ in called:
        child = model.get_submodule(name)
        if isinstance(child, nn.AdaptiveAvgPool2d):
            if pair(child.output_size) != (1, 1):
                raise ValueError(f"its pooling '{name}' keeps a grid of {child.output_size} "
                                 f"for its classifier, not one value per channel")
            break
        names.append(name)
    else:
        raise ValueError('it has no global average pooling (nn.AdaptiveAvgPool2d) before '
                         'its classifier')
    paths = opened(model, names, lambda name: True)
    parts, _ = trace_parts(model, paths, probe)
    ends = [i for i, part in enumerate(parts)
            if i + 1 == len(parts) or parts[i + 1].stride != part.stride]
    return Trunk(parts, ends)
