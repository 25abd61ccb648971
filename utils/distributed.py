"""Processes and devices: torchrun's environment for DistributedDataParallel, --gpu-id for a
single process (one device, or several with DataParallel as the authors), else the CPU."""
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from utils.errors import AbnError


@dataclass
class Runtime:
    device: torch.device
    device_ids: list = field(default_factory=list)  # >1: DataParallel
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self):
        return self.rank == 0

    def print(self, *args, **kwargs):
        if self.is_main:
            print(*args, **kwargs, flush=True)

    @property
    def cuda_devices(self):
        """The CUDA devices this process computes on (DataParallel's several, else its one)."""
        if self.device.type != 'cuda':
            return []
        return list(self.device_ids) or [self.device.index if self.device.index is not None
                                         else torch.cuda.current_device()]


# How long a process waits in a collective for the others (init_process_group's timeout):
# NCCL's own default, 10 minutes, is shorter than what a rank may wait behind another's work
# (local rank 0 indexing or downloading ImageNet behind a barrier, rank 0's fsync'd saves).
DEFAULT_DIST_TIMEOUT_MINUTES = 60


def print_main(*args, **kwargs):
    """print() in the main process only (rank 0 under torchrun): for code without a Runtime."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def launched_by_torchrun():
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ and 'LOCAL_RANK' in os.environ


def restart_safe_rendezvous(timeout):
    """init_process_group's store under torchrun, kept apart per restart of the group.

    The workers of every start of the group (--max-restarts) share the agent's store, and
    this torch's env:// rendezvous no longer adds the restart count to its keys (it once
    did: '/worker/attempt_N'): a restarted group then reads the addresses its killed
    predecessors published and fails to connect, so every restart fails. The prefix is
    put back here. Elsewhere (no agent store) env:// is left as it is."""
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') != str(True):
        return {}
    world_size = int(os.environ['WORLD_SIZE'])
    store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']),
                          world_size, is_master=False, timeout=timeout)
    attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
    return {'store': dist.PrefixStore(f'/worker/attempt_{attempt}', store),
            'rank': int(os.environ['RANK']), 'world_size': world_size}


def setup_runtime(gpu_id, dist_timeout=DEFAULT_DIST_TIMEOUT_MINUTES):
    """Picks the device(s). Under torchrun: one process per device (CUDA, else CPU with gloo),
    whose collectives wait `dist_timeout` minutes for the other processes before they fail.
    Otherwise --gpu-id: 'cpu', one id, or several (DataParallel)."""
    if launched_by_torchrun():
        local_rank = int(os.environ['LOCAL_RANK'])
        if torch.cuda.is_available():
            if local_rank >= torch.cuda.device_count():
                raise AbnError(f'torchrun started local rank {local_rank} but this machine has '
                               f'{torch.cuda.device_count()} CUDA devices: lower --nproc_per_node')
            torch.cuda.set_device(local_rank)
            device, backend = torch.device('cuda', local_rank), 'nccl'
        else:
            device, backend = torch.device('cpu'), 'gloo'
        if not dist.is_initialized():
            timeout = timedelta(minutes=dist_timeout)
            dist.init_process_group(backend=backend, timeout=timeout,
                                    **restart_safe_rendezvous(timeout))
        return Runtime(device=device, device_ids=[], rank=dist.get_rank(),
                       world_size=dist.get_world_size(), local_rank=local_rank,
                       distributed=True)

    text = str(gpu_id).strip().lower()
    if text in ('cpu', '', '-1'):
        return Runtime(device=torch.device('cpu'))
    try:
        ids = [int(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise AbnError(f"--gpu-id takes comma-separated device numbers or 'cpu', got '{gpu_id}'"
                       ) from None
    if not torch.cuda.is_available():
        print('note: CUDA is not available, running on the CPU', flush=True)
        return Runtime(device=torch.device('cpu'))
    count = torch.cuda.device_count()
    bad = [i for i in ids if i < 0 or i >= count]
    if bad:
        raise AbnError(f'--gpu-id {gpu_id}: no CUDA device {bad[0]} (this machine has {count}: '
                       f'0-{count - 1})')
    torch.cuda.set_device(ids[0])
    return Runtime(device=torch.device('cuda', ids[0]), device_ids=ids if len(ids) > 1 else [])


def shutdown(runtime):
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def local_main_first(runtime):
    """Runs the block in each machine's local rank 0 first, then in its other processes:
    a download into the data folder happens once, and the others find the files there."""
    first = runtime.local_rank == 0
    if runtime.distributed and not first:
        dist.barrier()
    yield
    if runtime.distributed and first:
        dist.barrier()


def broadcast_module_state(module, runtime):
    """Every parameter and buffer of `module` as rank 0 holds them, in every process (in
    place): a state rank 0 read from its files reaches processes that may not see them."""
    if runtime.distributed:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def broadcast_object(value, runtime):
    if not runtime.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value, runtime):
    if not runtime.distributed:
        return [value]
    out = [None] * runtime.world_size
    dist.all_gather_object(out, value)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum across processes whose gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for CPU processes: torch's has kernels for GPUs only. In training the
    batch statistics are sums all-reduced across processes (differentiably, so the backward
    pass is synchronised too): the same statistics as one process over the global batch."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f'expected at least 2D input (got {input.dim()}D input)')

    def forward(self, input):
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        dtype = input.dtype
        # statistics in float32 at least, also for half-precision inputs under autocast
        input = input.to(torch.promote_types(dtype, torch.float32))
        dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        local_count = input.numel() // input.size(1)
        local = torch.cat([input.sum(dims), input.new_full((1,), local_count)])
        sums = _AllReduceSum.apply(local)
        count = sums[-1]
        mean = sums[:-1] / count
        centred = input - mean.view(shape)
        # a second pass for the variance: E[x^2] - E[x]^2 would cancel digits
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(dtype)


def sync_batchnorm(module, device):
    """Every BatchNorm layer of `module` made a synchronised one: torch's SyncBatchNorm on
    GPUs, GlooSyncBatchNorm on the CPU. Parameter and buffer names stay the same."""
    if device.type != 'cpu':
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        synced = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum,
                                   module.affine, module.track_running_stats)
        # the same parameter and buffer objects, as torch's convert_sync_batchnorm keeps them
        for name, tensor in list(module.named_parameters(recurse=False)) + \
                list(module.named_buffers(recurse=False)):
            setattr(synced, name, tensor)
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, sync_batchnorm(child, device))
    return module


class AutocastForward(nn.Module):
    """`module`'s forward under autocast to `dtype`, for DataParallel. DataParallel runs each
    replica in a thread of its own and enters autocast there without a dtype, and the
    autocast state is per thread: the replicas would compute in float16 (without a gradient
    scaler) while the run chose bfloat16. Inside the replica, the run's dtype holds."""

    def __init__(self, module, device_type, dtype):
        super().__init__()
        self.module = module
        self.device_type, self.dtype = device_type, dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)


def smallest_chunk(batch, devices):
    """The fewest images DataParallel gives one device of a batch of `batch` (it splits with
    torch.chunk: ceil(batch / devices) a device, the last gets the rest; 7 on 4 devices:
    2, 2, 2, 1)."""
    if devices <= 1 or batch <= 0:
        return batch
    size = math.ceil(batch / devices)
    return batch - size * (math.ceil(batch / size) - 1)
