"""What the ImageNet families add to `AttentionBranchNetwork`: the facts imagenet.py needs to
check an image size before reading data, and to start a model from pretrained weights."""
from ..abn import AttentionBranchNetwork


class ImageNetABN(AttentionBranchNetwork):
    # The total stride: below 32 px the last stage has less than a pixel of image to see
    # (and VGG's fifth max pool fails outright).
    min_image_size = 32
    # For pretrained weights (utils.weights.pretrained): the attention stage
    # `att_<last_stage>` starts as a copy of `<last_stage>`, and `<classifier_name>` is
    # re-initialised when the class count differs from the file's.
    last_stage = None
    classifier_name = None
    # torchvision's model with this backbone, whose ImageNet weights --pretrained downloads
    # (None: torchvision has none). Set by the builder.
    torchvision_name = None
