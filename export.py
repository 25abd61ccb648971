"""A trained ABN as a file that runs without this repository: ONNX, a torch.export program
(.pt2) or safetensors weights.

    python export.py checkpoints/shapes/resnet-20/model_best.pth.tar -o abn.onnx --check
    python export.py CHECKPOINT -o abn.pt2 --with-preprocessing     # takes 0-255 RGB
    python export.py CHECKPOINT -o abn.safetensors                 # weights + model spec

ONNX and .pt2 take `image` (N, 3, S, S), any batch size, and give `attention_logits`, `logits`
and `attention_map` (multi-task: one map channel per attribute). The preprocessing they expect
(resize, crop, normalisation) is in the file's metadata; `--with-preprocessing` puts the
normalisation inside. `--check` runs the written file beside PyTorch and prints the largest
differences. The packages are optional: pip install -r requirements-export.txt.
docs/api.md shows how to run each file. The work is done in utils/weights/export.py.
"""
import os
import sys

import torch

from models import CIFAR_MODELS, IMAGENET_MODELS
from utils.cli import (CHECKPOINT_HELP, ArgumentParser, add_authors_architecture_arguments,
                       run)
from utils.cpus import check_threads, use_threads
from utils.data.datasets import SMALL_IMAGE_DATASETS, class_count
from utils.errors import AbnError
from utils.weights.export import FORMATS, SUFFIXES, TOLERANCE, check, export
from utils.weights.loading import architecture_options, load_model


def get_args_parser():
    parser = ArgumentParser(description='Export an ABN checkpoint to ONNX, torch.export (.pt2) '
                                        'or safetensors, with its attention map as an output')
    parser.add_argument('checkpoint', metavar='CHECKPOINT', help=CHECKPOINT_HELP)
    parser.add_argument('-o', '--output', metavar='FILE',
                        help='the file to write (default: the checkpoint\'s name with the '
                             'format\'s suffix, beside it)')
    parser.add_argument('-f', '--format', choices=FORMATS,
                        help='file format (default: from the suffix of --output, else onnx)')
    parser.add_argument('--with-preprocessing', action='store_true',
                        help='put the input normalisation inside the graph: the file takes '
                             'RGB in 0-255 (onnx, pt2)')
    parser.add_argument('--check', action='store_true',
                        help='run the written file on seeded inputs of batch 1 and 5 beside '
                             'PyTorch and print the largest differences (fails above '
                             f'{TOLERANCE:g} of the output\'s scale)')
    arch = add_authors_architecture_arguments(
        parser, sorted(set(CIFAR_MODELS) | set(IMAGENET_MODELS)), registry=IMAGENET_MODELS)
    parser.add_argument('--threads', type=int, metavar='N',
                        help='CPU threads (default: the CPUs this process may use: its affinity '
                             'and cgroup quota)')
    arch.add_argument('-d', '--dataset', choices=sorted(n for n in SMALL_IMAGE_DATASETS if class_count(n)),
                      help="the data set an authors' checkpoint was trained on (its classes)")
    return parser


def output_and_format(args):
    """(path, format) from -o and -f: either settles the other."""
    by_suffix = {suffix: name for name, suffix in SUFFIXES.items()}
    chosen = args.format
    if args.output:
        suffix = os.path.splitext(args.output)[1].lower()
        implied = by_suffix.get(suffix)
        if chosen and implied and implied != chosen:
            raise AbnError(f'-o {args.output} names a .{implied} file but --format is {chosen}')
        chosen = chosen or implied
        if chosen is None:
            raise AbnError(f'-o {args.output}: give the suffix of a format ('
                           f'{", ".join(SUFFIXES.values())}) or --format')
        return args.output, chosen
    chosen = chosen or 'onnx'
    stem = args.checkpoint[:-len('.pth.tar')] if args.checkpoint.endswith('.pth.tar') \
        else os.path.splitext(args.checkpoint)[0]
    return stem + SUFFIXES[chosen], chosen


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    check_threads(args.threads)
    threads = torch.get_num_threads()
    try:
        use_threads(args.threads)
        return export_command(args)
    finally:
        torch.set_num_threads(threads)  # a caller in this process gets its own back


def export_command(args):
    path, file_format = output_and_format(args)
    if os.path.abspath(path) == os.path.abspath(args.checkpoint):
        raise AbnError(f'-o {path} is the checkpoint itself: choose another file')
    loaded = load_model(args.checkpoint, **architecture_options(args))
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    print(f'exporting {loaded.description} to {path} ({file_format})', flush=True)
    export(loaded, path, file_format, args.with_preprocessing)
    print(f'wrote {path} ({os.path.getsize(path) / 2 ** 20:.1f} MiB)')
    if args.check:
        return report_check(loaded, path, file_format, args.with_preprocessing)
    return 0


def report_check(loaded, path, file_format, with_preprocessing):
    if file_format == 'safetensors':
        theirs = load_model(path).model.state_dict()
        ours = loaded.model.state_dict()
        same = ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
        if not same:
            raise AbnError(f'{path} does not give back the same weights')
        print(f'check: {len(ours)} tensors read back from {path}, bitwise identical')
        return 0
    worst = 0.0
    for batch, name, absolute, relative in check(loaded, path, file_format, with_preprocessing):
        print(f'check: batch {batch} {name:<16} largest difference {absolute:.2e} '
              f'({relative:.1e} of its scale)')
        worst = max(worst, relative)
    if worst > TOLERANCE:
        raise AbnError(f'{path} differs from PyTorch by {worst:.1e} of an output\'s scale '
                       f'(more than {TOLERANCE:g})')
    print(f'check: {path} agrees with PyTorch (within {TOLERANCE:g} of each output\'s scale)')
    return 0


if __name__ == '__main__':
    sys.exit(run(main))
