"""The attention editor as an attacker and a careless user reach it: over HTTP, against
`explain.py --serve` running as a command on 127.0.0.1 (docs/serve.md, "Security").

PostScript named .png never reaches Ghostscript (a stand-in `gs` on PATH records any call),
through the page's three ways in and through training and explain.py; other host names and
origins get 403; a --host beyond this machine needs a login; uploads have a size limit and
images a pixel limit checked before decoding; saves never lose a map and never mix test maps
into training maps; no request prints a traceback or shows a path of this machine; the page's
temporary folder goes when it stops; 20 visitors at once are all answered."""
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT
from tests.helpers import Server, save_project_checkpoint, tiny_model

from gradio_client import Client, handle_file  # noqa: E402

pytestmark = pytest.mark.slow  # the page as a command, over HTTP: the full suite

import httpx  # noqa: E402

POSTSCRIPT = (b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n'
              b'newpath 0 0 moveto 32 32 lineto stroke\nshowpage\n%%EOF\n')


def stand_in_ghostscript(folder):
    """A `gs` that records its calls in folder/gs-calls; returns (PATH value, record file)."""
    bin_dir = folder / 'bin'
    bin_dir.mkdir()
    record = folder / 'gs-calls'
    gs = bin_dir / 'gs'
    gs.write_text(f'#!/bin/sh\necho "$@" >> {record}\nexit 1\n')
    gs.chmod(gs.stat().st_mode | stat.S_IEXEC)
    return f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', record


def huge_png(path, side=13000):
    """A valid {side}x{side} 1-bit PNG of a few kB: billions of pixels behind a tiny file."""
    def chunk(kind, data):
        body = kind + data
        return len(data).to_bytes(4, 'big') + body + zlib.crc32(body).to_bytes(4, 'big')
    row = 1 + (side + 7) // 8
    header = side.to_bytes(4, 'big') * 2 + bytes([1, 0, 0, 0, 0])
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
                + chunk(b'IDAT', zlib.compress(bytes(row * side), 9)) + chunk(b'IEND', b''))
    return str(path)


def editor_value(path):
    return {'background': handle_file(path), 'layers': [], 'composite': handle_file(path),
            'id': None}


@pytest.fixture(scope='module')
def page(tmp_path_factory):
    """One page for the module: shapes, a tiny model, the stand-in gs on its PATH."""
    root = tmp_path_factory.mktemp('page')
    path, record = stand_in_ghostscript(root)
    checkpoint = save_project_checkpoint(tiny_model(gate='multiply'), str(root / 'm.pth.tar'))
    server = Server([checkpoint, '--dataset', 'shapes', '-o', 'out', '--max-upload-mb', '1'],
                    str(root), env={'PATH': path})
    server.wait_until_up()
    server.root, server.gs_calls = root, record
    yield server
    server.stop()


def test_postscript_through_the_page_never_reaches_ghostscript(page, tmp_path):
    eps = tmp_path / 'x.png'
    eps.write_bytes(POSTSCRIPT)
    client = Client(page.url, verbose=False)
    message = client.predict(handle_file(str(eps)), 'circle', api_name='/upload')[0]
    assert 'x.png is not an image this page can read' in message
    client.predict('test', 1, 'circle', api_name='/show_split')
    message = client.predict(handle_file(str(eps)), api_name='/load_map')[0]
    assert 'x.png is not an image this page can read' in message
    message = client.predict(editor_value(str(eps)), api_name='/run_edit')[0]
    assert 'the painted map' in message and 'is not an image this page can read' in message
    assert not page.gs_calls.exists(), page.gs_calls.read_text()


