"""Look at and measure what an Attention Branch Network attends to, for any image.

    python explain.py CHECKPOINT photo.png folder/ -o outputs/explain
    python explain.py CHECKPOINT --dataset shapes -n 500 --compare --measure \\
        --baseline-checkpoint checkpoints/shapes/resnet-20-baseline/model_best.pth.tar
    python explain.py CHECKPOINT photo.png --edit edited_map.png
    python explain.py CHECKPOINT --serve --dataset shapes     # the attention editor page

For each image: the input, the ABN attention map, their overlay and the top-5 classes
(`NNNN_<name>.png`), the map itself as an editable grayscale PNG (`maps/`), and one
grid for all; `predictions.json` holds the top-5 of every image. `--compare` adds CAM and
Grad-CAM of the model's perception branch (and of `--baseline-checkpoint`'s model);
`--measure` scores every map (pointing game and energy inside the object where the data has
object masks, deletion/insertion AUC everywhere) into metrics.json/.md/.png. `--edit MAP`
runs the perception branch on an edited map and shows how the prediction changes.
`--serve` starts a local page (utils/serve.py, docs/serve.md) to do all of it by hand: look,
paint on the map, see the prediction change, save the map as training data.

Checkpoints written by cifar.py describe themselves. The authors' checkpoints do not: give
the architecture options of cifar.py (-a, --depth, ...) and --num-classes or --dataset.
"""
import json
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from models import CIFAR_MODELS, IMAGENET_MODELS
from utils import checkpoint as ckpt
from utils.cam import TITLES, Explainer, perception_probabilities, renormalize, supports_cam
from utils.cli import AbnError, ArgumentParser, add_architecture_arguments, run
from utils.data import AUTHORS_NORMALIZATION, NORMALIZATION, SMALL_IMAGE_DATASETS
from utils.distributed import setup_runtime
from utils.metrics import (ROAD_PERCENTILES, MetricTable, deletion_insertion, energy_inside,
                           pointing_game, pointing_tolerance, road, write_report)
from utils.modelspec import (ModelSpec, build_model, legacy_num_classes, registry_for,
                             spec_from_checkpoint)
from utils.explain_multitask import explain_multitask, is_multitask_checkpoint
from utils.inputs import (DATASET_CLASS_COUNTS, KNOWN_CLASSES, build_inputs, read_class_names,
                          read_edited_maps)
from utils.progress import Progress
from utils.visualize import (blend, class_label, denormalize, safe_name, save_comparison_grid,
                             save_explanation, save_grid, save_map_image, upsample_maps)

TOP_K = 5
ARCH_OPTIONS = ('depth', 'cardinality', 'widen_factor', 'growthRate', 'compressionRate')


