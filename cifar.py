"""Train and evaluate Attention Branch Networks on CIFAR-10/100, SVHN, the offline `shapes`
set, or a folder of small images.

    python cifar.py -a resnet --dataset cifar100 --depth 110 --epochs 300 --schedule 150 225 \\
        --gamma 0.1 --wd 1e-4 --checkpoint checkpoints/cifar100/resnet-110 --gpu-id 0
    python cifar.py ... --evaluate --resume checkpoints/cifar100/resnet-110/model_best.pth.tar
    python cifar.py ... --fast                              # the fast path (BENCHMARKS.md)
    python cifar.py ... --weights FILE --attention-maps DIR # teach the map (docs/teach.md)
    torchrun --standalone --nproc_per_node=4 cifar.py ...   # DistributedDataParallel
"""
import sys

from models import CIFAR_MODELS
from utils.cli import ArgumentParser, add_architecture_arguments, run
from utils.data.datasets import AUTHORS_NORMALIZATION, SMALL_IMAGE_DATASETS, build_small_image_data
from utils.data.fastdata import device_loader
from utils.train.engine import script_main
from utils.train.options import add_training_arguments
from utils.train.script import TrainingScript
from utils.train.teaching import add_teach_arguments
from utils.weights.pretrained import load_checkpoint_weights, weights_normalization

DEFAULTS = dict(epochs=300, train_batch=128, test_batch=100, schedule=[150, 225],
                weight_decay=5e-4)


def get_args_parser():
    parser = ArgumentParser(description='Attention Branch Network: CIFAR-10/100, SVHN, shapes '
                                        'and small-image folders')
    parser.add_argument('-d', '--dataset', default='cifar10', choices=SMALL_IMAGE_DATASETS,
                        help='data set (default: %(default)s); shapes is generated offline')
    parser.add_argument('--data', default='./data', metavar='DIR',
                        help='where CIFAR/SVHN are (downloaded if missing), or for imagefolder '
                             'the folder with train/ and val/ (or test/) (default: %(default)s)')
    parser.add_argument('--image-size', default=32, type=int, metavar='PX',
                        help='imagefolder only: images are resized to PX x PX (default: 32)')
    add_training_arguments(parser, DEFAULTS)
    add_architecture_arguments(
        parser, sorted(CIFAR_MODELS), arch='resnet', gate='residual',
        sizes=dict(depth=None, cardinality=8, widen_factor=4, growthRate=12, compressionRate=2),
        helps={'depth': 'model depth (default: resnet 110, densenet 100, wrn 28, resnext 29)'},
        registry=CIFAR_MODELS)
    fast = parser.add_argument_group('fast path (opt-in; the default is the authors\' setup)')
    fast.add_argument('--fast-data', action='store_true',
                      help='CIFAR/SVHN/shapes: hold the data on the training device and crop, '
                           'flip and normalise whole batches there (no worker processes)')
    add_teach_arguments(parser)
    return parser


# builder argument -> flag (its args dest): what a checkpoint of cifar.py records
MODEL_FLAGS = dict(depth='depth', cardinality='cardinality', widen_factor='widen_factor',
                   growthRate='growthRate', compressionRate='compressionRate', dropRate='drop')


class CifarScript(TrainingScript):
    """cifar.py's data sets and fast path; a new run may start from --weights, every weight
    of a checkpoint, with the normalisation that file was trained with."""
    name, registry, model_flags = 'cifar', CIFAR_MODELS, MODEL_FLAGS
    legacy_normalization = AUTHORS_NORMALIZATION

    def build_data(self, args, evaluate_only, normalization):
        if normalization is None and args.weights and not args.resume:
            normalization = weights_normalization(args.weights, self.legacy_normalization)
        return build_small_image_data(args.dataset, args.data, args.train_size, args.test_size,
                                      evaluate_only, args.image_size, args.skip_bad_images,
                                      normalization)

    def init_pretrained(self, model, args, runtime):
        if args.weights:
            load_checkpoint_weights(model, args.weights, runtime)

    def fast_train_loader(self, args, data, runtime):
        return fast_loader(args, data, runtime, train=True)

    def fast_eval_loader(self, args, data, runtime):
        return fast_loader(args, data, runtime, train=False)


def fast_loader(args, bundle, runtime, train):
    """--fast-data: a device-resident loader, or None (the standard loader) where the data
    set is not one it can reproduce."""
    if not args.fast_data:
        return None
    dataset, batch = (bundle.train, args.train_batch) if train else (bundle.test,
                                                                     args.test_batch)
    loader, reason = device_loader(dataset, batch, runtime, args.manualSeed, train)
    if loader is None:
        runtime.print(f'note: --fast-data is ignored for {args.dataset} '
                      f'{"training" if train else "evaluation"} ({reason})')
    return loader


SCRIPT = CifarScript()


def main(argv=None):
    return script_main(get_args_parser(), SCRIPT, argv)


if __name__ == '__main__':
    sys.exit(run(main))
