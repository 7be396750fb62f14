"""DinoDetrImageProcessor: mmdet's test transform (keep-ratio rescale, pad to 32) and the official post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import ModelOutput

pytest.importorskip("torchvision", reason="the detection image processor extends Deformable DETR's (torchvision)")

from transformers import AutoImageProcessor  # noqa: E402

from internimage_hf import DinoDetrConfig  # noqa: E402
from internimage_hf.models.dino_detr.image_processing_dino_detr import (  # noqa: E402
    DinoDetrImageProcessor,
    official_rescale_size,
)


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((480, 640), (800, 1067)),  # short side bound: 640 * 5/3 = 1066.67 rounds up (Transformers' DETR: 1066)
        ((500, 375), (1067, 800)),
        ((1000, 3000), (444, 1333)),  # long side bound
        ((800, 1333), (800, 1333)),
        ((100, 100), (800, 800)),
    ],
)
def test_rescale_size_is_mmcv_imrescale(size, expected):
    assert official_rescale_size(*size, 800, 1333) == expected


def test_batch_is_padded_to_a_multiple_of_32_with_its_mask():
    processor = DinoDetrImageProcessor()
    batch = processor([image(480, 640), image(500, 375, seed=1)], return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 1088, 1088)
    mask = batch["pixel_mask"]
    assert mask.shape == (2, 1088, 1088)
    assert mask[0, :800, :1067].all() and mask[0].sum() == 800 * 1067
    assert mask[1, :1067, :800].all() and mask[1].sum() == 1067 * 800
    assert (batch["pixel_values"][0, :, 800:] == 0).all()  # padding after normalisation is zero, as mmdet's Pad
    single = processor(image(480, 640), return_tensors="pt")
    assert single["pixel_values"].shape == (1, 3, 800, 1088)  # one image is padded to 32 too
    torch.testing.assert_close(single["pixel_values"][0, :, :800, :1067], batch["pixel_values"][0, :, :800, :1067])


def test_normalisation_is_the_official_mean_and_std():
    processor = DinoDetrImageProcessor(do_resize=False)
    pixels = np.full((64, 64, 3), (10, 120, 250), dtype=np.uint8)
    values = processor(pixels, return_tensors="pt")["pixel_values"][0, :, 0, 0]
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])  # mmdet's, on 0-255
    torch.testing.assert_close(values, torch.tensor((np.array([10, 120, 250]) - mean) / std, dtype=torch.float32))


def test_annotations_become_boxes_relative_to_the_unpadded_image():
    processor = DinoDetrImageProcessor()
    annotation = {
        "image_id": 7,
        "annotations": [{"bbox": [10, 20, 100, 50], "category_id": 3, "area": 5000.0, "iscrowd": 0}],
    }
    batch = processor(image(480, 640), annotations=annotation, return_tensors="pt")
    labels = batch["labels"][0]
    assert labels["class_labels"].tolist() == [3]
    # (cx, cy, w, h) / (640, 480): the same in the resized image, whatever the padding
    torch.testing.assert_close(
        labels["boxes"], torch.tensor([[60 / 640, 45 / 480, 100 / 640, 50 / 480]]), atol=2e-3, rtol=0
    )


def test_post_processing_keeps_the_top_pairs_and_clamps_boxes():
    processor = DinoDetrImageProcessor(top_k=3)
    logits = torch.full((1, 4, 2), -10.0)
    logits[0, 0, 1], logits[0, 2, 0], logits[0, 2, 1], logits[0, 3, 0] = 3.0, 2.0, 1.0, -1.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 1, 1], [0.95, 0.1, 0.2, 0.4], [0.5, 0.5, 0.1, 0.1]]])
    outputs = ModelOutput(logits=logits, pred_boxes=boxes)
    (result,) = processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=[(100, 200)])
    assert result["labels"].tolist() == [1, 0, 1]  # query 0 class 1, query 2 class 0, query 2 class 1
    torch.testing.assert_close(result["scores"], torch.tensor([3.0, 2.0, 1.0]).sigmoid())
    # query 2: x from 0.85 to 1.05 of 200 -> clamped at 200; y from -0.1 to 0.3 of 100 -> clamped at 0
    torch.testing.assert_close(result["boxes"][1], torch.tensor([170.0, 0.0, 200.0, 30.0]))
    (top_one,) = processor.post_process_object_detection(outputs, threshold=0.0, top_k=1)
    assert top_one["labels"].tolist() == [1] and top_one["boxes"].max() <= 1


def test_auto_image_processor_finds_it(tmp_path):
    DinoDetrConfig().save_pretrained(tmp_path)
    DinoDetrImageProcessor(top_k=300).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is DinoDetrImageProcessor and loaded.top_k == 300 and loaded.pad_size_divisor == 32
