"""The page's Teach section (utils.serve.teach has the run): the saved training maps, the
run's settings, Teach and Stop, the command, the progress, and the taught model beside the
first. A timer asks every second; the run belongs to the page, so a reloaded page finds it."""
from utils.serve.teach import DEFAULT_BATCH, DEFAULTS, shown_argument
from utils.serve.teach_job import TeachState

TICK_SECONDS = 1.0
# The before/after table keeps its words whole (a narrow column broke "before" in two).
TEACH_CSS = """
#teach-comparison table { width: 100%; }
#teach-comparison th, #teach-comparison td { white-space: nowrap; }
#teach-comparison td:first-child { white-space: normal; min-width: 14em; }
"""


def maps_text(teacher):
    reason = teacher.unavailable_reason()
    if reason:
        return f'Teach is not available here: {reason}.'
    saved = teacher.saved_maps()
    if not saved:
        return ('**Saved training maps:** none yet. Show images of the **train** split, paint '
                'their maps and save them; then teach.')
    total = sum(saved.values())
    what = teacher.editor.kind.noun
    groups = ', '.join(f'{name} {count}' for name, count in saved.items())
    return (f'**Saved training maps:** {total} (per {what}: {groups}), in '
            f'`{teacher.editor.shown_path(teacher.maps_folder())}`.')


def status_text(teacher):
    run = teacher.run
    if run is None:
        return 'No teaching run yet.'
    where = teacher.editor.shown_path(run.folder)
    lines = []
    if run.state in (TeachState.STARTING, TeachState.RUNNING):
        epoch, step = run.progress()
        lines.append(f'**Teaching** in `{where}`' + (' (stopping...)' if run.stopping else '')
                     + f': {epoch or "starting"}')
        if step:
            lines.append(f'`{step}`')
    elif run.state == TeachState.MEASURING:
        lines.append(f'**Measuring**: the run in `{where}` is done; both models are measured '
                     f'on the test split...')
    elif run.state == TeachState.FINISHED:
        lines.append(f'**Taught**: `{teacher.editor.shown_path(run.checkpoint())}` (the '
                     f'checkpoint the page serves is unchanged).')
    elif run.state == TeachState.STOPPED:
        what = ('**Unfinished**: a run an earlier page started here ended before its last '
                'epoch' if run.unattended else '**Stopped**')
        lines.append(f'{what}: press **Continue** to go on from its checkpoint '
                     f'`{teacher.editor.shown_path(run.checkpoint())}`, or run the command '
                     f'below plus `--resume {shown_argument(run.checkpoint())}`.')
    else:
        lines.append(f'**The run failed**: {run.note}')
    warning = run.warning()
    if warning:
        lines.append(f"**Warning**: {warning.split(':', 1)[1].strip()}")
    lines.append(f'Command (in full in `{where}/command.sh`, to run again from a '
                 f'terminal):\n```\n{run.shown}\n```')
    return '\n\n'.join(lines)


# What a dose does, measured (docs/teach.md): the page says it beside the settings.
DOSE = ('Each saved map is seen once per epoch, among the training images. Measured on '
        '`shapes`: 8 maps over the first 64 training images, 4 epochs (each map seen 4 times, '
        '16 steps), moved the pointing game from 62% to 94%; 6 maps among all 10,000 images '
        'and the default 2 epochs, from 71% to 75%. With a handful of maps, set **training '
        'images** to the first ones (those you painted among them) and raise the epochs.')
WAITING = ('*When a run ends, the taught model is measured beside this one here, and the map '
           'of the image shown above appears before and after teaching.*')
SHOW_ONE = '*Show an image above to see its map before and after teaching.*'


def comparison_text(teacher, before_ranking=None, after_ranking=None, headline=None):
    scores = teacher.scores
    if not scores:
        return WAITING
    before, after = scores['before'], scores['after']
    rows = [(teacher.editor.kind.accuracy_label, f"{before['accuracy']:.2f}%",
             f"{after['accuracy']:.2f}%")]
    if 'object_kept' in before and 'object_kept' in after:  # the decision, not the map
        rows.append(('the same, the objects amid another image\'s surroundings',
                     f"{before['object_kept']:.2f}%", f"{after['object_kept']:.2f}%"))
    if 'pointing' in before:
        rows.append((f"pointing game ±{before['radius']} px", f"{before['pointing']:.1f}%",
                     f"{after['pointing']:.1f}%"))
    for name, value in before.get('pointing_per_attribute', {}).items():
        rows.append((f'  {name}', f'{value:.1f}%', f"{after['pointing_per_attribute'][name]:.1f}%"))
    if before.get('contrast') is not None:
        rows.append((f"map inside - outside the painted regions ({before['maps']} saved maps)",
                     f"{before['contrast']:+.3f}", f"{after['contrast']:+.3f}"))
    if before_ranking is not None and headline is not None:
        rows.append(('this image', headline(before_ranking), headline(after_ranking)))
    table = '\n'.join(f'| {a} | {b} | {c} |' for a, b, c in rows)
    editor, run = teacher.editor, teacher.run
    which = f'`{editor.shown_path(teacher.compared)}`' if teacher.compared else 'the taught model'
    if run is not None and teacher.compared and run.folder != teacher.compared:
        which += (f' (an earlier run: `{editor.shown_path(run.folder)}` is '
                  f'{run.state} and not measured)')
    return (f"**The served model before, {which} after**, measured on the first "
            f"{before['images']} test images:\n\n"
            f'| | before | after |\n|---|---|---|\n{table}'
            + ('' if before_ranking is not None else f'\n\n{SHOW_ONE}'))


