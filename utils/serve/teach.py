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
import os
import re
import shlex
import signal
import subprocess
import sys
import threading

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.attributes import map_picture
from utils.data.datasets import base_dataset
from utils.data.images import image_files_by_key
from utils.errors import AbnError
from utils.explain.measures import pointing_game, pointing_tolerance
from utils.teach.attention_maps import SIBLING, read_maps
from utils.visualize import safe_name
from utils.weights.modelspec import SCRIPTS

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEASURE_IMAGES = 1000  # test images both models are measured on (the first ones)
PAINTED = 0.75  # a saved map's painted region: its cells at least this white
PROGRESS = re.compile(r'^(Train|Valid|Test) \S+ ?\[\d+/\d+\]')
# Data sets that need no --data folder (generated).
GENERATED = ('shapes', 'shapes-multi')
DEFAULTS = {'epochs': 2, 'lr': 0.01, 'map_loss_weight': 10.0, 'train_size': 0}
DEFAULT_BATCH = {'cifar': 64, 'imagenet': 32, 'celeba': 8}


class TeachRun:
    """One fine-tuning process started from the page."""

    def __init__(self, folder, argv, shown):
        self.folder, self.argv, self.shown = folder, argv, shown
        self.output = os.path.join(folder, 'output.txt')
        self.process = None
        self.stopping = False
        self.state = 'starting'  # running, measuring, finished, stopped, failed
        self.note = ''

    def start(self):
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        with open(self.output, 'wb') as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)
        self.state = 'running'

    def lines(self, last=200):
        try:
            with open(self.output, 'rb') as f:
                f.seek(max(0, os.path.getsize(self.output) - 16384))
                text = f.read().decode('utf-8', 'replace')
        except OSError:
            return []
        return text.splitlines()[-last:]

    def progress(self):
        """The newest epoch header and progress line of the run's output."""
        lines = self.lines()
        epoch = next((line for line in reversed(lines) if line.startswith('Epoch: [')), '')
        step = next((line for line in reversed(lines) if PROGRESS.match(line)), '')
        return epoch.strip(), step.strip()

    def error(self):
        """The run's own one-line error, if it printed one."""
        return next((line.split('error:', 1)[1].strip() for line in reversed(self.lines())
                     if 'error:' in line), None)

    def checkpoint(self, name='checkpoint.pth.tar'):
        return os.path.join(self.folder, name)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.stopping = True
            os.killpg(self.process.pid, signal.SIGTERM)  # the run saves at the next step


