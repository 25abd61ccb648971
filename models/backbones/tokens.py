"""A transformer of any layout split on its traced graph, between two of its blocks: timm's
ViT variants with their own position schemes (BEiT, EVA, DeiT III, ConViT, CaiT, XCiT,
relative-position ViTs, ...) and torchvision's ViT, whose blocks take more than the tokens
(a rotary embedding, a relative position bias, the grid's height and width) or whose maps
are tokens (N, L, C) or (N, H, W, C), never (N, C, H, W).

On the model's traced graph (models.backbones.graph.trace):

- the *blocks* are the library's own list of them (timm's `feature_info`; else the longest
  list of same-type modules), the branches start at block `split` (default: the last 3, as
  for timm's VisionTransformer);
- the feature extractor is every node before the first of that block; what the rest reads
  of it (the tokens, and what the blocks share: a position bias, a rotary embedding, the
  grid's size) is the features, a tuple whose first item is the tokens;
- the *trunk's end* is the last node that everything after it reads alone and that still
  holds the patch grid; the perception stage runs the real blocks from the split to it, the
  attention stage a copy of the same nodes (on copies of the blocks), and the head the
  model's own pooling and classifier from it;
- the map gates the patch tokens (a class or register token passes ungated) and is drawn on
  the patch grid. The head sees the patch tokens only (the prefix tokens zeros): the model is
  built pooling the patch tokens where the library allows it, and the split is refused where
  that changes its answer.

Every split is checked at build time: in eval mode the three segments, ungated, give the
model's own logits, or the model is refused in one line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx
import torch.nn as nn

from ..abn import AttentionBranchNetwork
from .graph import GraphBackboneABN, Shapes, _has, cuts, segment, trace

MAX_PREFIX_TOKENS = 16  # class, distillation and register tokens before the patch tokens


@dataclass
class TokenSplit:
    module: fx.GraphModule  # the model's traced graph (eval mode), its output the logits
    boundary: str  # the first node of the first block of the branches
    crossing: list[str]  # what the rest reads of the part before: the tokens first
    end: str  # the trunk's end
    side: int  # the patch grid's side (square inputs)
    layouts: tuple[str, str]  # of the tokens at the split and at the end: tokens, nhwc, nchw
    channels: int  # of the maps at the end
    end_prefix: int  # the tokens before the patch tokens at the end


def layout(shape: tuple[int, ...] | None, side: int) -> str | None:
    """How a tensor of `shape` holds a side x side patch grid: 'tokens' (N, prefix + H*W, C),
    'nhwc' or 'nchw'; None where it does not."""
    if shape is None:
        return None
    if len(shape) == 3 and 0 <= shape[1] - side * side <= MAX_PREFIX_TOKENS:
        return 'tokens'
    if len(shape) == 4 and shape[1] == shape[2] == side and shape[3] != side:
        return 'nhwc'
    if len(shape) == 4 and shape[2] == shape[3] == side and shape[1] != side:
        return 'nchw'
    return None


def to_maps(x: torch.Tensor, how: str, side: int) -> torch.Tensor:
    """Tokens of layout `how` as maps (N, C, H, W) of the patch grid."""
    if how == 'tokens':
        patches = x[:, x.shape[1] - side * side:]
        return patches.transpose(1, 2).reshape(x.shape[0], -1, side, side)
    return x.permute(0, 3, 1, 2) if how == 'nhwc' else x


def from_maps(maps: torch.Tensor, how: str, prefix: int) -> torch.Tensor:
    """Maps (N, C, H, W) back in layout `how`, `prefix` zero tokens before the patches."""
    if how == 'tokens':
        tokens = maps.flatten(2).transpose(1, 2)
        zeros = tokens.new_zeros(tokens.shape[0], prefix, tokens.shape[2])
        return torch.cat([zeros, tokens], 1) if prefix else tokens
    return maps.permute(0, 2, 3, 1) if how == 'nhwc' else maps


def block_paths(model: nn.Module) -> list[str]:
    """The model's blocks: the modules of timm's `feature_info` where they share one stride
    at the model's end, else the longest list of modules of one type."""
    info = getattr(model, 'feature_info', None)
    if isinstance(info, list) and info and all('module' in i for i in info):
        last = info[-1].get('reduction')
        same = [i['module'] for i in info if i.get('reduction') == last]
        if len(same) > 1:
            return same
    lists = _lists_of_one_type(model)
    return max(lists, key=len, default=[])


def block_lists(model: nn.Module) -> list[list[str]]:
    """The lists of blocks a split is looked for in, in turn: the model's blocks
    (block_paths), then of a model in stages, its last stage's blocks (a hierarchical
    transformer's grid changes between its stages: its branches can only hold the last)."""
    first = block_paths(model)
    found = [first] if len(first) > 1 else []
    for stages in _lists_of_one_type(model):
        last = model.get_submodule(stages[-1])
        inner = max(_lists_of_one_type(last, stages[-1]), key=len, default=[])
        if len(inner) > 1 and inner not in found:
            found.append(inner)
    return found


