"""The CUDA branches, checked on the CPU: what the code would do on one to eight GPUs, with
the CUDA runtime faked where the code only asks about it (tests/fake_cuda.py), torch's own
DataParallel threads, two gloo processes, and the autograd operations a training step runs.
Each test failed before the fix it guards (docs/speed.md: what was verified on a GPU and
what only here)."""
import os
import subprocess
import sys
import threading
from argparse import Namespace
from contextlib import nullcontext
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import celeba
import cifar
import explain
from models import CIFAR_MODELS, IMAGENET_MODELS, MULTITASK_MODELS
from models.abn import freeze_feature_extractor
from tests.fake_cuda import fake_cuda
from tests.fakedata import save_run_checkpoint
from tests.helpers import ROOT, SMALLEST, run_script
from utils import distributed
from utils.data.fastdata import Normalizer
from utils.data.loaders import EpochSampler
from utils.distributed import Runtime, smallest_chunk, sync_batchnorm
from utils.errors import AbnError
from utils.explain.measures import road
from utils.objectives import get_objective
from utils.train import state as training_state
from utils.train.options import apply_fast
from utils.train.placement import (amp_dtype, check_device_shares, parallel_model,
                                   use_deterministic_algorithms)
from utils.weights.modelspec import ModelSpec

pytestmark = pytest.mark.usefixtures('one_thread')


def cuda_runtime(device_ids=(), index=0, **fields):
    return Runtime(device=torch.device('cuda', index), device_ids=list(device_ids), **fields)


class Probe(nn.Module):
    """Records the autocast state its forward runs under, thread by thread."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.seen = []

    def forward(self, x):
        self.seen.append((torch.is_autocast_enabled('cuda'), torch.get_autocast_dtype('cuda')))
        return self.linear(x)


class ThreadedDataParallel(nn.Module):
    """DataParallel with torch's own parallel_apply (a thread per replica, entering autocast
    as torch does there), over CPU replicas: replicate/scatter need devices, the threads do
    not. torch.accelerator's device and stream contexts are made no-ops."""

    def __init__(self, module, device_ids):
        super().__init__()
        self.module, self.device_ids = module, device_ids

    def forward(self, x):
        chunks = x.chunk(len(self.device_ids))
        outputs = torch.nn.parallel.parallel_apply([self.module] * len(chunks),
                                                   [(c,) for c in chunks],
                                                   devices=self.device_ids[:len(chunks)])
        return torch.cat(outputs)


@pytest.fixture
def fake_accelerator(monkeypatch):
    monkeypatch.setattr(torch.accelerator, 'is_available', lambda: True)
    monkeypatch.setattr(torch.accelerator, 'current_accelerator',
                        lambda *a, **k: torch.device('cuda'))
    monkeypatch.setattr(torch.accelerator, 'current_stream', lambda device=None: nullcontext())
    monkeypatch.setattr(torch.accelerator, 'device_index', lambda device: nullcontext())
    monkeypatch.setattr(torch.nn, 'DataParallel', ThreadedDataParallel)


# -- 1, 2: mixed precision -------------------------------------------------------------------

def test_data_parallel_replicas_compute_in_the_runs_bfloat16(monkeypatch, fake_accelerator):
    """The run's autocast (bfloat16 on an A100) reaches DataParallel's replica threads,
    which torch starts with autocast on but float16."""
    fake_cuda(monkeypatch, devices=2, capability=(8, 0))
    runtime = cuda_runtime([0, 1])
    dtype = amp_dtype(runtime)
    assert dtype == torch.bfloat16
    probe = Probe()
    model = parallel_model(probe, runtime, Namespace(amp=True, compile=False), dtype)
    with torch.autocast('cuda', dtype=dtype):  # what the loop's forward runs under
        seen_here = torch.get_autocast_dtype('cuda')

        def replica_thread():  # the premise: a new thread starts with float16
            seen_here_too.append(torch.get_autocast_dtype('cuda'))
        seen_here_too = []
        thread = threading.Thread(target=replica_thread)
        thread.start()
        thread.join()
        model(torch.randn(4, 4))
    assert seen_here == torch.bfloat16 and seen_here_too == [torch.float16]
    assert probe.seen == [(True, torch.bfloat16)] * 2


@pytest.mark.parametrize('capability, expected', [((7, 0), torch.float16),
                                                  ((7, 5), torch.float16),
                                                  ((8, 0), torch.bfloat16),
                                                  ((9, 0), torch.bfloat16)])
