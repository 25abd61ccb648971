"""torch.hub entry points (docs/api.md):

    abn = torch.hub.load(REPO, 'from_checkpoint', 'model_best.pth.tar', source='local')
    model = torch.hub.load(REPO, 'cifar_resnet', depth=20, num_classes=10, source='local')

`from_checkpoint` loads any checkpoint of cifar.py, imagenet.py or celeba.py, a safetensors
file of export.py, or the authors' files with their flags as keywords, and returns the
model with `explain(images)` (utils.api). One entry per registered architecture, named after
the script that trains it (`cifar_resnet`, `imagenet_resnet50`, `celeba_mtabn_v1_resnet18`,
...), builds the model freshly initialised: no published weights are downloaded. One entry
per library (`timm`, `torchvision`: models.backbones.libraries) builds any model of it as an
ABN, as imagenet.py's `-a timm:NAME`:

    model = torch.hub.load(REPO, 'timm', 'convnext_atto', num_classes=10, image_size=128,
                           source='local')
"""
# Private names: torch.hub.list shows every public callable here as an entry point.
from models import CIFAR_MODELS as _CIFAR_MODELS
from models import IMAGENET_MODELS as _IMAGENET_MODELS
from models import MULTITASK_MODELS as _MULTITASK_MODELS
from utils.api import load as _load

dependencies = ['torch', 'torchvision', 'numpy', 'PIL', 'scipy']  # and timm for timm's models


def from_checkpoint(path, device='cpu', **options):
    """The ABN a checkpoint file holds, with its weights, in evaluation mode, and
    `explain(images)`: utils.api.load."""
    return _load(path, device=device, **options)


def _entry(registry, script, arch):
    def build(**options):
        unknown = sorted(set(options) - registry.options_of(arch))
        if unknown:
            raise TypeError(f"{script}_{arch} takes {', '.join(sorted(registry.options_of(arch)))}"
                            f"; not {', '.join(unknown)}")
        return registry.create(arch, **options)
    build.__name__ = f'{script}_{arch}'
    build.__doc__ = (f"{script}.py's '-a {arch}', freshly initialised; options: "
                     f"{', '.join(sorted(registry.options_of(arch)))}.")
    return build


for _script, _registry in (('cifar', _CIFAR_MODELS), ('imagenet', _IMAGENET_MODELS),
                           ('celeba', _MULTITASK_MODELS)):
    for _arch in _registry:
        globals()[f'{_script}_{_arch}'] = _entry(_registry, _script, _arch)


def _library_entry(source):
    def build(name, **options):
        return _entry(_IMAGENET_MODELS, 'imagenet', f'{source}:{name}')(**options)
    build.__name__ = source
    build.__doc__ = (f"{source}'s model NAME as an ABN, freshly initialised (imagenet.py's "
                     f"-a {source}:NAME); options: num_classes, attention, gate, split, "
                     f"image_size.")
    return build


for _source in _IMAGENET_MODELS.sources:  # timm, torchvision: every library's
    globals()[_source] = _library_entry(_source)
