"""ABN models for 32x32 inputs, built by the authors' function names and signatures:
`resnet(depth, num_classes)`, `densenet(depth, growthRate, compressionRate, dropRate,
num_classes)`, `wrn(depth, num_classes, widen_factor, dropRate)`,
`resnext(cardinality, depth, num_classes, widen_factor, dropRate)`.
Each also takes `attention=False` (the plain baseline) and `gate` ('residual' or 'multiply')."""
from .densenet import densenet
from .resnet import resnet
from .resnext import resnext
from .wrn import wrn

__all__ = ['resnet', 'densenet', 'wrn', 'resnext']
