"""What the page does differently for a single-label model (one class an image: softmax,
CAM and Grad-CAM of a class, maps in [0, 1]) and a multi-task one (one map and one sigmoid an
attribute, unbounded maps): one object of each kind, chosen once from the model's map
channels (`kind_of`), which every part of the page asks instead of testing which it is."""
import torch

from utils.data.attributes import ShapesMultiDataset, map_picture
from utils.data.datasets import SMALL_IMAGE_DATASETS, build_small_image_data
from utils.errors import AbnError
from utils.explain.methods import Explainer, drawn_methods, own_method
from utils.explain.run import top_k

MULTITASK_DATASET = 'shapes-multi'  # the multi-task data set the page serves splits of


class SingleLabel:
    per_attribute = False
    noun = 'class'  # what a saved map is grouped by
    ranking_label = 'top-5'
    accuracy_label = 'test accuracy'
    datasets = SMALL_IMAGE_DATASETS
    shown_classes = 5

    def default_names(self, count):
        return [str(i) for i in range(count)]

    def methods(self, model):
        """The explanation methods the page shows: every drawn one the model allows (the ABN
        map, CAM and Grad-CAM of a class, ...)."""
        return drawn_methods(model)

    def explainer(self, model):
        return Explainer(model, self.methods(model))

    def answer(self, editor, x, classes):
        """(method -> (1, H, W) maps, the logits (1, K), the model's own maps (T, h, w),
        the explained classes) of one image."""
        explanation = editor.explainer(x, classes=classes)
        own = explanation.feature_maps[own_method()][0].numpy()
        return explanation.maps, explanation.logits, own, explanation.classes

    def open_split(self, dataset, root, split, size, normalization):
        """(the split's images through the evaluation transform, the data set's classes)."""
        bundle = build_small_image_data(dataset, root, evaluate_only=split == 'test',
                                        image_size=size, normalization=normalization)
        chosen = bundle.test if split == 'test' else bundle.train
        return chosen, list(bundle.classes), bundle.test

    def ranking(self, logits, names):
        """Top-5 classes (softmax)."""
        return {r['name']: r['probability']
                for r in top_k(torch.softmax(logits.float(), 0), names)}

    def headline_name(self, ranking, names, attribute):
        return max(ranking, key=ranking.get)

    def correct(self, logits, labels):
        """Correct answers of a batch (a class each)."""
        return (logits.argmax(1) == labels).sum().item()

    def measured_maps(self, maps):
        """The maps as the pointing game scores them: in [0, 1] already."""
        return maps


class PerAttribute(SingleLabel):
    per_attribute = True
    noun = 'attribute'
    ranking_label = 'P(attribute)'
    accuracy_label = 'test mean attribute accuracy'
    datasets = (MULTITASK_DATASET,)

    def default_names(self, count):
        return [f'attribute {i}' for i in range(count)]

    def methods(self, model):
        """The model's own maps alone: the page explains one class at a time."""
        return [own_method()]

    def explainer(self, model):
        return None

    def answer(self, editor, x, classes):
        with torch.no_grad():
            out = editor.model(x)
        own = out.attention_map[0].float().cpu().numpy()
        return {own_method(): None}, out.perception_logits.float().cpu(), own, None

    def open_split(self, dataset, root, split, size, normalization):
        raise NotImplementedError  # the generated data set is opened with its transform

    def ranking(self, logits, names):
        """Every attribute's probability (sigmoid)."""
        return {name: float(p) for name, p in zip(names, torch.sigmoid(logits.float()))}

    def headline_name(self, ranking, names, attribute):
        return names[attribute] if attribute is not None else max(ranking, key=ranking.get)

    def correct(self, logits, labels):
        """Mean attribute accuracy of each image, summed over the batch."""
        return ((logits > 0).float() == labels).float().mean(1).sum().item()

    def measured_maps(self, maps):
        """Unbounded maps as the authors' 'pos' picture (negative values at 0)."""
        return map_picture(maps, 'pos', dims=(-2, -1))

    def generated_split(self, split, transform):
        return ShapesMultiDataset(train=split == 'train', transform=transform)


def kind_of(tasks):
    """The kind of a model whose maps have `tasks` channels."""
    return PerAttribute() if tasks > 1 else SingleLabel()


def check_dataset(kind, name):
    """Refuses, in one line, --dataset of the other kind or of none."""
    if name in kind.datasets:
        return
    if name not in SingleLabel.datasets + PerAttribute.datasets:
        raise AbnError(f"unknown data set '{name}'")
    wanted = kind.datasets[0] if kind.per_attribute else 'one of ' + ', '.join(kind.datasets)
    raise AbnError(f'--dataset {name} does not fit this '
                   f'{"multi-task" if kind.per_attribute else "single-label"} model: give '
                   f'{wanted}, or image files')
