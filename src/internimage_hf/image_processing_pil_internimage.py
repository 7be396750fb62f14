"""InternImage image processor, PIL backend (used where torchvision is not installed); same transform."""

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .image_processing_internimage import DEFAULT_IMAGE_SIZE, InternImageInputsMixin


class InternImageImageProcessorPil(InternImageInputsMixin, PilBackend):
    """PIL-backed InternImage processor; pass `size`/`crop_size` for 384/512/640 checkpoints."""

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


__all__ = ["InternImageImageProcessorPil"]
