"""Starting a new ImageNet model from pretrained weights (imagenet.py --pretrained/--weights).

The backbone comes from the weights; the rest starts from the model's own initialisation: the
attention head, and the classifier when the file was trained for another number of classes.
The attention branch's stride-1 copy of the last stage (att_layer4, VGG's att_features) starts
from the pretrained last stage, as the perception branch's own last stage does, unless the file
holds one of its own (a checkpoint of an ABN model).
"""
import os

import torchvision

from utils.errors import AbnError
from utils.weights.checkpoint import clean_state_dict, load_checkpoint

# The authors' names for the attention branch; the plain backbones have no such names.
ATTENTION_PREFIXES = ('att_', 'bn_att')


def torchvision_weights(name):
    """torchvision's IMAGENET1K_V1 weights of model `name` (those the authors' --pretrained
    loaded), or None when torchvision has none."""
    if name is None or name not in torchvision.models.list_models():
        return None
    return torchvision.models.get_model_weights(name).IMAGENET1K_V1


def check_pretrained_arguments(args, model):
    """Checks that need no download: the file exists, torchvision has weights for the model."""
    if args.weights and not os.path.isfile(args.weights):
        raise AbnError(f'--weights {args.weights}: no such file')
    if args.pretrained and not args.weights and torchvision_weights(model.torchvision_name) is None:
        raise AbnError(f'--pretrained: torchvision has no ImageNet weights for {args.arch}'
                       + (f' ({model.torchvision_name})' if model.torchvision_name else '')
                       + '; pass --weights FILE to start from your own')


def download(name, show_progress):
    """torchvision's state_dict for `name`, from torch.hub's cache or the internet (torch.hub
    writes through a temporary file, so processes downloading at once do not clash)."""
    weights = torchvision_weights(name)
    try:
        return weights.get_state_dict(progress=show_progress, check_hash=True)
    except (OSError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AbnError(f"--pretrained could not get torchvision's {name} weights ({reason}). "
                       f"Offline? Download {weights.url} elsewhere and pass --weights FILE"
                       ) from None


def load_pretrained(model, state_dict, source, model_name):
    """Copies pretrained weights into `model` (called `model_name` in messages) and returns a
    one-line summary. Every backbone weight must be in `state_dict` with its shape; raises
    AbnError naming one that is not."""
    weights = clean_state_dict(state_dict)
    stage = model.last_stage + '.'
    stage_copy = 'att_' + stage
    classifier = model.classifier_name + '.'
    chosen, copied, fresh, misfits = {}, 0, set(), []
    for key, own in model.state_dict().items():
        candidates = [key]
        if key.startswith(stage_copy):
            candidates.append(stage + key[len(stage_copy):])
        found = [k for k in candidates if k in weights and weights[k].shape == own.shape]
        if found:
            chosen[key] = weights[found[0]]
            copied += found[0] != key
        elif key.endswith('num_batches_tracked'):
            continue  # files saved before torch 0.4.1 have no BN counters
        elif key.startswith(classifier) or key.startswith(ATTENTION_PREFIXES):
            fresh.add(key.split('.')[0] if key.startswith(ATTENTION_PREFIXES) else classifier)
        else:
            misfits.append(key)
    if misfits:
        key = misfits[0]
        what = (f'file {list(weights[key].shape)}, model {list(model.state_dict()[key].shape)}'
                if key in weights else 'missing')
        raise AbnError(f'{source} does not fit {model_name}: {len(misfits)} backbone weights '
                       f'missing or of another shape (e.g. '
                       f'{key}: {what}). Check -a and the other architecture options')
    model.load_state_dict(chosen, strict=False)

    parts = [f'{len(chosen)} tensors loaded']
    if copied:
        parts.append(f'{stage_copy[:-1]} copied from {stage[:-1]}')
    if classifier in fresh:
        fresh.remove(classifier)
        file_classes = weights.get(classifier + 'weight')
        parts.append(f'{classifier[:-1]} re-initialised for {model.num_classes} classes'
                     + (f' (the file has {file_classes.shape[0]})'
                        if file_classes is not None else ''))
    if fresh:
        parts.append(f'starting fresh: {", ".join(sorted(fresh))}')
    return f'{source}: {"; ".join(parts)}'


def init_pretrained(model, args, runtime):
    """Task.init_pretrained of imagenet.py: a new run starts from --weights FILE, else from
    torchvision's weights with --pretrained, else from scratch."""
    start = starting_weights(model, args, runtime)
    if start is None:
        return
    state_dict, source = start
    runtime.print(f'==> Pretrained: {load_pretrained(model, state_dict, source, args.arch)}')


def starting_weights(model, args, runtime):
    """(state_dict, where it came from) of --weights FILE, else of torchvision's ImageNet
    weights with --pretrained; None for a start from scratch."""
    if args.weights:
        return load_checkpoint(args.weights)['state_dict'], args.weights
    if args.pretrained:
        name = model.torchvision_name
        return (download(name, show_progress=runtime.is_main),
                f"torchvision's {name} ImageNet weights")
    return None


# The multi-task model's own parts, which the authors' --pretrained leaves at their
# initialisation (they load torchvision's weights with strict=False).
MULTITASK_FRESH = ('layer4_att.', 'conv_att.', 'output_per.', 'fc.')


def init_multitask_pretrained(model, args, runtime):
    """Task.init_pretrained of celeba.py: the backbone (conv1, bn1, layer1..layer4) from
    --weights FILE or torchvision's weights (--pretrained); layer4_att, conv_att and the task
    heads start fresh, as in the authors' script, unless the file has them too (a checkpoint
    of celeba.py, e.g. the start of a fine-tuning with --attention-maps). A backbone weight missing or of another
    shape is refused in one line."""
    start = starting_weights(model, args, runtime)
    if start is None:
        return
    state_dict, source = start
    weights = clean_state_dict(state_dict)
    chosen, misfits = {}, []
    for key, own in model.state_dict().items():
        if key in weights and weights[key].shape == own.shape:
            chosen[key] = weights[key]
        elif not key.startswith(MULTITASK_FRESH) and not key.endswith('num_batches_tracked'):
            misfits.append(key)
    if misfits:
        raise AbnError(f'{source} does not fit {args.arch}: {len(misfits)} backbone weights '
                       f'missing or of another shape (e.g. {misfits[0]}). Check -a')
    model.load_state_dict(chosen, strict=False)
    fresh = [key for key in model.state_dict() if key not in chosen
             and not key.endswith('num_batches_tracked')]
    runtime.print(f'==> Pretrained: {source}: {len(chosen)} tensors loaded'
                  + ('; starting fresh: the attention branch and the task heads' if fresh
                     else ' (every weight: attention branch and task heads included)'))
