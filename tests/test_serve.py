"""The functions behind the attention editor (`explain.py --serve`, utils/serve), as units:
load an image, explain it, edit the map, save it where `--attention-maps` reads it; a
multi-task stand-in model; bad input answered with one line. The page itself is driven in a
real browser by tests/test_serve_browser.py."""
import builtins
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import explain
from models.abn import AbnOutput
from tests.helpers import run_script
from tests.helpers import save_project_checkpoint, tiny_model
from utils.data.shapes import SHAPE_CLASSES, generate_shapes
from utils.errors import AbnError
from utils.serve.editor import MapEditor
from utils.serve.server import INSTALL_HINT, require_gradio, serve
from utils.weights.loading import LoadedModel, architecture_options, load_model

CPU = torch.device('cpu')


# Tiny models: one thread is fastest, and on a busy machine far faster.
pytestmark = pytest.mark.usefixtures('one_thread')


def load(path, *argv):
    args = explain.get_args_parser().parse_args([path, '--gpu-id', 'cpu', *argv])
    return load_model(args.checkpoint, **architecture_options(args))


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('serve')
    return {'multiply': save_project_checkpoint(tiny_model(gate='multiply'),
                                                str(root / 'multiply.pth.tar')),
            'baseline': save_project_checkpoint(tiny_model(attention=False),
                                                str(root / 'baseline.pth.tar'))}


@pytest.fixture(scope='module')
def shapes_editor(checkpoints, tmp_path_factory):
    maps = tmp_path_factory.mktemp('maps')
    editor = MapEditor(load(checkpoints['multiply']), CPU, str(maps), dataset='shapes')
    yield editor
    editor.close()


def test_explain_shows_the_input_the_maps_and_the_top5(shapes_editor):
    picture = shapes_editor.gallery.picture_from_split('test', 3)
    assert picture.name == 'shapes-test-3' and picture.split == 'test' and picture.index == 3
    explained = shapes_editor.explain(picture)
    assert list(explained.panels) == ['input', 'ABN attention', 'CAM', 'Grad-CAM']
    assert all(panel.shape == (256, 256, 3) and panel.dtype == np.uint8
               for panel in explained.panels.values())
    assert explained.own_map.shape == (1, 16, 16) and explained.scale is None
    assert explained.editor_image.shape == (256, 256)  # 16 px a cell
    assert explained.true_name == SHAPE_CLASSES[picture.label]
    probabilities = list(explained.ranking.values())
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    # The same image straight through the model.
    with torch.no_grad():
        _, logits, attention_map = shapes_editor.model(picture.tensor[None])
    assert torch.allclose(attention_map[0], torch.from_numpy(explained.own_map))
    top = logits.softmax(1)[0].max()
    assert abs(max(probabilities) - float(top)) < 1e-5


def test_the_unpainted_map_reads_back_and_predicts_as_the_model(shapes_editor):
    explained = shapes_editor.explain(shapes_editor.gallery.picture_from_split('test', 0))
    painted = Image.fromarray(explained.editor_image).convert('RGB')
    read = shapes_editor.map_from_image(painted, explained.scale)
    assert read.shape == (16, 16)
    assert np.abs(read - explained.own_map[0]).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding
    again = shapes_editor.predict(explained, read)
    assert list(again) == list(explained.ranking)
    assert max(abs(again[k] - explained.ranking[k]) for k in again) < 0.01


def test_painting_black_changes_the_prediction_and_saves_as_training_data(shapes_editor):
    explained = shapes_editor.explain(shapes_editor.gallery.picture_from_split('test', 1))
    painted = Image.fromarray(explained.editor_image).convert('RGB')
    painted.paste((0, 0, 0), (0, 0, 256, 128))  # the black brush over the top half
    edited = shapes_editor.map_from_image(painted, explained.scale)
    assert np.all(edited[:8] == 0) and np.allclose(edited[8:], explained.own_map[0, 8:],
                                                   atol=1 / 255)
    ranking = shapes_editor.predict(explained, edited)
    assert ranking != explained.ranking
    overlay = shapes_editor.edited_overlay(explained, edited)
    assert overlay.shape == (256, 256, 3)
    path, _ = shapes_editor.save(explained, edited)
    assert path.endswith('/test/1.png')  # DIR/<split>/<index>.png
    with Image.open(path) as saved:
        assert saved.mode == 'L' and saved.size == (16, 16)
        pixels = np.asarray(saved)
    assert np.all(pixels[:8] == 0)
    assert np.abs(pixels[8:] / 255 - explained.own_map[0, 8:]).max() <= 0.5 / 255 + 1e-6
    # The saved file, given back as a map, is the edit (explain.py --edit reads it the same).
    assert np.abs(shapes_editor.map_from_image(Image.open(path)) - edited).max() <= 1 / 255


