"""Teaching from the attention editor's page: the maps a person saved of training images
become a fine-tuning run, and the taught model is set beside the first.

`Teacher` belongs to the page (one per served checkpoint, shared by every visitor): it counts
the saved training maps, starts the same command a user would type (`cifar.py`, `imagenet.py`
or `celeba.py` with `--weights CHECKPOINT --attention-maps DIR`, into a new folder
`<output>/taught/run-N`, the command also written there as `command.sh`) as a background
process, reads its progress from its output, stops it on request (SIGTERM: the run saves and
says how to resume), and when it ends loads the taught checkpoint and measures both models on
the test split: accuracy, the pointing game where the data set has object masks, and how
much more the map holds inside the painted regions of the saved maps than outside them. The
checkpoint the page serves is only ever read.
"""
import math
import os
import shlex
import sys
import threading

from utils.errors import AbnError
from utils.serve.editor import MapEditor
from utils.serve.teach_folder import TrainingFolder
from utils.serve.teach_job import JOB_FILE, TeachingJob, TeachState, shown_argument
from utils.serve.teach_measures import MEASURE_IMAGES, measure
from utils.teach.map_store import saved_training_maps, training_folder
from utils.weights.checkpoint import load_checkpoint
from utils.weights.loading import load_model
from utils.weights.modelspec import SCRIPTS

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Data sets that need no --data folder (generated).
GENERATED = ('shapes', 'shapes-decoy', 'shapes-multi')
DEFAULTS = {'epochs': 2, 'lr': 0.01, 'map_loss_weight': 10.0, 'train_size': 0}
DEFAULT_BATCH = {'cifar': 64, 'imagenet': 32, 'celeba': 8}


