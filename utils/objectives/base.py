"""What a run optimises and reports: the Objective seam.

An `Objective` owns everything the training loop would otherwise have to know about the
task: each branch's loss (and any extra term), the meter that sums an epoch on the device,
the metric that picks `model_best` and its direction, the log.txt columns, the printed
summary, and its kind (utils.kinds: how perception logits become predictions and their
captions, single-label or per attribute). The loop (utils.train) only adds up
the named losses, asks the meter to update, and compares metrics through `is_better`; the
targets it hands over are opaque to it (a class tensor, an (N, T) 0/1 tensor, a dict...).

A new objective is one subclass plus `register_objective`, imported by this package's
`__init__` so that it is there after `import utils.objectives`; a `TrainingScript` names it
(`TrainingScript.objective = 'single-label'`) and checkpoints record the name.
"""
from typing import NamedTuple

from utils.kinds import SINGLE_LABEL

class Reported(NamedTuple):
    """An accuracy a run reports: the meter's key after 'per_' and 'att_' ('top1'), and how
    the summary line, `-e`'s test line and its attention-branch line name it."""
    key: str
    short: str  # 'top-1'
    test: str  # 'Test Acc: '
    attention: str  # 'top-1'


AUTHORS_COLUMNS = ['Learning Rate', 'Train Loss', 'Valid Loss', 'Train Acc.', 'Valid Acc.']
# Both branches' losses and accuracies, the columns that follow the authors' five.
BRANCH_COLUMNS = ['Train Att Loss', 'Train Per Loss', 'Valid Att Loss', 'Valid Per Loss',
                  'Train Att Acc.', 'Valid Att Acc.']


class Objective:
    """The contract. Subclasses set the class attributes and implement the methods."""
    name: str = None  # registry key, e.g. 'single-label'
    metric: str = None  # the summary key that picks model_best, e.g. 'per_top1'
    metric_label: str = None  # how the metric is printed, e.g. 'top-1'
    higher_is_better: bool = True
    # The accuracies the summary line, `-e` and log.txt report (`Reported`), the metric's first.
    reported: tuple = ()
    # The authors' five, both branches', then the reported accuracies past the first (the
    # validation split's, each branch) and the epoch's time: what `log_row` writes.
    log_columns: list = AUTHORS_COLUMNS
    kind = SINGLE_LABEL  # single-label or per attribute (utils.kinds)
    focal_loss: bool = False  # the authors' weighted focal loss (teaching its maps keeps it)

    def losses(self, output, target):
        """{name: scalar tensor} for an `AbnOutput` and the loader's target; the engine
        backpropagates their sum. Names end in '_loss' ('att_loss', 'per_loss', ...)."""
        raise NotImplementedError

    def forward_losses(self, model, inputs, target):
        """(the model's output, `losses`) for a batch: the model on the inputs as they are.
        A teaching objective may show the model other inputs (utils.objectives.
        teaching_methods)."""
        output = model(inputs)
        return output, self.losses(output, target)

    def new_meter(self, device):
        """A fresh epoch meter: update(step, output, target, losses) with no host sync,
        all_reduce(), summary() -> dict with 'loss' and `metric`, first_nonfinite_step(),
        state_dict()/load_state_dict(), nonfinite_step (a device tensor, -1 while finite)."""
        raise NotImplementedError

    def summary_text(self, summary, attention):
        """The one-line summary of a meter's `summary()` (progress and epoch lines): the loss
        (each branch's with an attention branch), the perception branch's `reported`
        accuracies and the attention branch's first."""
        text = f"loss {summary['loss']:.4f}"
        if attention:
            text += f" (att {summary['att_loss']:.3f} + per {summary['per_loss']:.3f})"
        text += ' | ' + ' '.join(f"{accuracy.short} {summary['per_' + accuracy.key]:.2f}"
                                 for accuracy in self.reported)
        if attention:
            first = self.reported[0]
            text += f" | att {first.short} {summary['att_' + first.key]:.2f}"
        return text

    def evaluation_text(self, summary, attention):
        """The lines `-e` prints: the test loss and accuracies (the authors' line), and the
        attention branch's."""
        text = f" Test Loss:  {summary['loss']:.8f}, " + ', '.join(
            f"{accuracy.test} {summary['per_' + accuracy.key]:.2f}" for accuracy in self.reported)
        if attention:
            text += f"\n Attention branch: loss {summary['att_loss']:.8f}, " + ', '.join(
                f"{accuracy.attention} {summary['att_' + accuracy.key]:.2f}"
                for accuracy in self.reported)
        return text

    def log_row(self, lr, train, valid, seconds):
        """One log.txt row, in the order of `log_columns`."""
        first = self.reported[0].key
        return ([lr, train['loss'], valid['loss'], train['per_' + first], valid['per_' + first],
                 train['att_loss'], train['per_loss'], valid['att_loss'], valid['per_loss'],
                 train['att_' + first], valid['att_' + first]]
                + [valid[f'{branch}_{accuracy.key}'] for accuracy in self.reported[1:]
                   for branch in ('per', 'att')] + [seconds])

    def training_warning(self, summary, lr):
        """A one-line warning about the training epoch so far (a meter's `summary()`, the
        learning rate), or None. The engine prints it once per epoch."""
        return None

    def best_text(self, best):
        """The line that closes a training run."""
        return f'Best {self.metric_label}: {best:.2f}'

    def best_score(self, train, valid):
        """The epoch's score that picks model_best, from its training and validation
        summaries: the validation `metric` (a teaching objective weighs the map in too)."""
        return valid[self.metric]

    def score_text(self, score, best):
        """The epoch line's account of the score and the best so far."""
        return f'best {best:.2f}'

    def is_better(self, value, best):
        """Whether `value` of `metric` beats `best` (None: nothing yet)."""
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best

    def total_loss(self, losses):
        return sum(losses.values())

    def bind(self, data):
        """Called once the run's DataBundle is built (an objective that reads the data, such
        as a loss weighted by the training split's label shares)."""

    def save_attention(self, out_dir, inputs, output, targets, data, start_index, grid_name,
                       title):
        """The attention pictures of one batch (`inputs` on the CPU, `output` the model's,
        `targets` the collated targets, a teaching run's with their maps): by default one
        picture per image of the map's first channel, and a grid."""
        from utils.visualize import save_attention_images
        predictions, scores = self.kind.predict(output.perception_logits)
        captions = self.kind.captions(predictions.cpu(), scores.cpu(), labels_of(targets),
                                      data.classes)
        return save_attention_images(out_dir, inputs, output.attention_map.float().cpu(),
                                     captions, data.mean, data.std, start_index=start_index,
                                     grid_name=grid_name, title=title)

    def write_evaluation(self, summary, directory, class_names, split='test'):
        """Files an evaluation writes beside the printed lines (none by default); returns
        their paths."""
        return []


def labels_of(targets):
    """A batch's labels, also where a teaching run's targets carry their maps."""
    return targets['label'] if isinstance(targets, dict) else targets


OBJECTIVES = {}


def register_objective(objective_class):
    """Class decorator (or call): makes an Objective subclass available by its `name`."""
    if not objective_class.name:
        raise ValueError(f'{objective_class.__name__} has no name')
    OBJECTIVES[objective_class.name] = objective_class
    return objective_class


def get_objective(name, **options):
    """A new instance of the objective registered as `name` (`options` go to its
    constructor); ValueError names the known ones."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective '{name}': choose one of "
                         f"{', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name](**options)
