"""Every cifar.py/imagenet.py command in README.md and TRAINING.md is accepted: it parses,
passes the scripts' argument checks, and its model builds (on the meta device: no memory)."""
import importlib
import os
import re
import shlex

import pytest
import torch

from utils.cli import check_training_arguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ('README.md', 'TRAINING.md')
CLASSES = {'cifar10': 10, 'cifar100': 100, 'svhn': 10, 'shapes': 10, 'imagefolder': 7}
COMMAND = re.compile(r'(?:^|\s)(?:python3?|torchrun(?:\s+--\S+)*)\s+(cifar|imagenet)\.py(\s.*)?$')


def documented_commands():
    found = []
    for doc in DOCS:
        path = os.path.join(ROOT, doc)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            text = f.read().replace('\\\n', ' ')
        for line in text.splitlines():
            for part in line.strip().strip('`').split('&&'):
                match = COMMAND.search(part.strip())
                if match:
                    found.append((doc, match.group(1), shlex.split(match.group(2) or '')))
    return found


COMMANDS = documented_commands()


def test_the_docs_have_commands():
    scripts = [script for _, script, _ in COMMANDS]
    assert scripts.count('cifar') >= 20 and scripts.count('imagenet') >= 15


@pytest.mark.parametrize('doc,script,argv', COMMANDS,
                         ids=[f'{d}:{s}:{" ".join(a)[:60]}' for d, s, a in COMMANDS])
def test_documented_command_is_accepted(doc, script, argv):
    module = importlib.import_module(script)
    args = module.get_args_parser().parse_args(argv)
    check_training_arguments(args)
    if hasattr(module, 'check_arguments'):  # imagenet.py's own (image size, --depth)
        module.check_arguments(args)
    classes = CLASSES.get(getattr(args, 'dataset', None), 1000)
    options = module.TASK.model_options(args)
    with torch.device('meta'):
        model = module.TASK.registry.create(args.arch, **options, num_classes=classes,
                                            attention=not args.baseline, gate=args.gate)
    assert model.has_attention != args.baseline
