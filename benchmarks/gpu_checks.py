"""The final proof, on a real GPU, of what tests/test_gpu_paths.py checks on the CPU with a
faked CUDA runtime (docs/speed.md, "What was verified on a GPU"). One short run, a few
minutes on one GPU; every check prints PASS or FAIL and the exit status counts the FAILs.

    python benchmarks/gpu_checks.py              # the checks one GPU can make
    python benchmarks/gpu_checks.py --runs       # and short real runs of the scripts

With one GPU, DataParallel's threads are started by torch's own parallel_apply on two
replicas of the same device; torchrun with NCCL and resuming on fewer GPUs need a machine
with two or more (they are listed as not checked there).
"""
import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

RESULTS = []


def check(name):
    def decorate(function):
        def run():
            try:
                detail = function()
                RESULTS.append((name, True, detail or ''))
            except Exception as error:  # a check that fails is reported, the others go on
                RESULTS.append((name, False, f'{type(error).__name__}: {error}'))
            print(f"{'PASS' if RESULTS[-1][1] else 'FAIL'}  {name}  {RESULTS[-1][2]}", flush=True)
        return run
    return decorate


@check('1. DataParallel replicas compute in the run\'s autocast dtype')
def replicas_dtype():
    from utils.distributed import AutocastForward, Runtime
    from utils.train.placement import amp_dtype
    dtype = amp_dtype(Runtime(device=torch.device('cuda', 0)))
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.get_autocast_dtype('cuda'))
            return torch.nn.functional.linear(x, torch.ones(2, 4, device=x.device)).dtype

    x = torch.randn(4, 4, device='cuda')
    wrapped = AutocastForward(Probe(), 'cuda', dtype)
    with torch.autocast('cuda', dtype=dtype):
        outputs = torch.nn.parallel.parallel_apply([wrapped, wrapped], [(x,), (x,)],
                                                   devices=[0, 0])
    assert seen == [dtype, dtype] and outputs == [dtype, dtype], (seen, outputs)
    return f'{dtype} in both replica threads'


@check('2. --amp picks bfloat16 only where the GPU computes it')
def amp_choice():
    from utils.distributed import Runtime
    from utils.train.placement import amp_dtype
    major = torch.cuda.get_device_capability(0)[0]
    dtype = amp_dtype(Runtime(device=torch.device('cuda', 0)))
    assert dtype == (torch.bfloat16 if major >= 8 else torch.float16)
    return f'compute capability {major}.x: {dtype}'


@check('3. a saved CUDA random state goes to this run\'s device')
def rng_states():
    from utils.train.state import rng_state, set_rng_state
    torch.cuda.manual_seed(5)
    saved = rng_state([0])
    expected = torch.rand(3, device='cuda')
    saved['cuda'].append(saved['cuda'][0].clone())  # as if saved on two GPUs
    assert not set_rng_state(saved, [0])
    assert torch.equal(torch.rand(3, device='cuda'), expected)


@check('7. --deterministic trains every ImageNet family, vgg16_bn included')
def deterministic():
    from models import IMAGENET_MODELS
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(True)
    try:
        for arch in ('vgg16_bn', 'resnet18', 'se_resnet50'):
            grads = []
            for _ in range(2):
                torch.manual_seed(0)
                model = IMAGENET_MODELS.create(arch, num_classes=3).cuda()
                x = torch.randn(2, 3, 64, 64, device='cuda')
                out = model(x)
                (out.attention_logits.sum() + out.perception_logits.sum()).backward()
                grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                        if p.grad is not None]))
            assert torch.equal(*grads), f'{arch}: gradients differ between two runs'
    finally:
        torch.use_deterministic_algorithms(False)
    return 'bitwise the same gradients twice'


@check('10f. the fast path normalises bitwise as ToTensor + Normalize')
def normalisation():
    import torchvision.transforms as T

    from utils.data.fastdata import Normalizer
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    images = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16)
    faithful = T.Normalize(mean, std)(T.ToTensor()(images[0].permute(1, 2, 0).numpy()))
    fast = Normalizer(mean, std, torch.device('cuda'))(images.cuda())[0].cpu()
    old = images.cuda().float().div_(255)[0].cpu()  # the division by a Python number
    differing = int((old != T.ToTensor()(images[0].permute(1, 2, 0).numpy())).sum())
    assert torch.equal(fast, faithful)
    return f'equal (dividing by the number 255 differs in {differing} of 768 values)'


