"""The authors' objective: one class per image, cross-entropy on both branches."""
import torch.nn.functional as F

from utils.objectives.base import AUTHORS_COLUMNS, Objective, register_objective
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
    log_columns = AUTHORS_COLUMNS + [
        'Train Att Loss', 'Train Per Loss', 'Valid Att Loss', 'Valid Per Loss',
        'Train Att Acc.', 'Valid Att Acc.', 'Valid Top-5', 'Valid Att Top-5', 'Epoch Time (s)']

    def losses(self, output, target):
        losses = {}
        if output.attention_logits is not None:
            losses['att_loss'] = F.cross_entropy(output.attention_logits.float(), target)
        losses['per_loss'] = F.cross_entropy(output.perception_logits.float(), target)
        return losses

    def new_meter(self, device):
        return SingleLabelMeter(device)

    def summary_text(self, summary, attention):
        text = f"loss {summary['loss']:.4f}"
        if attention:
            text += f" (att {summary['att_loss']:.3f} + per {summary['per_loss']:.3f})"
        text += f" | top-1 {summary['per_top1']:.2f} top-5 {summary['per_top5']:.2f}"
        if attention:
            text += f" | att top-1 {summary['att_top1']:.2f}"
        return text

    def evaluation_text(self, summary, attention):
        text = (f" Test Loss:  {summary['loss']:.8f}, Test Acc:  {summary['per_top1']:.2f}, "
                f"Top-5: {summary['per_top5']:.2f}")
        if attention:
            text += (f"\n Attention branch: loss {summary['att_loss']:.8f}, top-1 "
                     f"{summary['att_top1']:.2f}, top-5 {summary['att_top5']:.2f}")
        return text

    def log_row(self, lr, train, valid, seconds):
        return [lr, train['loss'], valid['loss'], train['per_top1'], valid['per_top1'],
                train['att_loss'], train['per_loss'], valid['att_loss'], valid['per_loss'],
                train['att_top1'], valid['att_top1'], valid['per_top5'], valid['att_top5'],
                seconds]

    def best_text(self, best):
        return f'Best acc: {best:.2f}'  # the authors' line

    def predict(self, perception_logits):
        """Classes by argmax, scored by their softmax probability."""
        probabilities = perception_logits.float().softmax(1)
        scores, predictions = probabilities.max(1)
        return predictions, scores

    def captions(self, predictions, scores, target, class_names):
        def name(index):
            index = int(index)
            return (class_names[index] if class_names is not None
                    and 0 <= index < len(class_names) else str(index))
        return [(name(target[i]) if target is not None else None, name(predictions[i]),
                 float(scores[i])) for i in range(len(predictions))]
