"""Train and evaluate multi-task Attention Branch Networks (one attention map per attribute) on
CelebA, your own attribute CSV, or the offline shapes-multi demo; docs/multitask.md.

    python celeba.py -a mtabn_v1_resnet101 --data ~/dataset --pretrained -c checkpoints/celeba/r101
    python celeba.py -a mtabn_v1_resnet101 --data ~/dataset -e --resume checkpoint-best.pt
    python celeba.py --dataset shapes-multi -c checkpoints/shapes-multi/r18   # offline demo
    python celeba.py --dataset shapes-multi --attention-maps outputs/explain/edited_maps \
        --weights checkpoints/shapes-multi/r18/model_best.pth.tar -c checkpoints/shapes-multi/taught
"""
import os
import sys

import torch
import torchvision.transforms as T

from models import MULTITASK_MODELS
from utils.cli import ArgumentParser, add_architecture_arguments, run
from utils.data.attributes import (ATTRIBUTES_CSV, MAP_MODES, MULTI_IMAGE_SIZE, MULTI_SPLIT_SEEDS,
                                   AttributeFolder, CelebAAttributes, ShapesMultiDataset,
                                   read_attribute_csv)
from utils.data.datasets import DataBundle, first_n
from utils.errors import AbnError
from utils.train.engine import script_main
from utils.train.options import add_training_arguments
from utils.train.script import TrainingScript
from utils.train.teaching import add_teach_arguments, is_teaching
from utils.weights.pretrained import check_pretrained_arguments, init_multitask_pretrained

DATASETS = ('celeba', 'attributes', 'shapes-multi')
# The authors' recipe (their reproduction script): SGD lr 0.01, momentum 0.9, wd 1e-4, 10
# epochs, x0.1 after epochs 4 and 8, batch 8, 224x224 inputs in [0, 1] (no normalisation).
DEFAULTS = dict(epochs=10, train_batch=8, test_batch=64, schedule=[4, 8], weight_decay=1e-4)
NO_NORMALIZATION = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
SHAPES_MULTI_VALID_SEED = MULTI_SPLIT_SEEDS['test'] + 1  # a third generated split
MODEL_FLAGS = dict(width='width')


def get_args_parser():
    parser = ArgumentParser(description='Multi-task Attention Branch Network: CelebA and other '
                                        'attribute data (one attention map per attribute)')
    parser.add_argument('--dataset', default='celeba', choices=DATASETS,
                        help='celeba: torchvision\'s CelebA folder layout under --data; '
                             f'attributes: --data holds {ATTRIBUTES_CSV} (file, split, one 0/1 '
                             'column per attribute) and the images; shapes-multi: the offline '
                             'generated demo (default: %(default)s)')
    parser.add_argument('-d', '--data', default=None, metavar='DIR',
                        help='celeba: the folder holding celeba/; attributes: the folder of '
                             f'{ATTRIBUTES_CSV}')
    parser.add_argument('--image-size', default=None, type=int, metavar='PX',
                        help='images are resized to PX x PX (default: 224, the authors\'; '
                             f'shapes-multi: {MULTI_IMAGE_SIZE}, its own size)')
    add_training_arguments(parser, DEFAULTS)
    parser.set_defaults(lr=0.01)
    add_architecture_arguments(
        parser, sorted(MULTITASK_MODELS), arch='mtabn_v1_resnet18', gate='multiply',
        sizes={'width': None},
        helps={'gate': 'how map t gates the features for task t: multiply g*M_t (the authors\' '
                       'default and their published checkpoint) or residual g*(1+M_t)'},
        registry=MULTITASK_MODELS)
    parser.add_argument('--residual-attention', action='store_true',
                        help="the authors' flag: the same as --gate residual")
    parser.add_argument('--focal-loss', action='store_true',
                        help="the authors' weighted focal loss (gamma 2) on both branches, "
                             "weighted by the training split's positive shares, instead of BCE")
    parser.add_argument('--map-style', default='pos', choices=MAP_MODES,
                        help="attention pictures: pos (negative values at 0, the authors' "
                             "default), neg or both (default: %(default)s)")
    parser.add_argument('--map-tasks', default=8, type=int, metavar='K',
                        help='attention pictures show the maps of the first K tasks '
                             '(default: %(default)s; CelebA has 40)')
    start = parser.add_argument_group('pretrained weights (new runs)')
    start.add_argument('--pretrained', action='store_true',
                       help="start the backbone from torchvision's ImageNet weights (the "
                            "attention branch and the task heads start fresh, as the authors')")
    start.add_argument('--weights', default=None, metavar='PATH',
                       help='start from a local file instead: torchvision\'s state_dict (the '
                            'backbone), or a checkpoint of celeba.py (every weight; its '
                            'architecture options are taken from it)')
    add_teach_arguments(parser, weights=False)
    return parser


def image_size(args):
    if args.image_size is not None:
        return args.image_size
    return MULTI_IMAGE_SIZE if args.dataset == 'shapes-multi' else 224


