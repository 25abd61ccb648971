"""Teaching the map, as the engine adds it to a run given `--attention-maps`: fine-tune an ABN
so that its attention map follows maps a person gave (Mitsuhara et al., "Embedding Human
Knowledge into Deep Neural Network via Attention Map", the authors' follow-up):

    loss = L_att + L_per + gamma * L_map,  L_map = ||M'(x) - M(x)||_2^2 / (h w)

M the model's map, M' the given one (utils.teach.attention_maps), over the training images
that have a map; the others train with L_att + L_per only. celeba.py's maps are given per
attribute (utils.teach.layouts) and compared as patterns (utils.objectives.task_map_loss). As in
the paper the feature extractor stays fixed (`--train-feature-extractor` trains it too) and
the run starts from trained weights (`--weights FILE`, or `--resume` of a fine-tuning run).

Why the mean squared difference, and gamma = 10 (docs/teach.md has the measurements):
- it is the paper's L2 norm, squared so that its gradient shrinks to 0 at the target (the
  plain norm's gradient has length gamma everywhere, and jitters around the target), and
  divided by the map's pixels, so that gamma means the same at 8x8, 16x16 or 14x14;
- both maps are in [0, 1], so L_map is in [0, 1]: about 0.1 to 0.3 for an untaught map
  against object masks, while a trained model's L_att + L_per is about 0.1. gamma = 10 makes
  the map the larger part of the loss while it is learnt, and leaves the classification
  terms a say (on `shapes`: gamma L_map 0.56 over the epoch, L_att + L_per 0.12);
- it is averaged over the images that have a map, not over the batch, so the pull on each
  given map does not depend on how many images have one (1% of maps means fewer steps that
  teach, not weaker ones).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from utils.distributed import print_main
from utils.errors import AbnError
from utils.objectives import OBJECTIVES
from utils.objectives.map_loss import DEFAULT_MAP_LOSS_WEIGHT
from utils.objectives.teaching_methods import (DEFAULT_METHOD, DEFAULT_RRR_WEIGHT,
                                               TEACHING_METHODS)
from utils.teach.attention_maps import WithAttentionMaps, load_map_set, map_device_loader
from utils.teach.boxes import load_box_map_set
if TYPE_CHECKING:
    import argparse

    import torch.nn as nn

    from utils.data.datasets import DataBundle
    from utils.data.fastdata import DeviceLoader
    from utils.distributed import Runtime
    from utils.train.script import TrainingScript


def add_teach_arguments(parser: argparse.ArgumentParser,
                        weights: bool = True) -> argparse.ArgumentParser:
    """--attention-maps, --map-loss-weight, --train-feature-extractor (and --weights, for a
    script that has none)."""
    group = parser.add_argument_group(
        'teaching the map (fine-tuning with given attention maps, Mitsuhara et al.)')
    group.add_argument('--attention-maps', metavar='DIR',
                       help='grayscale maps (white: attend) for some training images, laid out '
                            'like them: DIR/<class>/<image stem>.png for image folders, '
                            'DIR/<index>.png for the built-in sets, DIR/<attribute>/train/<index '
                            'or stem>.png per attribute for celeba.py (the attention editor\'s '
                            'layout); any size. shapes-masks:P%% takes the shapes (or '
                            'shapes-multi) object masks of a seeded P%% of the images')
    group.add_argument('--attention-boxes', metavar='FILE',
                       help='bounding boxes (white inside) for some training images instead of '
                            'maps: a CSV with the header image,x0,y0,x1,y1 (the image\'s own '
                            'pixels; image: an index of the training split or a path like '
                            'train/<class>/<file>; celeba.py: an attribute column too), or a '
                            'folder of Pascal VOC .xml files')
    group.add_argument('--box-refine', choices=('grabcut', 'none'),
                       help='grabcut: cut each box into its object with GrabCut once, at the '
                            'start, and teach those masks as maps (the default with '
                            '--attention-boxes); none: teach the boxes as they are, by their '
                            'projections')
    group.add_argument('--map-loss-weight', type=float, metavar='GAMMA',
                       help=f'gamma of the map loss (default: {DEFAULT_MAP_LOSS_WEIGHT:g})')
    group.add_argument('--teach-by', choices=sorted(TEACHING_METHODS), metavar='METHOD',
                       help='how the maps govern the decision: counterfactual (each image with '
                            'a map also shown with everything outside it from another image; '
                            'the default), rrr (input gradients outside the maps penalised, '
                            'Ross et al.), map (the map loss alone with the extractor fixed: '
                            'the paper\'s setting, and celeba.py\'s only one)')
    group.add_argument('--rrr-weight', type=float, metavar='LAMBDA',
                       help=f'with --teach-by rrr: the weight of the input-gradient penalty '
                            f'(default: {DEFAULT_RRR_WEIGHT:g})')
    group.add_argument('--train-feature-extractor', action='store_true',
                       help='also train the feature extractor with --teach-by map (fixed by '
                            'default, as in the paper; the other methods always train it)')
    if weights:
        group.add_argument('--weights', metavar='PATH',
                           help='start a new run from the weights of a checkpoint (of this '
                                'project or the authors\'), with a fresh optimizer and epoch 0')
    return parser


def is_teaching(args: argparse.Namespace) -> str | None:
    """The option that asks for map teaching ('--attention-maps', '--attention-boxes'), or
    None."""
    if getattr(args, 'attention_maps', None):
        return '--attention-maps'
    if getattr(args, 'attention_boxes', None):
        return '--attention-boxes'
    return None


def check_teach_arguments(args: argparse.Namespace) -> None:
    """One-line refusals of options that cannot work together; sets the weight's default."""
    teaching = is_teaching(args)
    if getattr(args, 'attention_maps', None) and getattr(args, 'attention_boxes', None):
        raise AbnError('give one of --attention-maps and --attention-boxes (to teach from both, '
                       'draw the boxes as maps)')
    if getattr(args, 'box_refine', None) and not getattr(args, 'attention_boxes', None):
        raise AbnError(f'--box-refine {args.box_refine} needs --attention-boxes')
    if getattr(args, 'attention_boxes', None) and not args.box_refine:
        args.box_refine = 'grabcut'
    if not teaching:
        for flag, value in (('--map-loss-weight', getattr(args, 'map_loss_weight', None)),
                            ('--teach-by', getattr(args, 'teach_by', None)),
                            ('--rrr-weight', getattr(args, 'rrr_weight', None)),
                            ('--train-feature-extractor',
                             getattr(args, 'train_feature_extractor', False))):
            if value:
                raise AbnError(f'{flag} needs --attention-maps (or --attention-boxes)')
        return
    if args.baseline:
        raise AbnError(f'{teaching} needs an attention branch: drop --baseline')
    if args.evaluate:
        raise AbnError(f'{teaching} is for training; evaluate without it')
    if args.map_loss_weight is None:
        args.map_loss_weight = DEFAULT_MAP_LOSS_WEIGHT
    if args.map_loss_weight < 0:
        raise AbnError('--map-loss-weight must not be negative')
    if args.rrr_weight is not None and args.teach_by != 'rrr':
        raise AbnError('--rrr-weight needs --teach-by rrr')
    if args.rrr_weight is not None and args.rrr_weight < 0:
        raise AbnError('--rrr-weight must not be negative')
    if args.teach_by == 'rrr' and args.compile:
        raise AbnError('--teach-by rrr takes the gradient of a gradient, which torch.compile '
                       'does not: drop --compile')


