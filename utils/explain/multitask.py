"""explain.py for checkpoints of celeba.py: one attention map per task (attribute).

For each image and each chosen task t (`--task NAME` or `all`): the ABN map of task t (the
authors' `pos` picture by default), and with --compare/--measure every registered method
that draws a map per task (utils.explain.methods: CAM and Grad-CAM of the perception branch
for task t, layer4 on the features gated by map t, head t; a seeded random map). `--measure`
on shapes-multi scores the pointing game of every task's maps against
the mask of its own kind, over the images where that kind is present, and averages the
attributes; results in metrics.json and metrics.md.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T

from utils.data.attributes import MULTI_SPLIT_SEEDS, ShapesMultiDataset
from utils.data.images import find_images, load_rgb
from utils.distributed import setup_runtime
from utils.errors import AbnError
from utils.explain.measures import (DecisionTable, decision_outside, pointing_game,
                                    pointing_tolerance)
from utils.explain.methods import METHODS, TaskBatch, multitask_methods
from utils.kinds import PER_ATTRIBUTE
from utils.visualize import save_task_attention_images



def chosen_tasks(task, names):
    """Indices of `--task` (a name, a comma-separated list, or 'all')."""
    if task in (None, 'all'):
        return list(range(len(names)))
    wanted = [name.strip() for name in task.split(',')]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise AbnError(f"--task {unknown[0]}: the model's tasks are {', '.join(names)} (or all)")
    return [names.index(name) for name in wanted]


def upsample(maps, size):
    """(N, K, h, w) -> (N, K, H, W) numpy, bilinear (the pointing game's and pictures' scale)."""
    return F.interpolate(maps.float(), size=size, mode='bilinear',
                         align_corners=False).cpu().numpy()


class MultitaskReport:
    """explain.py's report for a checkpoint of celeba.py: each task's maps drawn, and with
    --measure each method's pointing game per attribute; `write()` writes the files."""

    def __init__(self, args, loaded):
        """`loaded`: the checkpoint's model (utils.weights.loading.load_model)."""
        self.args = args
        if args.masks:
            raise AbnError("--masks applies to single-label models; celeba.py's models are "
                           "measured against each attribute's masks of shapes-multi")
        if args.target_class is not None:
            raise AbnError('--target-class chooses one class of a single-label model; '
                           "celeba.py's models explain attributes: choose them with --task")
        # --gpu-id as every tool reads it: 'cpu', -1, a device, or several (the first)
        self.device = setup_runtime(args.gpu_id).device
        self.model, self.spec = loaded.model, loaded.spec
        self.model.eval().to(self.device)
        if not self.model.has_attention:
            raise AbnError(f'{args.checkpoint} holds a plain multi-label baseline: no maps to '
                           f'explain')
        self.names = list(self.spec.class_names or range(self.model.num_classes))
        self.decision = DecisionTable()  # what the decision rests on
        self.tasks = chosen_tasks(args.task, self.names)
        if args.dataset not in (None, 'shapes-multi'):
            raise AbnError(f'--dataset {args.dataset} is not a multi-task data set: use '
                           f'--dataset shapes-multi, or give image files')
        if args.dataset is None and not args.inputs:
            raise AbnError('give image files or --dataset shapes-multi')
        size = int(self.spec.image_size or 224)
        self.mean, self.std = self.spec.normalization or ((0., 0., 0.), (1., 1., 1.))
        steps = [T.Resize((size, size)), T.ToTensor()]
        if tuple(self.std) != (1.0, 1.0, 1.0) or any(self.mean):
            steps.append(T.Normalize(self.mean, self.std))
        self.transform = T.Compose(steps)
        self.size = size

    def images(self):
        """(inputs (N, 3, S, S), targets (N, T) or None, masks (N, T, S, S) or None)."""
        args = self.args
        if args.dataset == 'shapes-multi':
            data = ShapesMultiDataset(train=False, size=args.num_images or 500,
                                      transform=self.transform, seed=MULTI_SPLIT_SEEDS['test'])
            inputs = torch.stack([data[i][0] for i in range(len(data))])
            masks = torch.from_numpy(data.masks)
            if masks.shape[-1] != self.size:
                masks = F.interpolate(masks.float(), size=(self.size, self.size),
                                      mode='nearest') > 0.5
            return inputs, data.targets, masks.numpy()
        files = find_images(args.inputs)[:args.num_images]
        return torch.stack([self.transform(load_rgb(f)) for f in files]), None, None

    def write(self):
        args = self.args
        os.makedirs(args.output, exist_ok=True)
        inputs, targets, masks = self.images()
        generator = torch.Generator().manual_seed(args.seed)
        measure = args.measure and masks is not None
        if args.measure and masks is None:
            print('note: --measure scores the pointing game on data with masks '
                  '(--dataset shapes-multi); image files have none')
        methods = multitask_methods(self.model, args.compare, args.measure)
        shown = [METHODS[name].short for name in methods]  # the columns
        totals = {method: {self.names[t]: [] for t in self.tasks} for method in shown}
        radius = args.pointing_tolerance
        radius = pointing_tolerance(self.size) if radius is None else radius
        tolerant = {method: {self.names[t]: [] for t in self.tasks} for method in shown}
        records = []
        drawn = 0
        for start in range(0, len(inputs), args.batch_size):
            x = inputs[start:start + args.batch_size].to(self.device)
            with torch.no_grad():
                output = self.model(x)
            _, probabilities = PER_ATTRIBUTE.predict(output.perception_logits.float())
            for i in range(len(x)):
                records.append({'index': start + i, 'probabilities': {
                    self.names[t]: round(float(probabilities[i, t]), 4)
                    for t in range(len(self.names))}})
            limit = len(inputs) if args.save_images is None else args.save_images
            count = max(0, min(len(x), limit - start))
            if count:
                chosen = output.attention_map[:count][:, self.tasks].float().cpu()
                save_task_attention_images(
                    args.output, x[:count].cpu(), chosen,
                    probabilities[:count][:, self.tasks].cpu(),
                    None if targets is None else targets[start:start + count][:, self.tasks],
                    [self.names[t] for t in self.tasks], self.mean, self.std, start_index=start,
                    grid_name='grid.png' if start == 0 else None, title=self.spec.describe(),
                    map_style=args.map_style, max_tasks=len(self.tasks))
                drawn += count
            if not measure:
                continue
            size = (self.size, self.size)
            batch = TaskBatch(self.model, x, self.tasks, output.attention_map, generator)
            maps = {METHODS[name].short: upsample(METHODS[name].task_maps(batch), size)
                    for name in methods}
            batch_masks = masks[start:start + len(x)]
            self.measure_decision(x, targets[start:start + len(x)], batch_masks)
            for k, t in enumerate(self.tasks):
                present = batch_masks[:, t].reshape(len(x), -1).any(1)
                if not present.any():
                    continue
                for method, heat in maps.items():
                    totals[method][self.names[t]].extend(
                        pointing_game(heat[present, k], batch_masks[present, t]))
                    tolerant[method][self.names[t]].extend(
                        pointing_game(heat[present, k], batch_masks[present, t], radius=radius))
        with open(os.path.join(args.output, 'predictions.json'), 'w') as f:
            json.dump({'model': self.spec.describe(), 'checkpoint': args.checkpoint,
                       'tasks': [self.names[t] for t in self.tasks], 'images': records}, f,
                      indent=2)
        if measure:
            self.write_measures(totals, tolerant, radius, len(inputs))
        print(f'Results in {args.output}: predictions.json'
              + (', metrics.json, metrics.md' if measure else '')
              + f', and per-task pictures of {drawn} images')
        return 0

    def measure_decision(self, x, targets, batch_masks):
        """Mean attribute accuracy as given, with the shapes (the union of the attributes'
        masks) amid another image's surroundings ('object kept'), and with the shapes filled in
        smoothly from their surroundings ('outside only'), added to self.decision."""
        if len(x) < 2:
            return
        with torch.no_grad():
            self.decision.add('', decision_outside(
                lambda images: PER_ATTRIBUTE.probabilities(
                    self.model(images).perception_logits.float()),
                x, np.asarray(batch_masks).any(1), targets, kind=PER_ATTRIBUTE))

    def write_measures(self, totals, tolerant, radius, images):
        """metrics.json/.md: the pointing game per attribute (over the images where it is
        present) and its mean over the attributes, per method; also with ±radius px."""
        table = {}
        for title, source in (('pointing game', totals), (f'pointing game ±{radius} px',
                                                          tolerant)):
            table[title] = {}
            for method, per_task in source.items():
                scores = {name: float(np.mean(v)) for name, v in per_task.items() if v}
                scores['mean'] = float(np.mean(list(scores.values()))) if scores else None
                table[title][method] = scores
        counts = {name: len(v) for name, v in next(iter(totals.values())).items()}
        decision = self.decision.summary().get('', {})  # variant -> its scores
        with open(os.path.join(self.args.output, 'metrics.json'), 'w') as f:
            json.dump({'model': self.spec.describe(), 'checkpoint': self.args.checkpoint,
                       'images': images, 'images with the attribute': counts,
                       'pointing tolerance (px)': radius, 'seed': self.args.seed,
                       'scores': table, 'decision': {
                           variant: {'attribute_accuracy': scores['top1']}
                           for variant, scores in decision.items()}}, f, indent=2)
        names = [n for n in counts if counts[n]]
        lines = []
        for title, methods in table.items():
            lines.append(f'{title} (share of the map\'s peak on the shape of its own kind, '
                         f'%; images with the attribute)\n')
            lines.append('| method | ' + ' | '.join(f'{n} ({counts[n]})' for n in names)
                         + ' | mean |')
            lines.append('|' + '---|' * (len(names) + 2))
            for method, scores in methods.items():
                lines.append(f'| {method} | ' + ' | '.join(f'{100 * scores[n]:.1f}'
                                                            for n in names)
                             + f" | {100 * scores['mean']:.1f} |")
            lines.append('')
        if decision:
            lines.append('What the decision rests on (mean attribute accuracy, %): object kept = '
                         'the shapes amid another image\'s surroundings; outside only = the '
                         'shapes filled in smoothly from their surroundings\n')
            lines.append('| ' + ' | '.join(decision) + ' |')
            lines.append('|' + '---|' * len(decision))
            lines.append('| ' + ' | '.join(f"{scores['top1']:.1f}" for scores in decision.values())
                         + ' |')
            lines.append('')
        text = '\n'.join(lines)
        with open(os.path.join(self.args.output, 'metrics.md'), 'w') as f:
            f.write(f'{self.spec.describe()}, {images} images\n\n{text}')
        print('\n' + text)

