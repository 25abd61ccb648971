"""Loaders whose epoch is a pure function of (seed, epoch): the order comes from a sampler
seeded by the epoch, and each sample's augmentation from its own seed (seed, epoch, index). A
run resumed mid-epoch therefore sees exactly the batches it would have seen, whatever the
number of worker processes. Evaluation shards count every image exactly once.
"""
import torch
import torch.utils.data as tud
from torch.utils.data.distributed import DistributedSampler

from utils.distributed import smallest_chunk
from utils.signals import ignore_stop_signals, stop_signals_blocked


def _mix64(*values):
    """SplitMix64 over the values: well-spread seeds from (seed, epoch, index)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        h = (h + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class SeededAugmentation(tud.Dataset):
    """Items are fetched with keys (epoch, index); each draws its random augmentation from
    the seed (seed, epoch, index), leaving the process's own generator untouched."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_mix64(self.seed, epoch, index))
            return self.dataset[index]


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (one shard per process, reshuffled each epoch from
    seed + epoch; with one process, a plain shuffle) that yields (epoch, index) keys and can
    start an epoch part-way, for resuming."""

    def __init__(self, dataset, num_replicas, rank, seed, batch_size=None, devices=1):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=False)
        self.start = 0
        # A last batch that gives a device one image would fail in BatchNorm wherever the
        # maps are 1x1 (imagenet.py --image-size 32): it is dropped; each epoch's shuffle
        # drops others. `devices`: DataParallel's, which split each batch between them.
        self.length = self.num_samples
        last = self.num_samples % batch_size if batch_size else 0
        if batch_size and batch_size > 1 and last and smallest_chunk(last, devices) == 1:
            self.length -= last

    def set_epoch(self, epoch, start=0):
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())[:self.length][self.start:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self):
        return self.length - self.start


class ShardSampler(tud.Sampler):
    """Evaluation shard: every index exactly once across processes, no padding."""

    def __init__(self, length, num_replicas=1, rank=0):
        self.indices = range(rank, length, num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def collate_dropping_none(batch):
    """Default collation after dropping unreadable images (None); returns (inputs, targets,
    dropped)."""
    kept = [item for item in batch if item is not None]
    dropped = len(batch) - len(kept)
    if not kept:
        return None, None, dropped
    inputs, targets = tud.default_collate(kept)
    return inputs, targets, dropped


class Loader:
    """A DataLoader with an epoch: `set_epoch(epoch, start_step)` then iterate
    (inputs, targets). Counts images dropped as unreadable in `dropped`."""

    def __init__(self, dataset, batch_size, sampler, workers, pin_memory, train):
        self.batch_size = batch_size
        self.sampler = sampler
        self.dropped = 0
        self.loader = tud.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
            pin_memory=pin_memory, drop_last=False, collate_fn=collate_dropping_none,
            persistent_workers=workers > 0 and train, prefetch_factor=4 if workers else None,
            worker_init_fn=ignore_stop_signals)

    def set_epoch(self, epoch, start_step=0):
        if isinstance(self.sampler, EpochSampler):
            self.sampler.set_epoch(epoch, start_step * self.batch_size)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        with stop_signals_blocked():  # workers start with the signals held, then ignore them
            batches = iter(self.loader)
        for inputs, targets, dropped in batches:
            self.dropped += dropped
            if inputs is not None:
                yield inputs, targets


def make_train_loader(dataset, batch_size, runtime, seed, workers):
    sampler = EpochSampler(dataset, runtime.world_size, runtime.rank, seed, batch_size,
                           devices=max(len(runtime.device_ids), 1))
    return Loader(SeededAugmentation(dataset, seed), batch_size, sampler, workers,
                  runtime.device.type == 'cuda', train=True)


def make_eval_loader(dataset, batch_size, runtime, workers):
    sampler = ShardSampler(len(dataset), runtime.world_size, runtime.rank)
    return Loader(dataset, batch_size, sampler, workers, runtime.device.type == 'cuda',
                  train=False)