class Teacher:
    """The page's teaching: at most one run at a time, whoever asks."""

    def __init__(self, editor, checkpoint, output, data_root='./data', gpu_id='0',
                 measure_images=MEASURE_IMAGES):
        self.editor, self.checkpoint, self.output = editor, checkpoint, output
        self.data_root, self.gpu_id = data_root, gpu_id
        self.measure_images = measure_images
        self.lock = threading.Lock()
        self.run = None  # the current or last run
        self.after = None  # a MapEditor of the taught model, once loaded
        self.scores = None  # {'before': {...}, 'after': {...}}
        self.version = 0  # grows whenever a new comparison is ready
        # The run's command names no architecture options: the file must record them.
        self.describes_itself = _describes_itself(checkpoint)

    # ---- what can be taught ----
    def why_not(self):
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
        if not editor.splits:
            return ('Teach needs the training split: start the page with --dataset '
                    f'{spec.dataset}')
        return None

    def maps_folder(self):
        """Where the page saves maps of training images, as --attention-maps reads them."""
        maps = self.editor.maps_dir
        return maps if self.editor.multitask else os.path.join(maps, 'train')

    def saved_maps(self):
        """{group: images}: the saved training maps by class (by attribute for multi-task
        models); an image with several maps counts once."""
        editor, folder = self.editor, self.maps_folder()
        if not os.path.isdir(folder):
            return {}
        images = {}
        for key, _ in image_files_by_key(folder):
            parts = key.split('/')
            if editor.multitask:
                if len(parts) != 3 or parts[1] != 'train':
                    continue
                group = parts[0]
            elif len(parts) == 2:  # an image folder: <class>/<stem>
                group = parts[0]
            else:
                index = _index_of(parts[-1])
                if index is None:
                    continue
                labels = getattr(base_dataset(editor.split('train')), 'targets', None)
                group = (editor.names[int(labels[index])] if labels is not None
                         and index < len(labels) else '?')
            stem = SIBLING.match(parts[-1])
            images.setdefault(group, set()).add(stem.group(1) if stem else parts[-1])
        return {group: len(found) for group, found in sorted(images.items())}

    # ---- the run ----
    def command(self, folder, epochs, batch, lr, weight, train_size):
        """(argv, the command as shown on the page) of the fine-tuning run."""
        editor, spec = self.editor, self.editor.loaded.spec
        script = SCRIPTS[spec.script]
        if os.path.abspath(os.getcwd()) != PROJECT:
            script = os.path.join(PROJECT, script)
        args = ['--dataset', editor.dataset]
        if editor.dataset not in GENERATED:
            args += ['--data', self.data_root]
        args += ['--weights', self.checkpoint, '--attention-maps', self.maps_folder(),
                 '--epochs', str(epochs), '--train-batch', str(batch), '--lr', f'{lr:g}',
                 '--map-loss-weight', f'{weight:g}']
        if train_size:
            args += ['--train-size', str(train_size)]
        # A fixed seed: command.sh run again from a terminal repeats the run.
        args += ['--manualSeed', '1', '--gpu-id', self.gpu_id, '-c', folder]
        shown = ['python', SCRIPTS[spec.script]] + [shown_path(a) for a in args]
        return [sys.executable, script] + args, shlex.join(shown)

    def start(self, epochs, batch, lr, weight, train_size=0):
        """Starts a run; AbnError when one is running or the inputs cannot work."""
        reason = self.why_not()
        if reason:
            raise AbnError(reason)
        epochs, batch, train_size = (_whole(epochs, 'epochs', 1), _whole(batch, 'batch size', 1),
                                     _whole(train_size or 0, 'training images', 0))
        lr, weight = _positive(lr, 'learning rate'), _positive(weight, 'map loss weight', 0)
        with self.lock:
            if self.run is not None and self.run.state in ('starting', 'running', 'measuring'):
                raise AbnError(f'a teaching run is already {self.run.state}, in '
                               f'{self.editor.shown_path(self.run.folder)}: stop it first, or '
                               f'wait for it')
            if not self.saved_maps():
                raise AbnError('no saved maps of training images yet: show training images, '
                               'paint their maps and save them first')
            folder = self._new_folder()
            argv, shown = self.command(folder, epochs, batch, lr, weight, train_size)
            with open(os.path.join(folder, 'command.sh'), 'w') as f:
                f.write(f'#!/bin/sh\n# The fine-tuning run the attention editor started.\n'
                        f'cd {shlex.quote(os.getcwd())}\n{shlex.join(argv)}\n')
            self.run = TeachRun(folder, argv, shown)
            self.run.start()
        threading.Thread(target=self._watch, args=(self.run,), daemon=True).start()
        return self.run

    def stop(self):
        run = self.run
        if run is None or run.state != 'running':
            raise AbnError('no teaching run is running')
        run.stop()

    def close(self):
        """The page is stopping: so is its run (it saves first)."""
        if self.run is not None and self.run.process is not None:
            self.run.stop()
            try:
                self.run.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.run.process.pid, signal.SIGKILL)
        if self.after is not None:
            self.after.close()

    def _new_folder(self):
        top = os.path.join(self.output, 'taught')
        os.makedirs(top, exist_ok=True)
        number = 1
        while True:
            folder = os.path.join(top, f'run-{number}')
            try:
                os.mkdir(folder)
                return folder
            except FileExistsError:
                number += 1

    def _watch(self, run):
        """Waits for the run; on success loads the taught model and measures both."""
        code = run.process.wait()
        if code != 0:
            run.state = 'stopped' if run.stopping or code in (130, 143) else 'failed'
            run.note = run.error() or f'the run ended with status {code}'
            return
        run.state = 'measuring'
        try:
            from utils.serve.editor import MapEditor
            from utils.weights.loading import load_model
            editor = self.editor
            after = MapEditor(load_model(run.checkpoint()), editor.device, editor.maps_dir)
            after.share_images(editor)
            scores = {'before': self.measure(editor), 'after': self.measure(after)}
        except Exception as error:  # noqa: BLE001 - the page must say why, not die
            run.state, run.note = 'failed', f'the taught model could not be measured: {error}'
            return
        with self.lock:
            if self.after is not None:
                self.after.close()
            self.after, self.scores = after, scores
            self.version += 1
            run.state = 'finished'

    # ---- measures ----
    def measure(self, editor):
        """{'accuracy', 'pointing', 'contrast', counts}: test accuracy (mean attribute
        accuracy for multi-task models) and the pointing game of the ABN map on the first
        `measure_images` test images, the latter where the data set has object masks; the
        contrast of the map over the saved training maps (mean inside the painted region
        minus mean outside)."""
        test = editor.split('test')
        count = min(len(test), self.measure_images)
        base = base_dataset(test)
        masks = getattr(base, 'masks', None)
        size = editor.size
        radius = pointing_tolerance(size)
        correct, seen, pointing = 0.0, 0, []
        per_attribute = {}
        for start in range(0, count, 100):
            items = [test[i] for i in range(start, min(count, start + 100))]
            x = torch.stack([item[0] for item in items]).to(editor.device)
            labels = torch.stack([torch.as_tensor(item[1]) for item in items])
            with editor.lock, torch.no_grad():
                out = editor.model(x)
            logits, maps = out.perception_logits.float().cpu(), out.attention_map.float().cpu()
            if editor.multitask:
                correct += ((logits > 0).float() == labels).float().mean(1).sum().item()
                maps = map_picture(maps, 'pos', dims=(-2, -1))
            else:
                correct += (logits.argmax(1) == labels).sum().item()
            seen += len(items)
            if masks is None:
                continue
            up = F.interpolate(maps, size=(size, size), mode='bilinear',
                               align_corners=False).numpy()
            batch_masks = np.asarray(masks[start:start + len(items)])
            if batch_masks.shape[-1] != size:
                batch_masks = F.interpolate(torch.from_numpy(batch_masks).float()[:, None]
                                            if batch_masks.ndim == 3 else
                                            torch.from_numpy(batch_masks).float(),
                                            size=(size, size), mode='nearest').numpy() > 0.5
                if not editor.multitask:
                    batch_masks = batch_masks[:, 0]
            if editor.multitask:
                for t in range(up.shape[1]):
                    present = batch_masks[:, t].reshape(len(items), -1).any(1)
                    if present.any():
                        per_attribute.setdefault(editor.names[t], []).extend(
                            pointing_game(up[present, t], batch_masks[present, t], radius))
            else:
                pointing.extend(pointing_game(up[:, 0], batch_masks, radius))
        scores = {'images': seen, 'accuracy': 100 * correct / max(seen, 1), 'radius': radius}
        if per_attribute:
            scores['pointing_per_attribute'] = {k: 100 * float(np.mean(v))
                                                for k, v in per_attribute.items()}
            scores['pointing'] = float(np.mean(list(scores['pointing_per_attribute'].values())))
        elif pointing:
            scores['pointing'] = 100 * float(np.mean(pointing))
        scores.update(self.contrast(editor))
        return scores

    def contrast(self, editor):
        """{'contrast': mean over the saved training maps of (the model's map, drawn as the
        page draws it, averaged inside the painted region: the cells at least PAINTED white)
        minus (averaged outside), 'maps': how many}: how far the model's maps agree with
        what was painted."""
        values = []
        channels = {safe_name(name): t for t, name in enumerate(editor.names)}
        for (folder, index), files in _saved_map_files(self.maps_folder(), editor.multitask):
            attribute = channels.get(folder, -1) if editor.multitask else 0
            if attribute < 0 or index >= len(editor.split('train')):
                continue
            painted = read_maps(files) >= PAINTED
            if painted.all() or not painted.any():
                continue
            explained = editor.explain(editor.picture_from_split('train', index), attribute)
            own = explained.own_map[attribute]
            scale = explained.scale
            drawn = own if scale is None else own / (2 * scale) + 0.5
            region = np.asarray(F.interpolate(
                torch.from_numpy(painted.astype(np.float32))[None, None],
                size=drawn.shape, mode='area')[0, 0]) >= 0.5
            if region.all() or not region.any():
                continue
            values.append(float(drawn[region].mean() - drawn[~region].mean()))
        return {'contrast': float(np.mean(values)) if values else None, 'maps': len(values)}


