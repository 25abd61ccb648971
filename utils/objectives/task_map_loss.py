"""Teaching a multi-task ABN's maps (celeba.py --attention-maps): the multi-label losses plus
gamma x the map loss of every (image, attribute) that has a given map.

The multi-task maps are unbounded (about +-50 after training, no sigmoid) and their mean over
the image is the attention branch's logit for the attribute: a given map in [0, 1] can be a
target neither for their values nor for their offset. It is a target for their pattern: the
map and the given picture are each stretched to [0, 1] (min-max: the lowest cell 0, the
highest 1) and compared by their mean squared difference, as the single-task maps are
(utils.objectives.map_loss), so gamma = 10 means the same there. Neither the map's scale
nor its offset is taught: the attention logit stays the branch's own. The attention editor's
pictures of these maps (M / (2 max|M|) + 0.5) stretch to the model's own pattern, so what a
person leaves unpainted pulls nowhere; a 0/1 mask asks for the map's highest values on the
object and its lowest elsewhere. A given map of one gray level says nothing of where: it is
left out.
"""
from utils.objectives.map_loss import DEFAULT_MAP_LOSS_WEIGHT, TeachesMaps, fit_to
from utils.objectives.base import register_objective
from utils.objectives.multi_label import MultiLabelFocalObjective, MultiLabelObjective

NAME = 'multi-label-attention-maps'
FLAT = 1e-3  # a given picture whose gray levels span less than this is of one level


def stretched(maps):
    """(N, T, h, w) maps each stretched to [0, 1] (min-max), and their spans (N, T)."""
    flat = maps.flatten(2)
    low, high = flat.amin(2), flat.amax(2)
    span = high - low
    picture = (maps - low[..., None, None]) / span.clamp_min(1e-6)[..., None, None]
    return picture, span


def task_map_loss(maps, given, has_map):
    """The mean over (image, attribute) pairs with a map (`has_map` (N, T) bool) of the mean
    squared difference between each map stretched to [0, 1] (N, T, h, w) and its given
    picture (N, T, H, W, resized to h x w by area, then stretched too). 0 (in the graph)
    when the batch has none.

    Its gradient is that of each pair's difference times the map's span (max - min, held
    constant): stretching divides the map by its span, so a plain gradient would shrink as
    the maps grow (about 50 times for a trained model's) and teach that much slower. So
    scaled, a map of any size moves as a single-task map in [0, 1] does; the value (what the
    log shows) stays the pictures' mean squared difference."""
    picture, span = stretched(maps)
    target, given_span = stretched(fit_to(given.to(picture.dtype), picture.shape[-2:]))
    per_map = (picture - target).pow(2).flatten(2).mean(2)
    weights = (has_map & (given_span > FLAT)).to(per_map.dtype)
    count = weights.sum().clamp_min(1)
    value = (per_map * weights).sum() / count
    steered = (per_map * span.detach().clamp_min(1.0) * weights).sum() / count
    return value.detach() + steered - steered.detach()


@register_objective
class MultiLabelMapObjective(TeachesMaps, MultiLabelObjective):
    """BCE (or, with `focal`, the authors' weighted focal loss) on both branches plus `weight`
    x task_map_loss, on targets {'label', 'map', 'has_map'} (training with --attention-maps);
    plain (N, T) targets (evaluation) get the two branch losses alone."""
    name = NAME
    log_columns = MultiLabelObjective.log_columns + ['Train Map Loss', 'Taught Score']
    compare_maps = staticmethod(task_map_loss)

    def __init__(self, weight=DEFAULT_MAP_LOSS_WEIGHT, focal=False, **options):
        super().__init__(**options)
        self.weight = weight
        self.focal = MultiLabelFocalObjective(**options) if focal else None

    def bind(self, data):
        if self.focal is not None:
            self.focal.bind(data)

    def branch_losses(self, output, target):
        if self.focal is not None:
            return self.focal.branch_losses(output, target)
        return super().branch_losses(output, target)


__all__ = ['MultiLabelMapObjective', 'stretched', 'task_map_loss']
