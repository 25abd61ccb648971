"""Teaching the map (utils.teach): the authors' two cross-entropies plus gamma x the map loss,
L_map = ||M'(x) - M(x)||_2^2 / (h w) between the model's map M and a given map M'
(docs/teach.md says why this form and gamma = 10)."""
import torch
import torch.distributed as dist
import torch.nn.functional as F

from utils.objectives.base import register_objective
from utils.objectives.meters import earliest_step_of_all, first_nonfinite, step_or_none
from utils.objectives.single_label import SingleLabelObjective
from utils.objectives.teaching_methods import (DEFAULT_METHOD, TeachingMethod,
                                               get_teaching_method)

DEFAULT_MAP_LOSS_WEIGHT = 10.0
NAME = 'attention-maps'
# The collapse: with a high learning rate and few maps the map can fit small objects by
# falling towards zero everywhere (measured on shapes at lr 0.1, docs/teach.md). Below this
# share of the given maps' mean, on the same images, a run says so (measured there: the map's
# mean fell to 0.28-0.38 of the given maps' at lr 0.1, and stayed above 1.3 of it at 0.01).
COLLAPSED = 0.4
# A teaching run's model_best (the taught score): the validation metric less TAUGHT_POINTS x
# the epoch's training map loss L_map (before gamma, in [0, 1]), so 0.01 of L_map (about a
# tenth of the gap between an untaught and a taught map on shapes) weighs one point of
# top-1. The epoch of highest top-1 alone was often an early one, its map half taught.
TAUGHT_POINTS = 100


def fit_to(given, size):
    """Given maps (N, C, H, W) at the input's resolution, at the model map's `size` (h, w):
    the mean over each cell (area) when shrinking, so a cell half on the object is 0.5;
    bilinear otherwise."""
    if tuple(given.shape[-2:]) == tuple(size):
        return given
    if given.shape[-2] >= size[0] and given.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(given, tuple(size))
    return F.interpolate(given, size=tuple(size), mode='bilinear', align_corners=False)


def map_loss(attention_map, given, has_map):
    """||M'(x) - M(x)||_2^2 / (h w) per image, the mean squared difference between the model's
    map M (N, C, h, w) and the given map M' (N, C, H, W, resized to h x w), averaged over the
    images that have a map (`has_map`, (N,) bool). A batch without any gives 0, still
    connected to the graph; nothing here reads the device (no host sync)."""
    target = fit_to(given.to(attention_map.dtype), attention_map.shape[-2:])
    per_image = (attention_map - target).pow(2).flatten(1).mean(1)
    weights = has_map.to(per_image.dtype)
    return (per_image * weights).sum() / weights.sum().clamp_min(1)


def box_projection_loss(attention_map, given, has_map):
    """For maps drawn from boxes (--attention-boxes): the squared differences of the maps'
    projections, their maximum over each column and over each row, per image, averaged over
    the images that have a box. A box says that every row and column it spans holds some of
    the object and that nothing lies outside it, not that all of it is object: a ring's box
    holds background in its middle, which the plain map loss would teach the map to mark.
    Outside the box both projections are 0, so the map is pulled down there; inside, only
    each row's and column's highest value is pulled up, and where in the row it lies is left
    to the classification losses (the projection loss of box-supervised segmentation,
    BoxInst, Tian et al. 2021)."""
    target = fit_to(given.to(attention_map.dtype), attention_map.shape[-2:])
    per_image = sum((attention_map.amax(dim) - target.amax(dim)).pow(2).flatten(1).mean(1)
                    for dim in (-1, -2))
    weights = has_map.to(per_image.dtype)
    return (per_image * weights).sum() / weights.sum().clamp_min(1)


class MapMeter:
    """The single-label meter plus the epoch's map loss (per image that has a map)."""

    def __init__(self, inner):
        self.inner = inner
        self.device = inner.sums.device
        # (sum of map loss x maps, maps, the sums of the model's and the given maps' means
        # over the images with a map), float64
        self.sums = inner.sums.new_zeros(4)
        # The same two means over the recent steps with maps (an exponential average, per
        # process, not saved): where the map is heading, which the epoch's mean lags.
        self.recent = inner.sums.new_zeros(2)
        self.recent_steps = inner.sums.new_zeros(())
        self.map_nonfinite = inner.nonfinite_step.new_full((), -1)

    @property
    def nonfinite_step(self):
        """The first step at which either meter saw a non-finite loss (-1: none)."""
        never = torch.iinfo(torch.long).max
        inner, mine = self.inner.nonfinite_step, self.map_nonfinite
        step = torch.minimum(inner.where(inner >= 0, never), mine.where(mine >= 0, never))
        return step.where(step < never, -1)

    def update(self, step, output, target, losses):
        labels = target['label'] if isinstance(target, dict) else target
        self.inner.update(step, output, labels, losses)
        if 'map_loss' not in losses:
            return
        has_map = target['has_map']
        maps = has_map.sum().double()
        value = losses['map_loss'].detach().double()
        means = maps.new_zeros(2)
        if has_map.dim() == 1 and output.attention_map is not None:  # maps in [0, 1]
            weights = has_map.double()
            means = torch.stack([
                (output.attention_map.detach().double().flatten(1).mean(1) * weights).sum(),
                (target['map'].double().flatten(1).mean(1) * weights).sum()])
            # no host sync: a step without maps leaves the average as it was
            rate = (1 / (self.recent_steps + 1)).clamp_min(0.1) * (maps > 0)
            self.recent += (means / maps.clamp_min(1) - self.recent) * rate
            self.recent_steps += (maps > 0).double()
        self.sums += torch.cat([torch.stack([value * maps, maps]), means])
        self.map_nonfinite = first_nonfinite(self.map_nonfinite, value, step)

    def all_reduce(self):
        self.inner.all_reduce()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)
            self.map_nonfinite = earliest_step_of_all(self.map_nonfinite)

    def first_nonfinite_step(self):
        return step_or_none(self.nonfinite_step)

    def summary(self):
        out = self.inner.summary()
        total, maps, model_mean, given_mean = self.sums.tolist()
        if maps:
            out['map_loss'] = total / maps
            out['maps'] = int(maps)
            out['map_mean'], out['given_map_mean'] = model_mean / maps, given_mean / maps
            out['recent_map_mean'], out['recent_given_map_mean'] = self.recent.tolist()
        return out

    def state_dict(self):
        return {'inner': self.inner.state_dict(), 'map': self.sums.cpu()}

    def load_state_dict(self, state):
        self.inner.load_state_dict(state['inner'])
        sums = state['map'].to(device=self.device, dtype=torch.float64)
        self.sums[:len(sums)] = sums  # a checkpoint of an older run has no means


