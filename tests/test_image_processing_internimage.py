"""Image processors: official evaluation transform, both backends, Auto resolution."""

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from internimage_hf import InternImageConfig, InternImageImageProcessor, InternImageImageProcessorPil

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
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


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed (minimal environment)")
@pytest.mark.parametrize("size", [(400, 300), (301, 517)])
def test_backends_agree(size):
    image = sample_image(*size)
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
