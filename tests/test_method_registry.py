"""The explanation methods' registry (utils.explain.methods) is what every consumer asks: a
method registered in this file alone is drawn and measured by explain.py --compare and
--measure (single-label and multi-task) and shown on the page, no other file touched."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import explain
from models import MULTITASK_MODELS
from tests.fakedata import save_run_checkpoint
from tests.helpers import run_script, save_project_checkpoint, tiny_model
from utils.data.datasets import NORMALIZATION
from utils.explain import methods
from utils.weights.modelspec import ModelSpec

pytestmark = pytest.mark.usefixtures('one_thread')
CPU = ['--gpu-id', 'cpu']


def centre(n, k, h, w):
    """Maps that peak at the centre of an h x w grid, the same for every image."""
    ys = torch.linspace(-1, 1, h).view(h, 1)
    xs = torch.linspace(-1, 1, w).view(1, w)
    return (1 - (ys ** 2 + xs ** 2) / 2).expand(n, k, h, w).clone()


class CentreMap(methods.Method):
    """A prior, not an explanation: the centre of the image."""
    name, title, short = 'centre', 'centre prior', 'centre'

    def feature_maps(self, batch):
        return centre(len(batch.inputs), 1, *batch.recorded.maps.shape[-2:])

    @classmethod
    def task_maps(cls, batch):
        n, _, h, w = batch.attention_maps.shape
        return centre(n, len(batch.tasks), h, w)


@pytest.fixture
def registered():
    methods.register(CentreMap)
    yield CentreMap
    del methods.METHODS[CentreMap.name]


def test_a_registered_method_is_compared_and_measured_by_explain(registered, tmp_path, capsys,
                                                                 monkeypatch):
    from utils.explain.where_maps_look import WhereMapsLook
    drawn = []  # the rows of where the maps look
    write = WhereMapsLook.write
    monkeypatch.setattr(WhereMapsLook, 'write',
                        lambda self, out, titles: drawn.extend(titles.values()) or write(
                            self, out, titles))
    model = save_project_checkpoint(tiny_model(), str(tmp_path / 'abn.pth.tar'))
    out = tmp_path / 'out'
    code, stdout, err = run_script(explain.main, [
        model, '--dataset', 'shapes', '-n', '4', '--compare', '--measure', '--steps', '2',
        '--road-percentiles', 'none', '--save-images', '1', '-o', str(out)] + CPU, capsys)
    assert code == 0, err
    results = json.loads((out / 'metrics.json').read_text())['results']
    assert list(results) == ['ABN attention', 'CAM', 'Grad-CAM', 'random', 'centre prior']
    assert all(entry['n'] == 4 for entry in results['centre prior'].values())
    assert '| centre prior |' in (out / 'metrics.md').read_text()
    # drawn where the maps are drawn (the random floor is only measured)
    assert drawn == ['ABN attention', 'CAM', 'Grad-CAM', 'centre prior']
    assert (out / 'average_maps.png').exists() and (out / '0000_shapes-test-0.png').exists()


def test_a_registered_method_is_measured_per_task(registered, tmp_path, capsys):
    spec = ModelSpec('celeba', 'mtabn_v1_resnet18', MULTITASK_MODELS.model_args(
        'mtabn_v1_resnet18', num_classes=4, width=8), normalization=NORMALIZATION['shapes'],
        class_names=['circle', 'triangle', 'plus', 'frame'], image_size=32,
        objective='multi-label')
    path = save_run_checkpoint(spec, str(tmp_path / 'multi.pth.tar'))
    out = tmp_path / 'out'
    code, _, err = run_script(explain.main, [path, '--dataset', 'shapes-multi', '-n', '6',
                                             '--measure', '-o', str(out)] + CPU, capsys)
    assert code == 0, err
    scores = json.loads((out / 'metrics.json').read_text())['scores']['pointing game']
    assert list(scores) == ['ABN', 'CAM', 'Grad-CAM', 'random', 'centre']


def test_a_registered_method_is_shown_on_the_page(registered, tmp_path):
    from utils.serve.editor import MapEditor
    from utils.weights.loading import load_model
    path = save_project_checkpoint(tiny_model(), str(tmp_path / 'abn.pth.tar'))
    editor = MapEditor(load_model(path), torch.device('cpu'), str(tmp_path / 'maps'))
    assert editor.panel_titles() == ['input', 'ABN attention', 'CAM', 'Grad-CAM',
                                     'centre prior']
    picture_file = tmp_path / 'grey.png'
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(picture_file)
    explained = editor.explain(editor.gallery.picture_from_file(str(picture_file)))
    assert list(explained.panels) == editor.panel_titles()
    # the overlay drawn of the centre map: brightest where the map peaks
    assert explained.panels['centre prior'].shape == explained.panels['input'].shape