class MapTeaching:
    """The add-on of a teaching run, which the training set-up calls at four points of its
    own: the objective (the script's map objective, the script's options and the map's), the
    data (the given maps attached to the training split), the model (the frozen feature
    extractor, where the method keeps it) and the fast training loader (the maps on the
    device with the images). The script itself is not wrapped: it keeps its own hooks."""

    def __init__(self, script: TrainingScript) -> None:
        self.script = script
        self.objective = script.map_objective

    def attach_maps(self, bundle: DataBundle, args: argparse.Namespace) -> DataBundle:
        """The training split with its given maps (or boxes' maps), said in one line."""
        if bundle.train is None:
            return bundle
        if args.attention_maps:
            maps = load_map_set(args.attention_maps, bundle.train, bundle.name)
        else:
            maps = load_box_map_set(args.attention_boxes, bundle.train, args.box_refine)
        bundle.train = WithAttentionMaps(bundle.train, maps)
        record = maps.record()
        args.attention_maps_count = record['count']
        args.attention_maps_images = [str(key) for key in record['images']]
        unused, held_out = maps.unused, maps.held_out
        what = (f'{record["count"]} maps of {len(record["images"])} of' if record['count']
                != len(record['images']) else f'{record["count"]} of')
        kind = 'attention maps' if args.attention_maps else 'attention boxes'
        print_main(f'    {kind}: {what} {len(bundle.train)} training images, from '
                   f'{record["source"]}'
                   + (f' ({unused} more name images outside --train-size)' if unused else '')
                   + (f' ({held_out} of held-out splits left out)' if held_out else ''))
        return bundle

    def objective_options(self, args: argparse.Namespace,
                          own: dict[str, Any] | None) -> dict[str, Any]:
        """The map objective's options: the script's `own`, the weight and the method."""
        options = dict(own or {})
        options['weight'] = args.map_loss_weight
        taught = OBJECTIVES[self.script.objective]  # the script's objective, taught its maps
        multitask = taught.kind.per_attribute
        if args.teach_by is None:
            args.teach_by = 'map' if multitask else DEFAULT_METHOD
        if multitask:
            if args.teach_by != 'map':
                raise AbnError(f'--teach-by {args.teach_by} is for single-label runs: a '
                               f'multi-task image has a map per attribute, and one input '
                               f'cannot hide a different outside for each (use --teach-by map)')
        else:
            options['method'] = args.teach_by
            if args.train_feature_extractor and args.teach_by != 'map':
                raise AbnError(f'--teach-by {args.teach_by} always trains the feature extractor: '
                               f'drop --train-feature-extractor')
            if args.rrr_weight is not None:
                options['rrr_weight'] = args.rrr_weight
        if args.attention_boxes and args.box_refine == 'none' and not multitask:
            options['boxes'] = True  # boxes compared by their projections
        if taught.focal_loss:  # the map objective adds the map loss to the focal loss
            options['focal'] = True
        return options

    def prepare_model(self, model: nn.Module, args: argparse.Namespace,
                      runtime: Runtime) -> None:
        """After the script's own preparation: the method said, the extractor frozen."""
        if args.teach_by == 'rrr' and runtime.distributed:
            # DistributedDataParallel reduces gradients as backward passes reach the weights;
            # a gradient of a gradient is not what its hooks expect (its documentation).
            raise AbnError('--teach-by rrr runs in one process (torchrun splits a batch across '
                           'processes, whose gradient of a gradient DistributedDataParallel does '
                           'not reduce): run it without torchrun, or use --teach-by '
                           'counterfactual')
        runtime.print(f'    teaching by {args.teach_by}: {TEACHING_METHODS[args.teach_by].summary}')
        if args.train_feature_extractor or TEACHING_METHODS[args.teach_by].trains_extractor:
            return
        from models.abn import freeze_feature_extractor
        try:
            count = freeze_feature_extractor(model)
        except NotImplementedError:
            raise AbnError(f'{type(model).__name__} does not list its feature extractor: '
                           f'pass --train-feature-extractor') from None
        runtime.print(f'    feature extractor fixed: {count / 1e6:.2f}M parameters')

    def fast_train_loader(self, args: argparse.Namespace, data: DataBundle,
                          runtime: Runtime) -> DeviceLoader | None:
        """The fast path's training loader, the maps beside the images, or None."""
        if not getattr(args, 'fast_data', False):
            return None
        loader, reason = map_device_loader(data.train, args.train_batch, runtime,
                                           args.manualSeed)
        if loader is None:
            runtime.print(f'note: --fast-data is ignored for training ({reason})')
        return loader


def map_teaching(script: TrainingScript, args: argparse.Namespace) -> MapTeaching | None:
    """The teaching add-on of a run given --attention-maps (--attention-boxes), or None."""
    return MapTeaching(script) if is_teaching(args) else None