def test_amp_takes_bfloat16_only_where_the_gpu_computes_it(monkeypatch, capability, expected):
    """A V100 or T4 emulates bfloat16 (torch.cuda.is_bf16_supported() says yes), far
    slower than its float16: it gets float16 with a gradient scaler."""
    fake_cuda(monkeypatch, devices=2, capability=capability)
    assert torch.cuda.is_bf16_supported()  # the emulation counts there
    for runtime in (cuda_runtime(), cuda_runtime([0, 1])):
        dtype = amp_dtype(runtime)
        assert dtype == expected
        scaler = torch.amp.GradScaler('cuda', enabled=dtype == torch.float16)
        assert scaler.is_enabled() == (expected == torch.float16)
    assert amp_dtype(Runtime(device=torch.device('cpu'))) == torch.bfloat16


# -- 3: the random state of fewer devices ---------------------------------------------------

def resumed_state(runtime, printed):
    """A run's state for a file without optimizer or scaler; its notes go to `printed`."""
    runtime.print = printed.append
    return training_state.TrainingState(
        None, None, None, SimpleNamespace(restore=lambda saved: None), runtime, None, None,
        Namespace(evaluate=False, resume='ckpt', momentum=0.9, weight_decay=0, start_epoch=0))


def test_a_run_saved_on_two_gpus_resumes_on_one(monkeypatch):
    """A requeue onto a node with fewer GPUs (or another CUDA_VISIBLE_DEVICES): the saved
    states go to this run's devices in order; torch's set_rng_state_all would address a
    device this machine does not have."""
    fake = fake_cuda(monkeypatch, devices=2)
    saved_state = training_state.rng_state(cuda_runtime([0, 1]).cuda_devices)  # DataParallel
    assert [int(s) for s in saved_state['cuda']] == [0, 1]
    fake = fake_cuda(monkeypatch, devices=1)
    printed = []
    resumed_state(cuda_runtime(), printed).load_state_dict({'epoch': 1, 'rng': [saved_state]})
    assert fake.calls == [('set_rng_state', 0)] and int(fake.states[0]) == 0
    assert 'saved with 2 CUDA devices a process, this run has 1' in printed[0]


def test_a_ddp_process_saves_and_restores_its_own_device(monkeypatch):
    """Under torchrun, local rank 1 computes on device 1: its state is that device's, and on
    resume it goes to whatever device the process has then."""
    fake = fake_cuda(monkeypatch, devices=2)
    fake.states[1] = torch.tensor([42], dtype=torch.uint8)
    saved_state = training_state.rng_state(cuda_runtime(index=1).cuda_devices)
    assert [int(s) for s in saved_state['cuda']] == [42]
    fake = fake_cuda(monkeypatch, devices=1)
    printed = []
    resumed_state(cuda_runtime(), printed).load_state_dict({'epoch': 1, 'rng': [saved_state]})
    assert int(fake.states[0]) == 42 and printed == []


# -- 4, 10d: torchrun with a validation split -------------------------------------------------

@pytest.mark.slow
def test_two_processes_test_the_best_model_together(tmp_path):
    """celeba.py keeps model_best by its validation split, then tests it: every process
    enters that test, whether or not rank 0's file was written when it looked (the other
    rank skipped it and rank 0's all_reduce failed). The maps' count is printed once."""
    env = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg', PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         os.path.join(ROOT, 'celeba.py'), '--dataset', 'shapes-multi', '--image-size', '64',
         '--width', '8', '--epochs', '1', '--train-batch', '32', '--train-size', '256',
         '--test-size', '64', '--attention-maps', 'shapes-masks:10%', '--gpu-id', 'cpu',
         '--manualSeed', '3', '--save-attention', '2', '-c', str(tmp_path / 'run')],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert out.count('==> The best model (epoch 1) on the test split') == 1, out[-4000:]
    assert out.count('attention maps: ') == 1, out[-4000:]
    # the test split's figures are those of one process evaluating model_best
    assert celeba.main(['--dataset', 'shapes-multi', '--test-size', '64', '--gpu-id', 'cpu',
                        '-e', '--resume', str(tmp_path / 'run' / 'model_best.pth.tar'),
                        '--save-attention', '0', '-c', str(tmp_path / 'alone')]) == 0
    together = (tmp_path / 'run' / 'per_attribute.csv').read_text()
    assert together == (tmp_path / 'alone' / 'per_attribute.csv').read_text()


# -- 5: the process group's timeout -----------------------------------------------------------

