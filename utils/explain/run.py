"""explain.py's run over a batch of images: each model's maps (ABN, CAM, Grad-CAM; a random
map when measuring), its top-5, the pictures, the measures and the results files."""
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from utils.data.inputs import build_inputs, read_edited_maps, read_masks
from utils.distributed import setup_runtime
from utils.errors import AbnError
from utils.explain.cam import perception_probabilities, renormalize
from utils.explain.measures import (DecisionTable, MetricTable, decision_outside, measure_maps,
                                    pointing_tolerance, write_report)
from utils.explain.methods import METHODS, Explainer, available_methods, own_method, title
from utils.explain.where_maps_look import WhereMapsLook
from utils.inference import make_runtime
from utils.kinds import class_label, top_k
from utils.progress import Progress
from utils.visualize import (blend, denormalize, safe_name, save_comparison_grid, save_explanation,
                             save_grid, save_map_image, upsample_maps)
from utils.weights.loading import LoadedModel, architecture_options, load_model

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
    if getattr(args, 'masks', None) and not args.measure:
        raise AbnError('--masks are what --measure scores the maps against: give --measure too')
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


def resolve_target_class(text, names, count):
    """--target-class as None (each image's prediction), 'true' or a class index."""
    if text is None:
        return None
    text = str(text).strip()
    if text.lower() == 'true':
        return 'true'
    if names and text in names:
        return names.index(text)
    if text.isdigit() and int(text) < count:
        return int(text)
    shown = ', '.join(names[:10]) + (', ...' if len(names) > 10 else '') if names else ''
    raise AbnError(f"--target-class {text}: give a class name"
                   + (f' ({shown})' if shown else '') + f", an index 0..{count - 1}, or 'true'")


def attach_masks(args, inputs, loaded):
    """--masks DIR's object masks in place of a data set's own, and a note on what the mask
    measures (pointing game, energy inside) will cover."""
    if args.masks:
        inputs.masks = read_masks(args.masks, inputs, loaded)
        found = sum(m is not None for m in inputs.masks)
        if found < len(inputs):
            print(f'note: --masks {args.masks} has masks of {found} of the {len(inputs)} '
                  f'images: the pointing game and energy inside score those'
                  + ('' if found else ', so they are left out') + '; deletion, insertion and '
                  'ROAD score all', flush=True)
        if not found:
            inputs.masks = None
    elif inputs.masks is None:
        print('note: these images have no object masks (--masks DIR gives them): the '
              'pointing game and energy inside are left out; deletion, insertion and ROAD '
              'score every map', flush=True)


def target_classes(target, targets, chosen):
    """(N,) classes for CAM and Grad-CAM, or None for each model's prediction: `chosen` when
    an earlier model settled them, else --target-class's (resolve_target_class) fixed class,
    or each image's label where it is known (-1 where not: the Explainer's prediction)."""
    if target is None or chosen is not None:
        return chosen
    if target == 'true':
        return targets.clone() if bool((targets >= 0).any()) else None
    return torch.full_like(targets, target)


def picture_panels(picture, heats, i, own_map, explained=None):
    """The ABN map on its own scale (it is a gate in [0, 1]), then every overlay; the maps of
    one class (CAM, Grad-CAM) titled with the class they explain when --target-class chose
    it. `heats`: title -> maps."""
    own = METHODS[own_method()].title
    per_class = tuple(method.title for method in METHODS.values() if method.per_class)
    panels = []
    if own_map is not None:
        height, width = own_map.shape[-2:]
        panels.append((f'attention map ({height}x{width})', heats[own][i], (0, 1)))
    for name, heat in heats.items():
        shown = 'ABN overlay' if name == own else name
        if explained is not None and name.endswith(per_class):
            shown = f'{name} of {explained}'
        panels.append((shown, blend(picture, heat[i]), None))
    return panels


@dataclass
class ModelResult:
    """One model's answers for a batch."""
    prefix: str  # '' for the model, 'baseline ' for the baseline
    loaded: LoadedModel
    explanation: object  # utils.explain.cam.Explanation
    probabilities: torch.Tensor  # (N, K) perception softmax, on the CPU
    inputs: torch.Tensor  # the batch in this model's normalisation, on the device


