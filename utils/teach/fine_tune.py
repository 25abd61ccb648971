"""Teaching the map: fine-tune an ABN so that its attention map follows maps a person gave
(Mitsuhara et al., "Embedding Human Knowledge into Deep Neural Network via Attention Map",
the authors' follow-up). cifar.py, imagenet.py and celeba.py take `--attention-maps`:

    loss = L_att + L_per + gamma * L_map,  L_map = ||M'(x) - M(x)||_2^2 / (h w)

M the model's map, M' the given one (utils.teach.attention_maps), over the training images
that have a map; the others train with L_att + L_per only. celeba.py's maps are given per
attribute (utils.teach.task_maps) and compared as patterns (utils.objectives.task_maps). As in
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
import dataclasses
import os

from utils.distributed import print_main
from utils.errors import AbnError
from utils.teach.attention_maps import WithAttentionMaps, load_map_set, map_device_loader
from utils.teach.task_maps import is_multitask, load_task_map_set
from utils.train.engine import main as engine_main
from utils.weights import checkpoint as ckpt
from utils.weights.loading import file_spec

DEFAULT_MAP_LOSS_WEIGHT = 10.0
NAME = 'attention-maps'


# -- the command line and the task ----------------------------------------------------------

def add_teach_arguments(parser, weights=True):
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
    group.add_argument('--map-loss-weight', type=float, metavar='GAMMA',
                       help=f'gamma of the map loss (default: {DEFAULT_MAP_LOSS_WEIGHT:g})')
    group.add_argument('--train-feature-extractor', action='store_true',
                       help='also train the feature extractor (default: fixed, as in the paper)')
    if weights:
        group.add_argument('--weights', metavar='PATH',
                           help='start a new run from the weights of a checkpoint (of this '
                                'project or the authors\'), with a fresh optimizer and epoch 0')
    return parser


def check_teach_arguments(args):
    """One-line refusals of options that cannot work together; sets the weight's default."""
    teaching = bool(args.attention_maps)
    if not teaching:
        for flag, value in (('--map-loss-weight', args.map_loss_weight),
                            ('--train-feature-extractor', args.train_feature_extractor)):
            if value:
                raise AbnError(f'{flag} needs --attention-maps')
        return
    if args.baseline:
        raise AbnError('--attention-maps needs an attention branch: drop --baseline')
    if args.evaluate:
        raise AbnError('--attention-maps is for training; evaluate without it')
    if args.map_loss_weight is None:
        args.map_loss_weight = DEFAULT_MAP_LOSS_WEIGHT
    if args.map_loss_weight < 0:
        raise AbnError('--map-loss-weight must not be negative')


def teaching_task(task, args):
    """`task` with --weights (cifar.py: the file's weights and input normalisation) and, with
    --attention-maps, the maps attached to its training data, the map objective and the
    frozen feature extractor."""
    build_data, fast_train = task.build_data, task.fast_train_loader
    own_weights = task.init_pretrained is None  # cifar.py: --weights is this module's

    def build(args, evaluate_only, normalization):
        if normalization is None and own_weights and getattr(args, 'weights', None) \
                and not args.resume:
            normalization = weights_normalization(args.weights, task.legacy_normalization)
        bundle = build_data(args, evaluate_only, normalization)
        if bundle.train is not None and args.attention_maps:
            load = load_task_map_set if is_multitask(bundle.train) else load_map_set
            maps = load(args.attention_maps, bundle.train, bundle.name)
            bundle.train = WithAttentionMaps(bundle.train, maps)
            record = maps.record()
            args.attention_maps_count = record['count']
            args.attention_maps_images = [str(key) for key in record['images']]
            unused, held_out = getattr(maps, 'unused', 0), getattr(maps, 'held_out', 0)
            what = (f'{record["count"]} maps of {len(record["images"])} of' if record['count']
                    != len(record['images']) else f'{record["count"]} of')
            print_main(f'    attention maps: {what} {len(bundle.train)} training images, from '
                  f'{record["source"]}'
                  + (f' ({unused} more name images outside --train-size)' if unused else '')
                  + (f' ({held_out} of held-out splits left out)' if held_out else ''))
        return bundle

    def fast_train_loader(args, bundle, runtime):
        if not getattr(args, 'fast_data', False) or not isinstance(bundle.train,
                                                                    WithAttentionMaps):
            return fast_train(args, bundle, runtime) if fast_train else None
        loader, reason = map_device_loader(bundle.train, args.train_batch, runtime,
                                           args.manualSeed)
        if loader is None:
            runtime.print(f'note: --fast-data is ignored for training ({reason})')
        return loader

    def prepare_model(model, args, runtime):
        if not args.train_feature_extractor:
            from models.abn import freeze_feature_extractor
            try:
                count = freeze_feature_extractor(model)
            except NotImplementedError:
                raise AbnError(f'{type(model).__name__} does not list its feature extractor: '
                               f'pass --train-feature-extractor') from None
            runtime.print(f'    feature extractor fixed: {count / 1e6:.2f}M parameters')

    def objective_options(args):
        options = dict(task.objective_options(args)) if task.objective_options else {}
        options['weight'] = args.map_loss_weight
        if task.objective == 'multi-label-focal':  # the map objective adds the map loss to it
            options['focal'] = True
        return options

    started = dataclasses.replace(task, build_data=build,
                                  init_pretrained=init_from_weights(task.init_pretrained))
    if not args.attention_maps:
        return started
    return dataclasses.replace(
        started, fast_train_loader=fast_train_loader, objective=task.map_objective,
        objective_options=objective_options, prepare_model=prepare_model)


def main(parser, task, argv=None):
    """The `main` of cifar.py and imagenet.py: their options parsed, the map teaching set up
    where --attention-maps asks for it, then the engine."""
    args = parser.parse_args(argv)
    check_teach_arguments(args)
    return engine_main(args, teaching_task(task, args), parser.given_options(argv))


def weights_normalization(path, legacy_normalization):
    """The input normalisation the model in `path` was trained with: the authors' for their
    files, the recorded one for this project's (None: the data set's own)."""
    if not os.path.isfile(path):
        raise AbnError(f'--weights {path}: no such file')
    saved, spec = file_spec(path)
    if ckpt.is_legacy(saved):
        return legacy_normalization
    return spec.normalization if spec is not None else None


def init_from_weights(init_pretrained):
    """A new run's start: the task's own (imagenet.py's --pretrained/--weights), else the
    strict load of --weights (cifar.py)."""
    def init(model, args, runtime):
        if init_pretrained is not None:
            return init_pretrained(model, args, runtime)
        return load_weights(model, args, runtime)
    return init


def load_weights(model, args, runtime):
    """cifar.py --weights: every weight of the checkpoint, which must fit the model."""
    path = getattr(args, 'weights', None)
    if not path:
        return
    if not os.path.isfile(path):
        raise AbnError(f'--weights {path}: no such file')
    saved, spec = file_spec(path)
    gate = spec.gate if spec is not None else None
    if gate is not None and gate != model.gate:  # not in the weights: they would load
        raise AbnError(f'--weights {path} was trained with --gate {gate}, not {model.gate}: '
                       f'pass --gate {gate}')
    ckpt.load_model_state(model, saved, path, type(model).__name__)
    runtime.print(f'==> Weights: {path}')

