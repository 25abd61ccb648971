"""Command-line plumbing of the scripts (cifar.py, imagenet.py, celeba.py, explain.py): an
argparse with one-line errors, the architecture flags, and `run`, which turns AbnError into one
line and an exit status. Only the scripts import this module; the training options are
utils.train.options."""
import argparse

from utils.errors import AbnError, run  # noqa: F401  (the scripts' one import of both)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: the authors' option lists are long, and a wall of
    usage text hides the line that matters."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')

    def given_options(self, argv=None):
        """The dests the command line sets itself (not by default): parsed once more with
        every default suppressed, so a flag typed with its default value counts as typed."""
        saved = [(action, action.default) for action in self._actions]
        try:
            for action, _ in saved:
                if action.dest != 'help':
                    action.default = argparse.SUPPRESS
            return set(vars(self.parse_args(argv)))
        finally:
            for action, default in saved:
                action.default = default


# The size options of the model families: flag and help. Each script takes those its
# families use (explain.py all of the CIFAR ones, for the authors' checkpoints).
SIZE_OPTIONS = {
    'depth': ('--depth', 'model depth'),
    'cardinality': ('--cardinality', 'ResNeXt cardinality (groups)'),
    'base_width': ('--base-width', 'ResNeXt width per group'),
    'widen_factor': ('--widen-factor', 'WRN/ResNeXt widen factor. 4 -> 64, 8 -> 128, ...'),
    'growthRate': ('--growthRate', 'growth rate for DenseNet'),
    'compressionRate': ('--compressionRate', 'compression rate (theta) for DenseNet'),
    'width': ('--width', "channels of the multi-task ResNet's first stage (default: 64, the "
                         "authors'; 16 trains about 9x faster on a CPU)"),
}


def add_architecture_arguments(parser, arch_names, sizes, arch=None, gate=None, baseline=True,
                               helps=None, title='architecture'):
    """-a/--arch, --gate, --baseline and the size options (`sizes`: dest -> default, None
    where the script decides later) of cifar.py, imagenet.py and explain.py. `helps`
    replaces a help text (dest -> text) where a script means something else by it."""
    helps = helps or {}
    group = parser.add_argument_group(title)
    shown = f' (default: {arch})' if arch else ''
    group.add_argument('--arch', '-a', metavar='ARCH', default=arch, choices=arch_names,
                       help=helps.get('arch', f"model architecture: {' | '.join(arch_names)}")
                       + shown)
    if baseline:
        group.add_argument('--baseline', action='store_true',
                           help='build the plain backbone without the attention branch')
    group.add_argument('--gate', default=gate, choices=('residual', 'multiply'),
                       help=helps.get('gate', "how the map gates the features: residual "
                                              "g*(1+M) (the authors'), or multiply g*M (the "
                                              "paper's ablation)")
                       + (f' (default: {gate})' if gate else ''))
    for dest, default in sizes.items():
        flag, text = SIZE_OPTIONS[dest]
        text = helps.get(dest, text)
        if default is not None and '%(default)' not in text:
            text += ' (default: %(default)s)'
        group.add_argument(flag, dest=dest, type=int, default=default, help=text)
    return group


# What explain.py and export.py read (utils.weights.loading.load_model).
CHECKPOINT_HELP = ("a checkpoint of cifar.py, imagenet.py or celeba.py, a .safetensors file of "
                   "export.py, or one of the authors' checkpoints")


def add_authors_architecture_arguments(parser, arch_names):
    """The options that describe one of the authors' checkpoints, which record nothing (-a,
    --gate, the sizes, --num-classes, --class-names, --image-size): explain.py's and
    export.py's. Returns the group."""
    from utils.weights.loading import ARCH_OPTIONS
    arch = add_architecture_arguments(
        parser, arch_names, baseline=False, sizes=dict.fromkeys(ARCH_OPTIONS),
        helps={'arch': 'model architecture (default: resnet)',
               'gate': "how the map gates the features (default: residual, the authors')"},
        title="architecture of the authors' checkpoints (those of cifar.py, imagenet.py and "
              "celeba.py describe themselves)")
    arch.add_argument('--num-classes', type=int, metavar='K',
                      help='number of classes (default: from --dataset, else from the file)')
    arch.add_argument('--class-names', metavar='FILE',
                      help='a text file with one class name per line, in class order')
    arch.add_argument('--image-size', type=int, metavar='PX',
                      help='input size (default: from the checkpoint; authors\': 32 CIFAR, '
                           '224 ImageNet)')
    return arch
