"""Every cifar.py, imagenet.py, celeba.py, explain.py and export.py command in README.md,
TRAINING.md and docs/*.md is accepted: it parses and passes the script's argument checks,
and a training command's model builds (on the meta device: no memory). docs/testing.md
names every test file, and CI runs the README's test command."""
import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, documentation
from utils.explain.run import check_arguments as check_explain_arguments
from utils.train.teaching import check_teach_arguments
from utils.train.options import check_training_arguments

CLASSES = {'cifar10': 10, 'cifar100': 100, 'svhn': 10, 'shapes': 10, 'imagefolder': 7,
           'celeba': 40, 'attributes': 40, 'shapes-multi': 4}
COMMAND = re.compile(r'(?:^|\s)(?:python3?|torchrun(?:\s+--\S+)*)\s+'
                     r'(cifar|imagenet|celeba|explain|export)\.py(\s.*)?$')


def documented_commands():
    found = []
    for doc, text in documentation():
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
    assert scripts.count('celeba') >= 3 and scripts.count('explain') >= 10
    assert scripts.count('export') >= 3


@pytest.mark.parametrize('doc,script,argv', COMMANDS,
                         ids=[f'{d}:{s}:{" ".join(a)[:60]}' for d, s, a in COMMANDS])
def test_documented_command_is_accepted(doc, script, argv):
    module = importlib.import_module(script)
    args = module.get_args_parser().parse_args(argv)
    if script == 'explain':
        check_explain_arguments(args)
        return
    if script == 'export':
        module.output_and_format(args)  # -o's suffix and --format agree
        return
    check_training_arguments(args)
    if hasattr(args, 'attention_maps'):  # cifar.py and imagenet.py teach maps
        check_teach_arguments(args)
    if hasattr(module, 'check_arguments'):  # imagenet.py's own (image size, --depth)
        if getattr(args, 'weights', None) and not os.path.exists(args.weights):
            args.weights = None  # a checkpoint an earlier documented run writes
        module.check_arguments(args)
    classes = CLASSES.get(getattr(args, 'dataset', None), 1000)
    script = module.SCRIPT
    options = script.model_options(args)
    with torch.device('meta'):
        model = script.registry.create(args.arch, **options, num_classes=classes,
                                            attention=not args.baseline, gate=args.gate)
    assert model.has_attention != args.baseline


def test_testing_md_names_every_test_file():
    """docs/testing.md's table: each tests/test_*.py once at least, and no file that is gone."""
    with open(os.path.join(ROOT, 'docs', 'testing.md')) as f:
        named = set(re.findall(r'`(test_\w+\.py)`', f.read()))
    files = {name for name in os.listdir(os.path.join(ROOT, 'tests'))
             if name.startswith('test_') and name.endswith('.py')}
    assert not files - named, f'docs/testing.md does not name {sorted(files - named)}'
    assert not named - files, f'docs/testing.md names missing files {sorted(named - files)}'


def quick_start():
    """The README's two set-up commands: the first two lines of its Quick start code block."""
    with open(os.path.join(ROOT, 'README.md')) as f:
        text = f.read()
    block = text.split('## Quick start', 1)[1].split('```', 2)[1]
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 2, lines
    return lines


def test_ci_runs_the_readmes_test_command():
    install, tests = quick_start()
    assert install.startswith('pip install -r requirements.txt && python cifar.py ')
    test_command = tests.split('&&')[-1].strip()
    with open(os.path.join(ROOT, '.ci', 'run')) as f:
        ci = [line.strip() for line in f if line.strip() and not line.startswith('#')]
    assert ci[-1] == test_command


@pytest.mark.slow
def test_the_readme_demo_trains_shapes_to_90_percent(tmp_path):
    """The quick start's training command as written (offline, in a scratch folder): at
    least 90% test top-1 and the attention images."""
    install, _ = quick_start()
    argv = shlex.split(install.split('&&')[1])
    assert argv[:2] == ['python', 'cifar.py']
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'cifar.py')] + argv[2:],
                            cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                            env=dict(os.environ, MPLBACKEND='Agg'))
    assert result.returncode == 0, result.stderr[-3000:]
    best = float(re.search(r'Best acc: ([\d.]+)', result.stdout).group(1))
    assert best >= 90.0, result.stdout[-2000:]
    run_dir = tmp_path / argv[argv.index('--checkpoint') + 1]
    assert len(list((run_dir / 'attention').glob('0*.png'))) == 16
    assert (run_dir / 'attention' / 'grid.png').exists() and (run_dir / 'log.png').exists()