def test_the_process_group_waits_as_long_as_asked(monkeypatch):
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.delenv('TORCHELASTIC_USE_AGENT_STORE', raising=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    calls = []
    monkeypatch.setattr(distributed.dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(distributed.dist, 'init_process_group',
                        lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(distributed.dist, 'get_rank', lambda: 0)
    monkeypatch.setattr(distributed.dist, 'get_world_size', lambda: 1)
    distributed.setup_runtime('0', 90)
    args = cifar.get_args_parser().parse_args([])
    distributed.setup_runtime('0', args.dist_timeout)
    assert [call['timeout'] for call in calls] == [timedelta(minutes=90), timedelta(minutes=60)]
    assert calls[0]['backend'] == 'gloo'


def test_a_timeout_that_is_no_time_is_refused(tmp_path, capsys):
    code, _, err = run_script(cifar.main, ['--dist-timeout', '0', '-c', str(tmp_path)], capsys)
    assert code == 1 and '--dist-timeout must be positive' in err


# -- 6: a frozen feature extractor under --sync-bn ---------------------------------------------

REGISTRIES = {'cifar': CIFAR_MODELS, 'imagenet': IMAGENET_MODELS, 'celeba': MULTITASK_MODELS}
FROZEN_MODELS = [(REGISTRIES[SMALLEST[name][0]], SMALLEST[name][1],
                  dict(SMALLEST[name][2], num_classes=3))
                 for name in ('cifar-resnet', 'imagenet-resnet18', 'celeba-mtabn')]


@pytest.mark.parametrize('device', ['cpu', 'cuda'])
@pytest.mark.parametrize('registry, arch, options', FROZEN_MODELS,
                         ids=[arch for _, arch, _ in FROZEN_MODELS])
def test_a_frozen_feature_extractor_stays_frozen_after_syncbn(registry, arch, options, device):
    """The BatchNorm layers that --sync-bn makes (torch's SyncBatchNorm on GPUs, the
    project's on the CPU) replace the frozen ones after the freeze: they stay in eval mode,
    with their parameters fixed, and the rest trains."""
    model = registry.create(arch, **options)
    freeze_feature_extractor(model)
    before = {id(m) for m in model.modules()}
    model = sync_batchnorm(model, torch.device(device))
    model.train()
    extractor = [m for top in model.feature_extractor_modules() for m in top.modules()]
    synced = [m for m in extractor if id(m) not in before]
    assert synced and all('Sync' in type(m).__name__ for m in synced)  # converted anew
    assert not any(m.training for m in extractor)
    assert not any(p.requires_grad for m in extractor for p in m.parameters())
    rest = [m for m in model.modules() if m not in extractor and m is not model]
    assert rest and all(m.training for m in rest)


# -- 7: operations without a deterministic CUDA kernel -----------------------------------------

# Autograd and forward operations that raise under torch.use_deterministic_algorithms on
# CUDA (torch.use_deterministic_algorithms' documentation), as aten names.
NONDETERMINISTIC_ON_CUDA = {
    'avg_pool3d_backward', '_adaptive_avg_pool2d_backward', '_adaptive_avg_pool3d_backward',
    'adaptive_max_pool2d_backward', 'fractional_max_pool2d_backward',
    'fractional_max_pool3d_backward', 'max_unpool1d', 'max_unpool2d', 'max_unpool3d',
    'upsample_linear1d_backward', 'upsample_bilinear2d_backward',
    'upsample_bicubic2d_backward', 'upsample_trilinear3d_backward',
    '_upsample_bilinear2d_aa_backward', '_upsample_bicubic2d_aa_backward',
    'reflection_pad1d_backward', 'reflection_pad2d_backward', 'reflection_pad3d_backward',
    'nll_loss2d_forward', 'nll_loss2d_backward', '_ctc_loss_backward',
    '_embedding_bag_backward', 'put_', 'put', 'histc', 'bincount', 'median',
    'grid_sampler_2d_backward', 'grid_sampler_3d_backward', 'scatter_reduce',
}


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._schema.name.split('::')[-1])
        return func(*args, **(kwargs or {}))


def every_model():
    for registry, objective, size in ((CIFAR_MODELS, 'single-label', 32),
                                      (IMAGENET_MODELS, 'single-label', 64),
                                      (MULTITASK_MODELS, 'multi-label', 64)):
        for arch in sorted(registry):
            options = dict(num_classes=3, depth=8, width=8) if registry is not CIFAR_MODELS \
                else dict(num_classes=3, depth={'resnet': 8, 'densenet': 10, 'wrn': 10,
                                                'resnext': 11}[arch])
            yield pytest.param(registry, arch, options, objective, size,
                               id=f'{registry.title}-{arch}')


@pytest.mark.parametrize('registry, arch, options, objective, size', list(every_model()))
def test_a_training_step_has_a_deterministic_cuda_kernel_for_every_op(registry, arch, options,
                                                                      objective, size):
    """--deterministic on CUDA raises at the first op without a deterministic kernel: the
    ops of a whole training step (forward, the objective's losses, backward) are recorded
    on the CPU and looked up. VGG's 7x7 adaptive pooling had none."""
    model = registry.create(arch, **options).train()
    objective = get_objective(objective)
    inputs = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 2]) if objective.name == 'single-label' else \
        torch.tensor([[1., 0., 1.], [0., 1., 0.]])
    recorder = RecordOps()
    torch.use_deterministic_algorithms(True)
    try:
        with recorder:
            losses = objective.losses(model(inputs), targets)
            objective.total_loss(losses).backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert recorder.ops & NONDETERMINISTIC_ON_CUDA == set()