def test_a_partly_covered_cell_moves_part_way(shapes_editor):
    explained = shapes_editor.explain(shapes_editor.gallery.picture_from_split('test', 2))
    white = np.full((256, 256), 255, np.uint8)
    white[:8, :16] = 0  # half of the first cell (16x16 pixels) painted black
    edited = shapes_editor.map_from_image(Image.fromarray(white))
    assert edited[0, 0] == pytest.approx(0.5, abs=1 / 255) and edited[0, 1] == 1


def test_image_files_any_size_saved_under_their_class(checkpoints, tmp_path):
    images, labels, _ = generate_shapes(2, seed=5)
    folder = tmp_path / 'photos' / SHAPE_CLASSES[labels[0]]
    folder.mkdir(parents=True)
    big = folder / 'big one.jpg'
    Image.fromarray(np.kron(images[0], np.ones((3, 3, 1), np.uint8))).save(big)
    editor = MapEditor(load(checkpoints['multiply']), CPU, str(tmp_path / 'maps'),
                       files=[str(tmp_path / 'photos')])
    try:
        assert editor.gallery.files == [str(big)] and not editor.gallery.splits
        picture = editor.gallery.picture_from_file(str(big))
        assert picture.label == labels[0] and picture.tensor.shape == (3, 32, 32)
        assert picture.note == "96x96 image resized to the model's 32x32"
        explained = editor.explain(picture)
        edited = explained.own_map[0]
        path, _ = editor.save(explained, edited)
        assert path == str(tmp_path / 'maps' / SHAPE_CLASSES[labels[0]] / 'big one.png')
        chosen, _ = editor.save(explained, edited, class_name='star')
        assert chosen == str(tmp_path / 'maps' / 'star' / 'big one.png')
        with pytest.raises(AbnError, match="'dragon' is not one of the model's classes"):
            editor.save(explained, edited, class_name='dragon')
        # An upload outside a class folder: by default the predicted class's folder.
        loose = tmp_path / 'loose.png'
        Image.fromarray(images[1]).save(loose)
        explained = editor.explain(editor.gallery.picture_from_file(str(loose)))
        top = max(explained.ranking, key=explained.ranking.get)
        assert editor.save(explained, explained.own_map[0])[0].endswith(f'/{top}/loose.png')
    finally:
        editor.close()


