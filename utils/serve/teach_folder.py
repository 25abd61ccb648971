"""The image folder a page of image files teaches with: images given as files (no
`--dataset`) are saved under their class, and a teaching run needs the folder they belong to
(`train/<class>/<image>` and a validation split, the run's `--data`). It is given on the
page, or found: the folder an earlier page on the same output folder was given (remembered
in `<output>/teach.json`), else the one the checkpoint was trained on."""
import json
import os

from utils.data.datasets import base_dataset
from utils.data.inputs import image_transform
from utils.errors import AbnError
from utils.serve.gallery import Gallery
from utils.teach.map_store import saved_training_maps
from utils.weights.checkpoint import load_checkpoint

TEACH_FILE = 'teach.json'  # what the page remembers in its output folder


class TrainingFolder:
    """`root` (None until given or found) and `images` (a Gallery of its splits)."""

    def __init__(self, editor, output, checkpoint):
        self.editor, self.output, self.checkpoint = editor, output, checkpoint
        self.root, self.images = None, None
        self.remember()

    def set(self, root):
        """Checks and remembers the folder: train/ and a validation split, the model's
        classes; returns its absolute path."""
        root = os.path.abspath(os.path.expanduser(str(root or '').strip()))
        editor = self.editor
        if not os.path.isdir(os.path.join(root, 'train')):
            raise AbnError(f'{editor.shown_path(root)} holds no train/ folder: give the image '
                           f'folder the images belong to (train/<class>/<image>, and val/ or '
                           f'test/)')
        images = Gallery(editor.kind, editor.loaded, image_transform(editor.loaded),
                         list(editor.names), 'imagefolder', root)
        os.makedirs(self.output, exist_ok=True)
        with open(os.path.join(self.output, TEACH_FILE), 'w') as f:
            json.dump({'training_folder': root}, f)
        self.root, self.images = root, images
        return root

    def remember(self):
        """The folder an earlier page on this output folder was given, else the one the
        checkpoint was trained on (its --data), where it still exists and fits."""
        candidates = []
        try:
            with open(os.path.join(self.output, TEACH_FILE)) as f:
                candidates.append(json.load(f)['training_folder'])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            trained = load_checkpoint(self.checkpoint).get('args') or {}
            if trained.get('dataset') == 'imagefolder':
                candidates.append(trained.get('data'))
        except AbnError:
            pass
        for root in filter(None, candidates):
            try:
                self.set(root)
                return
            except (AbnError, OSError):
                continue

    def unmatched(self, maps_folder):
        """The saved maps (<class>/<stem> keys) that name no image of the folder's train/."""
        if self.images is None:
            return []
        folder = base_dataset(self.images.split('train'))
        known = {f'{folder.classes[label]}/{os.path.splitext(os.path.basename(path))[0]}'
                 for path, label in folder.samples}
        return [key for _, key in saved_training_maps(maps_folder, False) if key not in known]
