"""COCO box mAP through faster-coco-eval, cross-checked against pycocotools' `COCOeval` on the same data."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

pytest.importorskip("faster_coco_eval", reason="the COCO evaluation needs faster-coco-eval (the `train` extra)")

from internimage_hf.training.detection_metrics import (  # noqa: E402
    COCO_STAT_NAMES,
    coco_box_map,
    detection_records,
)

CATEGORY_IDS = [1, 3, 7]  # COCO-style ids with gaps


def ground_truth_and_detections(seed: int = 0) -> tuple[dict, list[dict]]:
    """Twelve images of mixed sizes with 0-6 objects of every size range; detections that jitter, miss and add."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, 13):
        width, height = int(rng.integers(200, 640)), int(rng.integers(200, 480))
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.integers(0, 7))):
            side = float(rng.choice([12.0, 60.0, 150.0])) * float(rng.uniform(0.8, 1.2))  # small, medium, large
            x, y = float(rng.uniform(0, width - side)), float(rng.uniform(0, height - side))
            category = int(rng.choice(CATEGORY_IDS))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                 "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0}
            )  # fmt: skip
            if rng.random() < 0.8:  # found, more or less precisely
                jitter = rng.normal(0, side * 0.1, 4)
                detections.append(
                    {"image_id": image_id, "category_id": category, "score": float(rng.uniform(0.3, 1.0)),
                     "bbox": [x + jitter[0], y + jitter[1], side + jitter[2], side + jitter[3]]}
                )  # fmt: skip
        for _ in range(int(rng.integers(0, 3))):  # false positives
            detections.append(
                {"image_id": image_id, "category_id": int(rng.choice(CATEGORY_IDS)),
                 "score": float(rng.uniform(0, 0.6)),
                 "bbox": [float(rng.uniform(0, width - 40)), float(rng.uniform(0, height - 40)), 40.0, 30.0]}
            )  # fmt: skip
    categories = [{"id": i, "name": f"class{i}"} for i in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def pycocotools_stats(ground_truth: dict, detections: list[dict]) -> list[float]:
    pycocotools = pytest.importorskip("pycocotools.coco", reason="the cross-check needs pycocotools")
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = pycocotools.COCO()
        truth.dataset = {key: [dict(item) for item in value] for key, value in ground_truth.items()}
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes([dict(d) for d in detections]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_12_numbers_equal_pycocotools(seed):
    ground_truth, detections = ground_truth_and_detections(seed)
    ours = coco_box_map(ground_truth, detections)
    expected = pycocotools_stats(ground_truth, detections)
    assert list(ours) == list(COCO_STAT_NAMES)
    np.testing.assert_allclose([ours[name] for name in COCO_STAT_NAMES], expected, atol=1e-9)
    assert 0.2 < ours["AP"] < 0.95  # a real mix of hits and misses, not a degenerate case


def test_perfect_detections_score_one_and_none_score_zero():
    ground_truth, _ = ground_truth_and_detections(0)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in ground_truth["annotations"]
    ]
    assert coco_box_map(ground_truth, perfect)["AP"] == pytest.approx(1.0)
    assert coco_box_map(ground_truth, [])["AP"] == 0.0


def test_records_from_post_processed_outputs():
    results = [
        {
            "scores": torch.tensor([0.9, 0.4]),
            "labels": torch.tensor([2, 0]),
            "boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.0, 5.0]]),
        },
        {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]
    records = detection_records(results, image_ids=[5, 6], category_ids=CATEGORY_IDS)
    assert records[0] == {
        "image_id": 5,
        "category_id": 7,
        "bbox": [10.0, 20.0, 40.0, 60.0],
        "score": pytest.approx(0.9),
    }
    assert records[1]["category_id"] == 1 and len(records) == 2
    with pytest.raises(ValueError, match="results: 2 images, image_ids: 1"):
        detection_records(results, image_ids=[5], category_ids=CATEGORY_IDS)
