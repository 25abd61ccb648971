"""The learning-rate schedule: the authors' step schedule (`lr *= gamma` when an epoch in
--schedule begins, epochs counted from 0), in closed form so a resumed run needs no replay."""
import math
from types import SimpleNamespace

import pytest

from utils.train.engine import step_schedule_lr


def lr_at(epoch, lr=0.1, schedule=(150, 225), gamma=0.1):
    return step_schedule_lr(SimpleNamespace(lr=lr, schedule=list(schedule), gamma=gamma), epoch)


@pytest.mark.parametrize('epoch,expected', [(0, 0.1), (149, 0.1), (150, 0.01), (224, 0.01),
                                            (225, 0.001), (299, 0.001)])
def test_cifar_recipe(epoch, expected):
    assert math.isclose(lr_at(epoch), expected)


def test_published_imagenet_recipe_drops_after_31_and_61_epochs():
    """--schedule 31 61: epochs 32 and 62 (counted from 1) are the first at the lower rates."""
    rates = [lr_at(e, schedule=(31, 61)) for e in range(90)]
    assert rates[30] == 0.1 and math.isclose(rates[31], 0.01) and math.isclose(rates[60], 0.01)
    assert math.isclose(rates[61], 0.001) and math.isclose(rates[89], 0.001)


def test_equals_the_authors_loop():
    """Their adjust_learning_rate, replayed epoch by epoch, gives the same rates (WRN: x0.2)."""
    schedule, gamma, lr = [60, 120, 160], 0.2, 0.1
    for epoch in range(200):
        if epoch in schedule:
            lr *= gamma
        assert math.isclose(lr_at(epoch, schedule=schedule, gamma=gamma), lr)


def test_no_schedule_keeps_the_rate():
    assert lr_at(10, lr=0.05, schedule=()) == 0.05
