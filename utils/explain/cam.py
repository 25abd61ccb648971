"""What the explanation methods (utils.explain.methods) share: the model as they see it
(`PerceptionBranch`, one forward that records the attention map and the perception maps),
Class Activation Mapping's arithmetic, whether a model allows it, CAM and Grad-CAM of each
task of a multi-task model, and the perception branch's probabilities; inputs re-expressed
for a second model's normalisation."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.abn import AttentionBranchNetwork



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


def task_cams(model, inputs, tasks):
    """(CAM, Grad-CAM) of the perception branch for each task in `tasks`: (N, K, h, w) each.
    Task t's perception is layer4 on the features gated by map t, pooled, then head t; CAM
    weighs layer4's channels by head t's weights, Grad-CAM by the pooled gradient of logit t
    (for pooling + one linear layer it is ReLU(CAM) up to a factor: computed anyway)."""
    with torch.no_grad():
        features = model.extract_features(inputs)
        _, maps = model.attention_branch(features)
    cams, grad_cams = [], []
    for t in tasks:
        stage = model.layer4(model.gated(features, maps[:, t:t + 1])).detach().requires_grad_()
        head = model.output_per[t]
        logit = head(stage.mean((2, 3)))[:, 0]
        gradient, = torch.autograd.grad(logit.sum(), stage)
        cams.append(torch.einsum('nchw,c->nhw', stage.detach(), head.weight[0].detach()))
        grad_cams.append(F.relu((gradient.mean((2, 3), keepdim=True) * stage.detach()).sum(1)))
    return torch.stack(cams, 1), torch.stack(grad_cams, 1)
