"""Teaching from the attention editor's page (utils/serve/teach.py): over HTTP against
`explain.py --serve`, maps of training images saved, a fine-tuning run started, refused a
second time, found by another visitor and stopped (the browser test runs one to its end and
compares the models); and the pieces in-process (the saved maps' count, the command, the
refusals, a multi-task page's command and measures, --no-teach)."""
import json
import os
import shlex
import time

import numpy as np
import pytest
import torch
from PIL import Image

import celeba
from tests.fakedata import authors_checkpoint
from tests.helpers import Server, save_project_checkpoint, tiny_model
from utils.errors import AbnError
from utils.serve.editor import MapEditor
from utils.serve.teach import Teacher
from utils.serve.teach_measures import contrast as measured_contrast
from utils.serve.teach_page import WAITING, comparison_text, maps_text, status_text
from utils.weights import checkpoint as ckpt
from utils.weights.loading import load_model

from gradio_client import Client, handle_file  # noqa: E402

pytestmark = pytest.mark.slow  # teaching runs started from the page: the full suite

CPU = torch.device('cpu')
WAIT = 240  # seconds for a run and its measures on a busy 2-core machine


def editor_value(path):
    return {'background': handle_file(path), 'layers': [], 'composite': handle_file(path),
            'id': None}


def half_map(path, left=255, right=0, size=64):
    """A map picture: the left half `left`, the right half `right`."""
    pixels = np.full((size, size), right, np.uint8)
    pixels[:, :size // 2] = left
    Image.fromarray(pixels).convert('RGB').save(path)
    return str(path)


def wait_for(client, words, timeout=WAIT):
    """Polls the page's status until it holds `words`; returns the status outputs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.predict(api_name='/teach_status')
        if words in answer[1]:
            return answer
        time.sleep(0.5)
    pytest.fail(f"the status never said '{words}'; it says: {answer[1]}")


def test_teach_over_http_one_run_at_a_time_found_again_and_stopped(tmp_path):
    """The browser test runs a whole teaching run; here: refusals, a run found by another
    visitor, and Stop."""
    checkpoint = save_project_checkpoint(tiny_model(gate='multiply'), str(tmp_path / 'm.pth.tar'))
    server = Server([checkpoint, '--dataset', 'shapes', '-o', 'out'], str(tmp_path))
    try:
        server.wait_until_up()
        client = Client(server.url, verbose=False)
        status = client.predict(api_name='/teach_status')
        assert 'none yet' in status[0] and 'No teaching run yet' in status[1]
        refused = client.predict(2, 8, 0.01, 10, 8, api_name='/teach')[0]
        assert refused.startswith('**Error:**') and 'no saved maps of training images' in refused
        painted = half_map(tmp_path / 'half.png')
        for split, index in (('train', 0), ('train', 1), ('test', 0)):  # test: never taught
            client.predict(split, index, 'circle', api_name='/show_split')
            saved = client.predict(editor_value(painted), 'circle', api_name='/save')[0]
            assert f'edited_maps/{split}/{index}.png' in saved
        assert '**Saved training maps:** 2' in client.predict(api_name='/teach_status')[0]

        started = client.predict(200, 4, 0.01, 10, 8, api_name='/teach')
        assert 'Started' in started[0] and 'taught/run-1' in started[0]
        command = started[1].split('```')[1].strip()
        assert command.startswith('python cifar.py --dataset shapes --weights m.pth.tar '
                                  '--attention-maps out/edited_maps/train --epochs 200 ')
        with open(tmp_path / 'out' / 'taught' / 'run-1' / 'command.sh') as f:
            written = f.read().splitlines()[-1]  # whole paths, to run from a terminal
        assert written.endswith(' "$@"')  # sh command.sh --resume ... continues it
        assert [os.path.relpath(a, tmp_path) if os.path.isabs(a) else a
                for a in shlex.split(written)[2:-1]] == shlex.split(command)[2:]
        second = client.predict(1, 4, 0.01, 10, 8, api_name='/teach')[0]
        assert 'a teaching run is already running' in second
        other = Client(server.url, verbose=False)  # another visitor, or a reloaded page
        assert 'taught/run-1' in other.predict(api_name='/teach_status')[1]
        wait_for(other, 'Train ')  # its progress
        assert 'Stopping' in other.predict(api_name='/stop_teaching')[0]
        stopped = wait_for(client, '**Stopped**')
        assert 'taught/run-1/checkpoint.pth.tar' in stopped[1] and '--resume' in stopped[1]
        assert os.path.isfile(tmp_path / 'out' / 'taught' / 'run-1' / 'checkpoint.pth.tar')
        assert 'no teaching run is running' in client.predict(api_name='/stop_teaching')[0]
        assert str(tmp_path) not in stopped[1]
    finally:
        server.stop()
    assert 'Traceback' not in server.output, server.output


def process_ends(pid, timeout=WAIT):
    """Whether the process `pid` (not a child of this one) ends within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_a_job_ends_with_its_page_however_it_dies_and_a_new_page_continues_it(tmp_path):
    """A page killed with SIGKILL: its Teach job saves and ends; a page started again on the
    same folder finds the run unfinished and continues it (--resume) with Continue."""
    checkpoint = save_project_checkpoint(tiny_model(gate='multiply'), str(tmp_path / 'm.pth.tar'))
    argv = [checkpoint, '--dataset', 'shapes', '-o', 'out']
    run_dir = tmp_path / 'out' / 'taught' / 'run-1'
    server = Server(argv, str(tmp_path))
    try:
        server.wait_until_up()
        client = Client(server.url, verbose=False)
        client.predict('train', 0, 'circle', api_name='/show_split')
        client.predict(editor_value(half_map(tmp_path / 'half.png')), 'circle', api_name='/save')
        assert 'Started' in client.predict(200, 4, 0.01, 10, 8, api_name='/teach')[0]
        wait_for(client, 'Train ')
        with open(run_dir / 'job.json') as f:
            job = json.load(f)
        server.process.kill()  # SIGKILL: the page closes nothing
        server.process.wait(timeout=30)
        assert process_ends(job['pid']), 'the Teach job outlived its page'
    finally:
        server.stop()
    with open(run_dir / 'output.txt') as f:
        output = f.read()
    assert 'SIGTERM: stopping after this step to save a checkpoint' in output
    saved = ckpt.load_checkpoint(str(run_dir / 'checkpoint.pth.tar'))
    assert saved['epoch'] < 200

    again = Server(argv, str(tmp_path))
    try:
        again.wait_until_up()
        client = Client(again.url, verbose=False)
        found = client.predict(api_name='/teach_status')[1]
        assert '**Unfinished**' in found and 'Continue' in found and 'taught/run-1' in found
        assert 'Continuing' in client.predict(api_name='/continue_teaching')[0]
        wait_for(client, '**Teaching**')
        deadline = time.monotonic() + WAIT
        while 'resuming at epoch' not in (run_dir / 'output.txt').read_text():
            assert time.monotonic() < deadline, (run_dir / 'output.txt').read_text()
            time.sleep(0.2)
        resumed = (run_dir / 'output.txt').read_text().split('resuming at epoch', 1)[1]
        assert resumed.split()[0].rstrip(',') == str(saved['epoch'] + 1)
        client.predict(api_name='/stop_teaching')
        assert '**Stopped**' in wait_for(client, '**Stopped**')[1]
        second = client.predict(api_name='/continue_teaching')[0]
        assert 'Continuing' in second  # Stop, then Continue, on one page too
        client.predict(api_name='/stop_teaching')
        wait_for(client, '**Stopped**')
    finally:
        again.stop()
    assert 'Traceback' not in server.output + again.output, server.output + again.output


# -- the pieces, in-process -----------------------------------------------------------------

def shapes_teacher(tmp_path, checkpoint=None):
    checkpoint = checkpoint or save_project_checkpoint(tiny_model(gate='multiply'),
                                                       str(tmp_path / 'm.pth.tar'))
    editor = MapEditor(load_model(checkpoint), CPU, str(tmp_path / 'out' / 'edited_maps'),
                       dataset='shapes')
    return Teacher(editor, checkpoint, str(tmp_path / 'out'), gpu_id='cpu')


def test_saved_maps_are_counted_per_class_and_an_image_once(tmp_path):
    teacher = shapes_teacher(tmp_path)
    editor = teacher.editor
    painted = Image.open(half_map(tmp_path / 'half.png'))
    for index, value in ((0, painted), (0, painted.rotate(90)), (3, painted)):
        explained = editor.explain(editor.gallery.picture_from_split('train', index))
        editor.save(explained, editor.map_from_image(value, explained.scale))
    explained = editor.explain(editor.gallery.picture_from_split('test', 1))
    editor.save(explained, editor.map_from_image(painted, explained.scale))
    labels = editor.gallery.split('train').targets
    names = editor.names
    expected = {}
    for index in (0, 3):
        expected[names[labels[index]]] = expected.get(names[labels[index]], 0) + 1
    assert teacher.saved_maps() == dict(sorted(expected.items()))
    assert '**Saved training maps:** 2' in maps_text(teacher)
    contrast = measured_contrast(editor, teacher.maps_folder())
    assert contrast['maps'] == 2 and contrast['contrast'] is not None


def test_the_command_is_the_scripts_and_bad_settings_are_refused(tmp_path):
    teacher = shapes_teacher(tmp_path)
    argv, shown = teacher.command('RUN', 3, 16, 0.01, 10, 64)
    maps = os.path.join(str(tmp_path), 'out', 'edited_maps', 'train')
    assert argv[1].endswith('cifar.py') and argv[2:] == [
        '--dataset', 'shapes', '--weights', teacher.checkpoint, '--attention-maps', maps,
        '--epochs', '3', '--train-batch', '16', '--lr', '0.01', '--map-loss-weight', '10',
        '--train-size', '64', '--manualSeed', '1', '--gpu-id', 'cpu', '-c', 'RUN']
    # Shown to visitors: no path of this machine outside the page's folder.
    assert shown == ('python cifar.py --dataset shapes --weights .../m.pth.tar '
                     '--attention-maps .../train --epochs 3 --train-batch 16 --lr 0.01 '
                     '--map-loss-weight 10 --train-size 64 --manualSeed 1 --gpu-id cpu -c RUN')
    for settings, words in (((0, 8, 0.1, 10), 'epochs must be a whole number of at least 1'),
                            ((1.5, 8, 0.1, 10), 'epochs must be a whole number'),
                            ((1, 8, -0.1, 10), 'learning rate must be positive'),
                            ((1, 8, 0.1, -1), 'map loss weight must be at least 0'),
                            ((1, 8, float('nan'), 1), 'learning rate must be positive'),
                            ((1, 8, 0.1, 10), 'no saved maps of training images')):
        with pytest.raises(AbnError, match=words):
            teacher.start(*settings)
    assert status_text(teacher) == 'No teaching run yet.'
    assert comparison_text(teacher) == WAITING  # what the empty panels will hold


def test_the_whole_command_to_copy_has_this_machines_paths_only_on_a_local_page(
        tmp_path, monkeypatch):
    from utils.serve.teach_job import TeachingJob
    monkeypatch.chdir(tmp_path)
    folder = str(tmp_path / 'out' / 'taught' / 'run-1')
    for shows_paths in (True, False):
        teacher = shapes_teacher(tmp_path)
        teacher.shows_paths = shows_paths
        argv, shown = teacher.command(folder, 1, 8, 0.01, 10, 0)
        teacher.run = TeachingJob(folder, argv, shown)
        teacher.run.state = 'stopped'
        whole = teacher.whole_command()
        if shows_paths:
            assert whole.startswith(f'cd {tmp_path} && ') and argv[1] in whole
            assert whole.endswith(f'--resume {folder}/checkpoint.pth.tar')
        else:
            assert whole == ('sh out/taught/run-1/command.sh --resume '
                             'out/taught/run-1/checkpoint.pth.tar')


def test_an_authors_file_or_a_page_without_a_data_set_cannot_teach(tmp_path):
    checkpoint = save_project_checkpoint(tiny_model(gate='multiply'), str(tmp_path / 'm.pth.tar'))
    editor = MapEditor(load_model(checkpoint), CPU, str(tmp_path / 'maps'))  # files only
    teacher = Teacher(editor, checkpoint, str(tmp_path))
    assert 'start the page with --dataset shapes' in teacher.unavailable_reason()
    with pytest.raises(AbnError, match='--dataset shapes'):
        teacher.start(1, 8, 0.1, 10)
    # The authors' file of the same model: its command would need the architecture options.
    authors = authors_checkpoint(tiny_model(gate='multiply'), str(tmp_path / 'authors.pth.tar'))
    teacher = Teacher(MapEditor(load_model(checkpoint), CPU, str(tmp_path / 'maps'),
                                dataset='shapes'), authors, str(tmp_path))
    assert 'authors' in teacher.unavailable_reason() and 'not available' in maps_text(teacher)


def test_a_multitask_page_teaches_with_celeba_py_and_measures_per_attribute(tmp_path):
    argv = ['--dataset', 'shapes-multi', '--image-size', '32', '--width', '8', '--train-size',
            '16', '--test-size', '8', '--epochs', '1', '--train-batch', '8', '--gpu-id', 'cpu',
            '-j', '0', '--save-attention', '0', '--manualSeed', '1', '-c', str(tmp_path / 'm')]
    assert celeba.main(argv) == 0
    checkpoint = str(tmp_path / 'm' / 'checkpoint.pth.tar')
    editor = MapEditor(load_model(checkpoint), CPU, str(tmp_path / 'out' / 'edited_maps'),
                       dataset='shapes-multi')
    teacher = Teacher(editor, checkpoint, str(tmp_path / 'out'), gpu_id='cpu',
                      measure_images=8)
    painted = Image.open(half_map(tmp_path / 'half.png'))
    for index, attribute in ((0, 3), (1, 3), (1, 0)):
        explained = editor.explain(editor.gallery.picture_from_split('train', index), attribute)
        path, _ = editor.save(explained, editor.map_from_image(painted, explained.scale))
        assert path.endswith(os.path.join(editor.names[attribute], 'train', f'{index}.png'))
    assert teacher.saved_maps() == {'circle': 1, 'frame': 2}
    argv, shown = teacher.command('RUN', 2, 2, 0.1, 10, 4)
    assert shown.startswith('python celeba.py --dataset shapes-multi --weights ')
    assert argv[argv.index('--attention-maps') + 1] == editor.maps_dir  # the whole folder
    scores = teacher.measure(editor)  # as for the taught model, when a run ends
    assert set(scores['pointing_per_attribute']) <= set(editor.names)
    assert scores['maps'] == 3 and 0 <= scores['accuracy'] <= 100
    teacher.scores = {'before': scores, 'after': scores}
    text = comparison_text(teacher)
    assert 'mean attribute accuracy' in text and 'frame' in text
    teacher.close()


def test_a_page_of_image_files_teaches_with_the_folder_they_belong_to(tmp_path):
    """No --dataset: the page asks for the image folder, checks and remembers it, refuses maps
    of images outside it, teaches with cifar.py --dataset imagefolder and measures on its
    test split; a page started again on the output folder remembers the folder."""
    import cifar
    from tests.fakedata import write_image_folder
    data = tmp_path / 'data'
    write_image_folder(str(data), splits=(('train', 4), ('val', 2)), size=32)
    assert cifar.main(['--dataset', 'imagefolder', '--data', str(data), '--depth', '8',
                       '--epochs', '1', '--train-batch', '6', '--gpu-id', 'cpu', '-j', '0',
                       '--save-attention', '0', '--manualSeed', '1', '-c',
                       str(tmp_path / 'm')]) == 0
    checkpoint = str(tmp_path / 'm' / 'checkpoint.pth.tar')
    photos = [str(data / 'train' / 'dog' / '1.jpg'), str(data / 'train' / 'fox' / '2.png')]
    stray = tmp_path / 'stray.png'
    Image.new('RGB', (32, 32), 'red').save(stray)
    editor = MapEditor(load_model(checkpoint), CPU, str(tmp_path / 'out' / 'edited_maps'),
                       files=photos + [str(stray)])
    teacher = Teacher(editor, checkpoint, str(tmp_path / 'out'), gpu_id='cpu')
    # The checkpoint's own --data is found and checked: the page can teach at once.
    assert teacher.training_root == str(data) and teacher.unavailable_reason() is None
    with pytest.raises(AbnError, match='holds no train/ folder'):
        teacher.set_training_folder(str(tmp_path))
    painted = Image.open(half_map(tmp_path / 'half.png'))
    for path, class_name in ((photos[0], 'dog'), (photos[1], 'fox'), (str(stray), 'cat')):
        explained = editor.explain(editor.gallery.picture_from_file(path))
        editor.save(explained, editor.map_from_image(painted, explained.scale), class_name)
    assert teacher.saved_maps() == {'cat': 1, 'dog': 1, 'fox': 1}
    with pytest.raises(AbnError, match='1 saved maps name no image of .*the first: cat/stray'):
        teacher.start(1, 4, 0.01, 10)
    os.remove(tmp_path / 'out' / 'edited_maps' / 'cat' / 'stray.png')
    argv, shown = teacher.command('RUN', 1, 4, 0.01, 10, 0)
    assert argv[2:8] == ['--dataset', 'imagefolder', '--data', str(data), '--weights', checkpoint]
    assert argv[argv.index('--attention-maps') + 1] == editor.maps_dir
    run = teacher.start(1, 4, 0.01, 10)
    deadline = time.monotonic() + WAIT
    while run.state not in ('finished', 'failed') and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run.state == 'finished', (run.note, ''.join(run.lines()[-5:]))
    assert 'attention maps: 2 of 12 training images' in '\n'.join(run.lines())
    assert teacher.scores['after']['images'] == 6  # val/: 2 images of 3 classes
    teacher.close()
    # Another page on the same output folder, of a checkpoint that does not name the folder.
    moved = tmp_path / 'moved.pth.tar'
    saved = ckpt.load_checkpoint(checkpoint)
    saved['args']['data'] = str(tmp_path / 'gone')
    torch.save(saved, moved)
    os.rename(tmp_path / 'out' / 'teach.json', tmp_path / 'teach.json')
    again = Teacher(MapEditor(load_model(str(moved)), CPU, editor.maps_dir, files=photos),
                    str(moved), str(tmp_path / 'out'), gpu_id='cpu')
    assert 'give it under **training folder**' in again.unavailable_reason()
    os.rename(tmp_path / 'teach.json', tmp_path / 'out' / 'teach.json')
    remembered = Teacher(MapEditor(load_model(str(moved)), CPU, editor.maps_dir, files=photos),
                         str(moved), str(tmp_path / 'out'), gpu_id='cpu')
    assert remembered.training_root == str(data)


def test_no_teach_leaves_the_section_out(tmp_path):
    import gradio
    from utils.serve.page import build_page
    teacher = shapes_teacher(tmp_path)
    names = {without: {d.get('api_name') for d in build_page(
        teacher.editor, gradio, teacher=None if without else teacher).config['dependencies']}
        for without in (True, False)}
    assert 'teach' not in names[True] and 'save' in names[True]
    assert {'teach', 'stop_teaching', 'teach_status'} <= names[False]
