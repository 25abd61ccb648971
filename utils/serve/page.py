"""The attention editor's page: it lays out the Gradio widgets and wires their events to
`Handlers`, which answer through a MapEditor (utils.serve.editor: the model and a visitor's
answers); the Teach section is utils.serve.teach_page, the server utils.serve.server."""
import os

import numpy as np
from PIL import Image

from utils.errors import AbnError
from utils.serve.options import IDLE_MINUTES
from utils.serve.pictures import enlarged, from_gray, read_image, to_gray
from utils.serve.teach_page import TEACH_CSS, add_teach_section
from utils.teach.boxes import box_map
from utils.visualize import as_uint8, safe_name

SPLITS = ('test', 'train')
# The box tool: in box mode a drag on the edited map over the input (#panel-edited: the
# picture shows the object to box, which the gray map in the painter does not) is outlined
# while it lasts and, on release, kept as fractions "x0,y0,x1,y1" of the picture and sent by
# a click on the hidden #box-apply button; its event's BOX_VALUE_JS hands them to
# Handlers.draw_box as the hidden #box-drawn field's value.
BOX_JS = """
() => {
  let start = null, outline = null;
  const boxMode = () => { const box = document.querySelector('#box-mode input');
                          return box && box.checked; };
  const clamp = (v) => Math.min(1, Math.max(0, v));
  // The picture's own rectangle: an <img> shown with object-fit: contain is letterboxed.
  const shown = (img) => {
    const r = img.getBoundingClientRect();
    if (getComputedStyle(img).objectFit !== 'contain' || !img.naturalWidth) return r;
    const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const width = img.naturalWidth * scale, height = img.naturalHeight * scale;
    return {left: r.left + (r.width - width) / 2, top: r.top + (r.height - height) / 2,
            width: width, height: height};
  };
  const place = (x0, y0, x1, y1) => Object.assign(outline.style, {
    left: Math.min(x0, x1) + 'px', top: Math.min(y0, y1) + 'px',
    width: Math.abs(x1 - x0) + 'px', height: Math.abs(y1 - y0) + 'px'});
  document.addEventListener('pointerdown', (e) => {
    const img = e.target.closest && e.target.closest('#panel-edited img');
    if (!boxMode() || !img) return;
    e.stopImmediatePropagation(); e.preventDefault();
    start = {x: e.clientX, y: e.clientY, rect: shown(img)};
    outline = document.createElement('div');
    outline.id = 'box-outline';
    Object.assign(outline.style, {position: 'fixed', border: '2px dashed #ff8c00',
                                  pointerEvents: 'none', zIndex: 1000});
    document.body.appendChild(outline);
    place(e.clientX, e.clientY, e.clientX, e.clientY);
  }, true);
  document.addEventListener('dragstart', (e) => {
    if (boxMode() && e.target.closest && e.target.closest('#panel-edited')) e.preventDefault();
  }, true);
  window.addEventListener('pointermove', (e) => {
    if (!start) return;
    e.stopImmediatePropagation(); e.preventDefault();
    place(start.x, start.y, e.clientX, e.clientY);
  }, true);
  window.addEventListener('pointerup', (e) => {
    if (!start) return;
    e.stopImmediatePropagation(); e.preventDefault();
    const r = start.rect;
    const fx = (x) => clamp((x - r.left) / r.width), fy = (y) => clamp((y - r.top) / r.height);
    const box = [Math.min(fx(start.x), fx(e.clientX)), Math.min(fy(start.y), fy(e.clientY)),
                 Math.max(fx(start.x), fx(e.clientX)), Math.max(fy(start.y), fy(e.clientY))];
    start = null; outline.remove();
    window.abnDrawnBox = box.map((v) => v.toFixed(4)).join(',');
    document.querySelector('#box-apply').click();
  }, true);
}
"""
BOX_VALUE_JS = '(...values) => { values[2] = window.abnDrawnBox || values[2]; return values; }'
PAGE_CSS = """
#box-drawn, #box-apply { display: none; }
""" + TEACH_CSS
PREDICTION = 'the prediction'  # the class chooser's first choice: each image's own answer


