"""The multi-label (multi-task, attribute) objective: the authors' MultitaskABN training.

Targets are (N, T) float 0/1 tensors. The loss is BCEWithLogits on each branch, summed
(`multi-label`), or the weighted focal loss on each branch (`multi-label-focal`, the authors'
--use_wfl; its weights come from the training split's positive shares, see `bind`). A
prediction is positive at probability 0.5 (logit 0), not at a raw logit of 0.5 (the defect of
their eval_celeba.py). model_best is the epoch with the best mean attribute accuracy of the
perception branch on the validation split; log.txt's `Valid Acc.` is that accuracy.
"""
import csv
import os

import torch
import torch.distributed as dist

from utils.objectives import per_attribute as ml
from utils.kinds import PER_ATTRIBUTE
from utils.objectives.base import (AUTHORS_COLUMNS, BRANCH_COLUMNS, Objective, Reported,
                                   labels_of, register_objective)
from utils.objectives.meters import earliest_step_of_all, first_nonfinite, step_or_none

BRANCHES = ('att', 'per')  # attention branch, perception branch


class MultiLabelMeter:
    """An epoch's sums on the device: samples and the losses (float64), and each branch's
    per-task confusion counts [TP, FP, TN, FN] (int64, (2, 4, T)). One host sync, in
    `summary()`."""

    def __init__(self, device):
        self.device = device
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # count, loss, att, per
        self.counts = None  # (2, 4, T), created at the first update (T is the target's width)
        self.nonfinite_step = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, step, output, target, losses):
        n = target.size(0)
        per_loss = losses['per_loss'].detach()
        att_loss = losses['att_loss'].detach() if 'att_loss' in losses else per_loss.new_zeros(())
        loss = att_loss + per_loss
        self.sums += torch.stack([loss.new_full((), n, dtype=torch.float64),
                                  loss.double() * n, att_loss.double() * n, per_loss.double() * n])
        per = ml.confusion_counts(output.perception_logits.detach(), target)
        att = (ml.confusion_counts(output.attention_logits.detach(), target)
               if output.attention_logits is not None else torch.zeros_like(per))
        counts = torch.stack([att, per])
        self.counts = counts if self.counts is None else self.counts + counts
        self.nonfinite_step = first_nonfinite(self.nonfinite_step, loss, step)

    def all_reduce(self):
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)
            if self.counts is not None:
                dist.all_reduce(self.counts)
            self.nonfinite_step = earliest_step_of_all(self.nonfinite_step)

    def first_nonfinite_step(self):
        return step_or_none(self.nonfinite_step)

    def summary(self):
        """Losses per sample; `per_acc`/`att_acc`: each branch's mean attribute accuracy in
        percent; `per_scores`/`att_scores`: per-attribute accuracy, precision, recall and F1
        (fractions, lists)."""
        count, loss, att_loss, per_loss = self.sums.tolist()
        out = {'count': int(count)}
        for name, total in (('loss', loss), ('att_loss', att_loss), ('per_loss', per_loss)):
            out[name] = total / max(count, 1.0)
        for b, branch in enumerate(BRANCHES):
            if self.counts is None:
                out[f'{branch}_acc'] = 0.0
                continue
            scores = ml.scores(self.counts[b].cpu())
            out[f'{branch}_acc'] = 100.0 * float(scores['mean_accuracy'])
            out[f'{branch}_scores'] = {key: scores[key].tolist()
                                       for key in ('accuracy', 'precision', 'recall', 'f1')}
        return out

    def state_dict(self):
        return {'sums': self.sums.cpu(),
                'counts': self.counts.cpu() if self.counts is not None else None}

    def load_state_dict(self, state):
        self.sums = state['sums'].to(device=self.device, dtype=torch.float64)
        counts = state.get('counts')
        self.counts = counts.to(self.device) if counts is not None else None


