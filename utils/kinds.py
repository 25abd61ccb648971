"""Single-label or multi-task: what every room does differently for a model that gives one
class an image (a softmax over the classes, one map in [0, 1]) and one that gives a decision
per attribute (a sigmoid and an unbounded map each, celeba.py's). One object of each kind,
chosen once (`kind_of`, `kind_of_split`), which the objectives, teaching, explain and the
page ask instead of testing which it is: its predictions and their captions, its ranking,
what counts as correct, and its maps as the pointing game scores them."""
import torch
import torch.utils.data as tud

from utils.data.attributes import map_picture

TOP_K = 5  # the classes a single-label ranking shows


def class_label(names, index):
    """The name of class `index`, or its number where the names do not say."""
    return names[index] if names is not None and 0 <= index < len(names) else str(index)


def top_k(probabilities, names, k=TOP_K):
    """The `k` most probable classes of one image: [{'class', 'name', 'probability'}]."""
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [{'class': int(i), 'name': class_label(names, int(i)), 'probability': float(v)}
            for v, i in zip(values, indices)]


class SingleLabel:
    """One class an image: softmax, argmax, maps in [0, 1]."""
    name = 'single-label'
    per_attribute = False
    noun = 'class'  # what a saved map is grouped by

    def default_names(self, count):
        return [str(i) for i in range(count)]

    def probabilities(self, logits):
        """A batch's logits (N, K) as probabilities: softmax over the classes."""
        return torch.softmax(logits, dim=1)

    def predict(self, logits):
        """(classes (N,), their softmax probabilities (N,)) of a batch's logits (N, K)."""
        scores, predictions = self.probabilities(logits.float()).max(1)
        return predictions, scores

    def decided_names(self, probabilities, names):
        """What the model decides for each image of a batch, by name: its class."""
        return [names[i] for i in probabilities.argmax(1).tolist()]

    def captions(self, predictions, scores, target, class_names):
        """[(true class name or None, predicted class name, probability)] per image."""
        return [(class_label(class_names, int(target[i])) if target is not None else None,
                 class_label(class_names, int(predictions[i])), float(scores[i]))
                for i in range(len(predictions))]

    def ranking(self, logits, names):
        """{name: probability} of one image's TOP_K classes (softmax of its logits (K,))."""
        return {r['name']: r['probability']
                for r in top_k(torch.softmax(logits.float(), 0), names)}

    def answers(self, probabilities, labels):
        """(whether each image's class is right (N,) bool, the probability of its true class
        (N,)) of a batch's probabilities (N, K) and labels (N,)."""
        labels = torch.as_tensor(labels, device=probabilities.device).view(-1, 1)
        return ((probabilities.argmax(1, keepdim=True) == labels)[:, 0],
                probabilities.gather(1, labels)[:, 0])

    def correct(self, logits, labels):
        """Correct answers of a batch (a class each)."""
        return (logits.argmax(1) == labels).sum().item()

    def measured_maps(self, maps):
        """The maps as the pointing game scores them: in [0, 1] already."""
        return maps


class PerAttribute(SingleLabel):
    """A decision and a map per attribute: sigmoid, positive at probability 0.5, unbounded
    maps."""
    name = 'multi-task'
    per_attribute = True
    noun = 'attribute'

    def default_names(self, count):
        return [f'attribute {i}' for i in range(count)]

    def probabilities(self, logits):
        """A batch's logits (N, T) as probabilities: a sigmoid each."""
        return torch.sigmoid(logits)

    def predict(self, logits):
        """(0/1 predictions (N, T), probabilities (N, T)): positive at probability 0.5 (logit
        0), not at a raw logit of 0.5 (the defect of the authors' eval_celeba.py)."""
        return (logits >= 0).to(logits.dtype), self.probabilities(logits)

    def decided_names(self, probabilities, names):
        """What the model decides for each image of a batch, by name: its attributes of
        probability 0.5 or more."""
        return [[names[t] for t in torch.nonzero(row >= 0.5).flatten().tolist()]
                for row in probabilities]

    def captions(self, predictions, scores, target, class_names):
        """Per image: (true attributes, predicted attributes, None), names joined by '+'."""
        def names(row):
            chosen = [class_names[t] if class_names else str(t)
                      for t in range(len(row)) if row[t] > 0.5]
            return '+'.join(chosen) or 'none'
        return [(names(target[i]) if target is not None else None, names(predictions[i]), None)
                for i in range(len(predictions))]

    def ranking(self, logits, names):
        """Every attribute's probability (sigmoid)."""
        return {name: float(p) for name, p in zip(names, torch.sigmoid(logits.float()))}

    def answers(self, probabilities, labels):
        """(each image's share of attributes decided right (N,), its mean probability of each
        attribute's true value (N,)) of a batch's probabilities and 0/1 labels (N, T)."""
        truth = torch.as_tensor(labels, device=probabilities.device) > 0.5
        return (((probabilities >= 0.5) == truth).float().mean(1),
                torch.where(truth, probabilities, 1 - probabilities).mean(1))

    def correct(self, logits, labels):
        """Mean attribute accuracy of each image, summed over the batch (positive at
        probability 0.5, as `predict` and the training meters say)."""
        return (self.predict(logits)[0] == labels).float().mean(1).sum().item()

    def measured_maps(self, maps):
        """Unbounded maps as the authors' 'pos' picture (negative values at 0)."""
        return map_picture(maps, 'pos', dims=(-2, -1))


SINGLE_LABEL, PER_ATTRIBUTE = SingleLabel(), PerAttribute()
KINDS = {kind.name: kind for kind in (SINGLE_LABEL, PER_ATTRIBUTE)}


def kind_of(tasks):
    """The kind of a model whose maps have `tasks` channels."""
    return PER_ATTRIBUTE if tasks > 1 else SINGLE_LABEL


def kind_of_split(dataset):
    """The kind of a data split (through its Subsets): per attribute where it names them."""
    while isinstance(dataset, tud.Subset):
        dataset = dataset.dataset
    return PER_ATTRIBUTE if hasattr(dataset, 'attribute_names') else SINGLE_LABEL
