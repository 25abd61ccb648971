"""The attention editor's page: Gradio widgets over a MapEditor (utils.serve.editor), which
holds the state and the operations; `serve_command` is `explain.py --serve`."""
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings

import numpy as np
import torch
from PIL import Image

from utils.data.images import read_only_raster_formats
from utils.distributed import setup_runtime
from utils.errors import AbnError
from utils.serve.access import check_exposure, read_login, trusted_hosts_middleware
from utils.serve.editor import MapEditor, read_image, to_gray
from utils.serve.teach import Teacher
from utils.serve.teach_page import add_teach_section
from utils.visualize import as_uint8, safe_name
from utils.weights.loading import architecture_options, load_model

INSTALL_HINT = 'pip install -r requirements-serve.txt'
SPLITS = ('test', 'train')
PREDICTION = 'the prediction'  # the class chooser's first choice: each image's own answer
MAX_PIXELS = 40_000_000  # uploads with more are refused before they are decoded
IDLE_MINUTES = 30  # a visitor's state, uploads and pictures are freed after this idle
SESSION_CAPACITY = 200  # visitors' states held at most (Gradio's default: 10,000)


def require_gradio():
    """Gradio, without telemetry or update checks; one line saying what to install when it
    is missing (training users need not have it)."""
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    try:
        import gradio
    except ImportError:
        raise AbnError(f'--serve needs Gradio, which is not installed: {INSTALL_HINT}') from None
    return gradio


class Handlers:
    """What the page's events run: widget values in, widget updates out, through the
    MapEditor. `guarded` turns an error into the message box's text (never a traceback)."""

    def __init__(self, editor, gr, panel_titles):
        self.editor, self.gr, self.panel_titles = editor, gr, panel_titles
        self.listed = listed_names(editor.files)  # shown name -> path

    def guarded(self, handler, outputs):
        """Runs `handler`; on an error, the message box says why and the rest stays."""
        def run(*values):
            try:
                return handler(*values)
            except AbnError as error:
                text = str(error)
            except Exception as error:  # noqa: BLE001 - the page must stay up and say why
                text = f'{type(error).__name__}: {error}'
                print(f'serve: error: {text}', flush=True)
            return [f'**Error:** {text}'] + [self.gr.skip()] * (len(outputs) - 1)
        return run

    def show(self, picture, chosen_attribute, chosen_target=PREDICTION):
        editor = self.editor
        target = None if chosen_target in (None, PREDICTION) else chosen_target
        explained = editor.explain(picture, chosen_attribute, target)
        note = f' ({picture.note})' if picture.note else ''
        true = f', true class **{explained.true_name}**' if explained.true_name else ''
        text = f'Showing **{picture.name}**{true}{note}.'
        if explained.scale is not None:
            text += (f' Map values in [-{explained.scale:.3g}, {explained.scale:.3g}]: '
                     'gray is 0.')
        if explained.explained_class is not None and len(self.panel_titles) > 2:
            text += (f' CAM and Grad-CAM explain **{explained.explained_class}**; the ABN map '
                     'is the same for every class.')
        class_update = self.gr.update(
            visible=not editor.multitask and (picture.split is None
                                              or editor.dataset == 'imagefolder'),
            value=explained.true_name or max(explained.ranking, key=explained.ranking.get))
        return ([text, explained] + [explained.panels[t] for t in self.panel_titles]
                + [explained.ranking, Image.fromarray(explained.editor_image).convert('RGB'),
                   explained.panels['ABN attention'], explained.ranking, class_update])

    def show_split(self, chosen_split, chosen_index, *chosen):
        return self.show(self.editor.picture_from_split(chosen_split, chosen_index), *chosen)

    def show_file(self, path, *chosen):
        return self.show(self.editor.picture_from_file(path), *chosen)

    def show_listed(self, shown_name, *chosen):
        """A file of the command line, chosen by the name the page shows for it."""
        if shown_name not in self.listed:
            raise AbnError('choose one of the listed files')
        return self.show_file(self.listed[shown_name], *chosen)

    def reshow(self, explained, *chosen):
        """The same picture again, for another attribute or another explained class."""
        if explained is None:
            raise AbnError('pick an image first')
        return self.show(explained.picture, *chosen)

    def painted_map(self, explained, value):
        """The painter's picture as map values. Its events skip Gradio's own decoding
        (preprocess=False: Pillow's plain Image.open, no pixel limit): the painted file is
        read here as every upload is (read_image)."""
        if explained is None:
            raise AbnError('pick an image first')
        layer = value.get('composite') or value.get('background') \
            if isinstance(value, dict) else value
        path = layer.get('path') if isinstance(layer, dict) else layer
        if not path:
            raise AbnError('the map editor is empty: pick an image first')
        try:
            picture = read_image(path, self.editor.max_pixels)
        except AbnError as error:
            raise AbnError(f'the painted map: {error}') from None
        return self.editor.map_from_image(picture, explained.scale)

    def run_edit(self, explained, value):
        editor = self.editor
        edited = self.painted_map(explained, value)
        ranking = editor.predict(explained, edited)
        own = editor.headline(explained.ranking, explained.attribute)
        new = editor.headline(ranking, explained.attribute)
        return [f'Perception branch: own map {own}; edited map {new}.',
                editor.edited_overlay(explained, edited), ranking]

    def load_map(self, explained, path):
        editor = self.editor
        if explained is None:
            raise AbnError('pick an image first')
        if not path:
            return [self.gr.skip()] * 5
        edited = editor.map_from_image(read_image(path, editor.max_pixels), explained.scale)
        gray = as_uint8(to_gray(edited, explained.scale))
        enlarged = np.kron(gray, np.ones((editor.cell(), editor.cell()), np.uint8))
        # The file box is emptied: the map is in the painter, and the box takes the next one.
        return ['Map loaded: run the perception branch on it, or paint on it.',
                Image.fromarray(enlarged).convert('RGB'),
                editor.edited_overlay(explained, edited), self.gr.skip(), None]

    def save_edit(self, explained, value, chosen_class):
        edited = self.painted_map(explained, value)
        path, note = self.editor.save(explained, edited, chosen_class or None)
        shown = self.editor.shown_path(path)
        note = f' Note: {note}.' if note else ''
        return [f'Saved the edited map to `{shown}`.{note}', f'Saved: `{shown}`{note}']


