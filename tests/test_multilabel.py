"""Multi-label losses and metrics on hand-made values."""
import math

import pytest
import torch

from models import AbnOutput
from utils.kinds import PER_ATTRIBUTE
from utils.objectives import per_attribute as ml


def bce(logit, y):
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_bce_terms_of_both_branches():
    target = torch.tensor([[1., 0.]])
    out = AbnOutput(torch.tensor([[0., 0.]]), torch.tensor([[2., -1.]]), None)
    losses = ml.bce_losses(out, target)
    assert losses['attention'].item() == pytest.approx(math.log(2))
    assert losses['perception'].item() == pytest.approx((bce(2, 1) + bce(-1, 0)) / 2)
    assert set(ml.bce_losses(out._replace(attention_logits=None), target)) == {'perception'}


def test_positive_shares_and_focal_weights():
    targets = torch.tensor([[1., 0, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    shares = ml.positive_shares(targets)
    torch.testing.assert_close(shares, torch.tensor([3 / 5, 1 / 5, 1 / 5]))
    weights = ml.focal_weights(shares)
    e = [math.exp(-0.6), math.exp(-0.2), math.exp(-0.2)]
    torch.testing.assert_close(weights, torch.tensor([3 * v / sum(e) for v in e]))
    assert weights.mean().item() == pytest.approx(1)
    with pytest.raises(ValueError, match='no positive'):
        ml.positive_shares(torch.zeros(2, 3))


def test_weighted_focal_loss_by_hand():
    logits = torch.tensor([[2., -1.], [0., 3.]])
    target = torch.tensor([[1., 1.], [0., 0.]])
    weights = torch.tensor([0.5, 1.5])
    expected = 0
    for (z, y, w) in [(2, 1, .5), (-1, 1, 1.5), (0, 0, .5), (3, 0, 1.5)]:
        p = 1 / (1 + math.exp(-z))
        p_t = p if y else 1 - p
        expected += w * (1 - p_t) ** 2 * bce(z, y)
    got = ml.weighted_focal_loss(logits, target, weights)
    assert got.item() == pytest.approx(expected / 4, rel=1e-6)
    # gamma 0 and equal weights: plain BCE
    plain = ml.weighted_focal_loss(logits, target, torch.ones(2), gamma=0)
    assert plain.item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, target).item())
    out = AbnOutput(logits, logits, None)
    assert set(ml.focal_losses(out, target, weights)) == {'attention', 'perception'}


def test_threshold_is_probability_half_not_raw_logit_half():
    # logit 0.3: probability 0.57, positive; the authors' eval_celeba.py (raw logit >= 0.5)
    # called it negative. logit -0.2: probability 0.45, negative.
    logits = torch.tensor([[0.3, -0.2, 0.0]])
    predictions, probabilities = PER_ATTRIBUTE.predict(logits)
    assert predictions.tolist() == [[1., 0., 1.]]  # probability exactly 0.5 is positive
    torch.testing.assert_close(probabilities, torch.sigmoid(logits))


def test_confusion_counts_and_scores_by_hand():
    logits = torch.tensor([[1., -1.], [2., 1.], [-1., -2.], [-3., 4.]])
    target = torch.tensor([[1., 0.], [0., 0.], [1., 0.], [0., 1.]])
    counts = ml.confusion_counts(logits, target)
    # task 0: predicted 1 1 0 0, true 1 0 1 0 -> TP 1, FP 1, TN 1, FN 1
    # task 1: predicted 0 1 0 1, true 0 0 0 1 -> TP 1, FP 1, TN 2, FN 0
    assert counts.tolist() == [[1, 1], [1, 1], [1, 2], [1, 0]]
    assert counts.dtype == torch.int64
    total = counts + ml.confusion_counts(logits[:1], target[:1])  # sums over batches
    assert total[:, 0].tolist() == [2, 1, 1, 1]
    s = ml.scores(counts)
    assert s['accuracy'].tolist() == [0.5, 0.75]
    assert s['mean_accuracy'].item() == 0.625
    assert s['precision'].tolist() == [0.5, 0.5]
    assert s['recall'].tolist() == [0.5, 1.0]
    assert s['f1'].tolist() == pytest.approx([0.5, 2 / 3])


def test_scores_without_positives_are_zero_not_nan():
    counts = ml.confusion_counts(torch.tensor([[-1.], [-2.]]), torch.zeros(2, 1))
    s = ml.scores(counts)
    assert s['accuracy'].tolist() == [1.0]
    assert s['precision'].tolist() == s['recall'].tolist() == s['f1'].tolist() == [0.0]
