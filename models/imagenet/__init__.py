"""ABN models for ImageNet-sized inputs, built by name through models.IMAGENET_MODELS:
`resnet18/34/50/101/152` (the authors' names), `se_resnet18/34/50/101/152`,
`resnext50/101(cardinality, base_width)` and `vgg16_bn`. Each takes `num_classes`,
`attention=False` (the plain backbone: torchvision's model, key for key) and `gate`."""
from .resnet import resnet18, resnet34, resnet50, resnet101, resnet152, resnext50, resnext101
from .senet import se_resnet18, se_resnet34, se_resnet50, se_resnet101, se_resnet152
from .vgg import vgg16_bn

__all__ = ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'resnext50',
           'resnext101', 'se_resnet18', 'se_resnet34', 'se_resnet50', 'se_resnet101',
           'se_resnet152', 'vgg16_bn']
