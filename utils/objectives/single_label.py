"""The authors' objective: one class per image, cross-entropy on both branches."""
import torch.nn.functional as F

from utils.objectives.base import (AUTHORS_COLUMNS, BRANCH_COLUMNS, Objective, Reported,
                                   register_objective)
from utils.objectives.meters import SingleLabelMeter


@register_objective
class SingleLabelObjective(Objective):
    """The authors' objective: CE(attention logits, y) + CE(perception logits, y) with y a
    LongTensor of class indices; accuracy is the perception branch's top-1, model_best the
    best test top-1."""
    name = 'single-label'
    metric = 'per_top1'
    metric_label = 'top-1'
    higher_is_better = True
    reported = (Reported('top1', 'top-1', 'Test Acc: ', 'top-1'),
                Reported('top5', 'top-5', 'Top-5:', 'top-5'))
    log_columns = AUTHORS_COLUMNS + BRANCH_COLUMNS + ['Valid Top-5', 'Valid Att Top-5',
                                                      'Epoch Time (s)']

    def losses(self, output, target):
        losses = {}
        if output.attention_logits is not None:
            losses['att_loss'] = F.cross_entropy(output.attention_logits.float(), target)
        losses['per_loss'] = F.cross_entropy(output.perception_logits.float(), target)
        return losses

    def new_meter(self, device):
        return SingleLabelMeter(device)

    def best_text(self, best):
        return f'Best acc: {best:.2f}'  # the authors' line
