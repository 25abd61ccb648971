"""A timm or torchvision classifier split on its traced graph, where its children cannot be
run one after another (models.backbones.split): the models that pool (or do more) in their
`forward` (DenseNet, MobileNetV2, ShuffleNetV2, MNASNet, SqueezeNet, Inception; timm's
MambaOut, Xception), those whose head pools to a fixed grid (VGG's 7x7, AlexNet's 6x6), and
those with a functional pooling in their last stage.

Both libraries trace their classifiers with torch.fx (`create_feature_extractor`): the
graph's nodes are the model's every step, functional ones included. On it:

- the *maps* are the nodes whose output is an (N, C, H, W) map of the input's aspect (a
  probe of unequal height and width tells them from (N, H, W, C) ones; a square one, for
  models of a fixed size, by C != H), and the *trunk's
  end* is the last of them that everything after it depends on alone (a cut: the head reads
  nothing else), before any adaptive pooling;
- a stage ends at a cut map after which the stride changes; the branches start after the
  end of stage `split` (default: every stage but the last, as for the other families);
- three segments of the graph, their code run with the model itself as `self` (so a
  replica, a copy or a moved model runs its own modules), are the feature extractor
  (image -> the split), the perception stage (the split -> the trunk's end) and the head
  (the trunk's end -> logits: the model's own pooling, flattening and classifier); the
  attention stage is a copy of the perception segment with DOWNSAMPLING_RULES applied
  (`att_stage.<the model's own paths>`).

The model is kept whole under `backbone.`, as for the other families.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn

from ..abn import AttentionBranchNetwork
from .cnn import head_is_linear
from .libraries import library
from .split import remove_downsampling, size_keeping_padding

ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
POOLING_CALLS = ('adaptive_avg_pool2d', 'adaptive_max_pool2d', 'mean')


@dataclass
class GraphSplit:
    graph: fx.Graph  # the model's traced graph (eval mode), its output the logits
    ends: list[str]  # the names of the nodes ending each stage; the last is the trunk's end
    strides: list[int]  # their total strides
    channels: list[int]  # their channels


def trace(model: nn.Module, source: str = 'torchvision') -> fx.GraphModule:
    """The model's graph in eval mode (an auxiliary classifier of training left out), its
    nodes named by the modules they call, as the library's feature extraction names them
    (timm's keeps its own layers that cannot be traced as single steps)."""
    create_feature_extractor, get_graph_node_names = library(source).feature_extraction()
    training = model.training
    model.eval()
    _, names = get_graph_node_names(model)
    traced = create_feature_extractor(model, return_nodes={names[-1]: 'logits'})
    model.train(training)
    return traced


class Shapes(fx.Interpreter):
    """Runs a graph, noting each node's output shape in its meta['shape']."""

    def run_node(self, node):
        result = super().run_node(node)
        if isinstance(result, torch.Tensor):
            node.meta['shape'] = tuple(result.shape)
        return result


def _has(model: nn.Module, path: str) -> bool:
    try:
        module, _, attribute = path.rpartition('.')
        getattr(model.get_submodule(module), attribute)
        return True
    except AttributeError:
        return False


def _has_weights(module: fx.GraphModule, nodes: list[fx.Node]) -> bool:
    """Whether any of `nodes` runs a module with parameters or reads a parameter."""
    for node in nodes:
        if node.op == 'call_module' and any(True for _ in
                                            module.get_submodule(node.target).parameters()):
            return True
        if node.op == 'get_attr' and isinstance(getattr(module, node.target, None), nn.Parameter):
            return True
    return False


def _is_pooling(module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == 'call_module':
        return isinstance(module.get_submodule(node.target), ADAPTIVE_POOLS)
    return getattr(node.target, '__name__', str(node.target)) in POOLING_CALLS


def cuts(nodes: list[fx.Node]) -> list[bool]:
    """For each node of a graph (in order), whether it is a cut: no node after it reads a
    node before it (parameters and buffers apart), so what follows reads it alone."""
    index = {node: i for i, node in enumerate(nodes)}
    earliest = [min((index[a] for a in n.all_input_nodes if a.op != 'get_attr'),
                    default=len(nodes)) for n in nodes]
    after, flags = len(nodes), [False] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        flags[i] = after >= i
        after = min(after, earliest[i])
    return flags


def graph_split(model: nn.Module, image_size: int, device: str = 'meta',
                source: str = 'torchvision') -> GraphSplit:
    """Where `model` (a classifier of `source`) is split, read from its traced graph; raises
    ValueError where no map ends its trunk."""
    traced = trace(model, source)
    # height != width: an (N, C, H, W) map has the input's aspect; an (N, H, W, C) one not
    height, width = image_size, 2 * image_size
    try:
        Shapes(traced).run(torch.zeros(1, 3, height, width, device=device))
    except Exception:  # a model built for square inputs only
        width = height
        Shapes(traced).run(torch.zeros(1, 3, height, width, device=device))
    nodes = list(traced.graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}

    def map_stride(node):
        shape = node.meta.get('shape')
        if shape is None or len(shape) != 4 or shape[-1] < 2 or node.op == 'placeholder' \
                or _is_pooling(traced, node):
            return None
        h, w = shape[-2:]
        other_aspect = height != width and abs(width / w - height / h) > 0.25 * height / h
        if h < 2 or h >= height or shape[1] == h or other_aspect:
            return None  # (N, H, W, C), not of the input's aspect, or the input's own size
        return max(height // h, 1)

    is_cut = cuts(nodes)
    maps = [(n, map_stride(n)) for n in nodes if is_cut[index[n]]]
    # a map of as many channels as classes is a classifier's output (SqueezeNet's), not
    # the trunk's
    classes = [m.out_features if isinstance(m, nn.Linear) else m.out_channels
               for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    maps = [(n, s) for n, s in maps
            if s is not None and n.meta['shape'][1] != classes]
    if not maps:
        raise ValueError('its traced graph has no (N, C, H, W) map that its head reads alone')
    ends = [n for k, (n, s) in enumerate(maps[:-1]) if maps[k + 1][1] != s] + [maps[-1][0]]
    stride_of = dict(maps)
    for k in range(1, len(ends)):
        # a stage of poolings alone (VGG's, AlexNet's: they pool at a block's end) would
        # give the attention branch nothing to learn: it starts where its stride began
        if not _has_weights(traced, nodes[index[ends[k - 1]] + 1:index[ends[k]] + 1]):
            ends[k - 1] = next(n for n, s in maps if s == stride_of[ends[k - 1]] and
                               (k < 2 or index[n] > index[ends[k - 2]]))
    strides = [stride_of[n] for n in ends]
    sides = [n.meta['shape'][-2] for n in ends]
    if len(ends) > 1 and sides[-2] > 2.5 * sides[-1]:  # more than one halving (or rounding)
        raise ValueError(f'its traced graph has no (N, C, H, W) map between strides '
                         f'{strides[-2]} and {strides[-1]} (its maps there are laid out '
                         f'otherwise): no last stage to copy')
    channels = [n.meta['shape'][1] for n in ends]
    return GraphSplit(traced.graph, [n.name for n in ends], strides, channels)


def segment(graph: fx.Graph, start: Optional[str], end: Optional[str]) -> fx.Graph:
    """The part of `graph` after node `start` (the image where None), up to node `end` (the
    graph's output where None), as a graph of one input and one output."""
    part = fx.Graph()
    values = {}
    nodes = list(graph.nodes)
    features = part.placeholder('features') if start is not None else None
    begun = start is None
    for node in nodes:
        if node.op == 'placeholder':
            if start is None:
                values[node] = part.placeholder(node.name)
            continue
        if node.op == 'get_attr':  # parameters and buffers: wherever they are read
            values[node] = part.node_copy(node, lambda n: values[n])
            continue
        if not begun:
            if node.name == start:
                values[node] = features
                begun = True
            continue
        if node.op == 'output':
            output = node.args[0]
            output = output['logits'] if isinstance(output, dict) else output
            part.output(values[output])
            break
        values[node] = part.node_copy(node, lambda n: values[n])
        if node.name == end:
            part.output(values[node])
            break
    for node in reversed(list(part.nodes)):  # what the output does not need
        if node.op not in ('placeholder', 'output') and not node.users:
            part.erase_node(node)
    part.lint()
    return part


def remove_graph_downsampling(module: fx.GraphModule) -> fx.GraphModule:
    """DOWNSAMPLING_RULES on a segment: its modules, and its functional poolings (stride 1,
    an odd kernel's padding k // 2), in place; returns it."""
    remove_downsampling(module)
    for node in module.graph.nodes:
        name = getattr(node.target, '__name__', '')
        if node.op != 'call_function' or name not in ('max_pool2d', 'avg_pool2d'):
            continue
        options = dict(zip(('kernel_size', 'stride', 'padding'), node.args[1:]), **node.kwargs)
        if options.get('stride') in (None, 1, (1, 1), [1, 1]):
            continue
        options.update(stride=1, ceil_mode=False, padding=size_keeping_padding(
            options['kernel_size'], options.get('padding', 0)))
        node.args, node.kwargs = node.args[:1], options
    module.recompile()
    return module


class GraphBackboneABN(AttentionBranchNetwork):
    min_image_size = 32
    pools_tokens = False  # the library's model as it is

    def __init__(self, backbone: nn.Module, source: str, name: str, split_at: GraphSplit,
                 split: int, num_classes: int, attention: bool = True,
                 gate: str = 'residual') -> None:
        super().__init__(num_classes, attention, gate)
        self.backbone = backbone
        self.source, self.backbone_name, self.split = source, name, split
        first = len(split_at.ends) + split if split < 0 else split
        start, end = split_at.ends[first - 1], split_at.ends[-1]
        self.map_stride = split_at.strides[first - 1]
        self.feature_channels = split_at.channels[first - 1]
        # the segments' graphs, traced again on the backbone itself: the tensors its forward
        # makes (constants of the trace) become buffers of it, not saved, moved with it
        traced = trace(backbone, source)
        for n in traced.graph.nodes:
            if n.op == 'get_attr' and not _has(backbone, n.target):
                backbone.register_buffer(n.target, getattr(traced, n.target), persistent=False)
        self.graphs = (segment(traced.graph, None, start), segment(traced.graph, start, end),
                       segment(traced.graph, end, None))
        self._compile()
        linears = [self.backbone.get_submodule(n.target) for n in self.graphs[2].nodes
                   if n.op == 'call_module']
        linears = [m for m in linears if isinstance(m, (nn.Linear, nn.Conv2d))]
        if not linears:
            raise ValueError('its head has no linear classifier to replace')
        self.classifier_path = next(p for p, m in backbone.named_modules() if m is linears[-1])
        if attention:
            self.att_stage = remove_graph_downsampling(self.segment(1))
            self._make_attention_head(split_at.channels[-1])
        self.cam_exact = False  # set by check_head once the weights exist

    def segment(self, index: int) -> fx.GraphModule:
        """Segment `index` (0 extractor, 1 last stage, 2 head) as a module of its own, on
        copies of the backbone's modules' references (for its weights: the attention stage)."""
        return copy.deepcopy(fx.GraphModule(self.backbone, self.graphs[index]))

    def _compile(self) -> None:
        """Each segment's code, a function run with the backbone as its `self` (its module
        paths are the backbone's): whatever copy of the backbone runs it, a replica of
        DataParallel's, a deepcopy, one moved by .to(), runs its own modules. Kept out of the
        module tree, so that each weight has one name."""
        self.__dict__['code'] = tuple(type(fx.GraphModule(self.backbone, graph)).forward
                                      for graph in self.graphs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop('code', None)  # functions of generated classes: made again on loading
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._compile()

    # -- the pieces of an AttentionBranchNetwork ------------------------------------------
    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.code[0](self.backbone, x)

    def feature_extractor_modules(self) -> list[nn.Module]:
        return [self.backbone.get_submodule(n.target) for n in self.graphs[0].nodes
                if n.op == 'call_module']

    @property
    def attention_stage(self) -> nn.Module:
        return self.att_stage

    def perception_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.code[1](self.backbone, features)

    @property
    def final_linear(self) -> nn.Module:
        return self.backbone.get_submodule(self.classifier_path)

    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        """The model's own head: its pooling, what follows it, its classifier."""
        return self.code[2](self.backbone, maps)

    # -- weights ---------------------------------------------------------------------------
    def copy_stage_to_attention(self) -> None:
        if self.has_attention:
            self.att_stage.load_state_dict(fx.GraphModule(self.backbone,
                                                          self.graphs[1]).state_dict())

    def check_head(self) -> bool:
        self.cam_exact = head_is_linear(self, None)
        return self.cam_exact