def test_vgg_pools_deterministically_what_torch_pools(monkeypatch):
    from models.imagenet.vgg import AdaptiveAvgPool2d
    for shape in ((2, 2), (3, 5), (9, 13), (7, 7), (14, 14)):
        x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
        expected = torch.nn.functional.adaptive_avg_pool2d(x, 7)
        torch.use_deterministic_algorithms(True)
        try:
            pooled = AdaptiveAvgPool2d(7)(x)
        finally:
            torch.use_deterministic_algorithms(False)
        torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-12)


# -- 8: torch.compile where it buys nothing ---------------------------------------------------

def test_compile_is_left_out_with_data_parallel(monkeypatch, fake_accelerator):
    fake_cuda(monkeypatch, devices=2, capability=(8, 0))
    compiled, notes = [], []
    monkeypatch.setattr(torch, 'compile', lambda model, **k: compiled.append(model) or model)
    args = Namespace(amp=False, compile=True)
    model = parallel_model(Probe(), cuda_runtime([0, 1]), args, torch.bfloat16, notes.append)
    assert isinstance(model, ThreadedDataParallel) and compiled == []
    assert 'left out with DataParallel' in notes[0]
    model = parallel_model(Probe(), cuda_runtime(), args, torch.bfloat16, notes.append)
    assert compiled == [model]


def test_fast_compiles_on_cuda_except_with_syncbn():
    """torch.compile breaks its graph at every SyncBatchNorm (pytorch/pytorch#161302)."""
    for sync_bn, compiled in ((False, True), (True, False)):
        args = Namespace(fast=True, sync_bn=sync_bn, compile=False, amp=False,
                         channels_last=False)
        apply_fast(args, torch.device('cuda'))
        assert args.amp and args.channels_last and args.compile == compiled


# -- 9: explain.py for multi-task models reads --gpu-id as every tool does ---------------------

@pytest.fixture(scope='module')
def multitask_checkpoint(tmp_path_factory):
    spec = ModelSpec('celeba', 'mtabn_v1_resnet18',
                     MULTITASK_MODELS.model_args('mtabn_v1_resnet18', num_classes=2, width=8),
                     class_names=['circle', 'plus'], normalization=((0.,) * 3, (1.,) * 3),
                     image_size=64, objective='multi-label', dataset='shapes-multi')
    path = tmp_path_factory.mktemp('multitask') / 'model.pth.tar'
    return str(save_run_checkpoint(spec, str(path)))


@pytest.mark.parametrize('gpu_id, expected', [('-1', None), ('cpu', None),
                                              ('7', '--gpu-id 7: no CUDA device 7'),
                                              ('0;1', '--gpu-id takes comma-separated')])
def test_multitask_explain_takes_gpu_id_as_the_other_tools(multitask_checkpoint, gpu_id,
                                                            expected, monkeypatch, tmp_path,
                                                            capsys):
    fake_cuda(monkeypatch, devices=2)
    code, out, err = run_script(explain.main, [multitask_checkpoint, '--dataset',
                                               'shapes-multi', '-n', '2', '--gpu-id', gpu_id,
                                               '-o', str(tmp_path / 'out')], capsys)
    if expected is None:
        assert code == 0, out + err
    else:
        assert code != 0 and expected in err and len(err.strip().splitlines()) == 1, err