class Handlers:
    """What the page's events run: widget values in, widget updates out, through the
    MapEditor. `guarded` turns an error into the message box's text (never a traceback)."""

    def __init__(self, editor, gr, panel_titles):
        self.editor, self.gr, self.panel_titles = editor, gr, panel_titles
        self.listed = listed_names(editor.gallery.files)  # shown name -> path

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
            visible=not editor.kind.per_attribute and (picture.split is None
                                                       or editor.gallery.dataset == 'imagefolder'),
            value=explained.true_name or max(explained.ranking, key=explained.ranking.get))
        return ([text, explained] + [explained.panels[t] for t in self.panel_titles]
                + [explained.ranking, Image.fromarray(explained.editor_image).convert('RGB'),
                   explained.panels['ABN attention'], explained.ranking, class_update])

    def show_split(self, chosen_split, chosen_index, *chosen):
        gallery = self.editor.gallery
        return self.show(gallery.picture_from_split(chosen_split, chosen_index), *chosen)

    def show_file(self, path, *chosen):
        return self.show(self.editor.gallery.picture_from_file(path), *chosen)

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
            picture = read_image(path, self.editor.gallery.max_pixels)
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
        edited = editor.map_from_image(read_image(path, editor.gallery.max_pixels), explained.scale)
        gray = as_uint8(to_gray(edited, explained.scale))
        # The file box is emptied: the map is in the painter, and the box takes the next one.
        return ['Map loaded: run the perception branch on it, or paint on it.',
                Image.fromarray(enlarged(gray, editor.cell())).convert('RGB'),
                editor.edited_overlay(explained, edited), self.gr.skip(), None]

    def draw_box(self, explained, value, text, boxed):
        """A box dragged on the map (`text`: "x0,y0,x1,y1" fractions of the canvas): white
        inside, at the map's cells as much as it covers them; the first box of a shown image
        makes the rest of its map black (a box says where to attend, and where not), later
        ones add to it. `boxed`: the shown image the previous box was drawn on."""
        if explained is None:
            raise AbnError('pick an image first')
        try:
            x0, y0, x1, y1 = (float(v) for v in str(text).split(','))
        except ValueError:
            raise AbnError('a box is four fractions of the map: x0,y0,x1,y1') from None
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise AbnError('drag a box from one corner to the other, inside the map')
        editor = self.editor
        width, height = editor.map_width, editor.map_height
        first = boxed != id(explained)
        gray = (np.zeros((height, width), np.float32) if first
                else to_gray(self.painted_map(explained, value), explained.scale))
        inside = box_map(width, height, [(x0 * width, y0 * height, x1 * width, y1 * height)])
        gray = np.maximum(gray, inside)
        edited = from_gray(gray, explained.scale)
        ranking = editor.predict(explained, edited)
        new = editor.headline(ranking, explained.attribute)
        return [f'Box drawn ({"the rest of the map black" if first else "added"}); '
                f'perception branch on the edited map: {new}. Save it to teach from it.',
                Image.fromarray(enlarged(as_uint8(gray), editor.cell())).convert('RGB'),
                editor.edited_overlay(explained, edited), ranking, id(explained)]

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
        w = Widgets(message=gr.Markdown('Pick an image to begin.', elem_id='message'),
                    state=state)
        lay_out_pickers(w, editor, gr)
        lay_out_answers(w, editor, gr)
        lay_out_editing(w, editor, gr)
        on = Handlers(editor, gr, list(w.images))
        wire(w, on, editor)
        if teacher is not None:
            add_teach_section(gr, teacher, state, w.message, on.guarded)
    return page


class Widgets(dict):
    """The page's widgets by name (attribute access), as the layout made them."""
    __getattr__ = dict.__getitem__

    def __setattr__(self, name, value):
        self[name] = value


def lay_out_pickers(w, editor, gr):
    """Where an image comes from: a split and an index, a listed file, an upload; the
    attribute (multi-task) and the class CAM and Grad-CAM explain."""
    with gr.Row():
        if editor.gallery.splits:
            with gr.Column(min_width=200):
                w.split = gr.Radio(list(SPLITS), value='test',
                                   label=f'{editor.gallery.dataset} split', elem_id='split')
                w.index = gr.Number(value=0, precision=0, label='image index', elem_id='index')
                w.load = gr.Button('Show this image', elem_id='load', variant='primary')
        if editor.gallery.files:
            with gr.Column(min_width=200):
                names = list(listed_names(editor.gallery.files))
                w.chosen_file = gr.Dropdown(names, value=names[0], label='image file',
                                            elem_id='file')
                w.load_file = gr.Button('Show this file', elem_id='load-file')
        with gr.Column(min_width=200):
            w.upload = gr.File(label='or upload an image', type='filepath', elem_id='upload')
        w.attribute = gr.Dropdown(editor.names, value=editor.names[0], label='attribute',
                                  visible=editor.kind.per_attribute, elem_id='attribute')
        w.target = gr.Dropdown([PREDICTION] + editor.names, value=PREDICTION,
                               label='CAM and Grad-CAM of', elem_id='target-class',
                               visible=len(editor.methods) > 1)


def lay_out_answers(w, editor, gr):
    """The input and each method's overlay, and the ranking with the model's own map."""
    kind = editor.kind
    with gr.Row():
        w.images = {t: gr.Image(label=t, type='numpy', interactive=False, format='png',
                                elem_id=f'panel-{safe_name(t).lower()}', min_width=120)
                    for t in editor.panel_titles()}
        w.own_ranking = gr.Label(num_top_classes=kind.shown(editor.names),
                                 label=f'{kind.ranking_label}, own map', elem_id='own-ranking')


