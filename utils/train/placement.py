"""Where and how a run's model computes: its device and memory format, SyncBatchNorm, the
parallel wrapper and torch.compile, mixed precision, deterministic kernels, the seed, and
each process's and device's share of the data."""
from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from utils.distributed import AutocastForward, smallest_chunk, sync_batchnorm
from utils.errors import AbnError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from utils.data.datasets import DataBundle
    from utils.distributed import Runtime


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """--deterministic: deterministic kernels only (an op without one raises), and cuBLAS
    with the fixed workspace its deterministic mode needs (CUDA 10.2 and later; torch
    raises at the first matrix product without it). The variable must be set before
    cuBLAS starts, which is at the first matrix product: here, before the model exists."""
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def amp_dtype(runtime: Runtime) -> torch.dtype:
    """--amp's dtype: bfloat16 on the CPU and on GPUs that compute it natively (compute
    capability 8.0, Ampere, and later; ROCm), else float16 with a gradient scaler.
    torch.cuda.is_bf16_supported() also counts the emulation of older GPUs (V100, T4), far
    slower than their float16; with DataParallel every device must have it."""
    if runtime.device.type != 'cuda':
        return torch.bfloat16
    native = torch.version.hip or all(torch.cuda.get_device_capability(device)[0] >= 8
                                      for device in runtime.cuda_devices)
    return torch.bfloat16 if native else torch.float16


def parallel_model(net: nn.Module, runtime: Runtime, args: argparse.Namespace, dtype: torch.dtype,
                   note: Callable[[str], None] = print) -> nn.Module:
    """What the loop calls: `net` (already on its device) inside DistributedDataParallel
    (torchrun) or DataParallel (--gpu-id 0,1), then torch.compile (--compile). `dtype`: the
    autocast dtype, which DataParallel's replicas get inside their forward."""
    model = net
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == 'cuda' else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    elif runtime.device_ids:
        if args.amp:
            model = AutocastForward(model, runtime.device.type, dtype)
        model = nn.DataParallel(model, device_ids=runtime.device_ids)
    if not args.compile:
        return model
    if runtime.device_ids:
        # Compiling DataParallel compiles its dispatch; the replicas run in threads of
        # their own, eager: the compile time would buy nothing.
        note('note: torch.compile (--compile, --fast) is left out with DataParallel (--gpu-id '
             'with several devices): its replicas would run uncompiled; torchrun runs '
             'compiled processes')
        return model
    return torch.compile(model)


def move_to(value: Any, device: torch.device) -> Any:
    """`value` with every tensor in it (through tuples, lists and dicts) on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: move_to(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        moved = [move_to(item, device) for item in value]
        return type(value)(*moved) if hasattr(value, '_fields') else type(value)(moved)
    return value


def check_device_shares(data: DataBundle, args: argparse.Namespace, runtime: Runtime) -> None:
    """Refuses, in one line, data that leaves a process or a device without its share:
    under torchrun a process without an evaluation image skips the collectives the others
    wait in (DDP's buffer broadcast, the meters' sums) and the run hangs; DataParallel
    giving a device one training image fails in BatchNorm where the maps are 1x1."""
    if runtime.distributed:
        for split, part, flag in (('test', data.test, '--test-size'),
                                  ('validation', data.valid, '--test-size')):
            if part is not None and len(part) < runtime.world_size:
                raise AbnError(f'the {split} split has {len(part)} images for '
                               f'{runtime.world_size} processes: every process needs at least '
                               f'one (raise {flag}, or start fewer processes)')
    devices = len(runtime.device_ids)
    if devices > 1 and not args.evaluate and smallest_chunk(args.train_batch, devices) == 1:
        raise AbnError(f'--train-batch {args.train_batch} over {devices} devices gives one of '
                       f'them a single image (DataParallel splits a batch into '
                       f'{-(-args.train_batch // devices)}-image parts), where BatchNorm has the '
                       f'statistics of one image and fails on 1x1 maps: use a multiple of '
                       f'{devices}')


def place(model: nn.Module, args: argparse.Namespace, runtime: Runtime) -> nn.Module:
    """`model` on the run's device, in its memory format, with synchronised BatchNorm under
    torchrun with --sync-bn: the unwrapped model, whose state_dict checkpoints hold."""
    model = model.to(runtime.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.sync_bn and runtime.distributed:
        model = sync_batchnorm(model, runtime.device)
    return model