class TeachesMaps:
    """What teaching the map adds to an objective (a mixin, before its base class): targets
    {'label', 'map', 'has_map'} in training, `weight` x `compare_maps(model maps, given
    maps, has_map)` as 'map_loss', the meter's map loss, its summary and log.txt column.
    Plain targets (evaluation) get the base's losses alone."""
    compare_maps = staticmethod(map_loss)
    method = TeachingMethod()  # the paper's: the map loss alone

    def forward_losses(self, model, inputs, target):
        """Training batches (dict targets) go through the teaching method (--teach-by)."""
        if not isinstance(target, dict):
            return super().forward_losses(model, inputs, target)
        return self.method.forward_losses(self, model, inputs, target)

    def losses(self, output, target):
        if not isinstance(target, dict):
            return super().losses(output, target)
        losses = super().losses(output, target['label'])
        if output.attention_map is not None:
            losses['map_loss'] = self.weight * self.compare_maps(
                output.attention_map.float(), target['map'], target['has_map'])
        return losses

    def new_meter(self, device):
        return MapMeter(super().new_meter(device))

    def summary_text(self, summary, attention):
        text = super().summary_text(summary, attention)
        if 'map_loss' in summary:
            text += f" | map loss {summary['map_loss']:.4f} ({summary['maps']} maps"
            if summary.get('given_map_mean'):  # the means: where a collapse shows first
                text += (f"; mean {summary['recent_map_mean']:.3f}, given "
                         f"{summary['recent_given_map_mean']:.3f}")
            text += ')'

        return text

    def log_row(self, lr, train, valid, seconds):
        return super().log_row(lr, train, valid, seconds) + [train.get('map_loss', 0.0),
                                                              self.best_score(train, valid)]

    def best_score(self, train, valid):
        """The taught score: the validation metric less TAUGHT_POINTS x the training map
        loss L_map (plus it, for a metric where lower is better)."""
        value = valid[self.metric]
        if 'map_loss' not in train or not self.weight:
            return value
        penalty = TAUGHT_POINTS * train['map_loss'] / self.weight
        return value - penalty if self.higher_is_better else value + penalty

    def score_text(self, score, best):
        return f'taught score {score:.2f}, best {best:.2f}'

    def best_text(self, best):
        return (f'Best taught score: {best:.2f} (the epoch\'s {self.metric_label} less '
                f'{TAUGHT_POINTS} x its training map loss before gamma: model_best.pth.tar)')

    def training_warning(self, summary, lr):
        """The collapse: the model's map, on the recent images that have a given map, has
        fallen below COLLAPSED x the given maps' mean."""
        model_mean = summary.get('recent_map_mean')
        given_mean = summary.get('recent_given_map_mean')
        if not given_mean or model_mean is None or model_mean >= COLLAPSED * given_mean:
            return None
        return (f'warning: the attention map is collapsing towards zero (its mean '
                f'{model_mean:.3f} on the recent images with a given map, theirs '
                f'{given_mean:.3f}): try a lower learning rate, --lr {lr / 10:g}')


@register_objective
class AttentionMapObjective(TeachesMaps, SingleLabelObjective):
    """The authors' two cross-entropies plus `weight` x the map loss, on targets
    {'label', 'map', 'has_map'} (training with --attention-maps); plain class indices
    (evaluation) get the two cross-entropies alone. Accuracy and model_best as single-label."""
    name = NAME
    log_columns = SingleLabelObjective.log_columns + ['Train Map Loss', 'Taught Score']

    def __init__(self, weight=DEFAULT_MAP_LOSS_WEIGHT, boxes=False, method=DEFAULT_METHOD,
                 rrr_weight=None):
        self.weight = weight
        self.method = get_teaching_method(method, **(
            {} if rrr_weight is None else {'weight': rrr_weight}))
        if boxes:  # the given maps are boxes: compare their projections
            self.compare_maps = box_projection_loss
