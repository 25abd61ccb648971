"""A training run's state: what a checkpoint holds and a resumed run gets back
(`TrainingState.state_dict()` / `load_state_dict()`), and every process's random state."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from utils.distributed import gather_objects
from utils.errors import AbnError
from utils.train.checkpoint_policy import plain_args
from utils.weights import checkpoint as ckpt

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from utils.data.datasets import DataBundle
    from utils.distributed import Runtime
    from utils.train.checkpoint_policy import CheckpointPolicy
    from utils.weights.modelspec import ModelSpec


class TrainingState:
    """The model's weights, the optimizer, the gradient scaler, where the run is (the epoch
    and step to start from, a resumed epoch's partial meter), its best and last metric (the
    CheckpointPolicy's) and the random state; and what describes the model in the file
    (its spec, the data's classes and normalisation, the run's options)."""

    def __init__(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, checkpoints: CheckpointPolicy, runtime: Runtime,
                 spec: ModelSpec, data: DataBundle, args: argparse.Namespace) -> None:
        self.net, self.optimizer, self.scaler = net, optimizer, scaler
        self.checkpoints, self.runtime = checkpoints, runtime
        self.spec, self.data, self.args = spec, data, args
        self.epoch, self.step = args.start_epoch, 0  # where the run starts
        self.meter = None  # the partial meter of an epoch resumed mid-way

    def state_dict(self, epoch: int, step: int, meter: Any = None) -> dict[str, Any]:
        """The checkpoint of this moment: the authors' keys (their 'acc' and 'best_acc' hold
        the objective's metric), what an exact resume needs, and the model's spec."""
        data, runtime = self.data, self.runtime
        return {
            'epoch': epoch, 'state_dict': self.net.state_dict(), 'acc': self.checkpoints.last,
            'best_acc': self.checkpoints.best, 'optimizer': self.optimizer.state_dict(),
            'step': step, 'scaler': self.scaler.state_dict(),
            # per process, like the random state: each resumes its own partial sums
            'epoch_meter': gather_objects(meter.state_dict(), runtime)
            if meter is not None else None,
            'rng': gather_objects(rng_state(runtime.cuda_devices), runtime),
            **model_description(self.spec, data), 'args': plain_args(self.args),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Optimizer, scaler, epoch, step, best metric and random state of a resumed run
        (the weights are the model's, loaded when it was built)."""
        args, runtime = self.args, self.runtime
        if saved.get('optimizer') and not args.evaluate:
            try:
                self.optimizer.load_state_dict(saved['optimizer'])
            except (ValueError, KeyError, RuntimeError) as error:
                raise AbnError(f'the optimizer state in {args.resume} does not fit this model '
                               f'({error})') from None
            for group in self.optimizer.param_groups:  # flags follow this run's options
                group['momentum'], group['weight_decay'] = args.momentum, args.weight_decay
        if saved.get('scaler'):
            self.scaler.load_state_dict(saved['scaler'])
        self.epoch = int(saved.get('epoch', 0))
        self.step = int(saved.get('step', 0) or 0)
        self.checkpoints.restore(saved)
        meters = saved.get('epoch_meter') if self.step else None
        self.meter = (meters[runtime.rank] if meters and len(meters) == runtime.world_size
                      else None)
        states = saved.get('rng') or []
        if len(states) == runtime.world_size:
            devices = runtime.cuda_devices
            if not set_rng_state(states[runtime.rank], devices):
                runtime.print(f'note: the checkpoint was saved with '
                              f'{len(states[runtime.rank].get("cuda") or [])} CUDA devices a '
                              f'process, this run has {len(devices)}: the random state of the '
                              f'devices without a saved one starts afresh')
        elif states:
            runtime.print('note: the checkpoint was saved by a different number of '
                          'processes; the random state starts afresh')


def model_description(spec: ModelSpec, data: DataBundle) -> dict[str, Any]:
    """What a checkpoint says of its model: its spec (utils.weights.modelspec), and the keys
    before it that older tools read (the architecture and its arguments, the data's classes,
    name, size and normalisation), with the file's format."""
    return {
        'arch': spec.arch, 'model_args': spec.model_args,
        'num_classes': len(data.classes), 'class_names': list(data.classes),
        'dataset': data.name, 'image_size': data.image_size,
        'normalization': {'mean': list(data.mean), 'std': list(data.std)},
        'model_spec': spec.to_dict(), 'format': ckpt.FORMAT,
    }


def rng_state(cuda_devices: Sequence[int] = ()) -> dict[str, Any]:
    """This process's random state: Python's, NumPy's, torch's CPU generator and those of
    the CUDA devices it computes on (`cuda_devices`, in the run's order)."""
    state = np.random.get_state()
    return {
        'python': random.getstate(),
        'numpy': [state[0], torch.from_numpy(state[1].astype(np.int64)), state[2], state[3],
                  state[4]],
        'torch': torch.get_rng_state(),
        'cuda': [torch.cuda.get_rng_state(device) for device in cuda_devices],
    }


def set_rng_state(state: dict[str, Any], cuda_devices: Sequence[int] = ()) -> bool:
    """Restores rng_state's `state`; its CUDA states go to this run's devices in order
    (not to device numbers: a requeue onto a smaller node, or another CUDA_VISIBLE_DEVICES,
    has other ones). Returns whether every saved CUDA state found a device and every device
    a state."""
    random.setstate(_tuples(state['python']))
    numpy = state['numpy']
    np.random.set_state((numpy[0], numpy[1].numpy().astype(np.uint32), int(numpy[2]),
                         int(numpy[3]), float(numpy[4])))
    torch.set_rng_state(state['torch'])
    saved = list(state.get('cuda') or [])
    for device, device_state in zip(cuda_devices, saved):
        torch.cuda.set_rng_state(device_state, device)
    return len(saved) == len(cuda_devices)


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
