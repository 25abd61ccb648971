"""The attention editor's server: `serve_command` is `explain.py --serve`; `serve` builds the
page (utils.serve.page) over a MapEditor and a Teacher and runs it until Ctrl+C or SIGTERM,
with Gradio adjusted to stay safe to leave running (one-line errors, atomic picture files,
limits on uploads, visitors' states and idle time; its temporary folder removed on stop)."""
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

import torch
from PIL import Image

from utils.cpus import cpu_budget
from utils.data.images import read_only_raster_formats
from utils.distributed import setup_runtime
from utils.errors import AbnError
from utils.serve.access import (check_exposure, is_loopback, read_login,
                                trusted_hosts_middleware)
from utils.serve.editor import MapEditor
from utils.serve.options import IDLE_MINUTES, MAX_UPLOAD_MB, PORT
from utils.serve.page import BOX_JS, PAGE_CSS, build_page
from utils.serve.teach import Teacher
from utils.weights.loading import architecture_options, load_model

INSTALL_HINT = 'pip install -r requirements-serve.txt'
MAX_PIXELS = 40_000_000  # uploads with more are refused before they are decoded
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


def serve(args, loaded, device, host='127.0.0.1', port=PORT):
    """Starts the page and blocks until interrupted. Refuses a --host other than loopback
    without a login (utils.serve.access); the page's uploads and pictures live in a folder
    of its own, removed when it stops."""
    gr = require_gradio()
    login = read_login(getattr(args, 'auth', None), getattr(args, 'auth_file', None))
    exposure = check_exposure(host, login)
    teaching = not getattr(args, 'no_teach', False)
    page_threads = page_thread_count(args, loaded, device, teaching)
    torch.set_num_threads(page_threads)
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
        teacher = None if not teaching else Teacher(
            editor, args.checkpoint, args.output, args.data,
            'cpu' if device.type == 'cpu' else str(getattr(args, 'gpu_id', 0)),
            threads=max(1, cpu_budget() - page_threads) if device.type == 'cpu' else None,
            shows_paths=is_loopback(host))
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


def page_thread_count(args, loaded, device, teaching):
    """The page's own threads: --threads, else on the CPU one where an answer is too little
    work to share (small images: on a busy machine a second thread only waits; ResNet-110 on
    CIFAR: 0.16 s with one thread, seconds with two) or where a Teach job may take the other
    CPUs, else every CPU this process may use."""
    if getattr(args, 'threads', None):
        return args.threads
    if device.type == 'cpu' and (loaded.image_size <= 64 or teaching):
        return 1
    return cpu_budget()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def launch(page, editor, host, port, login, exposure, args):
    max_mb = getattr(args, 'max_upload_mb', MAX_UPLOAD_MB)  # checked by serve_command
    try:
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                    css=PAGE_CSS, js=BOX_JS,
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
