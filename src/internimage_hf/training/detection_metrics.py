"""COCO box mAP of detections, through faster-coco-eval (a maintained, faster implementation of pycocotools'
`COCOeval` that reports the same 12 numbers).

Ground truth is a COCO-format dict (`images`, `annotations` with `bbox` x, y, w, h, `categories`); detections are
COCO result records. `detection_records` turns `post_process_object_detection` outputs into such records.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence

import torch

# The 12 numbers of `COCOeval.summarize()`, in its order.
COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR_1",
    "AR_10",
    "AR_100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


def detection_records(
    results: Sequence[Mapping[str, torch.Tensor]], image_ids: Sequence[int], category_ids: Sequence[int]
) -> list[dict]:
    """COCO result records from post-processed detections.

    Args:
        results: per image `scores` `(K,)`, `labels` `(K,)` (model class indices) and `boxes` `(K, 4)` as
            (x0, y0, x1, y1) in pixels of the original image (`post_process_object_detection` with `target_sizes`).
        image_ids: the COCO `image_id` of each result.
        category_ids: the COCO `category_id` of each model class index (COCO's own ids run 1..90 with gaps).

    Returns:
        One dict per detection: `image_id`, `category_id`, `bbox` (x, y, w, h) and `score`.
    """
    if len(results) != len(image_ids):
        raise ValueError(f"results: {len(results)} images, image_ids: {len(image_ids)}")
    records = []
    for result, image_id in zip(results, image_ids, strict=True):
        boxes = result["boxes"].detach().cpu().double()
        widths_heights = boxes[:, 2:] - boxes[:, :2]
        for score, label, corner, size in zip(
            result["scores"].tolist(), result["labels"].tolist(), boxes[:, :2].tolist(), widths_heights.tolist(),
            strict=True,
        ):  # fmt: skip
            records.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[label]),
                    "bbox": corner + size,
                    "score": score,
                }
            )
    return records


def coco_box_map(ground_truth: Mapping, detections: Sequence[Mapping]) -> dict[str, float]:
    """The 12 COCO box metrics of `detections` against `ground_truth` (fractions in [0, 1], -1 where undefined).

    Args:
        ground_truth: a COCO detection dict (`images`, `annotations`, `categories`).
        detections: COCO result records (`image_id`, `category_id`, `bbox` x, y, w, h, `score`); may be empty.

    Returns:
        `COCO_STAT_NAMES` -> value, as `COCOeval.summarize()` reports them.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    # faster-coco-eval prints (stdout) and logs (INFO) its summary table; the caller gets the numbers instead.
    quiet = logging.getLogger("faster_coco_eval")
    with contextlib.redirect_stdout(io.StringIO()), _level(quiet, logging.WARNING):
        truth = COCO(_copy(ground_truth))
        if not detections:
            return dict.fromkeys(COCO_STAT_NAMES, 0.0)
        predicted = truth.loadRes([dict(record) for record in detections])
        evaluator = COCOeval_faster(truth, predicted, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats[:12], strict=True)}


@contextlib.contextmanager
def _level(logger: logging.Logger, level: int):
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _copy(ground_truth: Mapping) -> dict:
    """A shallow copy per section: the COCO loaders add fields to the dicts they are given."""
    return {
        key: [dict(item) for item in value] if isinstance(value, list) else value for key, value in ground_truth.items()
    }


__all__ = ["COCO_STAT_NAMES", "coco_box_map", "detection_records"]
