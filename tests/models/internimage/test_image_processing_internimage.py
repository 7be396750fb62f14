"""Image processors: official evaluation transform, both backends, Auto resolution, awkward inputs."""

import importlib.util
import io
import logging

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, ImageOps
from transformers.image_utils import load_image
from transformers.models.auto.image_processing_auto import AutoImageProcessor
from transformers.utils import logging as hf_logging

from internimage_hf import InternImageConfig, InternImageImageProcessor, InternImageImageProcessorPil
from internimage_hf.models.internimage import image_processing_internimage

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_torchvision = pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed (minimal environment)")
BACKENDS = [InternImageImageProcessorPil, pytest.param(InternImageImageProcessor, marks=needs_torchvision)]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def sample_image(width=400, height=300) -> Image.Image:
    generator = np.random.default_rng(0)
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    noise = generator.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8))


def official_eval_transform(image: Image.Image, size: int) -> torch.Tensor:
    """The official transform (Resize short side bicubic, CenterCrop, ToTensor, Normalize) written with PIL/numpy."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = (size, int(height * scale)) if width <= height else (int(width * scale), size)
    resized = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    cropped = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    return (torch.from_numpy(cropped).permute(2, 0, 1) - MEAN) / STD


def test_pil_backend_matches_official_transform():
    image = sample_image()
    pixels = InternImageImageProcessorPil()(image, return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[0], official_eval_transform(image, 224), atol=1e-4, rtol=0)


def pixels(processor, images, **kwargs) -> torch.Tensor:
    return processor(images, return_tensors="pt", **kwargs).pixel_values


def jpeg_with_orientation(path, orientation: int) -> Image.Image:
    """A 400x300 JPEG whose EXIF says to rotate it (6: 90 degrees clockwise), opened as a user would."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    sample_image(400, 300).save(path, quality=95, exif=exif)
    return Image.open(path)


def gradient_16bit(width=400, height=300) -> np.ndarray:
    """A (height, width) uint16 image spanning the whole 16-bit range."""
    return np.linspace(0, 65535, width * height).reshape(height, width).astype(np.uint16)


def png_16bit(values: np.ndarray) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    buffer.seek(0)
    return Image.open(buffer)


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(sample_image(400, 300), id="landscape"),
        pytest.param(sample_image(301, 517), id="portrait"),
        pytest.param(png_16bit(gradient_16bit()), id="16-bit PNG"),
    ],
)
@needs_torchvision
def test_backends_agree(image):
    pil = InternImageImageProcessorPil()(image, return_tensors="pt").pixel_values
    tv = InternImageImageProcessor()(image, return_tensors="pt").pixel_values
    assert tv.shape == pil.shape == (1, 3, 224, 224)
    # Tensor bicubic differs slightly from PIL bicubic; a crop-offset error would show as a large mean difference.
    difference = (tv - pil).abs()
    assert difference.mean() < 0.01 and difference.max() < 0.1


def test_sizes_for_large_checkpoints():
    processor = InternImageImageProcessorPil(size={"shortest_edge": 384}, crop_size={"height": 384, "width": 384})
    assert processor(sample_image(), return_tensors="pt").pixel_values.shape == (1, 3, 384, 384)


def test_auto_image_processor_resolution(tmp_path):
    InternImageConfig().save_pretrained(tmp_path)
    InternImageImageProcessorPil().save_pretrained(tmp_path)
    default = AutoImageProcessor.from_pretrained(tmp_path)
    expected = InternImageImageProcessor if HAS_TORCHVISION else InternImageImageProcessorPil
    assert type(default) is expected
    assert type(AutoImageProcessor.from_pretrained(tmp_path, backend="pil")) is InternImageImageProcessorPil
    assert default.size == {"shortest_edge": 224} and default.crop_size == {"height": 224, "width": 224}


@needs_torchvision
def test_backends_agree_on_exif_rotated_image(tmp_path):
    image = jpeg_with_orientation(tmp_path / "rotated.jpg", orientation=6)
    difference = (pixels(InternImageImageProcessor(), image) - pixels(InternImageImageProcessorPil(), image)).abs()
    assert difference.mean() < 0.01 and difference.max() < 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_exif_orientation_is_applied(backend, tmp_path):
    path = tmp_path / "rotated.jpg"
    image = jpeg_with_orientation(path, orientation=6)
    upright = ImageOps.exif_transpose(Image.open(path))
    assert upright.size == (300, 400)
    processor = backend()
    expected = pixels(processor, upright)
    torch.testing.assert_close(pixels(processor, image), expected, atol=0, rtol=0)
    # The same as what `pipeline` feeds the processor (it loads files with `load_image`), so inference agrees.
    torch.testing.assert_close(pixels(processor, load_image(str(path))), expected, atol=0, rtol=0)