class TeachHandlers:
    """The Teach section's events."""

    def __init__(self, teacher, gr):
        self.teacher, self.gr = teacher, gr

    def start(self, epochs, batch, lr, weight, train_size):
        self.teacher.start(epochs, batch, lr, weight, train_size)
        return [f'Started: `{self.teacher.editor.shown_path(self.teacher.run.folder)}`.',
                status_text(self.teacher)]

    def set_folder(self, root):
        root = self.teacher.set_training_folder(root)
        return [f'Teach uses the image folder `{self.teacher.editor.shown_path(root)}` '
                f'(remembered for this output folder).', maps_text(self.teacher)]

    def resume(self):
        run = self.teacher.resume()
        return [f'Continuing: `{self.teacher.editor.shown_path(run.folder)}`.',
                status_text(self.teacher)]

    def stop(self):
        self.teacher.stop()
        return ['Stopping: the run saves its checkpoint at the next step.',
                status_text(self.teacher)]

    def tick(self, explained, seen):
        """Every second: the saved maps, the run's state, and, when a taught model is new or
        the picture changed, the picture's map before and after."""
        teacher, skip = self.teacher, self.gr.skip()
        out = [maps_text(teacher), status_text(teacher), teacher.whole_command()]
        picture = explained.picture if explained is not None else None
        run = teacher.run
        key = (teacher.version, id(picture), getattr(explained, 'attribute', None),
               run and (run.folder, run.state))
        if teacher.after is None or key == seen:
            return out + [skip, skip, comparison_text(teacher) if key != seen else skip, seen]
        if picture is None:
            return out + [skip, skip, comparison_text(teacher), key]
        after = teacher.after.explain(picture, explained.attribute)
        editor = teacher.editor

        def headline(ranking):
            return editor.headline(ranking, explained.attribute)
        return out + [explained.panels['ABN attention'], after.panels['ABN attention'],
                      comparison_text(teacher, explained.ranking, after.ranking, headline), key]


def add_teach_section(gr, teacher, state, message, guarded):
    """The Teach widgets and their events, under the editor's; `guarded` as Handlers'."""
    on = TeachHandlers(teacher, gr)
    spec = teacher.editor.loaded.spec
    script = 'celeba' if teacher.editor.kind.per_attribute else spec.script if spec else 'cifar'
    with gr.Accordion('Teach: fine-tune on the saved maps', open=True, elem_id='teach-section'):
        gr.Markdown('Fine-tunes a copy of this model on the saved maps of training images, '
                    'in the background, then shows the taught model beside this one: the map '
                    'loss pulls each map towards its saved one, and each image with a map is '
                    'also shown with everything outside it from another image, so that what '
                    'lies outside (a shortcut) stops deciding (a multi-task model: the map '
                    'loss alone, its feature extractor fixed). The page stays usable; the '
                    'served checkpoint is never changed.')
        saved = gr.Markdown(maps_text(teacher), elem_id='teach-maps')
        with gr.Row(visible=teacher.folder is not None):  # a page of image files
            folder = gr.Textbox(teacher.training_root if teacher.shows_paths and
                                teacher.training_root else '', label='training folder: the image '
                                'folder these images belong to (train/<class>/<image> and '
                                'val/, the run\'s --data)', elem_id='teach-data', scale=4)
            use_folder = gr.Button('Use this folder', elem_id='teach-use-data', scale=1)
        with gr.Row():
            epochs = gr.Number(DEFAULTS['epochs'], precision=0, label='epochs',
                               elem_id='teach-epochs', minimum=1)
            batch = gr.Number(DEFAULT_BATCH.get(script, 64), precision=0, label='batch size',
                              elem_id='teach-batch', minimum=1)
            lr = gr.Number(DEFAULTS['lr'], label='learning rate', elem_id='teach-lr')
            weight = gr.Number(DEFAULTS['map_loss_weight'], label='map loss weight (gamma)',
                               elem_id='teach-weight')
            train_size = gr.Number(DEFAULTS['train_size'], precision=0,
                                   label='training images (0: all)', elem_id='teach-size')
        gr.Markdown(DOSE, elem_id='teach-dose')
        with gr.Row():
            teach = gr.Button('Teach', variant='primary', elem_id='teach')
            stop = gr.Button('Stop', elem_id='teach-stop')
            resume = gr.Button('Continue', elem_id='teach-continue')
        status = gr.Markdown(status_text(teacher), elem_id='teach-status')
        command = gr.Textbox(teacher.whole_command(), label='the whole command, to paste into '
                             'a terminal', interactive=False, buttons=['copy'], lines=1,
                             max_lines=4, elem_id='teach-command')
        with gr.Row():
            before = gr.Image(label='before: ABN attention', type='numpy', interactive=False,
                              format='png', elem_id='panel-before')
            after = gr.Image(label='after teaching: ABN attention', type='numpy',
                             interactive=False, format='png', elem_id='panel-after')
        comparison = gr.Markdown(comparison_text(teacher), elem_id='teach-comparison')
    seen = gr.State(None)
    outputs = [message, status]
    teach.click(guarded(on.start, outputs), [epochs, batch, lr, weight, train_size], outputs,
                api_name='teach')
    stop.click(guarded(on.stop, outputs), [], outputs, api_name='stop_teaching')
    resume.click(guarded(on.resume, outputs), [], outputs, api_name='continue_teaching')
    use_folder.click(guarded(on.set_folder, [message, saved]), [folder], [message, saved],
                     api_name='teach_folder')
    timer = gr.Timer(TICK_SECONDS)
    shown = [saved, status, command, before, after, comparison, seen]
    timer.tick(guarded(on.tick, shown), [state, seen], shown, show_progress='hidden',
               api_name='teach_status')
    return on

