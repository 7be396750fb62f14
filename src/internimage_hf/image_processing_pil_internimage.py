"""InternImage image processor, PIL backend (used where torchvision is not installed); same transform."""

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .image_processing_internimage import DEFAULT_IMAGE_SIZE, InternImageInputsMixin, InternImageSegmentationMixin


class InternImageImageProcessorPil(InternImageInputsMixin, InternImageSegmentationMixin, PilBackend):
    """InternImage image processor on the PIL backend (used where torchvision is not installed).

    The same transform as `InternImageImageProcessor`, computed with PIL and NumPy; pass `size`/`crop_size` for the
    384/512/640 checkpoints.

    Args:
        do_resize (`bool`, defaults to `True`): resize before cropping.
        size (`dict`, defaults to `{"shortest_edge": 224}`): the resize target; ``{"shortest_edge": s}`` scales
            the shorter side to `s` keeping the aspect ratio (``{"height": h, "width": w}`` resizes exactly).
        resample (`PILImageResampling`, defaults to `BICUBIC`): resampling filter of the resize.
        do_center_crop (`bool`, defaults to `True`): crop the centre `crop_size` after resizing (the official
            evaluation crop ratio is 1.0, so crop and resize sizes are equal).
        crop_size (`dict`, defaults to `{"height": 224, "width": 224}`): size of the centre crop.
        do_rescale (`bool`, defaults to `True`): multiply by `rescale_factor`; pass `False` for float images
            already in [0, 1] (a warning is logged when they look so while `do_rescale=True`).
        rescale_factor (`float`, defaults to `1/255`): the rescale multiplier.
        do_normalize (`bool`, defaults to `True`): normalise with `image_mean` and `image_std`.
        image_mean (`list[float]`, defaults to the ImageNet mean): per-channel mean.
        image_std (`list[float]`, defaults to the ImageNet std): per-channel standard deviation.
        do_convert_rgb (`bool`, defaults to `True`): convert PIL images (grey, palette, RGBA) to RGB.

    Every argument can also be passed to the call (``processor(images, size=..., return_tensors="pt")``), which
    returns `pixel_values` of shape ``(batch, 3, crop_height, crop_width)``. Before the transform each image is
    made upright from its EXIF orientation (PIL images) and 16-bit images are scaled to 8 bits; an empty list
    raises `ValueError`. `post_process_semantic_segmentation` turns segmentation logits into class-index maps.
    """

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