def get_args_parser():
    parser = ArgumentParser(description='Attention maps, CAM and Grad-CAM of an ABN for any '
                                        'image, and measures of them')
    parser.add_argument('checkpoint', metavar='CHECKPOINT',
                        help="a checkpoint of cifar.py/imagenet.py, or one of the authors'")
    parser.add_argument('inputs', nargs='*', metavar='IMAGE',
                        help='image files and folders (searched recursively)')
    source = parser.add_argument_group('inputs')
    source.add_argument('-d', '--dataset', choices=SMALL_IMAGE_DATASETS + ('shapes-multi',),
                        help="explain this data set's test split instead of image files (its "
                             "class count also serves the authors' checkpoints)")
    source.add_argument('--data', default='./data', metavar='DIR',
                        help='where the data set is (as in cifar.py; default: %(default)s)')
    source.add_argument('-n', '--num-images', type=int, metavar='N',
                        help='only the first N images (default: all)')
    source.add_argument('--batch-size', type=int, default=64, metavar='N',
                        help='images per batch (default: %(default)s)')

    out = parser.add_argument_group('what to do')
    out.add_argument('-o', '--output', default='outputs/explain', metavar='DIR',
                     help='folder for the pictures and results (default: %(default)s)')
    out.add_argument('--compare', action='store_true',
                     help='draw CAM and Grad-CAM of the perception branch beside the ABN map')
    out.add_argument('--baseline-checkpoint', metavar='PATH',
                     help='a plain (no attention branch) model of the same classes: its CAM and '
                          'Grad-CAM are drawn and measured too')
    out.add_argument('--measure', action='store_true',
                     help='score every map: pointing game and energy inside the object (data '
                          'with object masks: shapes), deletion/insertion AUC (all data)')
    out.add_argument('--pointing-tolerance', type=int, metavar='PX',
                     help='pixels around the object that still count as a hit in the tolerant '
                          'pointing game (default: 15 at 224 px, scaled: 2 at 32 px)')
    out.add_argument('--task', default='all', metavar='NAME',
                     help="checkpoints of celeba.py: the task (attribute) whose maps are drawn "
                          "and measured, a comma-separated list, or all (default: %(default)s)")
    out.add_argument('--map-style', default='pos', choices=('pos', 'neg', 'both'),
                     help="checkpoints of celeba.py: the authors' picture of the unbounded "
                          "maps (default: %(default)s)")
    out.add_argument('--steps', type=int, default=16, metavar='N',
                     help='deletion/insertion steps (default: %(default)s)')
    out.add_argument('--road-percentiles', default=','.join(map(str, ROAD_PERCENTILES)),
                     metavar='P,P,...',
                     help="ROAD's percentiles, 1..99 ('none': no ROAD, the slowest measure; "
                          "default: %(default)s)")
    out.add_argument('--edit', nargs='+', metavar='MAP',
                     help='grayscale map image(s) (white: attend) to run the perception branch '
                          'on instead of the model\'s own map: one for every input, or one per '
                          'input; e.g. an edited copy of a map from maps/')
    out.add_argument('--save-images', default='16', metavar='N',
                     help="pictures of the first N images ('all' for every one; default: "
                          "%(default)s); the grid shows them too")
    out.add_argument('--seed', type=int, default=0,
                     help='seed of the random map and of tie-breaking (default: %(default)s)')
    out.add_argument('--gpu-id', default='0',
                     help="CUDA device id, or 'cpu' (default: %(default)s)")

    page = parser.add_argument_group('the attention editor (needs requirements-serve.txt)')
    page.add_argument('--serve', action='store_true',
                      help='start a local web page to look at, edit and save attention maps '
                           '(images of --dataset, the IMAGE files, or uploads); edited maps '
                           'go to OUTPUT/edited_maps')
    page.add_argument('--host', default='127.0.0.1',
                      help='address the page listens on (default: %(default)s, this machine '
                           'only)')
    page.add_argument('--port', type=int, default=7860,
                      help='port of the page (default: %(default)s)')

    arch = add_architecture_arguments(
        parser, sorted(set(CIFAR_MODELS) | set(IMAGENET_MODELS)), baseline=False,
        sizes=dict.fromkeys(ARCH_OPTIONS),
        helps={'arch': 'model architecture (default: resnet)',
               'gate': "how the map gates the features (default: residual, the authors')"},
        title="architecture of the authors' checkpoints (those of cifar.py describe themselves)")
    arch.add_argument('--num-classes', type=int, metavar='K',
                      help='number of classes (default: from --dataset, else from the file)')
    arch.add_argument('--class-names', metavar='FILE',
                      help='a text file with one class name per line, in class order')
    arch.add_argument('--image-size', type=int, metavar='PX',
                      help='input size (default: from the checkpoint; authors\': 32 CIFAR, '
                           '224 ImageNet)')
    return parser


# -- the model, from its checkpoint -----------------------------------------------------------

@dataclass
class LoadedModel:
    model: torch.nn.Module
    description: str
    class_names: list  # or None: classes shown by number
    normalization: tuple  # (mean, std)
    image_size: int
    imagenet: bool  # ImageNet-style preprocessing (resize, centre crop)
    dataset: str  # the data set it was trained on, when known
    resize_size: int = None  # ImageNet: the shorter side before the centre crop


def _registry_for(arch, dataset=None):
    """The script whose registry builds `arch` ('cifar' or 'imagenet'); the training data set
    settles a name in both."""
    in_cifar, in_imagenet = arch in CIFAR_MODELS, arch in IMAGENET_MODELS
    if in_cifar and (not in_imagenet or dataset in SMALL_IMAGE_DATASETS):
        return 'cifar'
    if in_imagenet:
        return 'imagenet'
    raise AbnError(f"unknown architecture '{arch}' in the checkpoint")


