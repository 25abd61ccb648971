"""Train and evaluate Attention Branch Networks on ImageNet or any folder of images
(fine-grained or custom sets): --data holds train/ and val/, one sub-folder per class.

    python imagenet.py -a resnet50 --data ~/dataset/ILSVRC2012/ --epochs 90 --schedule 31 61 \\
        --gamma 0.1 -c checkpoints/imagenet/resnet50
    python imagenet.py -a resnet50 --data ~/dataset/ILSVRC2012/ \\
        --evaluate --resume checkpoints/imagenet/resnet50/model_best.pth.tar
"""
import os
import re
import sys

import torch
import torchvision.transforms as T

from models import IMAGENET_MODELS
from utils.cli import ArgumentParser, add_architecture_arguments, run
from utils.data.datasets import (
    NORMALIZATION,
    DataBundle,
    check_same_classes,
    first_n,
    image_folder_split,
)
from utils.errors import AbnError
from utils.train.engine import script_main
from utils.train.options import add_training_arguments
from utils.train.script import TrainingScript
from utils.train.teaching import add_teach_arguments
from utils.weights.pretrained import check_pretrained_arguments, init_pretrained
from utils.weights.resume import resolve_resume

IMAGENET_NORMALIZATION = NORMALIZATION['imagefolder']  # ImageNet's mean and std
# The authors' defaults, except the schedule: theirs (150 225) never fires in 90 epochs.
DEFAULTS = dict(epochs=90, train_batch=256, test_batch=200, schedule=[30, 60],
                weight_decay=1e-4)


def get_args_parser():
    parser = ArgumentParser(description='Attention Branch Network: ImageNet and other image '
                                        'folders (fine-grained, custom)')
    parser.add_argument('-d', '--data', required=True, metavar='DIR',
                        help='folder with train/ and val/, each with one sub-folder of images '
                             'per class')
    parser.add_argument('--image-size', default=224, type=int, metavar='PX',
                        help='side of the training crops and of the evaluation centre crop '
                             '(default: %(default)s)')
    parser.add_argument('--scale', default=(0.08, 1.0), type=float, nargs=2,
                        metavar=('LOW', 'HIGH'),
                        help="the training crops' share of the image's area, as timm's --scale "
                             "(default: 0.08 1, the authors' and torchvision's; images of one "
                             "small object want a higher LOW, or their crops miss it)")
    parser.add_argument('--resize-size', default=None, type=int, metavar='PX',
                        help='evaluation resizes the shorter side to PX before the centre crop '
                             '(default: image size x 256/224, so 256 at 224)')
    add_training_arguments(parser, DEFAULTS)
    arch = add_architecture_arguments(
        parser, sorted(IMAGENET_MODELS), arch='resnet18', gate='residual',
        sizes=dict(depth=None, cardinality=32, base_width=4, widen_factor=4),
        helps={'depth': "accepted for the authors' commands; the depth is part of -a "
                        "(resnet50, ...)",
               'widen_factor': "accepted for the authors' commands; no ImageNet model uses it"},
        registry=IMAGENET_MODELS)
    arch.add_argument('--split', type=int, default=None, metavar='STAGE',
                      help='-a timm:NAME and torchvision:NAME: the first stage of the attention '
                           'and perception branches, negative from the end (default: -1, the '
                           'last stage; vision transformers: -3, their last 3 blocks)')
    start = parser.add_argument_group('pretrained weights (new runs)')
    start.add_argument('--pretrained', action='store_true',
                       help="start from the library's ImageNet weights (torchvision's for the "
                            "authors' families; downloaded); the attention stage starts as a "
                            "copy of the last stage, the heads fresh")
    start.add_argument('--pretrained-file', default=None, metavar='PATH',
                       help="--pretrained from a local file of those weights (offline "
                            "machines): the file the library would download, e.g. timm's "
                            "model.safetensors or torchvision's resnet50-*.pth")
    start.add_argument('--weights', default=None, metavar='PATH',
                       help='start from a local file instead: a state_dict (torchvision\'s) '
                            'or a checkpoint of this project (every weight it fits)')
    add_teach_arguments(parser, weights=False)
    return parser