def build_splits(args, transform, evaluate_only):
    """(train, valid, test) of --dataset; valid is None for an attribute CSV without one."""
    if args.dataset == 'shapes-multi':
        test_size = args.test_size or None
        train = ShapesMultiDataset(train=True, size=args.train_size, transform=transform)
        valid = None if evaluate_only else ShapesMultiDataset(
            train=False, size=test_size, transform=transform, seed=SHAPES_MULTI_VALID_SEED)
        test = ShapesMultiDataset(train=False, size=test_size, transform=transform)
        return train, valid, test
    if not args.data:
        raise AbnError(f'--dataset {args.dataset} needs --data DIR')
    if args.dataset == 'celeba':
        splits = [CelebAAttributes(args.data, split, transform)
                  for split in ('train', 'valid', 'test')]
        return tuple(splits)
    _, rows = read_attribute_csv(os.path.join(args.data, ATTRIBUTES_CSV))
    found = {split for _, split, _ in rows}
    valid = (AttributeFolder(args.data, 'valid', transform)
             if 'valid' in found and not evaluate_only else None)
    return (AttributeFolder(args.data, 'train', transform), valid,
            AttributeFolder(args.data, 'test', transform))


def build_data(args, evaluate_only, normalization):
    """No augmentation and no normalisation, as the authors: Resize((size, size)) + ToTensor.
    The training split is read also for -e: its positive shares weigh the focal loss."""
    size = image_size(args)
    mean, std = normalization or NO_NORMALIZATION
    steps = [T.Resize((size, size))] if args.dataset != 'shapes-multi' or size != \
        MULTI_IMAGE_SIZE else []
    steps.append(T.ToTensor())
    if normalization is not None and normalization != NO_NORMALIZATION:
        steps.append(T.Normalize(mean, std))
    train, valid, test = build_splits(args, T.Compose(steps), evaluate_only)
    names = list(test.attribute_names)
    for split, part in (('train', train), ('valid', valid)):
        if part is not None and list(part.attribute_names) != names:
            raise AbnError(f'the {split} and test splits name other attributes')
    train_targets = train.targets[:args.train_size] if args.train_size else train.targets
    name = args.dataset if args.dataset != 'attributes' else \
        os.path.basename(os.path.normpath(args.data))
    bundle = DataBundle(name, None if evaluate_only else first_n(train, args.train_size),
                        first_n(test, args.test_size), names, mean, std, size,
                        valid=first_n(valid, args.test_size))
    bundle.extras['attribute_targets'] = train_targets
    return bundle


def check_arguments(args):
    """celeba.py's checks of the command line, once --resume's file has supplied the options
    the user did not type."""
    if args.image_size is not None and args.image_size < 32:
        raise AbnError(f'--image-size {args.image_size} is too small: the models take images '
                       f'of at least 32 px')
    if 'gate' not in MULTITASK_MODELS.options_of(args.arch):
        args.baseline = True  # resnet18..152: the authors' plain multi-label baseline
    if args.width is not None and args.baseline:
        raise AbnError(f"--width {args.width}: the plain baseline is torchvision's ResNet, whose "
                       f"width is 64")
    if args.width is not None and args.width < 1:
        raise AbnError(f'--width must be positive, got {args.width}')
    if args.width not in (None, 64) and args.pretrained and not args.resume:
        raise AbnError(f"--pretrained: torchvision's ImageNet weights are for --width 64, not "
                       f"{args.width}")
    if is_teaching(args) and args.baseline:
        raise AbnError(f'{is_teaching(args)} teaches attention maps: {args.arch} is the plain '
                       f'multi-label baseline, without them (choose an mtabn_v1_* model)')
    if args.map_tasks < 1:
        raise AbnError('--map-tasks must be at least 1')
    if not args.resume:
        with torch.device('meta'):
            model = MULTITASK_MODELS.create(args.arch, num_classes=2, width=args.width,
                                            attention=not args.baseline, gate=args.gate)
        check_pretrained_arguments(args, model)


def resolve_gate(args, given):
    """--residual-attention is the authors' spelling of --gate residual."""
    if not args.residual_attention:
        return
    if given is not None and 'gate' in given and args.gate != 'residual':
        raise AbnError(f'--residual-attention contradicts --gate {args.gate}')
    args.gate = 'residual'
    if given is not None:
        given.add('gate')


class CelebaScript(TrainingScript):
    """celeba.py's attribute data, its objective (BCE, or the authors' focal loss), its
    checks and its pretrained start."""
    name, registry, model_flags = 'celeba', MULTITASK_MODELS, MODEL_FLAGS
    legacy_normalization = NO_NORMALIZATION
    objective, map_objective = 'multi-label', 'multi-label-attention-maps'

    def configured(self, args, given):
        resolve_gate(args, given)
        if args.focal_loss:
            focal = CelebaScript()
            focal.objective = 'multi-label-focal'
            return focal
        return self

    def build_data(self, args, evaluate_only, normalization):
        return build_data(args, evaluate_only, normalization)

    def check_arguments(self, args):
        check_arguments(args)

    def objective_options(self, args):
        return dict(map_style=args.map_style, max_tasks=args.map_tasks)

    def init_pretrained(self, model, args, runtime):
        init_multitask_pretrained(model, args, runtime)


SCRIPT = CelebaScript()


def main(argv=None):
    return script_main(get_args_parser(), SCRIPT, argv)


if __name__ == '__main__':
    sys.exit(run(main))
