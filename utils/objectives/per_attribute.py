"""Losses and metrics of multi-label (multi-task) classification, as pure functions.

Targets are float (N, T) tensors of 0/1, one column per task (attribute). A prediction is
positive when its probability is at least 0.5, that is when its logit is at least 0 (the
authors' training script thresholds sigmoid(logit) at 0.5; their eval_celeba.py thresholds raw
logits at 0.5, a defect not reproduced here).

Metrics come from per-task confusion counts, a (4, T) int64 tensor [TP, FP, TN, FN] that stays
on the device and can be summed over batches and processes without a host sync.
"""
import torch
import torch.nn.functional as F

TP, FP, TN, FN = range(4)


# -- losses -----------------------------------------------------------------------------------

def bce_losses(output, target):
    """The authors' loss terms: BCEWithLogits (mean) on each branch, to be summed.
    `output` is an AbnOutput; the plain baseline (no attention logits) has one term."""
    losses = {'perception': F.binary_cross_entropy_with_logits(output.perception_logits, target)}
    if output.attention_logits is not None:
        losses['attention'] = F.binary_cross_entropy_with_logits(output.attention_logits, target)
    return losses


def positive_shares(targets):
    """f_c: task c's share of all positive labels of a split, (T,) from (N, T) 0/1 targets
    (the authors' get_celeba_frequency_histogram)."""
    counts = targets.float().sum(0)
    total = counts.sum()
    if total <= 0:
        raise ValueError('the targets hold no positive label: no positive shares')
    return counts / total


def focal_weights(shares):
    """w_c = exp(-f_c) * T / sum_c exp(-f_c): rarer tasks weigh more; the weights average 1."""
    weights = torch.exp(-shares)
    return weights * (len(shares) / weights.sum())


def weighted_focal_loss(logits, target, weights, gamma=2.0, alpha=-1.0):
    """The authors' weighted binary focal loss (after Sarafianos et al., ECCV 2018):
    mean over samples and tasks of w_c * (1 - p_t)^gamma * BCE, p_t = p*y + (1-p)*(1-y);
    alpha >= 0 also weighs positives by alpha and negatives by 1 - alpha (off by default)."""
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction='none')
    p_t = p * target + (1 - p) * (1 - target)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return (weights * loss).mean()


def focal_losses(output, target, weights, gamma=2.0, alpha=-1.0):
    """bce_losses with the weighted focal loss on each branch (their --use_wfl)."""
    losses = {'perception': weighted_focal_loss(output.perception_logits, target, weights,
                                                gamma, alpha)}
    if output.attention_logits is not None:
        losses['attention'] = weighted_focal_loss(output.attention_logits, target, weights,
                                                  gamma, alpha)
    return losses


# -- metrics ----------------------------------------------------------------------------------

def confusion_counts(logits, target):
    """(4, T) int64 counts [TP, FP, TN, FN] per task of one batch, on the logits' device."""
    predicted = logits >= 0
    actual = target > 0.5
    return torch.stack([(predicted & actual).sum(0), (predicted & ~actual).sum(0),
                        (~predicted & ~actual).sum(0), (~predicted & actual).sum(0)]).long()


def _ratio(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0 (no positive predicted, or none
    to find): a finite score rather than the authors' NaN."""
    denominator = denominator.double()
    return torch.where(denominator > 0, numerator.double() / denominator.clamp(min=1),
                       torch.zeros_like(denominator))


def scores(counts):
    """From (4, T) counts: per-task accuracy, precision, recall and F1 ((T,) float64 tensors)
    and mean_accuracy (the unweighted mean of the per-task accuracies, the paper's number)."""
    tp, fp, tn, fn = counts
    accuracy = _ratio(tp + tn, tp + fp + tn + fn)
    return {'accuracy': accuracy, 'precision': _ratio(tp, tp + fp), 'recall': _ratio(tp, tp + fn),
            'f1': _ratio(2 * tp, 2 * tp + fp + fn), 'mean_accuracy': accuracy.mean()}