# -- 10: the smaller ones ---------------------------------------------------------------------

def bundle(test, valid=None):
    return SimpleNamespace(test=range(test), valid=None if valid is None else range(valid))


def test_every_process_needs_an_evaluation_image():
    """A process without an evaluation batch skips DDP's buffer broadcast and the meters'
    sums that the others wait in: the run would hang."""
    runtime = Runtime(device=torch.device('cpu'), rank=0, world_size=4, distributed=True)
    args = Namespace(train_batch=8, evaluate=False)
    check_device_shares(bundle(4, 4), args, runtime)
    with pytest.raises(AbnError, match='the test split has 3 images for 4 processes'):
        check_device_shares(bundle(3), args, runtime)
    with pytest.raises(AbnError, match='the validation split has 2 images for 4 processes'):
        check_device_shares(bundle(10, 2), args, runtime)


def test_data_parallel_never_gets_a_part_of_one_image():
    """DataParallel splits a batch with torch.chunk; a device with one image fails in
    BatchNorm on 1x1 maps: such a last batch is dropped, such a batch size refused."""
    assert [len(c) for c in torch.arange(7).chunk(4)] == [2, 2, 2, 1]
    for batch in range(1, 40):
        for devices in range(1, 9):
            sizes = [len(c) for c in torch.arange(batch).chunk(devices)]
            assert smallest_chunk(batch, devices) == min(sizes), (batch, devices)
    # 71 images in batches of 32 on 4 GPUs: the last batch of 7 gives a GPU one image
    sampler = EpochSampler(range(71), 1, 0, seed=0, batch_size=32, devices=4)
    assert len(sampler) == 64
    assert len(EpochSampler(range(73), 1, 0, seed=0, batch_size=32, devices=4)) == 73
    assert len(EpochSampler(range(65), 1, 0, seed=0, batch_size=32, devices=1)) == 64
    runtime = cuda_runtime([0, 1, 2, 3])
    check_device_shares(bundle(10), Namespace(train_batch=8, evaluate=False), runtime)
    with pytest.raises(AbnError, match='--train-batch 7 over 4 devices gives one of them a '
                                      'single image'):
        check_device_shares(bundle(10), Namespace(train_batch=7, evaluate=False), runtime)


def test_deterministic_runs_give_cublas_its_workspace(monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    try:
        use_deterministic_algorithms()
        assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    monkeypatch.setenv('CUBLAS_WORKSPACE_CONFIG', ':16:8')  # the user's own stays
    try:
        use_deterministic_algorithms()
        assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':16:8'
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_road_gives_the_cuda_generators_back(monkeypatch):
    """ROAD seeds its noise with torch.manual_seed, which seeds every CUDA device too: their
    states are given back, as the CPU's is."""
    fake = fake_cuda(monkeypatch, devices=2)
    fake.states = {0: torch.tensor([17], dtype=torch.uint8),
                   1: torch.tensor([23], dtype=torch.uint8)}
    inputs = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    road(lambda images: images.mean((2, 3))[:, :2], inputs, maps, [1], percentiles=[50])
    assert ('manual_seed_all', 0) in fake.calls  # it did seed them
    assert {i: int(s) for i, s in fake.states.items()} == {0: 17, 1: 23}


class RecordDivisors(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.divisors = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in ('aten::div', 'aten::div_'):
            self.divisors.append(args[1])
        return func(*args, **(kwargs or {}))


def test_the_fast_path_divides_by_tensors_on_the_device():
    """CUDA divides by a Python number as a multiplication by its reciprocal, not bitwise
    ToTensor's division; by a tensor on the device it divides truly. The CPU's answers stay
    ToTensor + Normalize's, bit for bit."""
    import torchvision.transforms as T
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    normalize = Normalizer(mean, std, torch.device('cpu'))
    images = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16)
    recorder = RecordDivisors()
    with recorder:
        fast = normalize(images)
    assert len(recorder.divisors) == 2
    assert all(isinstance(d, torch.Tensor) and d.device == images.device
               for d in recorder.divisors)
    faithful = T.Normalize(mean, std)(T.ToTensor()(images[0].permute(1, 2, 0).numpy()))
    assert torch.equal(fast[0], faithful)
    # what CUDA's reciprocal would have given, emulated: not ToTensor's values
    reciprocal = images.float() * (torch.tensor(1.0) / 255)
    assert not torch.equal(reciprocal, images.float() / 255)