def _lists_of_one_type(model: nn.Module, prefix: str = '') -> list[list[str]]:
    """The paths of the children of every ModuleList or Sequential of modules of one type."""
    lists = []
    for path, module in model.named_modules(prefix=prefix):
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 1 \
                and len({type(child) for child in module}) == 1:
            lists.append([f'{path}.{name}' if path else name for name, _ in
                          module.named_children()])
    return lists


def _belongs(node: fx.Node, path: str) -> bool:
    target = node.target if node.op in ('call_module', 'get_attr') else None
    return isinstance(target, str) and (target == path or target.startswith(path + '.'))


def token_split(model: nn.Module, blocks: list[str], first: int, image_size: int,
                source: str) -> TokenSplit:
    """Where `model` is split, before its block `first` of `blocks` (see the module's
    docstring); raises ValueError in one line where it cannot be."""
    traced = trace(model, source).eval()
    device = next(model.parameters()).device
    Shapes(traced).run(torch.zeros(1, 3, image_size, image_size, device=device))
    nodes = list(traced.graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    starts = [next((n for n in nodes if _belongs(n, path)), None) for path in blocks]
    if any(s is None for s in starts) or [index[s] for s in starts] != sorted(
            index[s] for s in starts):
        raise ValueError('its blocks do not run one after another in its traced graph')
    at = index[starts[first]]
    crossing = _crossing(nodes, index, at)
    # the tokens: a value of the image's own (a batch of one), of a patch grid
    stream = next((n for n in crossing if (n.meta.get('shape') or (0,))[0] == 1 and
                   _side(n.meta['shape'], image_size)), None)
    if stream is None:
        shapes = [n.meta.get('shape') for n in crossing if n.meta.get('shape')]
        raise ValueError(f'its blocks pass {shapes[0] if shapes else "no tensor"}, not a patch '
                         f'grid')
    crossing.remove(stream)
    side = _side(stream.meta['shape'], image_size)
    # the trunk's end: the last cut that still holds the grid, before the head pools it
    is_cut = cuts(nodes)
    end = next((n for i, n in reversed(list(enumerate(nodes))) if i >= at and is_cut[i] and
                n.op != 'get_attr' and layout(n.meta.get('shape'), side)), None)
    if end is None:
        raise ValueError(f'no node after its blocks holds the {side}x{side} patch grid alone')
    shape = end.meta['shape']
    end_layout = layout(shape, side)
    channels = shape[1] if end_layout == 'nchw' else shape[-1]
    end_prefix = shape[1] - side * side if end_layout == 'tokens' else 0
    return TokenSplit(traced, starts[first].name, [stream.name] + [n.name for n in crossing],
                      end.name, side, (layout(stream.meta['shape'], side), end_layout),
                      channels, end_prefix)


def _side(shape, image_size: int) -> int | None:
    """The patch grid's side of tokens (N, prefix + side^2, C) or maps (N, side, side, C),
    (N, C, side, side), from a square input of `image_size`."""
    if shape is None or len(shape) not in (3, 4):
        return None
    if len(shape) == 3:
        side = math.isqrt(shape[1])
        return side if side > 1 and image_size % side == 0 else None
    for side in (shape[1], shape[2]):
        if side > 1 and image_size % side == 0 and layout(shape, side):
            return side
    return None


def _crossing(nodes: list[fx.Node], index: dict, boundary: int) -> list[fx.Node]:
    """The values made before node `boundary` and read from it on (parameters apart)."""
    crossing = []
    for node in nodes[boundary:]:
        for value in node.all_input_nodes:
            if index[value] < boundary and value.op != 'get_attr' and value not in crossing:
                crossing.append(value)
    return crossing


def cut(graph: fx.Graph, boundary: str, names: list[str]) -> tuple[fx.Graph, fx.Graph]:
    """`graph` cut before node `boundary`: (the part before, from the image to the values
    `names` that the rest reads, as a tuple; the rest, from those values to the logits)."""
    nodes = list(graph.nodes)
    at = next(i for i, n in enumerate(nodes) if n.name == boundary)
    crossing = [next(n for n in nodes if n.name == name) for name in names]
    before, values = fx.Graph(), {}
    for node in nodes[:at]:
        values[node] = before.node_copy(node, lambda n: values[n])
    before.output(tuple(values[n] for n in crossing))
    rest, values = fx.Graph(), {}
    for n in crossing:
        values[n] = rest.placeholder(n.name)
    for node in nodes:
        if node.op == 'get_attr' and node not in values:
            values[node] = rest.node_copy(node, lambda n: values[n])
    for node in nodes[at:]:
        if node.op == 'get_attr':
            continue
        if node.op == 'output':
            output = node.args[0]
            rest.output(values[output['logits'] if isinstance(output, dict) else output])
            break
        values[node] = rest.node_copy(node, lambda n: values[n])
    for part in (before, rest):
        for node in reversed(list(part.nodes)):
            if node.op not in ('placeholder', 'output') and not node.users:
                part.erase_node(node)
        part.lint()
    return before, rest


def until(graph: fx.Graph, end: str) -> fx.Graph:
    """`graph` (of many inputs) up to node `end`, its output."""
    part, values = fx.Graph(), {}
    for node in graph.nodes:
        if node.op == 'output':
            break
        values[node] = part.node_copy(node, lambda n: values[n])
        if node.name == end:
            part.output(values[node])
            break
    for node in reversed(list(part.nodes)):
        if node.op not in ('placeholder', 'output') and not node.users:
            part.erase_node(node)
    part.lint()
    return part


class TokenGraphABN(GraphBackboneABN):
    """The features are a tuple: the tokens at the split, then what the blocks share."""
    min_image_size = 32
    pools_tokens = True  # built with the library's mean of the patch tokens, where it has one

    def __init__(self, backbone: nn.Module, source: str, name: str, split_at: TokenSplit,
                 split: int, num_classes: int, attention: bool = True,
                 gate: str = 'residual') -> None:
        AttentionBranchNetwork.__init__(self, num_classes, attention, gate)
        self.backbone = backbone
        self.source, self.backbone_name, self.split = source, name, split
        self.side, self.layouts = split_at.side, split_at.layouts
        traced = split_at.module  # traced on this backbone: its constants become its buffers
        for n in traced.graph.nodes:
            if n.op == 'get_attr' and not _has(backbone, n.target):
                backbone.register_buffer(n.target, getattr(traced, n.target), persistent=False)
        extractor, rest = cut(traced.graph, split_at.boundary, split_at.crossing)
        self.graphs = (extractor, until(rest, split_at.end),
                       segment(traced.graph, split_at.end, None))
        self._compile()
        self.end_prefix = split_at.end_prefix
        linears = [m for n in self.graphs[2].nodes if n.op == 'call_module'
                   for m in [backbone.get_submodule(n.target)]
                   if isinstance(m, (nn.Linear, nn.Conv2d))]
        if not linears:
            raise ValueError('its head has no linear classifier to replace')
        self.classifier_path = next(p for p, m in backbone.named_modules() if m is linears[-1])
        if attention:
            self.att_stage = self.segment(1)
            self._make_attention_head(split_at.channels)
        self.cam_exact = False  # set by check_head once the weights exist

    # -- the pieces of an AttentionBranchNetwork ------------------------------------------
    def extract_features(self, x: torch.Tensor) -> tuple:
        return tuple(self.code[0](self.backbone, x))

    def feature_extractor_parameters(self) -> list[nn.Parameter]:
        """The parameters the extractor reads itself (a position embedding, a class token)."""
        return [getattr(self.backbone, n.target) if '.' not in n.target else
                self.backbone.get_parameter(n.target) for n in self.graphs[0].nodes
                if n.op == 'get_attr' and isinstance(_attr(self.backbone, n.target),
                                                     nn.Parameter)]

    def map_size(self, features: tuple) -> tuple[int, int]:
        return self.side, self.side

    @property
    def attention_stage(self) -> Callable[[tuple], torch.Tensor]:
        return self.attend

    def attend(self, features: tuple) -> torch.Tensor:
        return to_maps(self.att_stage(*features), self.layouts[1], self.side)

    def apply_attention(self, features: tuple, attention_map: torch.Tensor) -> tuple:
        tokens, how = features[0], self.layouts[0]
        weights = from_maps(attention_map.to(tokens.dtype), how, 0)
        if how == 'tokens':
            prefix = tokens.shape[1] - self.side ** 2
            patches = tokens[:, prefix:]
            gated = patches * (1 + weights) if self.gate == 'residual' else patches * weights
            gated = torch.cat([tokens[:, :prefix], gated], 1)
        else:
            gated = tokens * (1 + weights) if self.gate == 'residual' else tokens * weights
        return (gated,) + tuple(features[1:])

    def perception_features(self, features: tuple) -> torch.Tensor:
        return to_maps(self.code[1](self.backbone, *features), self.layouts[1], self.side)

    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        return self.code[2](self.backbone, from_maps(maps, self.layouts[1], self.end_prefix))


def _attr(module: nn.Module, path: str):
    owner, _, name = path.rpartition('.')
    return getattr(module.get_submodule(owner) if owner else module, name, None)


def check_whole(model: TokenGraphABN, image_size: int) -> None:
    """The split, ungated, must be the model (its logits in eval mode on random images), and
    the ABN must run (on the meta device, where the model is only described: its shapes)."""
    meta = next(model.parameters()).is_meta
    x = torch.zeros(2, 3, image_size, image_size, device='meta') if meta else \
        torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            own = model.backbone(x)
            split = model.classify(model.perception_features(model.extract_features(x)))
            model(x)
    except RuntimeError as error:
        raise ValueError(f'its split does not run ({str(error).strip().splitlines()[0][:120]})'
                         ) from None
    finally:
        model.train(training)
    if own.shape != split.shape or not meta and not torch.allclose(own, split, atol=1e-4,
                                                                     rtol=1e-3):
        raise ValueError('its split does not give its own answer (its head reads more than '
                         'the patch tokens)')


__all__ = ['TokenGraphABN', 'TokenSplit', 'block_lists', 'block_paths', 'check_whole',
           'token_split']
