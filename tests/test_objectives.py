"""The Objective seam: losses on hand-made logits, predictions, the metric's direction, the
log columns, and the registry that makes a new objective one class away."""
import math

import pytest
import torch

from models.abn import AbnOutput
from utils.objectives import (AUTHORS_COLUMNS, OBJECTIVES, Objective, SingleLabelObjective,
                              get_objective, register_objective)
from utils.train.logger import COLUMNS


def test_single_label_losses_are_each_branch_cross_entropy():
    # two classes, logits (0, log 3): p(class 1) = 3/4, so CE is -log(3/4) for class 1.
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    target = torch.tensor([1, 0])
    output = AbnOutput(attention_logits=torch.zeros(2, 2), perception_logits=logits,
                       attention_map=torch.zeros(2, 1, 4, 4))
    losses = SingleLabelObjective().losses(output, target)
    assert sorted(losses) == ['att_loss', 'per_loss']
    assert losses['att_loss'].item() == pytest.approx(math.log(2))
    expected = (-math.log(3 / 4) - math.log(1 / 4)) / 2
    assert losses['per_loss'].item() == pytest.approx(expected)
    total = SingleLabelObjective().total_loss(losses)
    assert total.item() == pytest.approx(math.log(2) + expected)


def test_a_plain_backbone_has_only_the_perception_loss():
    output = AbnOutput(None, torch.zeros(3, 4), None)
    losses = SingleLabelObjective().losses(output, torch.tensor([0, 1, 2]))
    assert list(losses) == ['per_loss']


def test_predict_is_argmax_with_its_softmax_probability():
    logits = torch.tensor([[0.0, math.log(3)], [math.log(4), 0.0]])
    predictions, scores = SingleLabelObjective().kind.predict(logits)
    assert predictions.tolist() == [1, 0]
    assert scores.tolist() == pytest.approx([0.75, 0.8])
    captions = SingleLabelObjective().kind.captions(predictions, scores, torch.tensor([1, 1]),
                                                    ['cat', 'dog'])
    assert captions == [('dog', 'dog', pytest.approx(0.75)), ('dog', 'cat', pytest.approx(0.8))]


def test_the_meter_sums_what_the_losses_and_logits_say():
    objective = SingleLabelObjective()
    meter = objective.new_meter(torch.device('cpu'))
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([1, 1, 0, 0])
    output = AbnOutput(logits, logits, None)
    losses = objective.losses(output, target)
    meter.update(0, output, target, losses)
    summary = meter.summary()
    assert summary['count'] == 4 and summary['per_top1'] == 50.0 and summary['att_top1'] == 50.0
    assert summary['loss'] == pytest.approx(losses['att_loss'].item() + losses['per_loss'].item())
    assert summary[objective.metric] == 50.0 and meter.first_nonfinite_step() is None
    meter.update(1, output, target, {'att_loss': torch.tensor(float('nan')),
                                     'per_loss': torch.tensor(1.0)})
    assert meter.first_nonfinite_step() == 1


def test_metric_direction_decides_the_best():
    objective = SingleLabelObjective()
    assert objective.metric == 'per_top1' and objective.higher_is_better
    assert objective.is_better(50.0, None) and objective.is_better(51.0, 50.0)
    assert not objective.is_better(50.0, 50.0) and not objective.is_better(49.0, 50.0)

    class Error(SingleLabelObjective):
        higher_is_better = False
    assert Error().is_better(1.0, 2.0) and not Error().is_better(2.0, 1.0)


def test_log_columns_are_the_authors_five_then_each_branch():
    objective = get_objective('single-label')
    assert objective.log_columns[:5] == AUTHORS_COLUMNS == [
        'Learning Rate', 'Train Loss', 'Valid Loss', 'Train Acc.', 'Valid Acc.']
    assert objective.log_columns == COLUMNS
    summary = {'loss': 1.0, 'att_loss': 0.4, 'per_loss': 0.6, 'per_top1': 90.0,
               'per_top5': 99.0, 'att_top1': 80.0, 'att_top5': 98.0}
    row = objective.log_row(0.1, summary, dict(summary, loss=2.0), 12.0)
    assert len(row) == len(objective.log_columns)
    assert dict(zip(objective.log_columns, row)) == {
        'Learning Rate': 0.1, 'Train Loss': 1.0, 'Valid Loss': 2.0, 'Train Acc.': 90.0,
        'Valid Acc.': 90.0, 'Train Att Loss': 0.4, 'Train Per Loss': 0.6,
        'Valid Att Loss': 0.4, 'Valid Per Loss': 0.6, 'Train Att Acc.': 80.0,
        'Valid Att Acc.': 80.0, 'Valid Top-5': 99.0, 'Valid Att Top-5': 98.0,
        'Epoch Time (s)': 12.0}
    assert objective.summary_text(summary, attention=True) == (
        'loss 1.0000 (att 0.400 + per 0.600) | top-1 90.00 top-5 99.00 | att top-1 80.00')


def test_a_new_objective_is_one_class_and_its_registration(monkeypatch):
    monkeypatch.setattr('utils.objectives.base.OBJECTIVES', dict(OBJECTIVES))

    @register_objective
    class Halved(SingleLabelObjective):
        name = 'halved-test'

        def losses(self, output, target):
            return {k: v / 2 for k, v in super().losses(output, target).items()}

    assert isinstance(get_objective('halved-test'), Halved)
    with pytest.raises(ValueError, match="unknown objective 'nope': choose one of"):
        get_objective('nope')
    with pytest.raises(ValueError):
        register_objective(type('Nameless', (Objective,), {}))
