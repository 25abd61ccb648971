"""Processes and devices: torchrun's environment for DistributedDataParallel, --gpu-id for a
single process (one device, or several with DataParallel as the authors), else the CPU."""
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .cli import AbnError


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


def launched_by_torchrun():
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ and 'LOCAL_RANK' in os.environ


def setup_runtime(gpu_id):
    """Picks the device(s). Under torchrun: one process per device (CUDA, else CPU with gloo).
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
            dist.init_process_group(backend=backend)
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
