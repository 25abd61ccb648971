"""The attention editor's page: Gradio widgets over a MapEditor (utils.serve.editor), which
holds the state and the operations; `serve_command` is `explain.py --serve`."""
import os
import threading
import time

import numpy as np
import torch
from PIL import Image

from utils.data.images import CorruptImageError, load_rgb
from utils.distributed import setup_runtime
from utils.errors import AbnError
from utils.serve.editor import MapEditor, to_gray
from utils.visualize import as_uint8, safe_name
from utils.weights.loading import architecture_options, load_model

INSTALL_HINT = 'pip install -r requirements-serve.txt'
SPLITS = ('test', 'train')


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

    def show(self, picture, chosen_attribute):
        editor = self.editor
        explained = editor.explain(picture, chosen_attribute)
        note = f' ({picture.note})' if picture.note else ''
        true = f', true class **{explained.true_name}**' if explained.true_name else ''
        text = f'Showing **{picture.name}**{true}{note}.'
        if explained.scale is not None:
            text += (f' Map values in [-{explained.scale:.3g}, {explained.scale:.3g}]: '
                     'gray is 0.')
        class_update = self.gr.update(
            visible=not editor.multitask and (picture.split is None
                                              or editor.dataset == 'imagefolder'),
            value=explained.true_name or max(explained.ranking, key=explained.ranking.get))
        return ([text, explained] + [explained.panels[t] for t in self.panel_titles]
                + [explained.ranking, Image.fromarray(explained.editor_image).convert('RGB'),
                   explained.panels['ABN attention'], explained.ranking, class_update])

    def show_split(self, chosen_split, chosen_index, chosen_attribute):
        return self.show(self.editor.picture_from_split(chosen_split, chosen_index),
                         chosen_attribute)

    def show_file(self, path, chosen_attribute):
        return self.show(self.editor.picture_from_file(path), chosen_attribute)

    def reshow(self, explained, chosen_attribute):
        if explained is None:
            raise AbnError('pick an image first')
        return self.show(explained.picture, chosen_attribute)

    def painted_map(self, explained, value):
        if explained is None:
            raise AbnError('pick an image first')
        picture = None
        if isinstance(value, dict):
            picture = value.get('composite') or value.get('background')
        elif value is not None:
            picture = value
        if picture is None:
            raise AbnError('the map editor is empty: pick an image first')
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
            return [self.gr.skip()] * 4
        try:
            image = load_rgb(path)
        except CorruptImageError:
            raise AbnError(f'{os.path.basename(path)} is not an image') from None
        edited = editor.map_from_image(image, explained.scale)
        gray = as_uint8(to_gray(edited, explained.scale))
        enlarged = np.kron(gray, np.ones((editor.cell(), editor.cell()), np.uint8))
        return ['Map loaded: run the perception branch on it, or paint on it.',
                Image.fromarray(enlarged).convert('RGB'),
                editor.edited_overlay(explained, edited), self.gr.skip()]

    def save_edit(self, explained, value, chosen_class):
        edited = self.painted_map(explained, value)
        path = self.editor.save(explained, edited, chosen_class or None)
        return [f'Saved the edited map to `{path}`.', f'Saved: `{path}`']


def build_page(editor, gr):
    """The Gradio page over `editor`: the widgets, and their events wired to Handlers."""
    ranked = editor.tasks if editor.multitask else 5
    ranking_label = 'P(attribute)' if editor.multitask else 'top-5'

    with gr.Blocks(title='ABN attention editor') as page:
        state = gr.State(None)
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
                    chosen_file = gr.Dropdown(editor.files, value=editor.files[0],
                                              label='image file', elem_id='file')
                    load_file = gr.Button('Show this file', elem_id='load-file')
            with gr.Column(min_width=200):
                upload = gr.File(label='or upload an image', type='filepath', elem_id='upload')
            attribute = gr.Dropdown(editor.names, value=editor.names[0], label='attribute',
                                    visible=editor.multitask, elem_id='attribute')
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
        attribute_inputs = [attribute]
        if editor.splits:
            load.click(on.guarded(on.show_split, shown), [split, index] + attribute_inputs,
                       shown)
        if editor.files:
            load_file.click(on.guarded(on.show_file, shown), [chosen_file] + attribute_inputs,
                            shown)
        upload.upload(on.guarded(on.show_file, shown), [upload] + attribute_inputs, shown)
        attribute.change(on.guarded(on.reshow, shown), [state] + attribute_inputs, shown)
        edit_outputs = [message, edited_image, edited_ranking]
        apply.click(on.guarded(on.run_edit, edit_outputs), [state, painter], edit_outputs)
        # Each stroke answers too; strokes faster than the model queue up as the latest one.
        painter.input(on.guarded(on.run_edit, edit_outputs), [state, painter], edit_outputs,
                      trigger_mode='always_last', show_progress='hidden')
        map_outputs = [message, painter, edited_image, edited_ranking]
        map_file.upload(on.guarded(on.load_map, map_outputs), [state, map_file], map_outputs)
        save_outputs = [message, saved]
        save.click(on.guarded(on.save_edit, save_outputs), [state, painter, class_name],
                   save_outputs)
    return page


def serve(args, loaded, device, host='127.0.0.1', port=7860):
    """Starts the page and blocks until interrupted."""
    gr = require_gradio()
    if device.type == 'cpu' and loaded.image_size <= 64:
        # One small image is too little work to share: on a busy machine a second thread
        # only waits (ResNet-110, CIFAR: 0.16 s with one thread, seconds with two).
        torch.set_num_threads(1)
    editor = MapEditor(loaded, device, os.path.join(args.output, 'edited_maps'),
                       dataset=args.dataset, data_root=args.data, files=args.inputs)
    page = build_page(editor, gr)
    page.queue(default_concurrency_limit=1)
    try:
        try:
            page.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                        quiet=True, show_error=False, ssr_mode=False, footer_links=[],
                        prevent_thread_lock=True)
        except OSError as error:
            raise AbnError(f'cannot serve on {host}:{port} (is the port taken? --port P '
                           f'picks another): {error}') from None
        print(f'==> {loaded.description} on {device.type}: the attention editor at '
              f'http://{host}:{port} (Ctrl+C stops it); edited maps go to '
              f'{editor.maps_dir}', flush=True)
        try:
            while page.is_running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            exit_at_the_latest_after(CLOSE_SECONDS, 130)
            raise
        finally:
            page.close()
    finally:
        editor.close()
    return 0


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
    runtime = setup_runtime(args.gpu_id)
    loaded = load_model(args.checkpoint, **architecture_options(args))
    return serve(args, loaded, runtime.device, args.host, args.port)