def test_postscript_in_training_data_maps_and_explain_py_never_reaches_ghostscript(tmp_path):
    path, record = stand_in_ghostscript(tmp_path)
    env = dict(os.environ, PATH=path)
    data = tmp_path / 'data'
    for split in ('train', 'val'):
        for name in ('cat', 'dog'):
            (data / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new('RGB', (32, 32), (40 * i, 90, 160)).save(data / split / name / f'{i}.png')
    (data / 'train' / 'cat' / 'evil.png').write_bytes(POSTSCRIPT)
    maps = tmp_path / 'maps' / 'dog'
    maps.mkdir(parents=True)
    (maps / '0.png').write_bytes(POSTSCRIPT)
    checkpoint = save_project_checkpoint(tiny_model(gate='multiply'), str(tmp_path / 'm.pth'))
    commands = {
        'training': ['cifar.py', '--dataset', 'imagefolder', '--data', str(data), '--depth', '8',
                     '--epochs', '1', '--image-size', '32', '-c', str(tmp_path / 'run'),
                     '--gpu-id', 'cpu', '-j', '0'],
        'maps': ['cifar.py', '--dataset', 'imagefolder', '--data', str(data), '--depth', '8',
                 '--epochs', '1', '--image-size', '32', '-c', str(tmp_path / 'run2'),
                 '--gpu-id', 'cpu', '-j', '0', '--skip-bad-images', '--attention-maps',
                 str(tmp_path / 'maps')],
        'explain': ['explain.py', checkpoint, str(data / 'train' / 'cat' / 'evil.png'),
                    '-o', str(tmp_path / 'out'), '--gpu-id', 'cpu'],
    }
    named = {'training': 'evil.png', 'maps': '0.png', 'explain': 'evil.png'}
    for what, argv in commands.items():
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 1, (what, done.stdout, done.stderr)
        assert named[what] in done.stderr and 'Traceback' not in done.stderr, (what, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, (what, done.stderr)
    assert not record.exists(), record.read_text()


def test_other_host_names_and_origins_are_refused(page):
    assert httpx.get(page.url + 'config').status_code == 200
    assert httpx.get(f'http://localhost:{page.port}/config').status_code == 200
    for headers in ({'Host': f'evil.example:{page.port}'},
                    {'Origin': f'http://evil.example:{page.port}'}, {'Origin': 'null'},
                    {'Host': f'evil.example:{page.port}',
                     'Origin': f'http://evil.example:{page.port}'}):
        response = httpx.get(page.url + 'config', headers=headers)
        assert response.status_code == 403, headers
        assert '--allowed-host' in response.text
        # A rebinding page cannot even join the queue to save a map.
        response = httpx.post(page.url + 'gradio_api/queue/join', headers=headers,
                              json={'data': [], 'fn_index': 0, 'session_hash': 'x'})
        assert response.status_code == 403, headers


def test_a_host_beyond_this_machine_needs_a_login(tmp_path):
    checkpoint = save_project_checkpoint(tiny_model(gate='multiply'), str(tmp_path / 'm.pth'))
    done = subprocess.run([sys.executable, 'explain.py', checkpoint, '--serve', '--host',
                           '0.0.0.0', '--gpu-id', 'cpu'], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1
    assert '--host 0.0.0.0 lets anyone who can reach this machine use the page' in done.stderr
    assert '--auth USER:PASSWORD' in done.stderr and 'Traceback' not in done.stderr
    from utils.serve.access import check_exposure
    assert check_exposure('127.0.0.1', None) is None
    assert 'every address of this machine' in check_exposure('0.0.0.0', ('a', 'b'))


def test_a_login_is_required_when_given_and_the_folder_goes_when_the_page_stops(tmp_path):
    checkpoint = save_project_checkpoint(tiny_model(gate='multiply'), str(tmp_path / 'm.pth'))
    login = tmp_path / 'login'
    login.write_text('ana:s3cret\n')
    server = Server([checkpoint, '--dataset', 'shapes', '--auth-file', str(login)], str(tmp_path))
    try:
        server.wait_until_up()
        with pytest.raises(Exception):
            Client(server.url, verbose=False).predict('test', 0, 'circle',
                                                      api_name='/show_split')
        client = Client(server.url, auth=('ana', 's3cret'), verbose=False)
        assert 'Showing' in client.predict('test', 0, 'circle', api_name='/show_split')[0]
        picture = tmp_path / 'p.png'
        Image.new('RGB', (32, 32), 'red').save(picture)
        with httpx.Client(base_url=server.url) as session:
            upload = {'files': ('p.png', picture.read_bytes(), 'image/png')}
            assert session.post('gradio_api/upload', files=upload).status_code in (401, 403)
            session.post('login', data={'username': 'ana', 'password': 's3cret'})
            uploaded = session.post('gradio_api/upload', files=upload).json()[0]
        # The page's uploads live in a folder of its own, gone once it stops.
        folder = re.match(r'(.*/abn-editor-[^/]+)/', uploaded).group(1)
        assert os.path.isdir(folder)
        server.process.terminate()  # as a scheduler stops it
        server.process.wait(timeout=60)
        assert not os.path.exists(folder)
    finally:
        server.stop()


def test_uploads_and_images_have_limits(page, tmp_path):
    big = tmp_path / 'big.png'
    big.write_bytes(os.urandom(1_500_000))  # over --max-upload-mb 1
    response = httpx.post(page.url + 'gradio_api/upload',
                          files={'files': ('big.png', big.read_bytes(), 'image/png')})
    assert response.status_code == 413
    client = Client(page.url, verbose=False)
    bomb = huge_png(tmp_path / 'bomb.png')
    assert os.path.getsize(bomb) < 1_000_000
    started = time.monotonic()
    message = client.predict(handle_file(bomb), 'circle', api_name='/upload')[0]
    assert 'bomb.png has more than the 40 megapixels taken here' in message
    client.predict('test', 2, 'circle', api_name='/show_split')
    message = client.predict(handle_file(bomb), api_name='/load_map')[0]
    assert 'more than the 40 megapixels' in message and 'DecompressionBomb' not in message
    assert time.monotonic() - started < 60  # refused from the header, not decoded


def test_saves_never_replace_a_different_map_and_names_stay_visible(page, tmp_path):
    client = Client(page.url, verbose=False)
    client.predict('test', 5, 'circle', api_name='/show_split')
    white, black = tmp_path / 'white.png', tmp_path / 'black.png'
    Image.new('RGB', (64, 64), 'white').save(white)
    Image.new('RGB', (64, 64), 'black').save(black)
    first = client.predict(editor_value(str(white)), 'circle', api_name='/save')[0]
    second = client.predict(editor_value(str(black)), 'circle', api_name='/save')[0]
    again = client.predict(editor_value(str(white)), 'circle', api_name='/save')[0]
    assert 'edited_maps/test/5.png' in first
    assert 'edited_maps/test/5~2.png' in second and 'both are kept' in second
    assert 'nothing changed' in again
    folder = page.root / 'out' / 'edited_maps' / 'test'
    assert np.all(np.asarray(Image.open(folder / '5.png')) == 255)
    assert np.all(np.asarray(Image.open(folder / '5~2.png')) == 0)
    # An upload named '.png' is saved as a visible file.
    hidden = tmp_path / 'up' / '.png'
    hidden.parent.mkdir()
    Image.new('RGB', (32, 32), 'gray').save(hidden, format='PNG')
    client.predict(handle_file(str(hidden)), 'circle', api_name='/upload')
    saved = client.predict(editor_value(str(white)), 'star', api_name='/save')[0]
    assert 'edited_maps/star/png.png' in saved
    assert not any(name.startswith('.') for _, _, files in os.walk(page.root / 'out')
                   for name in files)


def test_boxes_drawn_on_the_map_are_saved_as_a_map(page, tmp_path):
    """The box tool's event: the first box of an image makes the rest black, the next adds;
    saved like a painted map, which --attention-maps teaches."""
    client = Client(page.url, verbose=False)
    client.predict('train', 9, 'circle', api_name='/show_split')
    painter = tmp_path / 'painter.png'
    Image.new('RGB', (64, 64), 'gray').save(painter)
    first = client.predict(editor_value(str(painter)), '0.25,0.25,0.75,0.5',
                           api_name='/draw_box')
    assert first[0].startswith('Box drawn (the rest of the map black)')
    drawn = first[1]['composite'] if isinstance(first[1], dict) else first[1]
    second = client.predict(editor_value(drawn), '0,0,0.125,0.125', api_name='/draw_box')
    assert second[0].startswith('Box drawn (added)')
    drawn = second[1]['composite'] if isinstance(second[1], dict) else second[1]
    assert 'edited_maps/train/9.png' in client.predict(editor_value(drawn), 'circle',
                                                      api_name='/save')[0]
    saved = np.asarray(Image.open(page.root / 'out' / 'edited_maps' / 'train' / '9.png'))
    expected = np.zeros((16, 16), np.uint8)
    expected[4:8, 4:12] = expected[0:2, 0:2] = 255
    assert np.array_equal(saved, expected)
    for text in ('0.5,0.5,0.2,0.9', '1,2,3', '0,0,1,1.5'):
        answer = client.predict(editor_value(drawn), text, api_name='/draw_box')[0]
        assert answer.startswith('**Error:**') and 'box' in answer


def test_no_request_prints_a_traceback_or_shows_a_path_of_this_machine(page, tmp_path):
    client = Client(page.url, verbose=False)
    bad_calls = [(('test', 1, 'not a class'), '/show_split'), (('test', 'x', 'circle'),
                                                                '/show_split'),
                 ((None,), '/run_edit'), (({'background': None, 'layers': [],
                                            'composite': None, 'id': None}, 'circle'), '/save')]
    for args, name in bad_calls:
        try:
            client.predict(*args, api_name=name)
        except Exception:  # noqa: BLE001 - refused, as it should be: the server's output counts
            pass
    for body in ({'data': [1], 'fn_index': 999, 'session_hash': 'y'}, {'nonsense': True}):
        httpx.post(page.url + 'gradio_api/queue/join', json=body)
    httpx.post(page.url + 'gradio_api/run/predict', content=b'{not json')
    httpx.get(page.url + 'gradio_api/file=/etc/passwd')
    time.sleep(1)
    assert 'Traceback' not in page.output, page.output
    shown = client.predict('test', 3, 'circle', api_name='/show_split')[0]
    config = httpx.get(page.url + 'config').text
    for text in (shown, config):
        assert str(page.root) not in text and ROOT not in text


def resident_mb(pid):
    with open(f'/proc/{pid}/status') as f:
        return int(re.search(r'VmRSS:\s+(\d+)', f.read()).group(1)) / 1024


def test_twenty_visitors_at_once_are_all_answered(page, tmp_path):
    """Two waves of 20 simulated visitors, each: show a test image, paint, run, save its own
    map. Every request is answered without error, every save is there and intact, and the
    second wave leaves the server's resident memory within 100 MB of where the first left it
    (the first warms the allocator and Gradio's caches). The figures are printed (BENCHMARKS.md
    has a run's)."""
    visitors = 20
    painted = tmp_path / 'half.png'
    half = np.zeros((64, 64, 3), np.uint8)
    half[:, :32] = 255
    Image.fromarray(half).save(painted)
    figures = []
    for wave in range(2):
        latencies, errors = [], []
        first = 100 + wave * visitors

        def visit(number):
            try:
                client = Client(page.url, verbose=False)
                for args, name in ((('test', number, 'circle'), '/show_split'),
                                   ((editor_value(str(painted)),), '/run_edit'),
                                   ((editor_value(str(painted)), 'circle'), '/save')):
                    started = time.monotonic()
                    answer = client.predict(*args, api_name=name)
                    latencies.append(time.monotonic() - started)
                    if 'Error' in str(answer[0]):
                        errors.append(answer[0])
            except Exception as error:  # noqa: BLE001 - counted, then asserted
                errors.append(repr(error))

        started = time.monotonic()
        threads = [threading.Thread(target=visit, args=(first + n,)) for n in range(visitors)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        elapsed = time.monotonic() - started
        assert not errors, errors
        assert len(latencies) == 3 * visitors
        folder = page.root / 'out' / 'edited_maps' / 'test'
        for number in range(first, first + visitors):
            with Image.open(folder / f'{number}.png') as saved:
                pixels = np.asarray(saved)
            assert saved.size == (16, 16)
            assert pixels[:, :8].min() == 255 and pixels[:, 8:].max() == 0
        figures.append({'wave': wave + 1, 'visitors': visitors, 'requests': len(latencies),
                        'requests_per_second': round(len(latencies) / elapsed, 2),
                        'p95_seconds': round(float(np.percentile(latencies, 95)), 3),
                        'resident_mb_after': round(resident_mb(page.process.pid))})
    print(json.dumps(figures))
    growth = figures[1]['resident_mb_after'] - figures[0]['resident_mb_after']
    assert growth < 100, figures


def test_an_image_folders_maps_are_saved_under_their_split_and_idle_state_is_freed(tmp_path):
    """Maps of an image folder's test (val) and training images go to edited_maps/test/ and
    edited_maps/train/, so `--attention-maps edited_maps/train` never reads a test image's.
    With --idle-minutes 0.1, a visitor idle for longer finds its state gone."""
    from tests.fakedata import write_image_folder
    from utils.data.shapes import SHAPE_CLASSES
    write_image_folder(str(tmp_path / 'data'), splits=(('train', 1), ('val', 1)),
                       classes=SHAPE_CLASSES, size=32)
    checkpoint = save_project_checkpoint(tiny_model(gate='multiply'), str(tmp_path / 'm.pth'))
    import torch
    saved = torch.load(checkpoint, weights_only=True)
    # an image folder's classes, sorted, in the file's keys and its spec alike
    saved['class_names'] = saved['model_spec']['class_names'] = sorted(SHAPE_CLASSES)
    torch.save(saved, checkpoint)
    server = Server([checkpoint, '--dataset', 'imagefolder', '--data', str(tmp_path / 'data'),
                     '-o', 'out', '--idle-minutes', '0.1'], str(tmp_path))
    try:
        server.wait_until_up()
        client = Client(server.url, verbose=False)
        white = tmp_path / 'white.png'
        Image.new('RGB', (64, 64), 'white').save(white)
        saved = {}
        for split in ('test', 'train'):
            client.predict(split, 0, 'circle', api_name='/show_split')
            saved[split] = client.predict(editor_value(str(white)), 'circle',
                                          api_name='/save')[0]
        assert re.search(r'edited_maps/test/circle/\w+\.png', saved['test']), saved
        assert re.search(r'edited_maps/train/circle/\w+\.png', saved['train']), saved
        assert 'Perception branch' in client.predict(editor_value(str(white)),
                                                     api_name='/run_edit')[0]
        time.sleep(12)  # twice the idle time: the state is freed
        message = client.predict(editor_value(str(white)), api_name='/run_edit')[0]
        assert 'pick an image first' in message
    finally:
        server.stop()


def test_the_class_chooser_moves_cam_and_gradcam_not_the_abn_map(page):
    client = Client(page.url, verbose=False)
    own = client.predict('test', 4, 'circle', 'the prediction', api_name='/show_split')
    other = client.predict('test', 4, 'circle', 'star', api_name='/show_split')
    assert 'CAM and Grad-CAM explain **star**' in other[0]
    assert 'the ABN map is the same for every class' in other[0]
    # outputs: message, input, ABN attention, CAM, Grad-CAM, ...
    pixels = [[np.asarray(Image.open(answer[i])) for i in (2, 3, 4)] for answer in (own, other)]
    assert np.array_equal(pixels[0][0], pixels[1][0])  # the ABN overlay
    if 'explain **star**' not in own[0]:  # the prediction is another class: CAM moves
        assert not np.array_equal(pixels[0][1], pixels[1][1])
        assert not np.array_equal(pixels[0][2], pixels[1][2])
    again = client.predict('circle', 'the prediction', api_name='/explain_class')
    assert again[0] == own[0]  # the same picture, explained for its prediction again
