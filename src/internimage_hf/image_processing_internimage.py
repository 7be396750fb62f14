"""InternImage image processor, torchvision backend: the official evaluation transform.

Resize the shortest edge to `size["shortest_edge"]` (bicubic), center-crop to `crop_size`, rescale to [0, 1]
and normalise with the ImageNet mean/std (crop ratio 1.0, as in the official `build_transform`).
"""

from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

DEFAULT_IMAGE_SIZE = 224


class InternImageImageProcessor(TorchvisionBackend):
    """Torchvision-backed InternImage processor; pass `size`/`crop_size` for 384/512/640 checkpoints."""

    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": DEFAULT_IMAGE_SIZE}
    crop_size = {"height": DEFAULT_IMAGE_SIZE, "width": DEFAULT_IMAGE_SIZE}
    default_to_square = False
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    model_input_names = ["pixel_values"]


__all__ = ["DEFAULT_IMAGE_SIZE", "InternImageImageProcessor"]