def _read_checkpoint(path):
    if not os.path.exists(path):
        raise AbnError(f'no checkpoint at {path}')
    if os.path.isdir(path):
        raise AbnError(f'{path} is a directory: give the checkpoint file in it, e.g. '
                       f'{os.path.join(path, "model_best.pth.tar")}')
    return ckpt.load_checkpoint(path)


def load_model(path, args, role='model'):
    """Builds the model a checkpoint holds (utils.modelspec, as training does) and loads its
    weights. Raises AbnError when the file or the given options do not fit."""
    checkpoint = _read_checkpoint(path)
    given = {k: getattr(args, k) for k in ARCH_OPTIONS + ('gate',) if getattr(args, k) is not None}
    spec = spec_from_checkpoint(checkpoint)
    if spec is not None:
        if role == 'model':
            # Options given for a file that describes itself must agree with it.
            contradicted = [f"--{k.replace('_', '-')}" for k, v in given.items()
                            if k in spec.model_args and spec.model_args[k] != v]
            if args.arch and args.arch != spec.arch:
                contradicted.insert(0, '--arch')
            if contradicted:
                raise AbnError(f'{path} holds {spec.describe()}, not what '
                               f'{", ".join(contradicted)} says: leave the architecture options '
                               f'out for checkpoints of cifar.py (they describe themselves)')
        imagenet = spec.script == 'imagenet'
        normalization = spec.normalization or NORMALIZATION.get(spec.dataset,
                                                                NORMALIZATION['imagefolder'])
        class_names = list(spec.class_names) if spec.class_names else None
        image_size = int(spec.image_size or (224 if imagenet else 32))
        resize_size, dataset = spec.resize_size, spec.dataset
    else:
        arch = args.arch or 'resnet'
        script = _registry_for(arch)
        imagenet = script == 'imagenet'
        state = ckpt.clean_state_dict(checkpoint['state_dict'])
        attention = 'att_conv.weight' in state  # the authors' baselines have no head
        spec = ModelSpec(script, arch, dict(given, attention=attention))
        num_classes = args.num_classes or DATASET_CLASS_COUNTS.get(args.dataset)
        if num_classes is None:  # read it off the classifier's weight
            num_classes = legacy_num_classes(checkpoint, spec)
            if num_classes is None:
                raise AbnError(f'{path} does not fit {arch}: pass -a and --num-classes')
        spec.model_args = registry_for(script).model_args(arch, **spec.model_args,
                                                          num_classes=num_classes)
        normalization = NORMALIZATION['imagefolder'] if imagenet else AUTHORS_NORMALIZATION
        class_names = KNOWN_CLASSES.get(args.dataset)
        image_size, resize_size = (224 if imagenet else 32), None
        dataset = args.dataset
    if args.image_size and role == 'model':
        image_size, resize_size = args.image_size, None
    model = build_model(spec)
    description = spec.describe()
    ckpt.load_model_state(model, checkpoint, path, description)
    if args.class_names and role == 'model':
        class_names = read_class_names(args.class_names, model.num_classes)
    if class_names is not None and len(class_names) != model.num_classes:
        class_names = None
    return LoadedModel(model.eval(), description, class_names, normalization, image_size,
                       imagenet, dataset, resize_size or round(image_size * 256 / 224))


# -- the images -------------------------------------------------------------------------------

def top_k(probabilities, names, k=TOP_K):
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [{'class': int(i), 'name': class_label(names, int(i)), 'probability': float(v)}
            for v, i in zip(values, indices)]


# -- the run --------------------------------------------------------------------------------

def parse_count(text, option):
    text = str(text).strip().lower()
    if text == 'all':
        return None
    if not text.isdigit():
        raise AbnError(f"{option} takes a number or 'all', got '{text}'")
    return int(text)