class Teacher:
    """The page's teaching: at most one run at a time, whoever asks."""

    def __init__(self, editor, checkpoint, output, data_root='./data', gpu_id='0',
                 measure_images=MEASURE_IMAGES, threads=None, shows_paths=True):
        """`threads`: the CPU threads of a run (the CPUs the page leaves it), or None;
        `shows_paths`: the page is served to this machine only (a loopback address), so the
        whole command, with this machine's paths, may be given to copy."""
        self.editor, self.checkpoint, self.output = editor, checkpoint, output
        self.shows_paths = shows_paths
        self.data_root, self.gpu_id, self.threads = data_root, gpu_id, threads
        self.measure_images = measure_images
        self.lock = threading.Lock()
        self.run = None  # the current or last run
        self.after = None  # a MapEditor of the taught model, once loaded
        self.compared = None  # the run folder of that taught model
        self.scores = None  # {'before': {...}, 'after': {...}}
        self.version = 0  # grows whenever a new comparison is ready
        # The run's command names no architecture options: the file must record them.
        self.describes_itself = _describes_itself(checkpoint)
        # A run an earlier page on this folder left unfinished (killed, or stopped): the
        # page offers to continue it.
        self.run = last_unfinished_run(output)
        # A page of image files teaches with the image folder they belong to (--data of the
        # run), given on the page or remembered from an earlier page on this folder.
        spec = editor.loaded.spec
        self.folder = (TrainingFolder(editor, output, checkpoint) if not editor.gallery.splits
                       and spec is not None and spec.dataset == 'imagefolder' else None)

    # ---- what can be taught ----
    def unavailable_reason(self):
        """None when this page can teach, else one line saying why not."""
        editor = self.editor
        spec = editor.loaded.spec
        if not self.describes_itself or spec is None or spec.dataset is None:
            return ('Teach starts from a checkpoint of this project that names its data set; '
                    'this one does not (an authors\' file?): fine-tune from a terminal with '
                    '--weights and --attention-maps (docs/teach.md)')
        if editor.loaded.imagenet:
            return ('Teach covers the data sets the page serves (cifar.py\'s and '
                    'shapes-multi); for an imagenet.py model run python imagenet.py --data DIR '
                    '--weights CHECKPOINT --attention-maps MAPS from a terminal (docs/teach.md)')
        if not editor.gallery.splits and self.folder is None:
            return ('Teach needs the training split: start the page with --dataset '
                    f'{spec.dataset}')
        if not editor.gallery.splits and self.training_root is None:
            return ('Teach needs the training folder these images belong to (an image folder '
                    'with train/<class>/<image> and val/, as the run\'s --data): give it under '
                    '**training folder** below')
        return None

    def maps_folder(self):
        """Where the page saves maps of training images, as --attention-maps reads them: a
        page of image files saves <class>/<stem>.png, a data set's page <split>/..."""
        editor = self.editor
        if not editor.gallery.splits and not editor.kind.per_attribute:
            return editor.maps_dir
        return training_folder(editor.maps_dir, editor.kind.per_attribute)

    # ---- the training folder of a page of image files ----
    @property
    def training_root(self):
        return self.folder.root if self.folder is not None else None

    def set_training_folder(self, root):
        return self.folder.set(root)

    def unmatched_maps(self):
        return self.folder.unmatched(self.maps_folder()) if self.folder is not None else []

    def saved_maps(self):
        """{group: images} of the saved training maps (count_saved_maps)."""
        return count_saved_maps(self.editor, self.maps_folder())

    # ---- the run ----
    def command(self, folder, epochs, batch, lr, weight, train_size):
        """(argv, the command as shown on the page) of the fine-tuning run."""
        editor, spec = self.editor, self.editor.loaded.spec
        script = SCRIPTS[spec.script]
        if os.path.abspath(os.getcwd()) != PROJECT:
            script = os.path.join(PROJECT, script)
        if not editor.gallery.splits:  # a page of image files: the folder they belong to
            args = ['--dataset', 'imagefolder', '--data', self.folder.root]
        else:
            args = ['--dataset', editor.gallery.dataset]
        if editor.gallery.splits and editor.gallery.dataset not in GENERATED:
            args += ['--data', self.data_root]
        args += ['--weights', self.checkpoint, '--attention-maps', self.maps_folder(),
                 '--epochs', str(epochs), '--train-batch', str(batch), '--lr', f'{lr:g}',
                 '--map-loss-weight', f'{weight:g}']
        if train_size:
            args += ['--train-size', str(train_size)]
        # A fixed seed: command.sh run again from a terminal repeats the run.
        if self.threads:  # the CPUs the page leaves it, its data read in its own process
            args += ['--threads', str(self.threads), '-j', '0']
        args += ['--manualSeed', '1', '--gpu-id', self.gpu_id, '-c', folder]
        shown = ['python', SCRIPTS[spec.script]] + [shown_argument(a) for a in args]
        return [sys.executable, script] + args, shlex.join(shown)

    def start(self, epochs, batch, lr, weight, train_size=0):
        """Starts a run; AbnError when one is running or the inputs cannot work."""
        reason = self.unavailable_reason()
        if reason:
            raise AbnError(reason)
        epochs, batch, train_size = (whole_number(epochs, 'epochs', 1), whole_number(batch, 'batch size', 1),
                                     whole_number(train_size or 0, 'training images', 0))
        lr, weight = positive_number(lr, 'learning rate'), positive_number(weight, 'map loss weight', 0)
        with self.lock:
            if self.run is not None and self.run.state.busy:
                raise AbnError(f'a teaching run is already {self.run.state}, in '
                               f'{self.editor.shown_path(self.run.folder)}: stop it first, or '
                               f'wait for it')
            if not self.saved_maps():
                raise AbnError('no saved maps of training images yet: show training images, '
                               'paint their maps and save them first')
            unmatched = self.unmatched_maps()
            if unmatched:
                raise AbnError(f'{len(unmatched)} saved maps name no image of '
                               f'{self.editor.shown_path(self.training_root)}/train (the first: '
                               f'{unmatched[0]}): teach from maps of that folder\'s training '
                               f'images, saved under their class')
            folder = new_run_folder(self.output)
            argv, shown = self.command(folder, epochs, batch, lr, weight, train_size)
            with open(os.path.join(folder, 'command.sh'), 'w') as f:
                f.write(f'#!/bin/sh\n# The fine-tuning run the attention editor started.\n'
                        f'cd {shlex.quote(os.getcwd())}\n{shlex.join(argv)} "$@"\n')
            self.run = TeachingJob(folder, argv, shown)
            self.run.start()
        threading.Thread(target=self._watch, args=(self.run,), daemon=True).start()
        return self.run

    def resume(self):
        """Continues the stopped run from its checkpoint (--resume), in its folder."""
        reason = self.unavailable_reason()
        if reason:
            raise AbnError(reason)
        with self.lock:
            run = self.run
            if run is None or run.state != TeachState.STOPPED:
                raise AbnError('no stopped teaching run to continue')
            if run.still_ending():
                raise AbnError('the run is still saving after its page ended: continue it in '
                               'a moment')
            if not os.path.isfile(run.checkpoint()):
                raise AbnError(f'the run in {self.editor.shown_path(run.folder)} saved no '
                               f'checkpoint to continue from: teach again')
            run.start(resume=True)
            run.unattended = False
        threading.Thread(target=self._watch, args=(run,), daemon=True).start()
        return run

    def whole_command(self):
        """The run's command to paste into a terminal (teach_job.TeachingJob.pasteable)."""
        return self.run.pasteable(self.shows_paths) if self.run is not None else ''

    def stop(self):
        run = self.run
        if run is None or run.state != TeachState.RUNNING:
            raise AbnError('no teaching run is running')
        run.stop()

    def close(self):
        """The page is stopping: so is its run (it saves first)."""
        if self.run is not None:
            self.run.end()
        if self.after is not None:
            self.after.close()

    def _watch(self, run):
        """Waits for the run; on success loads the taught model and measures both."""
        code = run.process.wait()
        run.release()
        if code != 0:
            run.state = TeachState.STOPPED if run.stopping or code in (130, 143) else \
                TeachState.FAILED
            run.note = run.error() or f'the run ended with status {code}'
            return
        run.state = TeachState.MEASURING
        try:
            editor = self.editor
            after = MapEditor(load_model(run.checkpoint()), editor.device, editor.maps_dir)
            after.share_images(editor)
            scores = {'before': self.measure(editor), 'after': self.measure(after)}
        except Exception as error:  # noqa: BLE001 - the page must say why, not die
            run.state, run.note = TeachState.FAILED, f'the taught model could not be measured: {error}'
            return
        with self.lock:
            if self.after is not None:
                self.after.close()
            self.after, self.scores, self.compared = after, scores, run.folder
            self.version += 1
            run.state = TeachState.FINISHED

    # ---- measures ----
    def measure(self, editor):
        """Both models' measures (utils.serve.teach_measures) on the test split: the data
        set's, or for a page of image files the folder's it teaches with."""
        test = (self.folder.images.split('test') if self.folder is not None
                and self.folder.images is not None else editor.gallery.split('test'))
        return measure(editor, test, self.measure_images, self.maps_folder())


