"""InternImage image processor, torchvision backend: the official evaluation transform.

Resize the shortest edge to `size["shortest_edge"]` (bicubic), center-crop to `crop_size`, rescale to [0, 1]
and normalise with the ImageNet mean/std (crop ratio 1.0, as in the official `build_transform`).

Both backends first bring each raw image to the form the transform expects (`InternImageInputsMixin`): the EXIF
orientation of a `PIL.Image` is applied, 16-bit images are scaled to the 8-bit range and float images that look
already rescaled to [0, 1] trigger a warning.
"""

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ImageType,
    PILImageResampling,
    get_image_type,
    is_scaled_image,
    to_numpy_array,
)
from transformers.utils import logging

logger = logging.get_logger(__name__)

DEFAULT_IMAGE_SIZE = 224

# How Pillow opens single-channel 16-bit images (PNG, TIFF): "I;16*" (unsigned, native or explicit byte order) or
# "I" (32-bit signed, used by older Pillow and some decoders for the same data).
SIXTEEN_BIT_PIL_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def apply_exif_orientation(image):
    """Rotate/flip a `PIL.Image` upright from its EXIF orientation tag.

    `pipeline` (through `load_image`) and `datasets` already do this when they decode a file; doing it here too means
    a `PIL.Image.open` result passed directly is processed the same. The tag is removed, so a second call is a no-op.
    """
    return ImageOps.exif_transpose(image) if get_image_type(image) == ImageType.PIL else image


def to_8bit(image):
    """Scale a 16-bit image (PIL "I;16"/"I", uint16 array or tensor) to uint8 by keeping the high byte.

    Left alone, these saturate: PIL's conversion to RGB clips every value above 255 and the rescale factor 1/255 is
    meant for 8-bit data. Keeping the high byte is what Pillow does when it decodes 16-bit RGB PNGs and what
    torchvision's `to_dtype(..., scale=True)` does, so all three routes to 8 bits agree.
    """
    image_type = get_image_type(image)
    if image_type == ImageType.PIL:
        if image.mode not in SIXTEEN_BIT_PIL_MODES:
            return image
        pixels = np.asarray(image)
        if pixels.min() < 0 or pixels.max() > np.iinfo(np.uint16).max:
            raise ValueError(
                f"`images` holds a PIL image of mode {image.mode!r} with values in [{pixels.min()}, {pixels.max()}]; "
                "only 8-bit and 16-bit images are supported. Convert it to mode 'RGB' or 'L' first."
            )
        return Image.fromarray((pixels.astype(np.uint16) >> 8).astype(np.uint8))
    if image_type == ImageType.NUMPY and image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if image_type == ImageType.TORCH and image.dtype == torch.uint16:
        # Shifts are not implemented for torch.uint16, so go through int32 (exact for 16-bit values).
        return (image.to(torch.int32) >> 8).to(torch.uint8)
    return image


def is_float_image(image) -> bool:
    image_type = get_image_type(image)
    if image_type == ImageType.TORCH:
        return image.is_floating_point()
    return image_type == ImageType.NUMPY and np.issubdtype(image.dtype, np.floating)


def warn_if_already_rescaled(image, do_rescale: bool | None) -> None:
    """Warn when a float image already lies in [0, 1] although `do_rescale` will divide it by 255 again."""
    if not (do_rescale and is_float_image(image)):
        return
    # NumPy has no bfloat16/float8: widen torch tensors first (a no-op for float32).
    pixels = image.float() if get_image_type(image) == ImageType.TORCH else image
    if is_scaled_image(to_numpy_array(pixels)):
        logger.warning_once(
            "The image processor got float images with all values in [0, 1], which look already rescaled, while "
            "`do_rescale=True` will divide them by 255 again. Pass `do_rescale=False` if they are already rescaled."
        )


class InternImageTransformDefaults:
    """The official evaluation transform's settings, shared by both backends (keyword arguments override them)."""

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


class InternImageInputsMixin:
    """Input handling shared by both backends; it runs on each raw image before the backend converts it."""

    def _prepare_images_structure(self, images, *args, **kwargs):
        images = super()._prepare_images_structure(images, *args, **kwargs)
        if len(images) == 0:
            raise ValueError("`images` is empty: pass at least one image (PIL image, NumPy array or torch tensor).")
        return images

    def process_image(self, image, *args, **kwargs):
        image = to_8bit(apply_exif_orientation(image))
        warn_if_already_rescaled(image, kwargs.get("do_rescale"))
        return super().process_image(image, *args, **kwargs)


class InternImageSegmentationMixin:
    """Post-processing of semantic-segmentation outputs, shared by both backends.

    Its presence is what lets `pipeline("image-segmentation")` run a `UperNetForSemanticSegmentation` with an
    InternImage processor (the pipeline looks the method up on the image processor).
    """

    def post_process_semantic_segmentation(self, outputs, target_sizes=None) -> list[torch.Tensor]:
        """Class-index maps from the logits of a semantic-segmentation model (e.g. a converted UperNet).

        Args:
            outputs: the model output; its `logits` have shape ``(batch, num_labels, height, width)``.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor` of shape ``(batch, 2)``, *optional*): the
                ``(height, width)`` to resize each image's logits to (bilinear) before the argmax, usually the
                original image sizes; `None` keeps the logits' size.

        Returns:
            `list[torch.Tensor]`: `batch` maps of shape ``(height, width)`` holding class indices (int64).
        """
        logits = outputs.logits
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(target_sizes) != len(logits):
            raise ValueError(
                f"`target_sizes` must hold one (height, width) per image: got {len(target_sizes)} for a batch of "
                f"{len(logits)}"
            )
        maps = []
        for image_logits, size in zip(logits, target_sizes, strict=True):
            size = tuple(int(side) for side in size)
            resized = torch.nn.functional.interpolate(
                image_logits[None], size=size, mode="bilinear", align_corners=False
            )
            maps.append(resized[0].argmax(dim=0))
        return maps


class InternImageImageProcessor(
    InternImageTransformDefaults, InternImageInputsMixin, InternImageSegmentationMixin, TorchvisionBackend
):
    """InternImage image processor on the torchvision backend: the official evaluation transform.

    Pass `size`/`crop_size` for the 384/512/640 checkpoints; `InternImageImageProcessorPil` is the same transform
    without torchvision.

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


__all__ = ["DEFAULT_IMAGE_SIZE", "InternImageImageProcessor"]
