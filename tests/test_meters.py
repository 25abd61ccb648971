"""utils/objectives/meters.py: an epoch's sums from hand-made logits, exactly, and their state_dict."""
import math

import torch

from models.abn import AbnOutput
from utils.objectives.meters import SingleLabelMeter as EpochMeter
from utils.objectives.meters import topk_correct

# Six classes; every row ranks the classes 0 > 1 > ... > 5 (perception) or the reverse
# (attention), so which targets are hits is plain to see.
DESCENDING = torch.tensor([[5., 4., 3., 2., 1., 0.]])
ASCENDING = DESCENDING.flip(1)


def update(meter, step, target, perception_logits, per_loss, attention_logits=None,
           att_loss=None):
    """The meter's update as the loop calls it: an AbnOutput and the objective's losses."""
    losses = {'per_loss': per_loss}
    if att_loss is not None:
        losses['att_loss'] = att_loss
    meter.update(step, AbnOutput(attention_logits, perception_logits, None), target, losses)


def two_batches(meter):
    # batch 1: targets 0 and 3 (perception: top-1 hit, top-5 hit; attention: top-5 hit for 3)
    update(meter, 0, torch.tensor([0, 3]), DESCENDING.repeat(2, 1), torch.tensor(1.0),
                 ASCENDING.repeat(2, 1), torch.tensor(0.5))
    # batch 2: target 5 (perception: no hit; attention: top-1 hit)
    update(meter, 1, torch.tensor([5]), DESCENDING, torch.tensor(4.0), ASCENDING,
                 torch.tensor(1.0))


def test_topk_correct_caps_k_at_the_class_count():
    logits = torch.tensor([[3., 2., 1.], [3., 2., 1.]])
    top1, top5 = topk_correct(logits, torch.tensor([0, 2]), (1, 5))
    assert int(top1) == 1 and int(top5) == 2  # top-5 of 3 classes is top-3


def test_sums_and_averages_are_exact():
    meter = EpochMeter(torch.device('cpu'))
    two_batches(meter)
    # count, loss, att_loss, per_loss (sums over samples), then hits
    assert meter.sums.tolist() == [3, 2 * 1.5 + 5, 2 * 0.5 + 1, 2 * 1 + 4, 1, 2, 1, 2]
    summary = meter.summary()
    assert summary['count'] == 3
    assert math.isclose(summary['loss'], 8 / 3) and math.isclose(summary['per_loss'], 2)
    assert math.isclose(summary['att_loss'], 2 / 3)
    assert math.isclose(summary['per_top1'], 100 / 3) and math.isclose(summary['per_top5'], 200 / 3)
    assert math.isclose(summary['att_top1'], 100 / 3) and math.isclose(summary['att_top5'], 200 / 3)
    assert meter.first_nonfinite_step() is None


def test_a_baseline_has_no_attention_columns():
    meter = EpochMeter(torch.device('cpu'))
    update(meter, 0, torch.tensor([0, 1]), DESCENDING.repeat(2, 1), torch.tensor(2.0))
    summary = meter.summary()
    assert summary['att_loss'] == summary['att_top1'] == summary['att_top5'] == 0
    assert summary['loss'] == summary['per_loss'] == 2 and summary['per_top1'] == 50


def test_an_empty_epoch_divides_by_nothing():
    summary = EpochMeter(torch.device('cpu')).summary()
    assert summary['count'] == 0 and summary['loss'] == 0 and summary['per_top1'] == 0


def test_the_first_nonfinite_step_is_kept():
    meter = EpochMeter(torch.device('cpu'))
    target, logits = torch.tensor([0]), DESCENDING
    update(meter, 3, target, logits, torch.tensor(1.0))
    update(meter, 7, target, logits, torch.tensor(float('nan')))
    update(meter, 8, target, logits, torch.tensor(float('inf')))
    assert meter.first_nonfinite_step() == 7


def test_state_dict_round_trip_continues_the_same_sums():
    """A mid-epoch checkpoint holds the partial sums; the resumed epoch ends the same."""
    whole, first_half = EpochMeter(torch.device('cpu')), EpochMeter(torch.device('cpu'))
    two_batches(whole)
    update(first_half, 0, torch.tensor([0, 3]), DESCENDING.repeat(2, 1), torch.tensor(1.0),
                      ASCENDING.repeat(2, 1), torch.tensor(0.5))
    state = first_half.state_dict()
    assert state['sums'].device.type == 'cpu' and state['sums'].dtype == torch.float64
    resumed = EpochMeter(torch.device('cpu'))
    resumed.load_state_dict(state)
    update(resumed, 1, torch.tensor([5]), DESCENDING, torch.tensor(4.0), ASCENDING,
                   torch.tensor(1.0))
    assert torch.equal(resumed.sums, whole.sums)
    assert resumed.summary() == whole.summary()
