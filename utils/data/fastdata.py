"""The fast path's data for small-image sets (CIFAR-10/100, SVHN, shapes): the whole split held
as uint8 on the training device, each batch gathered, randomly cropped and flipped there with
torch ops, and normalised with exactly the arithmetic of ToTensor + Normalize.

It keeps the faithful loaders' guarantees (utils.data):
- the order is EpochSampler's (torch's DistributedSampler permutation from seed + epoch,
  sharded by rank), and evaluation covers every image once (ShardSampler);
- a batch's crops and flips are a pure function of (seed, epoch, step): one generator seeded
  per step draws them for the whole global batch, and each process takes its own samples'
  draws. A run resumed at step k sees the same batches k, k+1, ..., and N processes see the
  same data as one process with N times the batch.
The draws follow the distributions of torchvision's RandomCrop and RandomHorizontalFlip
(uniform offsets, flip with probability p); the per-sample streams differ, so the fast
path's epochs are other (equally likely) epochs than the faithful path's.

On CUDA nothing here waits for the device: the data are copied once, every per-step
operation is queued on the device, and the random draws use a generator on the device.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data as tud
import torchvision.datasets as tvd
import torchvision.transforms as T

from utils.data.loaders import EpochSampler, ShardSampler, _mix64


@dataclass(frozen=True)
class Augmentation:
    """The parameters of the faithful transform that the fast path reproduces."""
    mean: tuple
    std: tuple
    padding: int = 0  # random crop to the image's own size after this much zero padding
    flip_p: float = 0.0  # horizontal flip probability
    crop_size: tuple = None  # (height, width) of the random crop, if any


def augmentation_of(transform):
    """Reads the faithful transform's parameters: [RandomCrop(size, padding) (zero fill),
    [RandomHorizontalFlip(p)],] ToTensor, Normalize. Anything else (resizing, other
    augmentations) returns None: the fast path does not know how to reproduce it."""
    steps = list(transform.transforms) if isinstance(transform, T.Compose) else [transform]
    padding, flip_p, crop_size = 0, 0.0, None
    if steps and isinstance(steps[0], T.RandomCrop):
        crop = steps.pop(0)
        crop_size = tuple(crop.size)
        pads = crop.padding if isinstance(crop.padding, (list, tuple)) else [crop.padding]
        if (len(set(pads)) != 1 or crop.padding_mode != 'constant' or crop.fill != 0
                or crop.pad_if_needed):
            return None
        padding = int(pads[0] or 0)
    if steps and isinstance(steps[0], T.RandomHorizontalFlip):
        flip_p = float(steps.pop(0).p)
    if len(steps) != 2 or not isinstance(steps[0], T.ToTensor) \
            or not isinstance(steps[1], T.Normalize):
        return None
    return Augmentation(tuple(steps[1].mean), tuple(steps[1].std), padding, flip_p, crop_size)


def uint8_split(dataset):
    """(images uint8 (N, 3, H, W), targets, transform) of a CIFAR, SVHN or shapes split,
    through any Subset (--train-size); None for other data sets. The targets are what the
    faithful loader's collation makes of the split's stored targets (int64 for class
    indices; a tensor of any shape, or a dict of them, for other objectives): the loop
    never looks inside them, and neither does this module."""
    indices = None
    while isinstance(dataset, tud.Subset):
        inner = list(dataset.indices)
        indices = inner if indices is None else [inner[i] for i in indices]
        dataset = dataset.dataset
    data = getattr(dataset, 'data', None)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4:
        return None
    labels = getattr(dataset, 'targets', None)
    if labels is None:
        labels = getattr(dataset, 'labels', None)
    if labels is None or getattr(dataset, 'target_transform', None) is not None:
        return None
    images = torch.from_numpy(data)
    if not isinstance(dataset, tvd.SVHN):  # SVHN holds (N, 3, H, W), the others (N, H, W, 3)
        images = images.permute(0, 3, 1, 2)
    labels = tud.default_collate(list(labels))
    if indices is not None:
        index = torch.as_tensor(indices, dtype=torch.int64)
        images, labels = images[index], take(labels, index)
    return images.contiguous(), labels, dataset.transform


def take(targets, index):
    """Rows `index` of collated targets (a tensor, or tuples/lists/dicts of tensors)."""
    if isinstance(targets, torch.Tensor):
        return targets.index_select(0, index)
    if isinstance(targets, dict):
        return {key: take(value, index) for key, value in targets.items()}
    if isinstance(targets, (list, tuple)):
        return type(targets)(take(value, index) for value in targets)
    raise TypeError(f'cannot index targets of type {type(targets).__name__}')


def _to(targets, device):
    if isinstance(targets, torch.Tensor):
        return targets.to(device)
    if isinstance(targets, dict):
        return {key: _to(value, device) for key, value in targets.items()}
    return type(targets)(_to(value, device) for value in targets)


def draw_crops(count, padding, flip_p, generator, device):
    """Per-image (top, left, flip) as RandomCrop and RandomHorizontalFlip draw them: offsets
    uniform in [0, 2 * padding], flip when a uniform draw is below p."""
    top = torch.randint(0, 2 * padding + 1, (count,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (count,), generator=generator, device=device)
    flip = torch.rand(count, generator=generator, device=device) < flip_p
    return top, left, flip


def crop_flip(images, top, left, flip, padding):
    """Each image zero-padded by `padding`, cropped back to its size at (top, left), then
    mirrored where `flip`: RandomCrop's then RandomHorizontalFlip's output, batched."""
    n, _, height, width = images.shape
    padded = F.pad(images, (padding,) * 4) if padding else images
    # Every (top, left) window of every image as a view, then one gather of the chosen ones.
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)  # (n, C, rows, cols, H, W)
    crops = windows[torch.arange(n, device=images.device), :, top, left]  # (n, C, H, W)
    return torch.where(flip[:, None, None, None], crops.flip(3), crops)


class Normalizer:
    """ToTensor's division by 255, then Normalize's (x - mean) / std: the same float32
    operations in the same order, so the results are bitwise those of the faithful path.

    Every operand is a tensor on the device: CUDA divides by a Python number (a CPU scalar)
    as a multiplication by its reciprocal, which differs from ToTensor's true division in
    the last bit for some pixel values; by a tensor on the device it divides truly."""

    def __init__(self, mean, std, device):
        self.scale = torch.tensor(255.0, dtype=torch.float32, device=device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, images):
        return images.float().div_(self.scale).sub_(self.mean).div_(self.std)


@contextmanager
def one_cpu_thread(device):
    """A batch's augmentation on the CPU is a few milliseconds on one thread. Split over
    torch's threads it gains little, and where the cores are busy with other work it loses
    a lot: each of its small parallel regions waits for every thread to be scheduled (on a
    loaded 2-core machine, 50x slower; BENCHMARKS.md)."""
    if device.type != 'cpu':
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class DeviceLoader:
    """utils.data.Loader's interface (set_epoch(epoch, start_step), len, iteration) over a
    split held on the device; yields (inputs float32 (B, 3, H, W), targets) on the device.
    `train`: EpochSampler order and random crops/flips; else ShardSampler order, unchanged
    images."""

    def __init__(self, images, labels, augmentation, batch_size, runtime, seed=0, train=True):
        self.device = runtime.device
        self.batch_size = batch_size
        self.world_size, self.rank = runtime.world_size, runtime.rank
        self.seed = seed
        self.augmentation = augmentation
        self.train = train
        self.dropped = 0  # the Loader's counter of unreadable images: none here
        self.images = images.to(self.device)
        self.labels = _to(labels, self.device)
        self.normalize = Normalizer(augmentation.mean, augmentation.std, self.device)
        count = len(images)
        self.sampler = (EpochSampler(range(count), runtime.world_size, runtime.rank, seed,
                                     batch_size, devices=max(len(runtime.device_ids), 1))
                        if train else ShardSampler(count, runtime.world_size, runtime.rank))
        self.samples = self.sampler.length if train else len(self.sampler)
        self.generator = torch.Generator(device=self.device)
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch, start_step=0):
        self.epoch, self.start_step = epoch, start_step

    def steps(self):
        return math.ceil(self.samples / self.batch_size)

    def __len__(self):
        return max(self.steps() - self.start_step, 0)

    def order(self):
        if not self.train:
            return torch.as_tensor(list(self.sampler), dtype=torch.int64)
        self.sampler.set_epoch(self.epoch)
        return torch.as_tensor([index for _, index in self.sampler], dtype=torch.int64)

    def __iter__(self):
        order = self.order().to(self.device)  # one copy per epoch
        for step in range(self.start_step, self.steps()):
            with one_cpu_thread(self.device):
                batch = self.batch(order, step)
            yield batch

    def batch(self, order, step):
        index = order[step * self.batch_size:(step + 1) * self.batch_size]
        images = self.images.index_select(0, index)
        if self.train:
            images = self.augment(images, step)
        return self.normalize(images), take(self.labels, index)

    def augment(self, images, step):
        augmentation = self.augmentation
        if not augmentation.padding and not augmentation.flip_p:
            return images
        # Draws for the whole global batch: sample t of this process's batch is sample
        # t * world_size + rank of the global one (DistributedSampler deals the permutation
        # out round-robin), so every world size sees the same crops for the same samples.
        self.generator.manual_seed(_mix64(self.seed, self.epoch, step))
        top, left, flip = draw_crops(self.batch_size * self.world_size, augmentation.padding,
                                     augmentation.flip_p, self.generator, self.device)
        mine = slice(self.rank, None, self.world_size)
        n = len(images)
        return crop_flip(images, top[mine][:n], left[mine][:n], flip[mine][:n],
                         augmentation.padding)


def reproducible_split(dataset):
    """((uint8 images, labels, Augmentation), None) of a CIFAR/SVHN/shapes split whose
    transform the fast path reproduces, or (None, the reason) where it cannot."""
    split = uint8_split(dataset) if dataset is not None else None
    if split is None:
        return None, 'it supports CIFAR-10/100, SVHN and shapes'
    images, labels, transform = split
    augmentation = augmentation_of(transform) if transform is not None else None
    if augmentation is None or augmentation.crop_size not in (None, tuple(images.shape[2:])):
        return None, f'it cannot reproduce the transform {transform}'
    return (images, labels, augmentation), None


def device_loader(dataset, batch_size, runtime, seed=0, train=True):
    """(DeviceLoader over `dataset`, None), or (None, the reason) when the fast path cannot
    reproduce that data set or its transform; `dataset` is a DataBundle's train or test."""
    split, reason = reproducible_split(dataset)
    if split is None:
        return None, reason
    images, labels, augmentation = split
    if not train and (augmentation.padding or augmentation.flip_p):
        return None, 'evaluation transforms do not augment'
    return DeviceLoader(images, labels, augmentation, batch_size, runtime, seed, train), None


__all__ = ['Augmentation', 'DeviceLoader', 'Normalizer', 'augmentation_of', 'crop_flip',
           'device_loader', 'draw_crops', 'one_cpu_thread', 'take', 'uint8_split']