def lay_out_editing(w, editor, gr):
    """The painter, the edited map's overlay and ranking, and run, load and save."""
    kind = editor.kind
    size = editor.cell() * max(editor.map_height, editor.map_width)
    with gr.Row():
        w.painter = gr.ImageEditor(
            label=f'the map ({editor.map_width}x{editor.map_height}): paint on it',
            type='pil', image_mode='RGB', sources=(), transforms=(), layers=False,
            brush=gr.Brush(colors=['#ffffff', '#000000'], default_color='#ffffff',
                           color_mode='fixed', default_size=max(2, size // 10)),
            eraser=gr.Eraser(default_size=max(2, size // 10)),
            canvas_size=(editor.cell() * editor.map_width, editor.cell() * editor.map_height),
            fixed_canvas=True, format='png', elem_id='painter')
        w.edited_image = gr.Image(label='edited map over the input', type='numpy',
                                  interactive=False, format='png', elem_id='panel-edited')
        w.edited_ranking = gr.Label(num_top_classes=kind.shown(editor.names),
                                    label=f'{kind.ranking_label}, edited map',
                                    elem_id='edited-ranking')
    with gr.Row():
        w.apply = gr.Button('Run on the edited map', elem_id='apply', variant='primary')
        w.map_file = gr.File(label='or load a map (grayscale, white: attend)',
                             type='filepath', elem_id='map-upload')
        w.class_name = gr.Dropdown(editor.names, value=None, label='class (folder of the '
                                   'saved map)', elem_id='class', visible=False)
        w.save = gr.Button('Save the edited map', elem_id='save')
    with gr.Row():
        w.box_mode = gr.Checkbox(False, label='box tool: drag a rectangle over the object on '
                                 'the edited map over the input (white inside; the first box '
                                 'of an image makes the rest black, more boxes add to it)',
                                 elem_id='box-mode')
        w.box = gr.Textbox('', show_label=False, container=False, elem_id='box-drawn')
        w.box_apply = gr.Button('draw the box', elem_id='box-apply')
        w.boxed = gr.State(None)
    w.saved = gr.Markdown('', elem_id='saved')


EDITOR = 'editor'  # the concurrency group of the image editor's events


def wire(w, on, editor):
    """The events: each handler's inputs and outputs, and the names the HTTP API knows. The
    editor's events share one queue (EDITOR), so they answer in the order they were sent: a
    stroke's answer for an image never lands after the next image is shown."""
    shown = [w.message, w.state] + list(w.images.values()) + [
        w.own_ranking, w.painter, w.edited_image, w.edited_ranking, w.class_name]
    chosen = [w.attribute, w.target]
    if editor.gallery.splits:
        w.load.click(on.guarded(on.show_split, shown), [w.split, w.index] + chosen, shown,
                     concurrency_id=EDITOR, api_name='show_split')
    if editor.gallery.files:
        w.load_file.click(on.guarded(on.show_listed, shown), [w.chosen_file] + chosen, shown,
                          concurrency_id=EDITOR, api_name='show_file')
    w.upload.upload(on.guarded(on.show_file, shown), [w.upload] + chosen, shown,
                    concurrency_id=EDITOR, api_name='upload')
    w.attribute.change(on.guarded(on.reshow, shown), [w.state] + chosen, shown,
                       concurrency_id=EDITOR, api_name='reshow')
    w.target.change(on.guarded(on.reshow, shown), [w.state] + chosen, shown,
                    concurrency_id=EDITOR, api_name='explain_class')
    edit_outputs = [w.message, w.edited_image, w.edited_ranking]
    w.apply.click(on.guarded(on.run_edit, edit_outputs), [w.state, w.painter], edit_outputs,
                  concurrency_id=EDITOR, api_name='run_edit', preprocess=False)
    # Each stroke answers too; strokes faster than the model queue up as the latest one.
    w.painter.input(on.guarded(on.run_edit, edit_outputs), [w.state, w.painter], edit_outputs,
                    trigger_mode='always_last', show_progress='hidden', concurrency_id=EDITOR,
                    api_name='stroke', preprocess=False)
    map_outputs = [w.message, w.painter, w.edited_image, w.edited_ranking, w.map_file]
    w.map_file.upload(on.guarded(on.load_map, map_outputs), [w.state, w.map_file], map_outputs,
                      concurrency_id=EDITOR, api_name='load_map')
    box_outputs = [w.message, w.painter, w.edited_image, w.edited_ranking, w.boxed]
    w.box_apply.click(on.guarded(on.draw_box, box_outputs), [w.state, w.painter, w.box, w.boxed],
                      box_outputs, concurrency_id=EDITOR, api_name='draw_box', preprocess=False,
                      js=BOX_VALUE_JS)
    save_outputs = [w.message, w.saved]
    w.save.click(on.guarded(on.save_edit, save_outputs), [w.state, w.painter, w.class_name],
                 save_outputs, concurrency_id=EDITOR, api_name='save', preprocess=False)