@check('10e. ROAD gives the CUDA generator back')
def road_state():
    import numpy as np

    from utils.explain.measures import road
    torch.cuda.manual_seed(11)
    inputs = torch.rand(1, 3, 8, 8, device='cuda')
    before = torch.cuda.get_rng_state()
    maps = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    road(lambda images: images.mean((2, 3))[:, :2], inputs, maps, [1], percentiles=[50])
    assert torch.equal(before, torch.cuda.get_rng_state())


@check('8. torch.compile with channels-last and bf16 autocast trains a step')
def compile_step():
    from models import CIFAR_MODELS
    model = CIFAR_MODELS.create('resnet', depth=20, num_classes=10).cuda()
    model = model.to(memory_format=torch.channels_last)
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 3, 32, 32, device='cuda').contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,), device='cuda')
    for _ in range(2):
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = compiled(x)
            loss = sum(torch.nn.functional.cross_entropy(o.float(), y)
                       for o in (out.attention_logits, out.perception_logits))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)


def script_runs(folder):
    """Short real runs: the fast path, --deterministic vgg16_bn on an image folder, the
    multi-task model with its validation split, -e, and explain.py, on CUDA."""
    from tests.fakedata import write_image_folder  # the tests' generator of image trees

    data = os.path.join(folder, 'folder')
    write_image_folder(data, splits=(('train', 12), ('val', 4)), size=64)
    python = [sys.executable]
    runs = {
        'cifar.py --fast (amp, compile, channels-last, device data)': python + [
            'cifar.py', '--dataset', 'shapes', '--depth', '20', '--epochs', '1',
            '--train-size', '2048', '--test-size', '256', '--fast', '--gpu-id', '0',
            '-c', os.path.join(folder, 'fast')],
        'imagenet.py -a vgg16_bn --deterministic': python + [
            'imagenet.py', '-a', 'vgg16_bn', '--data', data, '--image-size', '64',
            '--epochs', '1', '--train-batch', '8', '--deterministic', '--gpu-id', '0',
            '-c', os.path.join(folder, 'vgg')],
        'celeba.py shapes-multi (validation split, test of the best)': python + [
            'celeba.py', '--dataset', 'shapes-multi', '--image-size', '64', '--width', '8',
            '--epochs', '1', '--train-size', '512', '--test-size', '128', '--amp',
            '--gpu-id', '0', '-c', os.path.join(folder, 'multi')],
        'cifar.py -e --resume': python + [
            'cifar.py', '--dataset', 'shapes', '--test-size', '256', '-e', '--resume',
            os.path.join(folder, 'fast', 'model_best.pth.tar'), '--gpu-id', '0'],
        'explain.py --compare --measure (multi-task, --gpu-id 0)': python + [
            'explain.py', os.path.join(folder, 'multi', 'model_best.pth.tar'), '--dataset',
            'shapes-multi', '-n', '16', '--measure', '--gpu-id', '0',
            '-o', os.path.join(folder, 'explain')],
    }
    for name, command in runs.items():
        @check(f'run: {name}')
        def one():
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                    timeout=300, env=dict(os.environ, MPLBACKEND='Agg'))
            lines = (result.stdout + result.stderr).strip().splitlines()
            assert result.returncode == 0, ' | '.join(lines[-3:])
            return lines[-1][:100] if lines else ''
        one()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', action='store_true', help='also short runs of the scripts')
    options = parser.parse_args()
    if not torch.cuda.is_available():
        print('no CUDA device: these checks need one (tests/test_gpu_paths.py runs without)')
        return 2
    print(f'{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA '
          f'{torch.version.cuda}, {torch.cuda.device_count()} device(s)', flush=True)
    for run in (replicas_dtype, amp_choice, rng_states, deterministic, normalisation,
                road_state, compile_step):
        run()
    if options.runs:
        with tempfile.TemporaryDirectory() as folder:
            script_runs(folder)
    if torch.cuda.device_count() < 2:
        print('not checked here (one GPU): 3 (a run of two GPUs resumed on one), 4 and 5 '
              '(torchrun with NCCL), 6 with torch\'s SyncBatchNorm, 10a/10b (DataParallel '
              'over several GPUs)')
    failed = sum(not ok for _, ok, _ in RESULTS)
    print(f'{len(RESULTS) - failed} passed, {failed} failed')
    return min(failed, 1)


if __name__ == '__main__':
    sys.exit(main())