# builder argument -> flag (its args dest): what a checkpoint of imagenet.py records
MODEL_FLAGS = dict(cardinality='cardinality', base_width='base_width', split='split',
                   image_size='image_size')


def model_options(args):
    return {argument: getattr(args, dest) for argument, dest in MODEL_FLAGS.items()}


def resize_size(args):
    return args.resize_size or round(args.image_size * 256 / 224)


def check_arguments(args):
    """imagenet.py's checks of the command line alone, before any file is read; returns the
    model built on the meta device (no memory, no time)."""
    try:
        with torch.device('meta'):
            model = IMAGENET_MODELS.create(args.arch, num_classes=2, attention=not args.baseline,
                                           gate=args.gate, **model_options(args))
    except ValueError as error:
        raise AbnError(str(error)) from None
    if args.image_size < model.min_image_size:
        raise AbnError(f'--image-size {args.image_size} is too small for {args.arch}: it takes '
                       f'images of at least {model.min_image_size} px')
    low, high = args.scale
    if not 0 < low <= high <= 1:
        raise AbnError(f'--scale {low:g} {high:g}: give two shares of the image\'s area, '
                       f'0 < LOW <= HIGH <= 1')
    if resize_size(args) < args.image_size:
        raise AbnError(f'--resize-size {args.resize_size} is smaller than --image-size '
                       f'{args.image_size}: the centre crop would not fit')
    library = IMAGENET_MODELS.library_name(args.arch)
    if args.split is not None and library is None:
        raise AbnError(f'--split applies to the models of timm and torchvision (-a timm:NAME, '
                       f'-a torchvision:NAME); {args.arch} is split as the authors split it')
    if library is not None:
        if args.depth is not None:
            raise AbnError(f'--depth {args.depth} does not apply to {args.arch}: its size is '
                           f'part of its name')
        return model
    named_depth = int(re.search(r'\d+', args.arch).group())
    if args.depth is not None and args.depth != named_depth:
        raise AbnError(f'--depth {args.depth} contradicts -a {args.arch}: the depth is part of '
                       f'the architecture\'s name')
    return model


def imagenet_transforms(mean, std, image_size, resize, scale=(0.08, 1.0)):
    """The authors' (and torchvision's) ImageNet augmentation: random resized crops (of
    `scale` of the image's area) and flips for training; resize and centre crop for
    evaluation."""
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([T.RandomResizedCrop(image_size, scale=tuple(scale)),
                       T.RandomHorizontalFlip()] + tail)
    test = T.Compose([T.Resize(resize), T.CenterCrop(image_size)] + tail)
    return train, test


def build_data(args, evaluate_only, normalization):
    mean, std = normalization or IMAGENET_NORMALIZATION
    train_tf, test_tf = imagenet_transforms(mean, std, args.image_size, resize_size(args),
                                            args.scale)
    test = image_folder_split(args.data, ('val', 'test'), test_tf, args.skip_bad_images)
    train = None if evaluate_only else image_folder_split(
        args.data, ('train',), train_tf, args.skip_bad_images, role='training')
    check_same_classes(train, test, args.data)
    name = os.path.basename(os.path.normpath(args.data))
    return DataBundle(name, first_n(train, args.train_size), first_n(test, args.test_size),
                      list(test.classes), mean, std, args.image_size,
                      resize_size=resize_size(args))


class ImagenetScript(TrainingScript):
    """imagenet.py's image folders, its checks and its pretrained starts."""
    name, registry, model_flags = 'imagenet', IMAGENET_MODELS, MODEL_FLAGS
    legacy_normalization = IMAGENET_NORMALIZATION

    def build_data(self, args, evaluate_only, normalization):
        return build_data(args, evaluate_only, normalization)

    def check_arguments(self, args):
        """The command line's checks, once --resume's file has supplied the options the
        user did not type."""
        model = check_arguments(args)
        resolve_resume(args)
        if not args.resume:
            check_pretrained_arguments(args, model)

    def init_pretrained(self, model, args, runtime):
        init_pretrained(model, args, runtime)


SCRIPT = ImagenetScript()


def main(argv=None):
    return script_main(get_args_parser(), SCRIPT, argv)


if __name__ == '__main__':
    sys.exit(run(main))