BAD = {
    'not an image': (lambda e, t: e.gallery.picture_from_file(str(t / 'notes.png')), 'not an image'),
    'no file': (lambda e, t: e.gallery.picture_from_file(None), 'no file'),
    'index out of range': (lambda e, t: e.gallery.picture_from_split('test', 10 ** 6),
                           'has images 0 to'),
    'index not a number': (lambda e, t: e.gallery.picture_from_split('test', 'x'), 'whole number'),
    'unknown split': (lambda e, t: e.gallery.picture_from_split('valid', 0), "no split 'valid'"),
    'map of another shape': (lambda e, t: e.map_from_image(Image.new('L', (30, 10))),
                             'a 30x10 map does not fit'),
    'edited map of the wrong size': (
        lambda e, t: e.predict(e.explain(e.gallery.picture_from_split('test', 0)), np.zeros((8, 8))),
        'an edited map must be 16x16'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_is_one_line(case, shapes_editor, tmp_path):
    (tmp_path / 'notes.png').write_text('not a picture')
    action, expected = BAD[case]
    with pytest.raises(AbnError) as error:
        action(shapes_editor, tmp_path)
    assert expected in str(error.value) and '\n' not in str(error.value)


def test_a_map_of_another_size_but_the_same_shape_is_resized(shapes_editor):
    edited = shapes_editor.map_from_image(Image.new('L', (48, 48), 255))
    assert edited.shape == (16, 16) and np.all(edited == 1)


def test_a_plain_baseline_has_no_map_to_edit(checkpoints, tmp_path):
    with pytest.raises(AbnError, match='plain baseline without attention branch'):
        MapEditor(load(checkpoints['baseline']), CPU, str(tmp_path))


# -- multi-task models: a stand-in with the interface of the multi-task ABN ---------------------

class TinyMultitask(nn.Module):
    """(N, T, h, w) unbounded maps, one per attribute, and (N, T) logits read through a
    sigmoid; `attention=` replaces the maps, as the single-task models do."""

    def __init__(self, tasks=3):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv2d(3, 4, 3, stride=4, padding=1)  # 32 px -> 8x8
        self.att = nn.Conv2d(4, tasks, 1)
        self.heads = nn.Linear(4, tasks)
        self.num_classes, self.has_attention = tasks, True

    def forward(self, x, attention=None):
        features = torch.relu(self.features(x))
        maps = 50 * self.att(features)  # values far outside [0, 1], as in the authors' model
        used = maps if attention is None else attention
        gated = features[:, None] * used[:, :, None]  # (N, T, C, h, w): one gate per task
        per_task = gated.mean((-2, -1))  # (N, T, C)
        logits = (per_task * self.heads.weight).sum(-1) / 50 + self.heads.bias
        return AbnOutput(maps.mean((-2, -1)), logits, maps)


def multitask_loaded():
    return LoadedModel(TinyMultitask().eval(), 'tiny multi-task stand-in',
                       ['smiling', 'eyeglasses', 'bald'], ((0.5,) * 3, (0.25,) * 3), 32, False,
                       None)


def test_multitask_maps_choose_the_attribute_and_show_every_probability(tmp_path):
    editor = MapEditor(multitask_loaded(), CPU, str(tmp_path))
    try:
        assert editor.multitask and tuple(editor.methods) == ('abn',)  # no CAM, Grad-CAM
        images, _, _ = generate_shapes(1, seed=3)
        path = tmp_path / 'face.png'
        Image.fromarray(images[0]).save(path)
        picture = editor.gallery.picture_from_file(str(path))
        explained = editor.explain(picture, 'eyeglasses')
        assert explained.attribute == 1 and explained.own_map.shape == (3, 8, 8)
        assert list(explained.panels) == ['input', 'ABN attention']
        assert set(explained.ranking) == {'smiling', 'eyeglasses', 'bald'}
        with torch.no_grad():
            logits = editor.model(picture.tensor[None]).perception_logits[0]
        assert explained.ranking['bald'] == pytest.approx(float(torch.sigmoid(logits[2])))
        # Unbounded maps are shown as M / (2 max|M|) + 0.5 and read back the same way.
        channel = explained.own_map[1]
        assert explained.scale == pytest.approx(float(np.abs(channel).max()))
        read = editor.map_from_image(Image.fromarray(explained.editor_image), explained.scale)
        assert np.abs(read - channel).max() <= explained.scale / 255 + 1e-4
        # Painting the chosen attribute's map white changes that attribute's answer only
        # through its own map; the others keep theirs.
        white = editor.map_from_image(Image.new('L', (64, 64), 255), explained.scale)
        assert np.allclose(white, explained.scale)
        ranking = editor.predict(explained, white)
        assert ranking['eyeglasses'] != pytest.approx(explained.ranking['eyeglasses'])
        assert ranking['smiling'] == pytest.approx(explained.ranking['smiling'], abs=1e-6)
        assert editor.headline(ranking, 1).startswith('**eyeglasses** ')
        saved, _ = editor.save(explained, white)
        assert saved == str(tmp_path / 'eyeglasses' / 'face.png')  # DIR/<attribute>/<stem>
        with Image.open(saved) as image:
            assert image.size == (8, 8) and np.all(np.asarray(image) == 255)
        with pytest.raises(AbnError, match="no attribute 'beard'"):
            editor.explain(picture, 'beard')
    finally:
        editor.close()


# -- the command ------------------------------------------------------------------------------

def test_serve_without_gradio_says_what_to_install(checkpoints, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == 'gradio' or name.startswith('gradio.'):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_gradio)
    with pytest.raises(AbnError, match='pip install -r requirements-serve.txt'):
        require_gradio()
    code, out, err = run_script(explain.main, [checkpoints['multiply'], '--serve',
                                               '--gpu-id', 'cpu'], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and INSTALL_HINT in lines[0] and 'Traceback' not in out + err


def test_serve_flags_parse():
    args = explain.get_args_parser().parse_args(['model.pth.tar', '--serve', '--port', '8000',
                                                 '--dataset', 'shapes'])
    assert args.serve and args.port == 8000 and args.host == '127.0.0.1'


def test_a_taken_port_is_one_line(checkpoints, tmp_path):
    args = explain.get_args_parser().parse_args([checkpoints['multiply'], '--serve',
                                                 '-o', str(tmp_path)])
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AbnError, match=f'cannot serve on 127.0.0.1:{port} '
                                           r'\(is the port taken'):
            serve(args, load(checkpoints['multiply']), CPU, port=port)


@pytest.mark.slow
def test_ctrl_c_ends_the_command_even_when_something_keeps_it_open():
    """exit_at_the_latest_after: a thread that never ends (a server stuck closing) cannot keep
    the interrupted command alive; the process exits with the status given."""
    import subprocess
    import sys
    code = ('import threading, time\n'
            'from utils.serve.server import exit_at_the_latest_after\n'
            'threading.Thread(target=lambda: time.sleep(3600)).start()  # not a daemon\n'
            'exit_at_the_latest_after(1, 130)\n')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True,
                             text=True, timeout=300)
    assert process.returncode == 130, process.stderr
    assert 'did not close within 1 s' in process.stdout


@pytest.mark.parametrize('flag', ['--idle-minutes', '--max-upload-mb'])
def test_limits_of_zero_are_one_line(flag, checkpoints, capsys):
    code, out, err = run_script(explain.main, [checkpoints['multiply'], '--serve', flag, '0',
                                               '--gpu-id', 'cpu'], capsys)
    assert code == 1 and f'{flag} must be positive, got 0' in err
    assert len(err.strip().splitlines()) == 1


def test_the_host_check_rules():
    from utils.serve.access import TrustedHosts, served_names

    def request(host, origin=None):
        headers = [(b'host', host.encode())] + ([(b'origin', origin.encode())] if origin else [])
        return {'type': 'http', 'headers': headers}

    loopback = TrustedHosts(None, served_names('127.0.0.1'))
    assert loopback.allowed(request('127.0.0.1:7860', 'http://127.0.0.1:7860'))
    assert loopback.allowed(request('localhost:7860'))
    assert not loopback.allowed(request('192.168.1.5:7860'))
    assert not loopback.allowed(request('127.0.0.1:7860', 'null'))
    assert not loopback.allowed(request('127.0.0.1:7860', 'http://evil.example'))
    everywhere = TrustedHosts(None, served_names('0.0.0.0'), any_address=True)
    assert everywhere.allowed(request('192.168.1.5:7860', 'http://192.168.1.5:7860'))
    assert everywhere.allowed(request('[fe80::1]:7860'))
    assert not everywhere.allowed(request('evil.example:7860'))
    proxied = TrustedHosts(None, served_names('127.0.0.1', ['abn.example.org']))
    assert proxied.allowed(request('abn.example.org', 'https://abn.example.org'))


def test_saves_claim_names_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    from utils.teach.map_store import visible_stem, write_new_map

    def no_links(source, target):
        raise PermissionError(1, 'Operation not permitted')

    monkeypatch.setattr(os, 'link', no_links)
    path = str(tmp_path / 'a.png')
    assert write_new_map(path, b'one') == (path, False)
    assert write_new_map(path, b'one') == (path, True)
    assert write_new_map(path, b'two') == (str(tmp_path / 'a~2.png'), False)
    assert open(path, 'rb').read() == b'one' and sorted(os.listdir(tmp_path)) == ['a.png',
                                                                                 'a~2.png']
    # Class folders keep their own names (CUB's), made safe only where they must be.
    assert visible_stem('001.Black_footed Albatross') == '001.Black_footed Albatross'
    assert visible_stem('../up') == '-up' and visible_stem('.png') == 'png'