def listed_names(paths):
    """{name shown on the page: path} for the command line's files: each path from the
    folder all of them share, never this machine's absolute path."""
    if not paths:
        return {}
    top = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return {os.path.relpath(os.path.abspath(p), top).replace(os.sep, '/'): p for p in paths}


def build_page(editor, gr, idle_seconds=IDLE_MINUTES * 60, teacher=None):
    """The Gradio page over `editor`: the widgets, and their events wired to Handlers; with
    a `teacher` (utils.serve.teach), the Teach section below them."""
    ranked = editor.tasks if editor.multitask else 5
    ranking_label = 'P(attribute)' if editor.multitask else 'top-5'

    # Uploads and pictures older than `idle_seconds` are deleted every quarter of it, and a
    # visitor's state once idle that long (a client that never closes its tab included).
    idle_seconds = max(1, int(idle_seconds))
    with gr.Blocks(title='ABN attention editor',
                   delete_cache=(max(1, idle_seconds // 4), idle_seconds)) as page:
        state = gr.State(None, time_to_live=idle_seconds)
        gr.Markdown(f'### Attention editor: {editor.loaded.description}\n'
                    'Pick an image, look at where the network looks, paint on the map '
                    '(white brush: attend, black brush: ignore, any size) and see how the '
                    'perception branch answers; save the edited map as training data.')
        message = gr.Markdown('Pick an image to begin.', elem_id='message')
        with gr.Row():
            if editor.splits:
                with gr.Column(min_width=200):
                    split = gr.Radio(list(SPLITS), value='test', label=f'{editor.dataset} split',
                                     elem_id='split')
                    index = gr.Number(value=0, precision=0, label='image index', elem_id='index')
                    load = gr.Button('Show this image', elem_id='load', variant='primary')
            if editor.files:
                with gr.Column(min_width=200):
                    names = list(listed_names(editor.files))
                    chosen_file = gr.Dropdown(names, value=names[0],
                                              label='image file', elem_id='file')
                    load_file = gr.Button('Show this file', elem_id='load-file')
            with gr.Column(min_width=200):
                upload = gr.File(label='or upload an image', type='filepath', elem_id='upload')
            attribute = gr.Dropdown(editor.names, value=editor.names[0], label='attribute',
                                    visible=editor.multitask, elem_id='attribute')
            target = gr.Dropdown([PREDICTION] + editor.names, value=PREDICTION,
                                 label='CAM and Grad-CAM of', elem_id='target-class',
                                 visible=len(editor.explainer.methods) > 1)
        with gr.Row():
            titles = ['input', 'ABN attention'] + [t for m, t in (('cam', 'CAM'),
                                                                   ('gradcam', 'Grad-CAM'))
                                                     if m in editor.explainer.methods]
            images = {t: gr.Image(label=t, type='numpy', interactive=False, format='png',
                                  elem_id=f'panel-{safe_name(t).lower()}', min_width=120)
                      for t in titles}
            own_ranking = gr.Label(num_top_classes=ranked, label=f'{ranking_label}, own map',
                                   elem_id='own-ranking')
        size = editor.cell() * max(editor.map_height, editor.map_width)
        with gr.Row():
            painter = gr.ImageEditor(
                label=f'the map ({editor.map_width}x{editor.map_height}): paint on it',
                type='pil', image_mode='RGB', sources=(), transforms=(), layers=False,
                brush=gr.Brush(colors=['#ffffff', '#000000'], default_color='#ffffff',
                               color_mode='fixed', default_size=max(2, size // 10)),
                eraser=gr.Eraser(default_size=max(2, size // 10)),
                canvas_size=(editor.cell() * editor.map_width,
                             editor.cell() * editor.map_height),
                fixed_canvas=True, format='png', elem_id='painter')
            edited_image = gr.Image(label='edited map over the input', type='numpy',
                                    interactive=False, format='png', elem_id='panel-edited')
            edited_ranking = gr.Label(num_top_classes=ranked,
                                      label=f'{ranking_label}, edited map',
                                      elem_id='edited-ranking')
        with gr.Row():
            apply = gr.Button('Run on the edited map', elem_id='apply', variant='primary')
            map_file = gr.File(label='or load a map (grayscale, white: attend)',
                               type='filepath', elem_id='map-upload')
            class_name = gr.Dropdown(editor.names, value=None, label='class (folder of the '
                                     'saved map)', elem_id='class', visible=False)
            save = gr.Button('Save the edited map', elem_id='save')
        saved = gr.Markdown('', elem_id='saved')

        shown = [message, state] + list(images.values()) + [own_ranking, painter, edited_image,
                                                            edited_ranking, class_name]

        on = Handlers(editor, gr, list(images))
        attribute_inputs = [attribute, target]
        if editor.splits:
            load.click(on.guarded(on.show_split, shown), [split, index] + attribute_inputs,
                       shown, api_name='show_split')
        if editor.files:
            load_file.click(on.guarded(on.show_listed, shown), [chosen_file] + attribute_inputs,
                            shown, api_name='show_file')
        upload.upload(on.guarded(on.show_file, shown), [upload] + attribute_inputs, shown,
                      api_name='upload')
        attribute.change(on.guarded(on.reshow, shown), [state] + attribute_inputs, shown,
                         api_name='reshow')
        target.change(on.guarded(on.reshow, shown), [state] + attribute_inputs, shown,
                      api_name='explain_class')
        edit_outputs = [message, edited_image, edited_ranking]
        apply.click(on.guarded(on.run_edit, edit_outputs), [state, painter], edit_outputs,
                    api_name='run_edit', preprocess=False)
        # Each stroke answers too; strokes faster than the model queue up as the latest one.
        painter.input(on.guarded(on.run_edit, edit_outputs), [state, painter], edit_outputs,
                      trigger_mode='always_last', show_progress='hidden', api_name='stroke',
                      preprocess=False)
        map_outputs = [message, painter, edited_image, edited_ranking, map_file]
        map_file.upload(on.guarded(on.load_map, map_outputs), [state, map_file], map_outputs,
                        api_name='load_map')
        save_outputs = [message, saved]
        save.click(on.guarded(on.save_edit, save_outputs), [state, painter, class_name],
                   save_outputs, api_name='save', preprocess=False)
        if teacher is not None:
            add_teach_section(gr, teacher, state, message, on.guarded)
    return page


def serve(args, loaded, device, host='127.0.0.1', port=7860):
    """Starts the page and blocks until interrupted. Refuses a --host other than loopback
    without a login (utils.serve.access); the page's uploads and pictures live in a folder
    of its own, removed when it stops."""
    gr = require_gradio()
    login = read_login(getattr(args, 'auth', None), getattr(args, 'auth_file', None))
    exposure = check_exposure(host, login)
    if device.type == 'cpu' and loaded.image_size <= 64:
        # One small image is too little work to share: on a busy machine a second thread
        # only waits (ResNet-110, CIFAR: 0.16 s with one thread, seconds with two).
        torch.set_num_threads(1)
    quiet_gradio_tracebacks()
    atomic_gradio_cache()
    read_only_raster_formats()  # Gradio decodes the painter's images with a plain Image.open
    # Pillow refuses larger images, whoever decodes them (Gradio decodes uploads too).
    saved_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS // 2  # errs at 2x
    warnings.simplefilter('ignore', Image.DecompressionBombWarning)
    temporary = tempfile.mkdtemp(prefix='abn-editor-')
    saved_folder = os.environ.get('GRADIO_TEMP_DIR')
    os.environ['GRADIO_TEMP_DIR'] = temporary  # read by Gradio when a page is built
    editor = teacher = None
    # SIGTERM (kill, a scheduler) ends the page as Ctrl+C does: its folder is removed.
    previous = signal.signal(signal.SIGTERM, _interrupt) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        editor = MapEditor(loaded, device, os.path.join(args.output, 'edited_maps'),
                           dataset=args.dataset, data_root=args.data, files=args.inputs,
                           max_pixels=MAX_PIXELS)
        teacher = None if getattr(args, 'no_teach', False) else Teacher(
            editor, args.checkpoint, args.output, args.data,
            'cpu' if device.type == 'cpu' else str(getattr(args, 'gpu_id', 0)))
        page = build_page(editor, gr, getattr(args, 'idle_minutes', IDLE_MINUTES) * 60, teacher)
        page.queue(default_concurrency_limit=1)
        launch(page, editor, host, port, login, exposure, args)
    finally:
        if teacher is not None:
            teacher.close()
        if editor is not None:
            editor.close()
        shutil.rmtree(temporary, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        # Whoever called serve() in-process (the tests) gets its settings back.
        Image.MAX_IMAGE_PIXELS = saved_limit
        if saved_folder is None:
            os.environ.pop('GRADIO_TEMP_DIR', None)
        else:
            os.environ['GRADIO_TEMP_DIR'] = saved_folder
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def launch(page, editor, host, port, login, exposure, args):
    max_mb = getattr(args, 'max_upload_mb', 20)  # checked by serve_command
    try:
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                    quiet=True, show_error=False, ssr_mode=False, footer_links=[],
                    prevent_thread_lock=True, auth=login, max_file_size=int(max_mb * 2 ** 20),
                    state_session_capacity=SESSION_CAPACITY, mcp_server=False,
                    app_kwargs={'middleware': [trusted_hosts_middleware(
                        host, getattr(args, 'allowed_host', ()))]})
    except OSError as error:
        raise AbnError(f'cannot serve on {host}:{port} (is the port taken? --port P '
                       f'picks another): {error}') from None
    print(f'==> {editor.loaded.description} on {editor.device.type}: the attention editor at '
          f'http://{host}:{port} (Ctrl+C stops it); edited maps go to '
          f'{editor.maps_dir}', flush=True)
    if exposure:
        print(exposure, flush=True)
    try:
        while page.is_running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        exit_at_the_latest_after(CLOSE_SECONDS, 130)
        raise
    finally:
        page.close()


class _OneLineTraceback:
    """Stands in for the `traceback` module inside Gradio's request handling: a request it
    refuses (a value outside a dropdown's choices, a malformed payload) prints one line on
    the terminal instead of a stack."""

    def __getattr__(self, name):
        return getattr(traceback, name)

    @staticmethod
    def print_exc(*args, **kwargs):
        kind, error, _ = sys.exc_info()
        text = str(error).splitlines()[0][:200] if error is not None and str(error) else ''
        name = kind.__name__ if kind else 'error'
        print(f'serve: a request failed: {name}: {text}', flush=True)


class _OneLineRecords(logging.Filter):
    """The same for the web server's log: an error record keeps its line, not its stack."""

    def filter(self, record):
        if record.exc_info:
            error = record.exc_info[1]
            record.msg = f'{record.getMessage()}: {type(error).__name__}: {error}'
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def atomic_gradio_cache():
    """Gradio names a picture it serves after a hash of its bytes and rewrites that file in
    place each time: when two visitors' pictures are identical (two looks at one image), one
    visitor's download could read the file while the other's request truncates it (seen in
    the load test: 'Too little data for declared Content-Length'). Here the bytes go to a
    file of their own, then take the name in one atomic rename."""
    from gradio import processing_utils

    def save_pil_to_cache(img, cache_dir, name='image', format='webp'):
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = os.path.join(cache_dir, processing_utils.hash_bytes(data))
        os.makedirs(folder, exist_ok=True)
        path = os.path.realpath(os.path.join(folder, f'{name}.{format}'))
        if not os.path.exists(path):
            handle, partial = tempfile.mkstemp(dir=folder, suffix='.partial')
            with os.fdopen(handle, 'wb') as f:
                f.write(data)
            os.replace(partial, path)
        return path
    processing_utils.save_pil_to_cache = save_pil_to_cache


def quiet_gradio_tracebacks():
    import gradio.queueing
    import gradio.route_utils
    import gradio.routes
    import gradio.utils
    for module in (gradio.queueing, gradio.route_utils, gradio.routes, gradio.utils):
        module.traceback = _OneLineTraceback()
    for name in ('uvicorn.error', 'uvicorn', 'gradio'):
        logging.getLogger(name).addFilter(_OneLineRecords())


CLOSE_SECONDS = 15


def exit_at_the_latest_after(seconds, status):
    """Ctrl+C must end the command: the page's server normally closes at once, but a request
    still running on a loaded machine has kept it open for minutes (the browser test under
    the full suite). After `seconds` the process exits with `status` whatever is still open."""
    def force():
        print(f'note: the page did not close within {seconds} s; exiting', flush=True)
        os._exit(status)
    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def serve_command(args):
    """`explain.py CHECKPOINT --serve`: the model loaded once, on the GPU when there is one,
    then the page until Ctrl+C."""
    require_gradio()  # before loading anything: one line saying what to install
    check_exposure(args.host, read_login(args.auth, args.auth_file))  # and who may use it
    for flag, value in (('--max-upload-mb', args.max_upload_mb),
                        ('--idle-minutes', args.idle_minutes)):
        if not value > 0:
            raise AbnError(f'{flag} must be positive, got {value:g}')
    runtime = setup_runtime(args.gpu_id)
    loaded = load_model(args.checkpoint, **architecture_options(args))
    return serve(args, loaded, runtime.device, args.host, args.port)
