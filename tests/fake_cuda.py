"""A CUDA runtime faked where the code only asks about it, so that the CUDA branches can be
checked on a machine without a GPU: `fake_cuda(monkeypatch, devices=2, capability=(7, 0))`
makes `torch.cuda` answer as a machine with that many GPUs of that compute capability
(7.0: a V100, which emulates bfloat16; 8.0: an A100, which computes it natively) would.

Nothing runs on a device: what the code *would do* is recorded instead. Each device has a
random-number state (a small tensor), which `get_rng_state`, `set_rng_state` (refusing a
device the machine does not have, as CUDA does), `manual_seed_all` and `set_device` read and
write; `FakeCuda.calls` lists the calls in order.
"""
from types import SimpleNamespace

import torch


class FakeCuda:
    def __init__(self, devices, capability):
        self.devices = devices
        self.capability = capability
        self.current = 0
        self.states = {i: torch.tensor([i], dtype=torch.uint8) for i in range(devices)}
        self.calls = []

    def _check(self, device):
        index = torch.device('cuda', device).index if isinstance(device, (str, torch.device)) \
            else device
        index = self.current if index is None or index == -1 else index
        if not 0 <= index < self.devices:
            raise RuntimeError('CUDA error: invalid device ordinal')
        return index

    # -- what torch.cuda answers -----------------------------------------------------
    def is_available(self):
        return self.devices > 0

    def device_count(self):
        return self.devices

    def current_device(self):
        return self.current

    def set_device(self, device):
        self.current = self._check(device)
        self.calls.append(('set_device', self.current))

    def get_device_properties(self, device=None):
        index = self._check(device)
        major, minor = self.capability
        return SimpleNamespace(major=major, minor=minor, name=f'Fake GPU {index}',
                               total_memory=16 << 30, multi_processor_count=80)

    def get_device_name(self, device=None):
        return self.get_device_properties(device).name

    def get_device_capability(self, device=None):
        self._check(device)
        return self.capability

    def is_initialized(self):
        return True

    def get_rng_state(self, device='cuda'):
        return self.states[self._check(device)].clone()

    def get_rng_state_all(self):
        return [self.get_rng_state(i) for i in range(self.devices)]

    def set_rng_state(self, new_state, device='cuda'):
        index = self._check(device)
        self.calls.append(('set_rng_state', index))
        self.states[index] = new_state.clone()

    def manual_seed_all(self, seed):
        self.calls.append(('manual_seed_all', seed))
        for index in self.states:
            self.states[index] = torch.tensor([seed % 256], dtype=torch.uint8)

    def manual_seed(self, seed):
        self.states[self.current] = torch.tensor([seed % 256], dtype=torch.uint8)


def fake_cuda(monkeypatch, devices=2, capability=(7, 0)):
    """Patches torch.cuda for the test (monkeypatch undoes it); returns the FakeCuda."""
    fake = FakeCuda(devices, capability)
    names = ('is_available', 'device_count', 'current_device', 'set_device',
             'get_device_properties', 'get_device_name', 'get_device_capability',
             'is_initialized', 'get_rng_state', 'get_rng_state_all', 'set_rng_state',
             'manual_seed_all', 'manual_seed')
    for name in names:
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
        if hasattr(torch.cuda.random, name):
            monkeypatch.setattr(torch.cuda.random, name, getattr(fake, name))
    # A GPU before Ampere still makes bfloat16 tensors (emulated): torch's own probe of
    # emulation succeeds there, so is_bf16_supported() answers True unless told otherwise.
    monkeypatch.setattr(torch.cuda, '_check_bf16_tensor_supported', lambda device: True)
    return fake
