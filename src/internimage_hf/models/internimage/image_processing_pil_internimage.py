"""InternImage image processor, PIL backend (used where torchvision is not installed); same transform."""

from transformers.image_processing_backends import PilBackend

from .image_processing_internimage import (
    InternImageInputsMixin,
    InternImageSegmentationMixin,
    InternImageTransformDefaults,
)


class InternImageImageProcessorPil(
    InternImageTransformDefaults, InternImageInputsMixin, InternImageSegmentationMixin, PilBackend
):
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


__all__ = ["InternImageImageProcessorPil"]
