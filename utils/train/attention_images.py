"""Attention images of a run: for the first test images, the input, the map and their blend
with the true and predicted class, drawn by the objective."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch.utils.data import default_collate

from utils.progress import Progress

if TYPE_CHECKING:
    from utils.train.setup import TrainingSetup


@torch.no_grad()
def write_attention_images(run: TrainingSetup, state_dict: dict[str, torch.Tensor] | None = None,
                           title: str = '') -> str | None:
    """The best (or evaluated) model's attention images of the first --save-attention test
    images into <checkpoint>/attention, with grid.png (grid_NNN.png past 64 images); returns
    the folder, or None when there is nothing to draw."""
    count = run.args.save_attention
    if not run.runtime.is_main or not run.attention or count == 0:
        return None
    dataset = run.data.test
    count = len(dataset) if count < 0 else min(count, len(dataset))
    net = run.net
    if state_dict is not None:
        net.load_state_dict(state_dict)
    net.eval()
    out_dir = os.path.join(run.checkpoint_dir, 'attention')
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):
        if name.endswith('.png') and (name[:4].isdigit() or name.startswith('grid')):
            os.unlink(os.path.join(out_dir, name))
    batch = 64
    progress = Progress('Attention images', (count + batch - 1) // batch,
                        enabled=count > batch)
    for b, start in enumerate(range(0, count, batch)):
        items = [dataset[i] for i in range(start, min(start + batch, count))]
        items = [item for item in items if item is not None]  # skipped unreadable images
        if not items:
            continue
        inputs, targets = default_collate(items)  # the loaders' collation: any target
        device_inputs = inputs.to(run.runtime.device)
        if run.args.channels_last:
            device_inputs = device_inputs.contiguous(memory_format=torch.channels_last)
        with run.autocast():
            output = net(device_inputs)
        run.objective.save_attention(
            out_dir, inputs, output, targets, run.data, start_index=start,
            grid_name='grid.png' if start == 0 else f'grid_{b:03d}.png', title=title)
        progress.update(b + 1)
    return out_dir
