"""`pipeline("object-detection")` with a DINO checkpoint directory: COCO-named boxes in original-image pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision", reason="the detection image processor extends Deformable DETR's (torchvision)")

from transformers import pipeline  # noqa: E402

from internimage_hf import DinoDetrConfig, DinoDetrForObjectDetection  # noqa: E402
from internimage_hf.data.labels import detection_id2label  # noqa: E402
from internimage_hf.models.dino_detr.image_processing_dino_detr import DinoDetrImageProcessor  # noqa: E402

TINY = {
    "backbone_config": {
        "model_type": "internimage",
        "channels": 16,
        "depths": [1, 1, 2, 1],
        "groups": [1, 2, 4, 8],
        "out_features": ["stage2", "stage3", "stage4"],
    },
    "d_model": 32,
    "neck_norm_groups": 8,
    "num_queries": 30,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dino")
    torch.manual_seed(0)
    model = DinoDetrForObjectDetection(DinoDetrConfig(**TINY))
    with torch.no_grad():  # scores above the threshold for a few classes
        model.model.class_heads[-2].bias.normal_(std=3.0)
    model.save_pretrained(directory)
    DinoDetrImageProcessor(size={"shortest_edge": 256, "longest_edge": 400}).save_pretrained(directory)
    return directory


def test_pipeline_returns_coco_named_boxes_in_image_pixels(checkpoint):
    detector = pipeline("object-detection", model=str(checkpoint))
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    detections = detector(picture, threshold=0.3)
    assert detections, "the biased class head gives scores above the threshold"
    names = set(detection_id2label("coco").values())
    for detection in detections:
        assert detection["label"] in names
        assert 0.3 < detection["score"] <= 1
        box = detection["box"]
        assert 0 <= box["xmin"] <= box["xmax"] <= 320 and 0 <= box["ymin"] <= box["ymax"] <= 240


def detections(model, processor, pictures: list[Image.Image]) -> list[dict[str, torch.Tensor]]:
    inputs = processor(pictures, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    sizes = [(picture.height, picture.width) for picture in pictures]
    return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)


def test_a_batch_of_differently_sized_images_gives_their_detections_alone(checkpoint):
    model = DinoDetrForObjectDetection.from_pretrained(checkpoint).eval()
    processor = DinoDetrImageProcessor.from_pretrained(checkpoint)
    rng = np.random.default_rng(1)
    pictures = [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for height, width in [(240, 320), (300, 200), (250, 250)]
    ]
    batched = detections(model, processor, pictures)
    for picture, produced in zip(pictures, batched, strict=True):
        (expected,) = detections(model, processor, [picture])
        assert len(produced["scores"]) == len(expected["scores"]) > 0
        torch.testing.assert_close(produced["scores"], expected["scores"], atol=1e-4, rtol=0)
        assert torch.equal(produced["labels"], expected["labels"])
        # boxes in pixels of images of ~300 pixels: 1e-4 of the normalised box
        torch.testing.assert_close(produced["boxes"], expected["boxes"], atol=0.03, rtol=0)