def check_arguments(args):
    for name in ('num_images', 'batch_size', 'steps'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AbnError(f'--{name.replace("_", "-")} must be at least 1')
    if args.pointing_tolerance is not None and args.pointing_tolerance < 0:
        raise AbnError('--pointing-tolerance must not be negative')
    args.save_images = parse_count(args.save_images, '--save-images')
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise AbnError(f'-o/--output {args.output} is a file: give a folder for the pictures')
    text = str(args.road_percentiles).strip().lower()
    try:
        args.road_percentiles = [] if text == 'none' else [
            int(part) for part in text.replace(',', ' ').split()]
    except ValueError:
        args.road_percentiles = None
    if args.road_percentiles is None or not all(0 < p < 100 for p in args.road_percentiles) \
            or (text != 'none' and not args.road_percentiles):
        raise AbnError(f"--road-percentiles takes percentiles between 1 and 99 (e.g. "
                       f"10,50,90) or 'none', got '{text}'")


@dataclass
class ModelResult:
    """One model's answers for a batch."""
    prefix: str  # '' for the model, 'baseline ' for the baseline
    loaded: LoadedModel
    explanation: object  # utils.cam.Explanation
    probabilities: torch.Tensor  # (N, K) perception softmax, on the CPU
    inputs: torch.Tensor  # the batch in this model's normalisation, on the device


class ExplainRun:
    def __init__(self, args):
        check_arguments(args)
        self.args = args
        self.runtime = setup_runtime(args.gpu_id)
        self.device = self.runtime.device
        self.main = load_model(args.checkpoint, args)
        self.baseline = (load_model(args.baseline_checkpoint, args, role='baseline')
                         if args.baseline_checkpoint else None)
        self.check_baseline()
        self.inputs = build_inputs(args, self.main)
        self.names = self.inputs.class_names
        self.edits = read_edited_maps(args.edit, len(self.inputs)) if args.edit else None
        if self.edits is not None and not self.main.model.has_attention:
            raise AbnError('--edit needs a model with an attention branch; this one is a plain '
                           'baseline')
        self.explainers = self.make_explainers()
        self.pictures, self.picture_targets, self.heats, self.records = [], [], {}, []
        self.radius = args.pointing_tolerance
        if self.radius is None:
            self.radius = pointing_tolerance(self.main.image_size)
        self.table = MetricTable({'pointing_game_tolerant': f'pointing game ±{self.radius} px'})
        self.correct = self.labelled = 0

    def check_baseline(self):
        if self.baseline is None:
            return
        main, base = self.main, self.baseline
        if base.model.num_classes != main.model.num_classes:
            raise AbnError(f'the baseline has {base.model.num_classes} classes, the model '
                           f'{main.model.num_classes}: compare models of the same classes')
        if base.image_size != main.image_size or base.imagenet != main.imagenet:
            raise AbnError('the baseline was trained on another input size than the model')

    def make_explainers(self):
        """(label prefix, loaded model, explainer) for the model and the baseline."""
        args, out = self.args, []
        for prefix, loaded in (('', self.main), ('baseline ', self.baseline)):
            if loaded is None:
                continue
            loaded.model.to(self.device)
            methods = ['abn'] if loaded.model.has_attention and not prefix else []
            if args.compare or args.measure or not loaded.model.has_attention:
                methods += ['cam', 'gradcam']
                if not supports_cam(loaded.model):
                    methods.remove('cam')
                    print(f'note: no CAM for {prefix}{loaded.description}: its perception branch '
                          f'does not end in global average pooling + one linear layer')
            if args.measure and not prefix:
                methods.append('random')
            try:
                out.append((prefix, loaded, Explainer(loaded.model, methods, seed=args.seed)))
            except ValueError as error:
                raise AbnError(str(error)) from None
        return out

    def run(self):
        args = self.args
        try:
            os.makedirs(os.path.join(args.output, 'maps'), exist_ok=True)
        except OSError as error:
            raise AbnError(f'cannot create -o/--output {args.output}: {error.strerror}') from None
        total = len(self.inputs)
        batches = range(0, total, args.batch_size)
        print(f'==> {self.main.description} on {self.device.type}: {total} '
              f'image{"s" if total != 1 else ""}'
              + (f', baseline {self.baseline.description}' if self.baseline else ''))
        progress = Progress('Explain', len(batches), enabled=len(batches) > 1)
        try:
            for b, start in enumerate(batches):
                self.explain_batch(start, min(start + args.batch_size, total))
                progress.update(b + 1)
        finally:
            for _, _, explainer in self.explainers:
                explainer.close()
        progress.finish('done')
        return self.write_results()

    def explain_batch(self, start, stop):
        args = self.args
        inputs, targets, masks = self.inputs.batch(start, stop)
        device_inputs = inputs.to(self.device)
        results = []
        for prefix, loaded, explainer in self.explainers:
            x = renormalize(device_inputs, self.main.normalization, loaded.normalization)
            explanation = explainer(x)
            results.append(ModelResult(prefix, loaded, explanation,
                                       explanation.logits.softmax(1), x))
        probabilities = results[0].probabilities
        edited = self.edited_probabilities(device_inputs, start, stop)
        labelled = targets >= 0
        self.labelled += int(labelled.sum())
        self.correct += int((probabilities.argmax(1) == targets)[labelled].sum())

        for i in range(stop - start):
            record = {'index': start + i, 'source': self.inputs.sources[start + i],
                      'true': class_label(self.names, int(targets[i])) if targets[i] >= 0 else None,
                      'top5': top_k(probabilities[i], self.names)}
            for result in results[1:]:
                record[result.prefix.strip() + '_top5'] = top_k(result.probabilities[i],
                                                                self.names)
            if edited is not None:
                record['edited'] = {'map': args.edit[min(start + i, len(args.edit) - 1)],
                                    'top5': top_k(edited[i], self.names)}
            self.records.append(record)
        if len(self.inputs) <= 16:  # few images: their answers on the terminal too
            for record in self.records[start:stop]:
                shown = ', '.join(f"{r['name']} {100 * r['probability']:.1f}%"
                                  for r in record['top5'])
                print(f"  {record['index']:04d} {record['source']}: {shown}")
        self.draw(inputs, targets, results, edited, start, stop)
        if args.measure:
            self.measure(results, masks)

    def edited_probabilities(self, device_inputs, start, stop):
        if self.edits is None:
            return None
        model = self.main.model
        out = []
        for i in range(start, stop):
            edit = self.edits[i].to(self.device)
            out.append(perception_probabilities(model, device_inputs[i - start:i - start + 1],
                                                attention=edit).cpu())
        return torch.cat(out)

    # ---- pictures ----
    def draw(self, inputs, targets, results, edited, start, stop):
        limit = self.args.save_images
        count = (stop - start) if limit is None else max(0, min(stop, limit) - start)
        if count == 0:
            return
        own_map = results[0].explanation.feature_maps.get('abn')
        pictures = denormalize(inputs[:count], *self.main.normalization)
        heats = {}  # title -> (count, H, W), the maps drawn
        for result in results:
            for method, heat in result.explanation.maps.items():
                if method != 'random':
                    heats[result.prefix + TITLES[method]] = heat[:count]
        self.pictures.extend(pictures)
        self.picture_targets.extend(int(t) for t in targets[:count])
        for name, heat in heats.items():
            self.heats.setdefault(name, []).extend(heat)
        for i in range(count):
            record = self.records[start + i]
            name = os.path.splitext(os.path.basename(record['source']))[0]
            stem = f'{start + i:04d}_{safe_name(name)}'
            true_class = int(targets[i])
            rankings = [('top-5', record['top5'])]
            panels = self.panels(pictures[i], heats, i, own_map)
            if 'baseline_top5' in record:
                rankings.append(('baseline top-5', record['baseline_top5']))
            save_explanation(os.path.join(self.args.output, stem + '.png'), pictures[i],
                             panels, rankings, true_class, record['true'])
            if own_map is not None:
                save_map_image(os.path.join(self.args.output, 'maps', stem + '.png'),
                               own_map[i, 0])
            if edited is not None:
                self.draw_edit(stem, pictures[i], heats, i, start, record, true_class)

    def panels(self, picture, heats, i, own_map):
        """The ABN map on its own scale (it is a gate in [0, 1]), then every overlay."""
        panels = []
        if own_map is not None:
            height, width = own_map.shape[-2:]
            panels.append((f'attention map ({height}x{width})', heats[TITLES['abn']][i], (0, 1)))
        for name, heat in heats.items():
            panels.append((name if name != TITLES['abn'] else 'ABN overlay',
                           blend(picture, heat[i]), None))
        return panels

    def draw_edit(self, stem, picture, heats, i, start, record, true_class):
        edit = upsample_maps(self.edits[start + i].float(), picture.shape[:2])[0]
        panels = [('own map', blend(picture, heats[TITLES['abn']][i]), None),
                  ('edited map', blend(picture, edit), None)]
        rankings = [('top-5, own map', record['top5']),
                    ('top-5, edited map', record['edited']['top5'])]
        save_explanation(os.path.join(self.args.output, stem + '_edited.png'), picture, panels,
                         rankings, true_class, record['true'])
        before, after = record['top5'][0], record['edited']['top5'][0]
        print(f"  {record['index']:04d} edited map: {before['name']} "
              f"{100 * before['probability']:.1f}% -> {after['name']} "
              f"{100 * after['probability']:.1f}%")

    # ---- measures ----
    def measure(self, results, masks):
        """Each map is scored against its own model: its explained class (the prediction)
        and, for deletion/insertion, that model's probabilities."""
        for result in results:
            model = result.loaded.model
            classes = result.probabilities.argmax(1)

            def predict(images):
                return perception_probabilities(model, images)

            def logits(images):
                return model(images).perception_logits

            for method, heat in result.explanation.maps.items():
                name = result.prefix + TITLES[method]
                if masks is not None:
                    self.table.add(name, 'pointing_game', pointing_game(heat, masks))
                    self.table.add(name, 'pointing_game_tolerant',
                                   pointing_game(heat, masks, radius=self.radius))
                    self.table.add(name, 'energy_inside', energy_inside(heat, masks))
                deletion, insertion, _ = deletion_insertion(predict, result.inputs, heat, classes,
                                                            steps=self.args.steps,
                                                            seed=self.args.seed)
                self.table.add(name, 'deletion_auc', deletion)
                self.table.add(name, 'insertion_auc', insertion)
                if self.args.road_percentiles:
                    self.table.add(name, 'road', road(logits, result.inputs, heat, classes,
                                                      self.args.road_percentiles,
                                                      seed=self.args.seed))

    # ---- results ----
    def write_results(self):
        args = self.args
        out = args.output
        with open(os.path.join(out, 'predictions.json'), 'w') as f:
            json.dump({'model': self.main.description, 'checkpoint': args.checkpoint,
                       'images': self.records}, f, indent=2)
        written = [os.path.join(out, 'predictions.json')]
        if self.pictures:
            written.append(self.write_grid())
        accuracy = 100 * self.correct / self.labelled if self.labelled else None
        if accuracy is not None:
            print(f'    top-1 accuracy on the {self.labelled} labelled images: {accuracy:.2f}%')
        if args.measure:
            meta = {'model': self.main.description, 'checkpoint': args.checkpoint,
                    'baseline': self.baseline.description if self.baseline else None,
                    'images': len(self.inputs), 'source': args.dataset or 'image files',
                    'top-1 accuracy': None if accuracy is None else round(accuracy, 2),
                    'pointing tolerance (px)': self.radius,
                    'deletion/insertion steps': args.steps,
                    'ROAD percentiles': ','.join(map(str, args.road_percentiles)) or None,
                    'seed': args.seed}
            paths = write_report(out, self.table, meta)
            with open(paths[1]) as f:
                print('\n' + f.read())
            written += paths
        pictures = f', and pictures of {len(self.pictures)} images' if self.pictures else ''
        print(f'Results in {out}: {", ".join(os.path.basename(p) for p in written)}{pictures}')
        return 0

    def write_grid(self):
        pictures = np.stack(self.pictures)
        heats = {name: np.stack(heat) for name, heat in self.heats.items()}
        path = os.path.join(self.args.output, 'grid.png')
        rows = self.records[:len(pictures)]
        if len(heats) == 1:  # the plain grid: inputs over their overlays
            predictions = [r['top5'][0]['class'] for r in rows]
            targets = self.picture_targets if min(self.picture_targets) >= 0 else None
            return save_grid(path, pictures, next(iter(heats.values())), targets, predictions,
                             self.names, title=self.main.description)
        titles = [f"{r['true'] or ''}\npred {r['top5'][0]['name']}".strip() for r in rows]
        return save_comparison_grid(path, pictures, heats, titles, title=self.main.description)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.serve:  # the attention editor's page: utils/serve.py
        from utils.serve import serve_command
        return serve_command(args)
    if is_multitask_checkpoint(_read_checkpoint(args.checkpoint)):  # celeba.py's: one map a task
        check_arguments(args)
        return explain_multitask(args)
    return ExplainRun(args).run()


if __name__ == '__main__':
    sys.exit(run(main))
