"""ABN models: `models.cifar` (32x32 inputs) and `models.imagenet` (ImageNet-sized inputs).
Importing the package fills the two registries."""
from . import cifar  # noqa: F401  (registers the CIFAR families)
from . import imagenet  # noqa: F401  (registers the ImageNet families)
from .abn import AbnOutput, AttentionBranchNetwork, count_parameters  # noqa: F401
from .registry import CIFAR_MODELS, IMAGENET_MODELS  # noqa: F401