def _saved_map_files(folder, multitask):
    """[((attribute, index), files)] of the saved maps of a built-in training split."""
    if not os.path.isdir(folder):
        return []
    grouped = {}
    for key, path in image_files_by_key(folder):
        parts = key.split('/')
        if multitask and (len(parts) != 3 or parts[1] != 'train'):
            continue
        if not multitask and len(parts) != 1:
            continue
        stem = SIBLING.match(parts[-1])
        index = _index_of(stem.group(1) if stem else parts[-1])
        if index is None:
            continue
        grouped.setdefault((parts[0] if multitask else None, index), []).append(path)
    return [((attribute, index), files) for (attribute, index), files in sorted(
        grouped.items(), key=lambda item: (str(item[0][0]), item[0][1]))]


def _describes_itself(path):
    """Whether `path` is a checkpoint of this project (one that records its model spec)."""
    from utils.weights.checkpoint import load_checkpoint
    from utils.weights.modelspec import spec_from_checkpoint
    try:
        return os.path.isfile(path) and spec_from_checkpoint(load_checkpoint(path)) is not None
    except AbnError:
        return False  # e.g. a safetensors file of export.py: not a start for a training run


def shown_path(text):
    """A path of the command as a visitor may see it: relative to the page's folder when
    inside it, else `.../<name>` (command.sh has it whole); other arguments as they are."""
    if not os.path.isabs(text):
        return text
    relative = os.path.relpath(text, os.getcwd())
    if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
        return relative
    return '.../' + os.path.basename(text)


def _index_of(stem):
    return int(stem) if stem.isdigit() else None


def _whole(value, name, least):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise AbnError(f'{name} must be a whole number, got {value!r}') from None
    if number != value and not isinstance(value, str) or number < least:
        raise AbnError(f'{name} must be a whole number of at least {least}, got {value}')
    return number


def _positive(value, name, least=None):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AbnError(f'{name} must be a number, got {value!r}') from None
    if not np.isfinite(number) or (number <= 0 if least is None else number < least):
        raise AbnError(f'{name} must be {"positive" if least is None else "at least 0"}, got '
                       f'{value}')
    return number
