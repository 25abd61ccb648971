"""timm's classifiers (`-a timm:NAME`): its models built by `timm.create_model`, their stages
from `feature_info`, their head `forward_head`, their pretrained weights read by timm
itself (a local file included). timm is imported when a timm name is used."""
from __future__ import annotations

from typing import Union

import torch
import torch.nn as nn

from ..split import Trunk, called_children, check_same, opened, trace_parts
from . import Library, path_of, register


def _timm():
    import timm
    return timm


@register
class Timm(Library):
    name = 'timm'
    reads_pretrained_files = True

    def names(self, pattern='*'):
        return list(_timm().list_models(pattern))

    def model(self, name, num_classes, image_size, pools_tokens=False, pretrained=False,
              pretrained_file=None):
        # a transformer pools its patch tokens where it lets itself be built so (with the
        # final norm kept before it where it can be)
        choices = [dict(global_pool='avg', fc_norm=False), dict(global_pool='avg'), {}] \
            if pools_tokens else [{}]
        create = _timm().create_model
        pretrained = pretrained or bool(pretrained_file)
        overlay = dict(pretrained_cfg_overlay=dict(file=pretrained_file)) \
            if pretrained_file else {}
        for pooling in choices:
            options = dict(pooling, **overlay)
            # models with a fixed input size (ViTs, MLP-Mixers) are built for the run's;
            # the others take none
            for size in (dict(img_size=image_size), {}):
                try:
                    return create(name, pretrained=pretrained, num_classes=num_classes,
                                  **size, **options)
                except TypeError as error:  # an option it does not take
                    refused = error
                except (AssertionError, ValueError) as error:  # a pooling it does not do
                    if not pooling:
                        raise
                    refused = error
        raise refused

    def is_vit(self, name):
        from timm.models.vision_transformer import VisionTransformer
        with torch.device('meta'):
            model = _timm().create_model(name, pretrained=False)
        return isinstance(model, VisionTransformer)

    def trunk(self, model, image_size, device):
        return timm_trunk(model, image_size, device)

    def head(self, backbone):
        classifier = backbone.get_classifier()
        if isinstance(classifier, (tuple, list)):  # a distilled model's two heads
            classifier = classifier[0]
        if not any(m is classifier for m in backbone.modules()):
            raise ValueError('its classifier is not one of its modules')
        return (), False, path_of(backbone, classifier)

    def classify(self, backbone, maps, paths, flatten):
        return backbone.forward_head(maps)

    def feature_extraction(self):
        from timm.models._features_fx import create_feature_extractor, get_graph_node_names
        return create_feature_extractor, get_graph_node_names

    def own_size(self, name):
        try:
            return int(_timm().get_pretrained_cfg(name).input_size[-1])
        except Exception:  # no configuration: no size
            return None

    def has_pretrained(self, name):
        return bool(_timm().is_model_pretrained(name))

    def pretrained_state_dict(self, name, num_classes, image_size, pretrained_file=None,
                              pools_tokens=False):
        # timm adapts them itself (its classifier dropped for other classes, a ViT's
        # position embedding resampled)
        return self.model(name, num_classes, image_size, pools_tokens, pretrained=True,
                          pretrained_file=pretrained_file).state_dict()



def timm_trunk(model: nn.Module, image_size: int,
               device: Union[str, torch.device] = 'meta') -> Trunk:
    """The trunk of a timm model, its stages from `feature_info`."""
    modules = [info['module'] for info in model.feature_info]
    probe = torch.zeros(1, 3, image_size, image_size, device=device)
    called = called_children(model, model.forward_features, probe)
    names = [name for name, _ in called]
    paths = opened(model, names, lambda name: any(m.startswith(name + '.') for m in modules))
    missing = [m for m in modules if m not in paths]
    if missing:
        raise ValueError(f"its stage '{missing[0]}' is not one module of its forward path")
    parts, out = trace_parts(model, paths, probe)
    for info, end in zip(model.feature_info, (paths.index(m) for m in modules)):
        if parts[end].channels != info['num_chs']:
            raise ValueError(f"its stage '{info['module']}' outputs {parts[end].channels} "
                             f"channels where timm says {info['num_chs']}: its maps are not "
                             f"laid out (N, C, H, W)")
    ends = [paths.index(m) for m in modules]
    ends[-1] = len(paths) - 1  # what follows the last stage, before the head, joins it
    with torch.no_grad():
        check_same(model.forward_features(probe), out)
    return Trunk(parts, ends)
