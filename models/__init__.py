"""ABN models: `models.cifar` (32x32 inputs), `models.imagenet` (ImageNet-sized inputs) and
`models.multitask` (one attention map per task, CelebA). Importing the package fills the
registries."""
from . import cifar  # noqa: F401  (registers the CIFAR families)
from . import imagenet  # noqa: F401  (registers the ImageNet families)
from .multitask import (MULTITASK_MODELS, mtabn_v1_resnet18, mtabn_v1_resnet34,  # noqa: F401
                        mtabn_v1_resnet50, mtabn_v1_resnet101, mtabn_v1_resnet152)
from .abn import AbnOutput, AttentionBranchNetwork, count_parameters  # noqa: F401
from .registry import CIFAR_MODELS, IMAGENET_MODELS  # noqa: F401
