"""Multi-task ABN (the paper's CelebA model): one attention map per task (attribute).

The authors' "V1" (MultitaskABN, `mtabn/models/resnet_mtabn_v1.py`, class MtABNResNetV1),
parameter for parameter, so their published checkpoint loads strictly:

- feature extractor: conv1, bn1, ReLU, max pool, layer1..layer3;
- attention branch: layer4_att (stride-1 copy of layer4), conv_att (C -> T, 1x1, no bias).
  The T maps are unbounded (no BN, ReLU or sigmoid; about +-100 is normal after training);
  the attention logits are their global means;
- perception branch, per task t: the features gated by map t (x * M_t, or x * (1 + M_t) with
  residual attention), the ONE shared layer4, global average pooling, and the task's own head
  output_per.<t> = Linear(C, 1).

There is no `fc` and no pooling module with weights: the keys are conv1, bn1, layer1..layer4,
output_per.<t>, layer4_att, conv_att (their torchvision-style block names inside). Their
checkpoint files (`checkpoint-best.pt`: epoch, iteration, best_score, model_state_dict with
`module.` keys, optimizer_state_dict, scheduler_state_dict) load safely with
`utils.weights.checkpoint.load_checkpoint(path)` (weights_only; the weights under 'state_dict') and
`load_model_state(model, checkpoint, path, name)` (strict).

forward returns `AbnOutput(attention_logits (N, T), perception_logits (N, T),
attention_map (N, T, h, w))`; the authors' forward returned (perception, attention, maps).

The T passes through layer4 (the authors' Python loop) run here as one call with the tasks
folded into the batch (N*T samples), which is much faster. In eval mode that is the same
computation. In training mode the loop normalises each task's pass with that pass's own batch
statistics (N samples) and updates layer4's running statistics T times in a row; a plain folded
call would normalise with statistics over all N*T samples and update them once. layer4's
BatchNorms are therefore `TaskBatchNorm2d`s: while folded they compute per-task statistics and
apply the T sequential running-stat updates in closed form, so the folded call gives the loop's
outputs, gradients and running statistics (tests/test_models_multitask.py). `fold_tasks=False`
runs the authors' loop itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .abn import AbnOutput, init_conv_bn, keep_frozen_in_eval
from .imagenet.resnet import BLOCKS  # depth -> (block, blocks per stage)
from .registry import ModelRegistry
from .stages import resnet_stage

if TYPE_CHECKING:
    from torchvision.models.resnet import BasicBlock, Bottleneck

MULTITASK_MODELS = ModelRegistry('multi-task')


class TaskBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d (same parameters and buffers) that, while `tasks` > 1 in training mode,
    treats its input (N*T, C, H, W), sample-major, as T separate batches of N: each task is
    normalised with its own batch statistics, and the running statistics receive the T updates
    the authors' loop makes one after another, r <- (1 - m) r + m s_t for t = 1..T, in closed
    form. With tasks == 1, or in eval mode, it is nn.BatchNorm2d. (SyncBatchNorm conversion, or
    momentum=None, replaces the trick by statistics pooled over all N*T samples.)"""

    tasks = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tasks
        if t == 1 or not self.training or not self.track_running_stats or self.momentum is None:
            return super().forward(x)
        n, c, h, w = x.shape
        m = self.momentum
        # (N*T, C) sample-major is (N, T*C): one native batch norm whose channel t*C + c holds
        # task t's channel c. Each copy of the running stats is updated once from r0.
        mean_copies = self.running_mean.repeat(t)
        var_copies = self.running_var.repeat(t)
        y = F.batch_norm(x.reshape(n // t, t * c, h, w), mean_copies, var_copies,
                         self.weight.repeat(t), self.bias.repeat(t), True, m, self.eps)
        with torch.no_grad():
            # copy_t = (1 - m) r0 + m s_t; the loop ends at (1 - m)^T r0 + sum_t
            # (1 - m)^(T-1-t) m s_t.
            decay = (1 - m) ** torch.arange(t - 1, -1, -1, dtype=self.running_mean.dtype,
                                            device=x.device)
            for running, copies in ((self.running_mean, mean_copies),
                                    (self.running_var, var_copies)):
                steps = copies.view(t, c) - (1 - m) * running
                running.mul_((1 - m) ** t).add_((decay[:, None] * steps).sum(0))
            self.num_batches_tracked.add_(t)
        return y.reshape(n, c, h, w)


def _task_norms(stage):
    """Replaces the BatchNorm2d modules of `stage` by TaskBatchNorm2d (same names)."""
    for name, child in stage.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(stage, name, TaskBatchNorm2d(child.num_features, child.eps, child.momentum))
        else:
            _task_norms(child)
    return stage


class MultitaskABN(nn.Module):
    """The authors' MtABNResNetV1. num_classes: the number of tasks T (40 for CelebA);
    residual_attention: gate x * (1 + M_t) (True) or x * M_t (False: the published
    checkpoint); fold_tasks: run layer4 once on the N*T gated inputs (False: the authors'
    per-task loop)."""

    min_image_size = 32
    last_stage, classifier_name = 'layer4', 'output_per'
    has_attention = True

    def __init__(self, block: type[Union[BasicBlock, Bottleneck]], layers: Sequence[int],
                 num_classes: int = 40, residual_attention: bool = True, fold_tasks: bool = True,
                 width: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.residual_attention = residual_attention
        self.gate = 'residual' if residual_attention else 'multiply'
        self.fold_tasks = fold_tasks
        self.feature_extractor_frozen = False  # models.abn.freeze_feature_extractor
        e = block.expansion
        w = width
        self.conv1 = nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.layer1 = resnet_stage(block, w, w, layers[0])
        self.layer2 = resnet_stage(block, w * e, 2 * w, layers[1], stride=2)
        self.layer3 = resnet_stage(block, 2 * w * e, 4 * w, layers[2], stride=2)
        self.layer4 = _task_norms(resnet_stage(block, 4 * w * e, 8 * w, layers[3], stride=2))
        self.output_per = nn.ModuleList(nn.Linear(8 * w * e, 1) for _ in range(num_classes))
        self.layer4_att = resnet_stage(block, 4 * w * e, 8 * w, layers[3], stride=1)
        self.conv_att = nn.Conv2d(8 * w * e, num_classes, kernel_size=1, bias=False)
        init_conv_bn(self)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        return self.layer3(self.layer2(self.layer1(x)))

    def feature_extractor_modules(self) -> tuple[nn.Module, ...]:
        """What `extract_features` runs: what teaching the maps keeps fixed
        (models.abn.freeze_feature_extractor)."""
        return (self.conv1, self.bn1, self.layer1, self.layer2, self.layer3)

    def train(self, mode: bool = True) -> MultitaskABN:
        super().train(mode)
        keep_frozen_in_eval(self)
        return self

    def attention_branch(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (attention_logits (N, T), attention_maps (N, T, h, w))."""
        maps = self.conv_att(self.layer4_att(features))
        return maps.mean((2, 3)), maps

    def gated(self, features: torch.Tensor, task_map: torch.Tensor) -> torch.Tensor:
        return features * (1 + task_map) if self.residual_attention else features * task_map

    def perceive(self, features: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Perception logits (N, T): task t sees the features gated by maps[:, t]."""
        if not self.fold_tasks:
            return torch.cat([self.output_per[t](
                self.layer4(self.gated(features, maps[:, t:t + 1])).mean((2, 3)))
                for t in range(self.num_classes)], dim=1)
        n, c, h, w = features.shape
        t = self.num_classes
        folded = self.gated(features.unsqueeze(1), maps.unsqueeze(2)).reshape(n * t, c, h, w)
        norms = [m for m in self.layer4.modules() if isinstance(m, TaskBatchNorm2d)]
        for m in norms:
            m.tasks = t
        try:
            pooled = self.layer4(folded).mean((2, 3)).view(n, t, -1)
        finally:
            for m in norms:
                m.tasks = 1
        weight = torch.cat([head.weight for head in self.output_per])  # (T, C)
        bias = torch.cat([head.bias for head in self.output_per])
        return (pooled * weight).sum(-1) + bias

    def forward(self, x: torch.Tensor, attention: Optional[torch.Tensor] = None) -> AbnOutput:
        """`attention`: (N, T, h, w) maps to gate the perception branch with instead of the
        model's own (an edited map, as the single-task models take it); the outputs' maps and
        attention logits stay the model's own."""
        features = self.extract_features(x)
        attention_logits, maps = self.attention_branch(features)
        gates = maps if attention is None else attention.to(maps.dtype)
        return AbnOutput(attention_logits, self.perceive(features, gates), maps)


class MultiLabelResNet(torchvision.models.ResNet):
    """The plain multi-label baseline (the authors' `resnet18..152` for CelebA): torchvision's
    ResNet, key for key, with fc = Linear(C, T); forward returns AbnOutput(None, logits, None)."""

    min_image_size = 32
    last_stage, classifier_name = 'layer4', 'fc'
    has_attention = False

    def __init__(self, block: type[Union[BasicBlock, Bottleneck]], layers: Sequence[int],
                 num_classes: int = 40) -> None:
        super().__init__(block, layers, num_classes=num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> AbnOutput:
        return AbnOutput(None, super().forward(x), None)


def _resolve_gate(residual_attention, gate):
    if gate is not None and gate not in ('residual', 'multiply'):
        raise ValueError(f"unknown attention gate '{gate}': choose one of residual, multiply")
    if gate is not None and residual_attention is not None \
            and residual_attention != (gate == 'residual'):
        raise ValueError(f'residual_attention={residual_attention} contradicts gate={gate}')
    if gate is not None:
        return gate == 'residual'
    return True if residual_attention is None else bool(residual_attention)


def build_mtabn(depth: int, num_classes: int, residual_attention: Optional[bool],
                gate: Optional[str], attention: bool, fold_tasks: bool,
                width: int = 64) -> Union[MultitaskABN, MultiLabelResNet]:
    block, layers = BLOCKS[depth]
    if not attention:
        model = MultiLabelResNet(block, layers, num_classes)
    else:
        model = MultitaskABN(block, layers, num_classes, _resolve_gate(residual_attention, gate),
                             fold_tasks, width)
    model.torchvision_name = f'resnet{depth}'
    return model


_DOC = """Multi-task ABN V1 with a ResNet-{depth} backbone (the authors' builder of this name).
    num_classes: tasks T; residual_attention: x * (1 + M_t) (default, their builder's) or x * M_t;
    gate: the project's name for it ('residual' | 'multiply'; wins when given);
    attention=False: the plain multi-label ResNet-{depth}; fold_tasks: see MultitaskABN."""


def _register(depth):
    def builder(num_classes: int = 40, residual_attention: Optional[bool] = None,
                gate: Optional[str] = None, attention: bool = True, fold_tasks: bool = True,
                width: int = 64) -> Union[MultitaskABN, MultiLabelResNet]:
        return build_mtabn(depth, num_classes, residual_attention, gate, attention, fold_tasks,
                           width)
    builder.__name__ = builder.__qualname__ = f'mtabn_v1_resnet{depth}'
    builder.__doc__ = _DOC.format(depth=depth)
    return MULTITASK_MODELS.register(builder)


def _register_baseline(depth):
    def builder(num_classes: int = 40,
                attention: bool = False) -> MultiLabelResNet:  # `attention` recorded: a baseline
        if attention:
            raise ValueError(f'resnet{depth} is the plain multi-label baseline: use '
                             f'mtabn_v1_resnet{depth} for the attention branch')
        return build_mtabn(depth, num_classes, None, None, False, True)
    builder.__name__ = builder.__qualname__ = f'resnet{depth}'
    builder.__doc__ = (f"The authors' multi-label baseline: torchvision's ResNet-{depth} with "
                       f"one output per task.")
    return MULTITASK_MODELS.register(builder)


mtabn_v1_resnet18 = _register(18)
mtabn_v1_resnet34 = _register(34)
mtabn_v1_resnet50 = _register(50)
mtabn_v1_resnet101 = _register(101)
mtabn_v1_resnet152 = _register(152)
for _depth in BLOCKS:
    _register_baseline(_depth)
