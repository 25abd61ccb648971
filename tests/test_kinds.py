"""The kind of a model or split (utils.kinds): single-label or per attribute, chosen once and
asked by the objectives, the teaching loaders, explain.py and the page, each of which holds
one entry per kind; and the two kinds' predictions, rankings and measured maps."""
import ast
import os

import numpy as np
import pytest
import torch
import torch.utils.data as tud

from tests.fakedata import write_image_folder
from utils.data.attributes import ShapesMultiDataset
from utils.data.datasets import ImageFolder
from utils.data.shapes import ShapesDataset
from utils.kinds import KINDS, PER_ATTRIBUTE, SINGLE_LABEL, kind_of, kind_of_split
from utils.objectives import OBJECTIVES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_kind_is_chosen_from_the_maps_channels_or_the_split():
    assert kind_of(1) is SINGLE_LABEL and kind_of(4) is PER_ATTRIBUTE
    multi = ShapesMultiDataset(train=True, size=6)
    assert kind_of_split(multi) is PER_ATTRIBUTE
    assert kind_of_split(tud.Subset(tud.Subset(multi, range(4)), [0, 1])) is PER_ATTRIBUTE
    assert kind_of_split(tud.Subset(ShapesDataset(train=True, size=6), [0])) is SINGLE_LABEL


def test_an_image_folder_is_single_label(tmp_path):
    write_image_folder(str(tmp_path), splits=(('train', 2),), classes=('cat', 'dog'))
    assert kind_of_split(ImageFolder(str(tmp_path / 'train'))) is SINGLE_LABEL


def test_every_objective_names_its_kind():
    """The multi-label objectives (and the teaching of their maps) are per attribute, the
    authors' and its teaching single-label; nothing else tells them apart."""
    kinds = {name: objective.kind for name, objective in OBJECTIVES.items()}
    assert kinds == {'single-label': SINGLE_LABEL, 'attention-maps': SINGLE_LABEL,
                     'multi-label': PER_ATTRIBUTE, 'multi-label-focal': PER_ATTRIBUTE,
                     'multi-label-attention-maps': PER_ATTRIBUTE}


def test_every_consumer_has_one_entry_per_kind():
    """The page's kinds extend the kinds, the map layouts and explain.py's reports are one per
    kind: a third kind would be found missing here."""
    import explain
    from utils.serve.kinds import PAGE_KINDS, page_kind
    from utils.teach.layouts import LAYOUTS
    for table in (PAGE_KINDS, LAYOUTS, explain.REPORTS):
        assert set(table) == set(KINDS)
    for name, page in PAGE_KINDS.items():
        assert isinstance(page, type(KINDS[name]))
    assert page_kind(1).name == SINGLE_LABEL.name and page_kind(3).name == PER_ATTRIBUTE.name


def test_only_the_kinds_module_tells_the_kinds_apart():
    """No other library module tests a split for attribute names or a map count for more than
    one channel to learn the kind: they ask utils.kinds."""
    offenders = []
    for folder, _, files in os.walk(os.path.join(ROOT, 'utils')):
        for name in files:
            path = os.path.join(folder, name)
            if not name.endswith('.py') or path.endswith(os.path.join('utils', 'kinds.py')):
                continue
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'hasattr'
                        and isinstance(node.args[1], ast.Constant)
                        and node.args[1].value == 'attribute_names'):
                    offenders.append(f'{os.path.relpath(path, ROOT)}:{node.lineno}')
    assert not offenders


def test_single_label_predictions_rank_and_caption_by_softmax():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    predictions, scores = SINGLE_LABEL.predict(logits)
    assert predictions.tolist() == [1, 0]
    assert scores.tolist() == pytest.approx(torch.softmax(logits, 1).max(1).values.tolist())
    assert SINGLE_LABEL.decided_names(SINGLE_LABEL.probabilities(logits), ['a', 'b', 'c']) == \
        ['b', 'a']
    ranking = SINGLE_LABEL.ranking(logits[0], ['a', 'b', 'c'])
    assert list(ranking) == ['b', 'c', 'a'] and sum(ranking.values()) == pytest.approx(1)
    assert SINGLE_LABEL.correct(logits, torch.tensor([1, 2])) == 1
    right, confidence = SINGLE_LABEL.answers(SINGLE_LABEL.probabilities(logits), [1, 2])
    assert right.tolist() == [True, False]
    assert confidence.tolist() == pytest.approx(torch.softmax(logits, 1)[[0, 1], [1, 2]].tolist())
    assert SINGLE_LABEL.captions(predictions, scores, None, None)[0] == \
        (None, '1', pytest.approx(float(scores[0])))


def test_per_attribute_predictions_threshold_each_sigmoid_at_one_half():
    logits = torch.tensor([[0.3, -0.2, 0.0], [-1.0, -1.0, -1.0]])
    probabilities = PER_ATTRIBUTE.probabilities(logits)
    assert PER_ATTRIBUTE.decided_names(probabilities, ['a', 'b', 'c']) == [['a', 'c'], []]
    assert PER_ATTRIBUTE.ranking(logits[0], ['a', 'b', 'c']) == pytest.approx(
        {'a': 0.574443, 'b': 0.450166, 'c': 0.5}, abs=1e-5)
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert PER_ATTRIBUTE.correct(logits, labels) == pytest.approx(2 / 3 + 2 / 3)
    predictions, scores = PER_ATTRIBUTE.predict(logits)
    assert PER_ATTRIBUTE.captions(predictions, scores, labels, ['a', 'b', 'c']) == \
        [('a', 'a+c', None), ('c', 'none', None)]
    right, confidence = PER_ATTRIBUTE.answers(probabilities, labels)
    assert right.tolist() == pytest.approx([2 / 3, 2 / 3])
    first = probabilities[0]
    assert confidence[0] == pytest.approx(float(first[0] + (1 - first[1]) + (1 - first[2])) / 3)


def test_measured_maps_are_in_zero_one_for_both_kinds():
    """Single-label maps are measured as they are (a sigmoid's); unbounded multi-task maps as
    the authors' 'pos' picture, negative values at 0."""
    maps = torch.tensor(np.linspace(-3, 5, 16, dtype=np.float32).reshape(1, 1, 4, 4))
    assert torch.equal(SINGLE_LABEL.measured_maps(maps), maps)
    measured = PER_ATTRIBUTE.measured_maps(maps)
    assert measured.min() == 0 and measured.max() == pytest.approx(1)
    assert (measured[maps < 0] == 0).all()
