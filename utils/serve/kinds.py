"""What the page does differently for a single-label model and a multi-task one, on top of
what every room asks of the kind (utils.kinds: predictions, ranking, what is correct, maps as
measured): which methods it draws, how it answers for one image, which data sets it opens.
One page kind for each kind, chosen once from the model's map channels (`page_kind`)."""
import torch

from utils.data.attributes import ShapesMultiDataset
from utils.data.datasets import SMALL_IMAGE_DATASETS, build_small_image_data
from utils.errors import AbnError
from utils.explain.methods import Explainer, drawn_methods, own_method
from utils.kinds import TOP_K, PerAttribute, SingleLabel, kind_of

MULTITASK_DATASET = 'shapes-multi'  # the multi-task data set the page serves splits of


class SingleLabelPage(SingleLabel):
    ranking_label = 'top-5'
    accuracy_label = 'test accuracy'
    datasets = SMALL_IMAGE_DATASETS

    def shown(self, names):
        """How many of the model's `names` a ranking shows: its top five classes."""
        return TOP_K

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

    def headline_name(self, ranking, names, attribute):
        return max(ranking, key=ranking.get)


class PerAttributePage(PerAttribute, SingleLabelPage):
    ranking_label = 'P(attribute)'
    accuracy_label = 'test mean attribute accuracy'
    datasets = (MULTITASK_DATASET,)

    def shown(self, names):
        """Every attribute's probability."""
        return len(names)

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

    def headline_name(self, ranking, names, attribute):
        return names[attribute] if attribute is not None else max(ranking, key=ranking.get)

    def generated_split(self, split, transform):
        return ShapesMultiDataset(train=split == 'train', transform=transform)


PAGE_KINDS = {kind.name: kind for kind in (SingleLabelPage(), PerAttributePage())}


def page_kind(tasks):
    """The page's kind of a model whose maps have `tasks` channels."""
    return PAGE_KINDS[kind_of(tasks).name]


def check_dataset(kind, name):
    """Refuses, in one line, --dataset of the other kind or of none."""
    if name in kind.datasets:
        return
    if name not in {dataset for page in PAGE_KINDS.values() for dataset in page.datasets}:
        raise AbnError(f"unknown data set '{name}'")
    wanted = kind.datasets[0] if kind.per_attribute else 'one of ' + ', '.join(kind.datasets)
    raise AbnError(f'--dataset {name} does not fit this {kind.name} model: give '
                   f'{wanted}, or image files')
