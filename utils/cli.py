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


class ArchitectureName:
    """argparse's type of -a: one of `names`, or 'timm:NAME' / 'torchvision:NAME' of a model
    that library has (`sources`); a wrong name gets the nearest ones in its one line."""

    def __init__(self, names, sources=()):
        self.names, self.sources = list(names), tuple(sources)
        self.__name__ = 'architecture'  # argparse names the type in its message

    def __call__(self, text):
        if text in self.names:
            return text
        from models.backbones import check_name, split_name
        parts = split_name(text)
        try:
            if parts is not None and parts[0] in self.sources:
                check_name(*parts)
                return text
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        if parts is not None and not self.sources:
            raise argparse.ArgumentTypeError(
                f"invalid choice: '{text}': the models of timm and torchvision train with "
                f"imagenet.py (docs/imagenet.md)")
        import difflib
        near = difflib.get_close_matches(text, self.names, n=3, cutoff=0.6)
        raise argparse.ArgumentTypeError(
            f"invalid choice: '{text}' ("
            + (f"did you mean {', '.join(near)}? " if near else '')
            + f"choose from {', '.join(self.names)}"
            + ''.join(f', or {source}:NAME' for source in self.sources) + ')')


class ListModels(argparse.Action):
    """--list-models [PATTERN]: prints the architectures -a takes that match, then exits."""

    def __init__(self, option_strings, dest, registry=None, **kwargs):
        self.registry = registry
        super().__init__(option_strings, dest, nargs='?', const='*', default=argparse.SUPPRESS,
                         **kwargs)

    def __call__(self, parser, namespace, pattern, option_string=None):
        names = self.registry.names(pattern)
        print('\n'.join(names) if names else f'no architecture matches {pattern!r}')
        parser.exit(0 if names else 1)


def add_architecture_arguments(parser, arch_names, sizes, arch=None, gate=None, baseline=True,
                               helps=None, title='architecture', registry=None):
    """-a/--arch, --gate, --baseline and the size options (`sizes`: dest -> default, None
    where the script decides later) of cifar.py, imagenet.py and explain.py. `helps`
    replaces a help text (dest -> text) where a script means something else by it.
    `registry`: its library sources' names are taken too (timm:NAME, torchvision:NAME), and
    --list-models [PATTERN] lists them."""
    helps = helps or {}
    group = parser.add_argument_group(title)
    shown = f' (default: {arch})' if arch else ''
    sources = registry.sources if registry is not None else ()
    libraries = ''.join(f' | {source}:NAME' for source in sources)
    group.add_argument('--arch', '-a', metavar='ARCH', default=arch,
                       type=ArchitectureName(arch_names, sources),
                       help=helps.get('arch', f"model architecture: {' | '.join(arch_names)}"
                                      + libraries) + shown)
    if registry is not None:
        group.add_argument('--list-models', metavar='PATTERN', action=ListModels,
                           registry=registry,
                           help="list the architectures -a takes that match PATTERN (e.g. "
                                "'timm:convnext*', 'resnet*'; default: all), then exit")
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


def add_authors_architecture_arguments(parser, arch_names, registry=None):
    """The options that describe one of the authors' checkpoints, which record nothing (-a,
    --gate, the sizes, --num-classes, --class-names, --image-size): explain.py's and
    export.py's. Returns the group."""
    from utils.weights.loading import ARCH_OPTIONS
    arch = add_architecture_arguments(
        parser, arch_names, baseline=False, sizes=dict.fromkeys(ARCH_OPTIONS), registry=registry,
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