def count_saved_maps(editor, folder):
    """{group: images}: the saved training maps of `folder` by class (by attribute for
    multi-task models); an image with several maps counts once."""
    counts, labels = {}, None
    for attribute, key in saved_training_maps(folder, editor.kind.per_attribute):
        if attribute is not None or '/' in key:  # an attribute's, or <class>/<stem>
            group = attribute if attribute is not None else key.split('/')[0]
        else:  # a built-in split's image, by index: its class
            if not key.isdigit():
                continue
            labels = labels if labels is not None else editor.gallery.training_labels()
            index = int(key)
            group = (editor.names[int(labels[index])] if labels is not None
                     and index < len(labels) else '?')
        counts[group] = counts.get(group, 0) + 1
    return dict(sorted(counts.items()))


def last_unfinished_run(output):
    """The newest run under <output>/taught that a page started and left short of its
    epochs (a stopped job, utils.serve.teach_job), or None."""
    top = os.path.join(output, 'taught')
    try:
        names = os.listdir(top)
    except OSError:
        return None
    numbered = sorted((int(name[4:]), name) for name in names
                      if name.startswith('run-') and name[4:].isdigit())
    for _, name in reversed(numbered):
        folder = os.path.join(top, name)
        if os.path.isfile(os.path.join(folder, JOB_FILE)):
            return TeachingJob.unfinished(folder)  # the newest run the page started
    return None


def new_run_folder(output):
    """<output>/taught/run-N, N the first number free (claimed by creating it)."""
    top = os.path.join(output, 'taught')
    os.makedirs(top, exist_ok=True)
    number = 1
    while True:
        folder = os.path.join(top, f'run-{number}')
        try:
            os.mkdir(folder)
            return folder
        except FileExistsError:
            number += 1


def _describes_itself(path):
    """Whether `path` is a checkpoint of this project (one that records its model spec)."""
    from utils.weights.modelspec import spec_from_checkpoint
    try:
        return os.path.isfile(path) and spec_from_checkpoint(load_checkpoint(path)) is not None
    except AbnError:
        return False  # e.g. a safetensors file of export.py: not a start for a training run


def whole_number(value, name, least):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise AbnError(f'{name} must be a whole number, got {value!r}') from None
    if number != value and not isinstance(value, str) or number < least:
        raise AbnError(f'{name} must be a whole number of at least {least}, got {value}')
    return number


def positive_number(value, name, least=None):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AbnError(f'{name} must be a number, got {value!r}') from None
    if not math.isfinite(number) or (number <= 0 if least is None else number < least):
        raise AbnError(f'{name} must be {"positive" if least is None else "at least 0"}, got '
                       f'{value}')
    return number