class ExplanationReport:
    """explain.py's report over its images: predictions.json, the pictures (ReportPictures),
    the measures; `write()` explains every batch and writes the files."""

    def __init__(self, args, loaded=None):
        """`args`: explain.py's, through check_arguments; `loaded`: the model of
        args.checkpoint, when already loaded."""
        self.args = args
        self.runtime = setup_runtime(args.gpu_id)
        self.device = self.runtime.device
        self.main = loaded or load_model(args.checkpoint, **architecture_options(args))
        self.baseline = (load_model(args.baseline_checkpoint, role='baseline',
                                    **architecture_options(args))
                         if args.baseline_checkpoint else None)
        self.check_baseline()
        self.inputs = build_inputs(args, self.main)
        if args.measure:
            attach_masks(args, self.inputs, self.main)
        self.names = self.inputs.class_names
        self.target = resolve_target_class(args.target_class, self.names,
                                           self.main.model.num_classes)
        self.edits = read_edited_maps(args.edit, len(self.inputs)) if args.edit else None
        if self.edits is not None and not self.main.model.has_attention:
            raise AbnError('--edit needs a model with an attention branch; this one is a plain '
                           'baseline')
        self.runtimes = {}  # label prefix -> the runtime of the measures' predictions
        self.explainers = self.make_explainers()
        self.records = []
        self.pictures = ReportPictures(args, self.main, self.names, self.edits)
        self.measures = ReportMeasures(args, self.runtimes, self.main.image_size)
        self.where = WhereMapsLook(self.names)
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
            model = loaded.model
            wanted = [name for name, method in METHODS.items()
                      if method.wanted(model, bool(prefix), args.compare, args.measure)]
            methods = available_methods(model, wanted)
            for name in wanted:
                if name not in methods:
                    print(f'note: no {METHODS[name].title} for {prefix}{loaded.description}: '
                          f'{METHODS[name].refusal(model)}')
            try:
                out.append((prefix, loaded, Explainer(loaded.model, methods, seed=args.seed)))
            except ValueError as error:
                raise AbnError(str(error)) from None
            if args.measure:
                path = args.checkpoint if not prefix else args.baseline_checkpoint
                self.runtimes[prefix] = make_runtime(loaded, getattr(args, 'runtime', 'auto'),
                                                     path)
        return out

    def write(self):
        """Explains every batch and writes the results; returns the exit status."""
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
        classes = None  # each model's prediction, unless --target-class chooses
        for prefix, loaded, explainer in self.explainers:
            x = renormalize(device_inputs, self.main.normalization, loaded.normalization)
            explanation = explainer(x, classes=target_classes(self.target, targets, classes))
            if self.target is not None:
                classes = explanation.classes  # the baseline explains the same classes
            results.append(ModelResult(prefix, loaded, explanation,
                                       explanation.logits.softmax(1), x))
        probabilities = results[0].probabilities
        for method, heat in results[0].explanation.maps.items():
            if METHODS[method].drawn:
                self.where.add(method, heat, np.asarray(results[0].explanation.classes))
        edited = self.edited_probabilities(device_inputs, start, stop)
        labelled = targets >= 0
        self.labelled += int(labelled.sum())
        self.correct += int((probabilities.argmax(1) == targets)[labelled].sum())

        for i in range(stop - start):
            record = {'index': start + i, 'source': self.inputs.sources[start + i],
                      'true': class_label(self.names, int(targets[i])) if targets[i] >= 0 else None,
                      'top5': top_k(probabilities[i], self.names)}
            if self.target is not None:
                record['explained_class'] = class_label(
                    self.names, int(results[0].explanation.classes[i]))
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
        self.pictures.draw(inputs, targets, results, edited, start, stop, self.records)
        if args.measure:
            self.measures.measure(results, masks, targets)

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

    # ---- results ----
    def write_results(self):
        args = self.args
        out = args.output
        with open(os.path.join(out, 'predictions.json'), 'w') as f:
            json.dump({'model': self.main.description, 'checkpoint': args.checkpoint,
                       'images': self.records}, f, indent=2)
        written = [os.path.join(out, 'predictions.json')]
        if self.pictures.pictures:
            written.append(self.pictures.write_grid(self.records))
        accuracy = 100 * self.correct / self.labelled if self.labelled else None
        if accuracy is not None:
            print(f'    top-1 accuracy on the {self.labelled} labelled images: {accuracy:.2f}%')
        if args.measure:
            written += self.measures.write({
                'model': self.main.description, 'checkpoint': args.checkpoint,
                'baseline': self.baseline.description if self.baseline else None,
                'images': len(self.inputs), 'source': args.dataset or 'image files',
                'top-1 accuracy': None if accuracy is None else round(accuracy, 2)})
        if len(self.inputs) > 1 and self.where.sums:
            written.append(self.where.write(out, {m: title(m) for m in self.where.sums}))
            for method in self.where.sums:
                note = self.where.note(method, title(method))
                if note:
                    print(note)
        count = len(self.pictures.pictures)
        pictures = f', and pictures of {count} images' if count else ''
        print(f'Results in {out}: {", ".join(os.path.basename(p) for p in written)}{pictures}')
        return 0


