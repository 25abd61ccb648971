"""Look at and measure what an Attention Branch Network attends to, for any image.

    python explain.py CHECKPOINT photo.png folder/ -o outputs/explain
    python explain.py CHECKPOINT --dataset shapes -n 500 --compare --measure \\
        --baseline-checkpoint checkpoints/shapes/resnet-20-baseline/model_best.pth.tar
    python explain.py CHECKPOINT photo.png --edit edited_map.png
    python explain.py CHECKPOINT --serve --dataset shapes     # the attention editor page

For each image: the input, the ABN attention map, their overlay and the top-5 classes
(`NNNN_<name>.png`), the map itself as an editable grayscale PNG (`maps/`), and one
grid for all; `predictions.json` holds the top-5 of every image. `--compare` adds CAM and
Grad-CAM of the model's perception branch (and of `--baseline-checkpoint`'s model);
`--measure` scores every map (pointing game and energy inside the object where the data has
object masks, deletion/insertion AUC everywhere) into metrics.json/.md/.png. `--edit MAP`
runs the perception branch on an edited map and shows how the prediction changes.
`--serve` starts a local page (utils/serve, docs/serve.md) to do all of it by hand: look,
paint on the map, see the prediction change, save the map as training data.

Checkpoints written by cifar.py, imagenet.py and celeba.py describe themselves (those of
celeba.py get one map per task: utils/explain/multitask.py). The authors' checkpoints do not:
give the architecture options of cifar.py (-a, --depth, ...) and --num-classes or --dataset.
The work is done in utils/explain; this file is the command line.
"""
import sys

import torch

from models import CIFAR_MODELS, IMAGENET_MODELS
from utils.cli import (CHECKPOINT_HELP, ArgumentParser, add_authors_architecture_arguments,
                       run)
from utils.cpus import check_threads, use_threads
from utils.data.datasets import SMALL_IMAGE_DATASETS
from utils.explain.measures import ROAD_PERCENTILES
from utils.explain.multitask import MultitaskReport
from utils.explain.run import ExplanationReport, check_arguments
from utils.inference import RUNTIMES
from utils.kinds import PER_ATTRIBUTE, SINGLE_LABEL
from utils.serve.options import add_page_arguments
from utils.weights.loading import architecture_options, load_model


def get_args_parser():
    parser = ArgumentParser(description='Attention maps, CAM and Grad-CAM of an ABN for any '
                                        'image, and measures of them')
    parser.add_argument('checkpoint', metavar='CHECKPOINT', help=CHECKPOINT_HELP)
    parser.add_argument('inputs', nargs='*', metavar='IMAGE',
                        help='image files and folders (searched recursively)')
    source = parser.add_argument_group('inputs')
    source.add_argument('-d', '--dataset', choices=SMALL_IMAGE_DATASETS + ('shapes-multi',),
                        help="explain this data set's test split instead of image files (its "
                             "class count also serves the authors' checkpoints)")
    source.add_argument('--data', default='./data', metavar='DIR',
                        help='where the data set is (as in cifar.py; default: %(default)s)')
    source.add_argument('-n', '--num-images', type=int, metavar='N',
                        help='only the first N images (default: all)')
    source.add_argument('--batch-size', type=int, default=64, metavar='N',
                        help='images per batch (default: %(default)s)')

    out = parser.add_argument_group('what to do')
    out.add_argument('-o', '--output', default='outputs/explain', metavar='DIR',
                     help='folder for the pictures and results (default: %(default)s)')
    out.add_argument('--compare', action='store_true',
                     help='draw CAM and Grad-CAM of the perception branch beside the ABN map')
    out.add_argument('--baseline-checkpoint', metavar='PATH',
                     help='a plain (no attention branch) model of the same classes: its CAM and '
                          'Grad-CAM are drawn and measured too')
    out.add_argument('--measure', action='store_true',
                     help='score every map: pointing game and energy inside the object (data '
                          'with object masks: shapes), deletion/insertion AUC (all data)')
    out.add_argument('--masks', metavar='DIR',
                     help='object masks for --measure on any images (white = object, any size; '
                          'DIR/<index>.png for a data set\'s test split, DIR/<class>/<stem>.png '
                          'or DIR/<stem>.png for image files): the pointing game and energy '
                          'inside the object are scored where an image has one')
    out.add_argument('--pointing-tolerance', type=int, metavar='PX',
                     help='pixels around the object that still count as a hit in the tolerant '
                          'pointing game (default: 15 at 224 px, scaled: 2 at 32 px)')
    out.add_argument('--target-class', metavar='CLASS',
                     help="the class CAM and Grad-CAM explain: a class name or index, or 'true' "
                          "for each image's label where it is known (default: each image's "
                          "prediction). The ABN map does not depend on a class")
    out.add_argument('--task', default='all', metavar='NAME',
                     help="checkpoints of celeba.py: the task (attribute) whose maps are drawn "
                          "and measured, a comma-separated list, or all (default: %(default)s)")
    out.add_argument('--map-style', default='pos', choices=('pos', 'neg', 'both'),
                     help="checkpoints of celeba.py: the authors' picture of the unbounded "
                          "maps (default: %(default)s)")
    out.add_argument('--steps', type=int, default=16, metavar='N',
                     help='deletion/insertion steps (default: %(default)s)')
    out.add_argument('--road-percentiles', default=','.join(map(str, ROAD_PERCENTILES)),
                     metavar='P,P,...',
                     help="ROAD's percentiles, 1..99 ('none': no ROAD, the slowest measure; "
                          "default: %(default)s)")
    out.add_argument('--edit', nargs='+', metavar='MAP',
                     help='grayscale map image(s) (white: attend) to run the perception branch '
                          'on instead of the model\'s own map: one for every input, or one per '
                          'input; e.g. an edited copy of a map from maps/')
    out.add_argument('--save-images', default='16', metavar='N',
                     help="pictures of the first N images ('all' for every one; default: "
                          "%(default)s); the grid shows them too")
    out.add_argument('--seed', type=int, default=0,
                     help='seed of the random map and of tie-breaking (default: %(default)s)')
    out.add_argument('--gpu-id', default='0',
                     help="CUDA device id, or 'cpu' (default: %(default)s)")
    out.add_argument('--runtime', default='auto', choices=RUNTIMES,
                     help='what runs the model where no gradient is needed (the measures\' '
                          'many predictions): onnxruntime when installed, else the model with '
                          'BatchNorm folded; eager: the model itself (default: %(default)s)')
    out.add_argument('--threads', type=int, metavar='N',
                     help='CPU threads (default: the CPUs this process may use: its affinity '
                          'and cgroup quota)')

    add_page_arguments(parser)
    add_authors_architecture_arguments(parser, sorted(set(CIFAR_MODELS) | set(IMAGENET_MODELS)),
                                       registry=IMAGENET_MODELS)
    return parser


# The report of each kind of model (utils.kinds): celeba.py's draws and measures a map a task.
REPORTS = {SINGLE_LABEL.name: ExplanationReport, PER_ATTRIBUTE.name: MultitaskReport}


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    check_threads(args.threads)
    threads = torch.get_num_threads()
    try:
        return explain(args)
    finally:
        torch.set_num_threads(threads)  # a caller in this process gets its own back


def explain(args):
    if args.serve:  # the attention editor's page: utils/serve (it chooses its threads)
        from utils.serve.server import serve_command
        return serve_command(args)
    use_threads(args.threads)
    check_arguments(args)
    loaded = load_model(args.checkpoint, **architecture_options(args))
    return REPORTS[loaded.kind.name](args, loaded).write()


if __name__ == '__main__':
    sys.exit(run(main))