SIXTEEN_BIT_FORMS = {
    "PNG I;16": png_16bit,
    "PIL I": lambda values: Image.fromarray(values.astype(np.int32)),
    "numpy uint16": lambda values: np.repeat(values[..., None], 3, axis=-1),
    "torch uint16": lambda values: torch.from_numpy(np.repeat(values[None], 3, axis=0).astype(np.int32)).to(
        torch.uint16
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", SIXTEEN_BIT_FORMS)
def test_16bit_images_are_scaled_not_saturated(backend, form):
    processor = backend()
    mid_grey = pixels(processor, SIXTEEN_BIT_FORMS[form](np.full((300, 400), 0x8000, dtype=np.uint16)))
    torch.testing.assert_close(mid_grey[0], ((128 / 255 - MEAN) / STD).expand(3, 224, 224), atol=1e-5, rtol=0)

    values = gradient_16bit()
    high_byte = Image.fromarray(np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=-1))
    expected = pixels(processor, high_byte)
    torch.testing.assert_close(pixels(processor, SIXTEEN_BIT_FORMS[form](values)), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_32bit_pil_image_out_of_16bit_range_is_refused(backend):
    image = Image.fromarray(np.full((300, 400), 70000, dtype=np.int32))
    with pytest.raises(ValueError, match="mode 'I' with values in \\[70000, 70000\\]"):
        backend()(image)


def rescale_warnings(caplog, processor, images, **kwargs) -> list[str]:
    """The warnings one processor call logs (the once-only cache is cleared so each call can warn)."""
    hf_logging.warning_once.cache_clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=image_processing_internimage.__name__):
        processed = pixels(processor, images, **kwargs)
    assert processed.shape == (1, 3, 224, 224)
    return [record.getMessage() for record in caplog.records if "already rescaled" in record.getMessage()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["numpy HWC", "torch CHW"])
def test_warns_when_float_images_look_already_rescaled(backend, layout, caplog):
    unit = np.asarray(sample_image(), dtype=np.float32) / 255
    as_input = (
        (lambda array: array) if layout == "numpy HWC" else (lambda array: torch.from_numpy(array).permute(2, 0, 1))
    )
    processor = backend()

    warnings = rescale_warnings(caplog, processor, as_input(unit))
    assert len(warnings) == 1 and "`do_rescale=False`" in warnings[0]
    assert rescale_warnings(caplog, processor, as_input(unit), do_rescale=False) == []
    assert rescale_warnings(caplog, processor, as_input(unit * 255)) == []
    assert rescale_warnings(caplog, processor, sample_image()) == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("images", [[], [[]]], ids=["empty list", "empty nested list"])
def test_empty_list_is_a_clear_value_error(backend, images):
    with pytest.raises(ValueError, match="`images` is empty"):
        backend()(images, return_tensors="pt")


# --- semantic-segmentation post-processing


def half_and_half_logits() -> torch.Tensor:
    """Logits (2, 3, 4, 4): image 0 is class 1 on the left half and class 2 on the right; image 1 is all class 0."""
    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 1, :, :2] = 5.0
    logits[0, 2, :, 2:] = 5.0
    logits[1, 0] = 1.0
    return logits


@pytest.mark.parametrize("backend", BACKENDS)
def test_post_process_semantic_segmentation(backend):
    from transformers.modeling_outputs import SemanticSegmenterOutput

    outputs = SemanticSegmenterOutput(logits=half_and_half_logits())
    processor = backend()

    native = processor.post_process_semantic_segmentation(outputs)
    assert [tuple(m.shape) for m in native] == [(4, 4), (4, 4)]
    assert native[0].dtype == torch.int64
    assert native[0][:, :2].eq(1).all() and native[0][:, 2:].eq(2).all() and native[1].eq(0).all()

    # Resized to each image's own size (bilinear on the logits, then argmax): the halves scale with the width.
    resized = processor.post_process_semantic_segmentation(outputs, target_sizes=[(6, 10), (3, 5)])
    assert [tuple(m.shape) for m in resized] == [(6, 10), (3, 5)]
    assert resized[0][:, :5].eq(1).all() and resized[0][:, 5:].eq(2).all() and resized[1].eq(0).all()
    as_tensor = processor.post_process_semantic_segmentation(outputs, target_sizes=torch.tensor([[6, 10], [3, 5]]))
    assert all(torch.equal(a, b) for a, b in zip(as_tensor, resized, strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_post_process_semantic_segmentation_needs_one_size_per_image(backend):
    from transformers.modeling_outputs import SemanticSegmenterOutput

    outputs = SemanticSegmenterOutput(logits=half_and_half_logits())
    with pytest.raises(
        ValueError, match=r"`target_sizes` must hold one \(height, width\) per image: got 1 for a batch"
    ):
        backend().post_process_semantic_segmentation(outputs, target_sizes=[(6, 10)])
