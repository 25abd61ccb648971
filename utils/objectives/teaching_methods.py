"""How a teaching run makes the given maps govern the decision (--teach-by), as objects in a
registry: each takes the model, a batch and its targets {'label', 'map', 'has_map'} and
returns (the model's output, the named losses).

- `counterfactual` (the default): images with a given map are also shown with everything
  outside their map replaced by another image's surroundings, under their own label (a
  quarter more images a step). Whatever lies outside the map, a shortcut included, then no
  longer predicts the label on these images, so both classifiers must decide by what lies
  inside; the map loss teaches the map on the images as they are (on the copies it blurs
  the map: docs/teach.md measures it), and the feature extractor is trained (a fixed
  extractor keeps carrying the shortcut into every cell of its features). The
  counterexamples of CAIPI (Teso and Kersting 2019), drawn from the batch: no second pass.
- `rrr`: Right for the Right Reasons (Ross et al. 2017): the squared input gradients of the
  summed log-probabilities of both branches, outside the given map, added to the loss (a
  second backward pass), with the map loss; the feature extractor is trained.
- `map`: the paper's setting (Mitsuhara et al.): the map loss alone, the feature extractor
  fixed unless --train-feature-extractor; it moves the map, not what decides (docs/teach.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# RRR's weight on the summed squared input gradients outside the maps (normalised inputs),
# chosen as Ross et al. chose theirs, so that the penalty starts at the order of the
# classification losses: on the shapes-decoy shortcut model (docs/teach.md) it is 2,038 at
# weight 1 for a batch of 64, against 0.46 for both cross-entropies.
DEFAULT_RRR_WEIGHT = 0.001

TEACHING_METHODS = {}
DEFAULT_METHOD = 'counterfactual'


def register_teaching_method(method_class):
    TEACHING_METHODS[method_class.name] = method_class
    return method_class


class TeachingMethod:
    """The paper's: the model on the batch as it is; the objective's losses (the two
    cross-entropies and the map loss)."""
    name = 'map'
    trains_extractor = False  # --train-feature-extractor decides
    summary = 'the map loss alone (the paper\'s setting; the extractor fixed)'

    def forward_losses(self, objective, model, inputs, target):
        output = model(inputs)
        return output, objective.losses(output, target)


register_teaching_method(TeachingMethod)


def counterfactual_inputs(inputs, given, has_map, shift=1):
    """The batch with, in each image that has a given map, the pixels outside it taken from
    another image of the batch: m x + (1 - m) x', m the map in [0, 1] at the inputs' size
    (soft edges blend). The other image is the `shift`-th next one that has a map too (the
    `shift`-th next of the batch where that would be the image itself), and where its own map
    marks its object, x' holds the image's own pixels: the counterfactual shows one object,
    the image's own, amid another image's surroundings. Images without a map are left as they
    are (m = 1)."""
    mask = given.to(inputs.dtype)
    if mask.shape[-2:] != inputs.shape[-2:]:
        mask = F.interpolate(mask, size=inputs.shape[-2:], mode='bilinear', align_corners=False)
    mask = mask * has_map.to(inputs.dtype).view(-1, 1, 1, 1)
    partner = torch.arange(len(inputs), device=inputs.device).roll(shift)
    with_map = has_map.nonzero()[:, 0]
    if len(with_map) > 1 and shift % len(with_map):
        partner[with_map] = with_map.roll(shift)
    their_object = mask[partner]
    surroundings = inputs[partner] * (1 - their_object) + inputs * their_object
    keep = torch.where(has_map.view(-1, 1, 1, 1), mask, torch.ones_like(mask))
    return inputs * keep + surroundings * (1 - keep)


# A step shows its batch as it is, plus this share of it again as counterfactuals of its
# images that have a map (each amid the surroundings of another image with a map; where few
# images have one, each is shown several times, amid other surroundings each time): the
# shortcut is contradicted on a quarter of what every step sees, however few the maps
# (docs/teach.md measures it), and the map loss still sees the images as they are.
COUNTERFACTUAL_SHARE = 0.25
MAX_COPIES = 8  # of one image in one step


def counterfactual_batch(inputs, target, count):
    """(inputs, targets) of a step: the batch, then ceil(COUNTERFACTUAL_SHARE x its size)
    counterfactuals of its images that have a map (MAX_COPIES of each at most), with their
    labels and no map to learn (`has_map` False: the map loss sees the batch as it is);
    `count` of the images have a map (none: the batch as it is)."""
    if not count:
        return inputs, target
    wanted = math.ceil(COUNTERFACTUAL_SHARE * len(inputs))
    copies = min(MAX_COPIES, math.ceil(wanted / count))
    chosen = target['has_map'].nonzero()[:, 0]
    batches = [counterfactual_inputs(inputs, target['map'], target['has_map'], shift)[chosen]
               for shift in range(1, copies + 1)]
    extra = torch.cat(batches)[:wanted]
    taught = {key: torch.cat([value] + [value[chosen]] * copies)[:len(inputs) + len(extra)]
              for key, value in target.items()}
    taught['has_map'] = torch.cat([target['has_map'], target['has_map'].new_zeros(
        (len(extra),) + target['has_map'].shape[1:])])
    return torch.cat([inputs, extra]), taught


@register_teaching_method
class Counterfactuals(TeachingMethod):
    name = 'counterfactual'
    trains_extractor = True
    summary = ('images with a map also shown amid another image\'s surroundings, a quarter '
               'more images a step (the default)')

    def forward_losses(self, objective, model, inputs, target):
        count = int(target['has_map'].sum())  # one host sync a step: the batch's new size
        shown, taught = counterfactual_batch(inputs, target, count)
        output = model(shown)
        losses = objective.losses(output, taught)
        # the step's meter counts the batch's own images
        return type(output)(*(None if part is None else part[:len(inputs)] for part in output)), \
            losses


@register_teaching_method
class RightForTheRightReasons(TeachingMethod):
    name = 'rrr'
    trains_extractor = True
    summary = ('input gradients outside the maps penalised (Ross et al. 2017; a second '
               'backward pass)')

    def __init__(self, weight=DEFAULT_RRR_WEIGHT):
        self.weight = weight

    def forward_losses(self, objective, model, inputs, target):
        inputs = inputs.detach().requires_grad_(True)
        # attention's fused kernels have no gradient of their gradient (a ViT's blocks): the
        # plain one has, made of ordinary differentiable steps
        with sdpa_kernel(SDPBackend.MATH):
            output = model(inputs)
        losses = objective.losses(output, target)
        log_probabilities = F.log_softmax(output.perception_logits.float(), 1).sum()
        if output.attention_logits is not None:
            log_probabilities = log_probabilities + F.log_softmax(
                output.attention_logits.float(), 1).sum()
        gradients, = torch.autograd.grad(log_probabilities, inputs, create_graph=True)
        given = target['map'].to(gradients.dtype)
        if given.shape[-2:] != gradients.shape[-2:]:
            given = F.interpolate(given, size=gradients.shape[-2:], mode='bilinear',
                                  align_corners=False)
        per_image = ((1 - given) * gradients).pow(2).flatten(1).sum(1)
        weights = target['has_map'].to(per_image.dtype)
        losses['rrr_loss'] = self.weight * (per_image * weights).sum() / weights.sum().clamp_min(1)
        return output, losses


def get_teaching_method(name, **options):
    """A new instance of the method registered as `name`; ValueError names the known ones."""
    if name not in TEACHING_METHODS:
        raise ValueError(f"unknown teaching method '{name}': choose one of "
                         f"{', '.join(sorted(TEACHING_METHODS))}")
    return TEACHING_METHODS[name](**options)