class ReportMeasures:
    """explain.py --measure: each map's scores (MetricTable) and what each model's decision
    rests on (DecisionTable), written as metrics.json/.md/.png."""

    def __init__(self, args, runtimes, image_size):
        """`runtimes`: label prefix -> the runtime that answers the measures' predictions."""
        self.args, self.runtimes = args, runtimes
        self.radius = args.pointing_tolerance
        if self.radius is None:
            self.radius = pointing_tolerance(image_size)
        self.table = MetricTable({'pointing_game_tolerant': f'pointing game ±{self.radius} px'})
        self.decision = DecisionTable()

    def measure(self, results, masks, targets):
        """Each map is scored against its own model: the class it explains (the prediction,
        or --target-class's) and, for deletion/insertion, that model's probabilities."""
        args = self.args
        for result in results:
            run = self.runtimes[result.prefix]  # no gradient: the fast runtime answers
            for method, heat in result.explanation.maps.items():
                measure_maps(self.table, result.prefix + title(method), heat, result.inputs,
                             result.explanation.classes,
                             predict=lambda images: run(images).perception_logits.float()
                             .softmax(1),
                             logits=lambda images: run(images).perception_logits,
                             masks=masks, radius=self.radius, steps=args.steps,
                             road_percentiles=args.road_percentiles, seed=args.seed)
        self.measure_decision(results, masks, targets)

    def measure_decision(self, results, masks, targets):
        """What each model's decision rests on, over the images with a mask and a label."""
        if masks is None:
            return
        chosen = [i for i, m in enumerate(masks) if m is not None and targets[i] >= 0]
        if len(chosen) < 2:  # the object kept needs another image's outside
            return
        inside = np.stack([masks[i] for i in chosen])
        for result in results:
            run = self.runtimes[result.prefix]
            self.decision.add(result.prefix.strip(), decision_outside(
                lambda images: run(images).perception_logits.float().softmax(1),
                result.inputs[chosen], inside, targets[chosen]))

    def write(self, meta):
        """The report files, with `meta` and the measures' settings; prints metrics.md and
        returns the paths."""
        args = self.args
        meta = dict(meta, **{'pointing tolerance (px)': self.radius,
                             'deletion/insertion steps': args.steps,
                             'ROAD percentiles': ','.join(map(str, args.road_percentiles)) or None,
                             'seed': args.seed})
        paths = write_report(args.output, self.table, meta, self.decision)
        with open(paths[1]) as f:
            print('\n' + f.read())
        return paths


class ReportPictures:
    """explain.py's pictures: one per image (the input, the ABN map, each overlay, the
    rankings; and the edited map's), the maps as grayscale files, and the grid of them all."""

    def __init__(self, args, main, names, edits):
        self.args, self.main, self.names, self.edits = args, main, names, edits
        self.pictures, self.targets, self.heats = [], [], {}

    def draw(self, inputs, targets, results, edited, start, stop, records):
        """The pictures of a batch's first --save-images images, each with its ranking."""
        limit = self.args.save_images
        count = (stop - start) if limit is None else max(0, min(stop, limit) - start)
        if count == 0:
            return
        own_map = results[0].explanation.feature_maps.get(own_method())
        pictures = denormalize(inputs[:count], *self.main.normalization)
        heats = {}  # title -> (count, H, W), the maps drawn
        for result in results:
            for method, heat in result.explanation.maps.items():
                if METHODS[method].drawn:
                    heats[result.prefix + title(method)] = heat[:count]
        self.pictures.extend(pictures)
        self.targets.extend(int(t) for t in targets[:count])
        for name, heat in heats.items():
            self.heats.setdefault(name, []).extend(heat)
        for i in range(count):
            record = records[start + i]
            name = os.path.splitext(os.path.basename(record['source']))[0]
            stem = f'{start + i:04d}_{safe_name(name)}'
            true_class = int(targets[i])
            rankings = [('top-5', record['top5'])]
            panels = picture_panels(pictures[i], heats, i, own_map, record.get('explained_class'))
            if 'baseline_top5' in record:
                rankings.append(('baseline top-5', record['baseline_top5']))
            save_explanation(os.path.join(self.args.output, stem + '.png'), pictures[i],
                             panels, rankings, true_class, record['true'])
            if own_map is not None:
                save_map_image(os.path.join(self.args.output, 'maps', stem + '.png'),
                               own_map[i, 0])
            if edited is not None:
                self.draw_edit(stem, pictures[i], heats, i, start, record, true_class)

    def draw_edit(self, stem, picture, heats, i, start, record, true_class):
        edit = upsample_maps(self.edits[start + i].float(), picture.shape[:2])[0]
        panels = [('own map', blend(picture, heats[title(own_method())][i]), None),
                  ('edited map', blend(picture, edit), None)]
        rankings = [('top-5, own map', record['top5']),
                    ('top-5, edited map', record['edited']['top5'])]
        save_explanation(os.path.join(self.args.output, stem + '_edited.png'), picture, panels,
                         rankings, true_class, record['true'])
        before, after = record['top5'][0], record['edited']['top5'][0]
        print(f"  {record['index']:04d} edited map: {before['name']} "
              f"{100 * before['probability']:.1f}% -> {after['name']} "
              f"{100 * after['probability']:.1f}%")

    def write_grid(self, records):
        pictures = np.stack(self.pictures)
        heats = {name: np.stack(heat) for name, heat in self.heats.items()}
        path = os.path.join(self.args.output, 'grid.png')
        rows = records[:len(pictures)]
        if len(heats) == 1:  # the plain grid: inputs over their overlays
            predictions = [r['top5'][0]['class'] for r in rows]
            targets = self.targets if min(self.targets) >= 0 else None
            return save_grid(path, pictures, next(iter(heats.values())), targets, predictions,
                             self.names, title=self.main.description)
        titles = [f"{r['true'] or ''}\npred {r['top5'][0]['name']}".strip() for r in rows]
        return save_comparison_grid(path, pictures, heats, titles, title=self.main.description)