class MultiLabelObjective(Objective):
    """BCEWithLogits(attention logits, y) + BCEWithLogits(perception logits, y), y (N, T) 0/1;
    model_best by the perception branch's mean attribute accuracy."""
    name = 'multi-label'
    kind = PER_ATTRIBUTE
    metric = 'per_acc'
    metric_label = 'mean attribute accuracy'
    higher_is_better = True
    reported = (Reported('acc', 'mean acc', 'Test mean attribute accuracy: ',
                         'mean attribute accuracy'),)
    log_columns = AUTHORS_COLUMNS + BRANCH_COLUMNS + ['Epoch Time (s)']

    def __init__(self, map_style='pos', max_tasks=8):
        self.map_style = map_style  # the attention pictures: 'pos', 'neg' or 'both'
        self.max_tasks = max_tasks  # panels per picture (CelebA has 40 tasks)

    def bind(self, data):
        """Called once the data is built (the focal loss reads the training split)."""

    def branch_losses(self, output, target):
        return ml.bce_losses(output, target.float())

    def losses(self, output, target):
        terms = self.branch_losses(output, target)
        losses = {}
        if 'attention' in terms:
            losses['att_loss'] = terms['attention']
        losses['per_loss'] = terms['perception']
        return losses

    def new_meter(self, device):
        return MultiLabelMeter(device)

    def best_text(self, best):
        return f'Best mean attribute accuracy (valid): {best:.2f}'

    def save_attention(self, out_dir, inputs, output, targets, data, start_index, grid_name,
                       title):
        """One picture per image with a panel per task (the first `max_tasks`), and a grid."""
        from utils.visualize import save_task_attention_images
        _, probabilities = self.kind.predict(output.perception_logits.float())
        return save_task_attention_images(
            out_dir, inputs, output.attention_map.float().cpu(), probabilities.cpu(),
            labels_of(targets), data.classes, data.mean, data.std, start_index=start_index,
            grid_name=grid_name, title=title, map_style=self.map_style, max_tasks=self.max_tasks)

    def write_evaluation(self, summary, directory, class_names, split='test'):
        """The per-attribute table of both branches: per_attribute.md and .csv in
        `directory`. Returns the paths."""
        return write_attribute_table(summary, directory, class_names, split)


class MultiLabelFocalObjective(MultiLabelObjective):
    """The weighted focal loss (gamma 2) on each branch, weights w_c = exp(-f_c) T / sum
    exp(-f_c) from the training split's positive shares f_c (the authors' --use_wfl)."""
    name = 'multi-label-focal'
    focal_loss = True

    def __init__(self, **options):
        super().__init__(**options)
        self.weights = None

    def bind(self, data):
        source = data.extras.get('attribute_targets')
        if source is None:
            raise ValueError('the focal loss needs the training split\'s targets '
                             '(DataBundle.extras["attribute_targets"])')
        self.weights = ml.focal_weights(ml.positive_shares(source))

    def branch_losses(self, output, target):
        weights = self.weights.to(output.perception_logits.device)
        return ml.focal_losses(output, target.float(), weights)


def write_attribute_table(summary, directory, class_names, split='test'):
    """per_attribute.md (a markdown table) and per_attribute.csv: accuracy, precision, recall
    and F1 per attribute for the perception and attention branches, and their means."""
    branches = [b for b in ('per', 'att') if f'{b}_scores' in summary]
    columns = [f'{b} {m}' for b in branches for m in ('accuracy', 'precision', 'recall', 'f1')]
    rows = []
    for t, name in enumerate(class_names):
        rows.append([name] + [100.0 * summary[f'{b}_scores'][m][t] for b in branches
                              for m in ('accuracy', 'precision', 'recall', 'f1')])
    means = ['mean'] + [sum(r[i] for r in rows) / max(len(rows), 1)
                        for i in range(1, len(columns) + 1)]
    os.makedirs(directory, exist_ok=True)
    csv_path = os.path.join(directory, 'per_attribute.csv')
    with open(csv_path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['attribute'] + columns)
        for row in rows + [means]:
            writer.writerow([row[0]] + [f'{v:.4f}' for v in row[1:]])
    md_path = os.path.join(directory, 'per_attribute.md')
    titles = {'per': 'perception', 'att': 'attention'}
    header = ['attribute'] + [f'{titles[c.split()[0]]} {c.split()[1]} (%)' for c in columns]
    with open(md_path, 'w') as f:
        f.write(f"Per-attribute scores on the {split} split ({summary['count']} images; "
                f"positive at probability 0.5)\n\n")
        f.write('| ' + ' | '.join(header) + ' |\n')
        f.write('|' + '---|' * len(header) + '\n')
        for row in rows + [means]:
            label = f'**{row[0]}**' if row is means else row[0]
            f.write('| ' + ' | '.join([label] + [f'{v:.2f}' for v in row[1:]]) + ' |\n')
    return [md_path, csv_path]


register_objective(MultiLabelObjective)
register_objective(MultiLabelFocalObjective)

__all__ = ['MultiLabelFocalObjective', 'MultiLabelMeter', 'MultiLabelObjective',
           'write_attribute_table']
