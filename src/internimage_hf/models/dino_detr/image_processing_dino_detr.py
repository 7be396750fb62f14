"""DINO image processor, torchvision backend: the official test transform of the InternImage DINO detectors.

mmdet's test pipeline (`Resize(img_scale=(1333, 800), keep_ratio=True)`, `Normalize`, `Pad(size_divisor=32)`):

- resize by one factor `min(1333 / long edge, 800 / short edge)`, each side rounded half up (`int(x * f + 0.5)`,
  mmcv's `imrescale`), bilinear without antialiasing (OpenCV's `INTER_LINEAR`);
- rescale to [0, 1] and normalise with the ImageNet mean/std (mmdet's 0-255 mean/std divided by 255);
- pad at the bottom and right to a multiple of 32 (the largest image of the batch, rounded up), with `pixel_mask`.

Everything else (COCO annotations in, `labels` out, the pixel mask) is Transformers' `DeformableDetrImageProcessor`.
Post-processing keeps the top-k (query, class) pairs of an image by sigmoid score and clamps boxes to the image, as
the official head.
"""

from __future__ import annotations

import torch
from transformers.image_utils import SizeDict
from transformers.models.deformable_detr.image_processing_deformable_detr import (
    DeformableDetrImageProcessor,
    DeformableDetrImageProcessorKwargs,
)

PAD_SIZE_DIVISOR = 32
MAX_DETECTIONS = 100


class DinoDetrImageProcessorKwargs(DeformableDetrImageProcessorKwargs, total=False):
    r"""
    pad_size_divisor (`int`, *optional*, defaults to 32):
        Padded height and width are multiples of this (the backbone and the stride-64 extra level need it).
    top_k (`int`, *optional*, defaults to 100):
        Detections kept per image by `post_process_object_detection` (the official `max_per_img`).
    """

    pad_size_divisor: int
    top_k: int


def official_rescale_size(height: int, width: int, shortest_edge: int, longest_edge: int) -> tuple[int, int]:
    """(height, width) after mmcv's keep-ratio rescale to fit `longest_edge` x `shortest_edge`.

    Args:
        height, width: the input size.
        shortest_edge / longest_edge: the bounds of the short and the long side (800 / 1333).

    Returns:
        The output size; one factor for both sides, each rounded half up.
    """
    factor = min(longest_edge / max(height, width), shortest_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


class DinoDetrImageProcessor(DeformableDetrImageProcessor):
    r"""The official InternImage DINO test transform (see the module docstring), for `DinoDetrForObjectDetection`.

    Args:
        **kwargs: those of `DeformableDetrImageProcessor` (`size`, `do_pad`, `pad_size`, `format`, ...), plus
            `pad_size_divisor` (32) and `top_k` (100 detections per image; 300 for the official L/H/G detectors).
    """

    valid_kwargs = DinoDetrImageProcessorKwargs
    size = {"shortest_edge": 800, "longest_edge": 1333}
    pad_size_divisor = PAD_SIZE_DIVISOR
    top_k = MAX_DETECTIONS

    def resize(self, image: torch.Tensor, size: SizeDict, resample=None, **kwargs) -> torch.Tensor:
        """Keep-ratio resize as mmcv's `imrescale` for `shortest_edge`/`longest_edge`; other sizes as Deformable DETR.

        Args:
            image: `(..., C, H, W)` images of one size.
            size: the target (`shortest_edge` + `longest_edge`, or `height` + `width`, ...).
            resample: the interpolation (default bilinear); applied without antialiasing, as OpenCV's.
        """
        if size.shortest_edge and size.longest_edge:
            height, width = official_rescale_size(*image.shape[-2:], size.shortest_edge, size.longest_edge)
            size = SizeDict(height=height, width=width)
        return super().resize(image, size=size, resample=resample, antialias=False)

    def pad(self, image: torch.Tensor, padded_size: tuple[int, int], annotation=None, update_bboxes=True, fill=0):
        """Pad to `padded_size` rounded up to a multiple of `pad_size_divisor`: (images, pixel mask, annotation).

        Args:
            image: `(..., C, H, W)` images of one size.
            padded_size: the batch's largest (height, width) or the requested `pad_size`.
            annotation: their annotations; normalised boxes stay relative to the unpadded image, as DINO predicts
                them (Deformable DETR's processor rescales them to the padded image).
            update_bboxes: ignored (see `annotation`).
            fill: the padding value.
        """
        divisor = self.pad_size_divisor
        padded_size = (round_up(padded_size[0], divisor), round_up(padded_size[1], divisor))
        return super().pad(image, padded_size, annotation=annotation, update_bboxes=False, fill=fill)

    def post_process_object_detection(
        self, outputs, threshold: float = 0.5, target_sizes=None, top_k: int | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image: the `top_k` best (query, class) pairs by sigmoid score, above `threshold`.

        Args:
            outputs: `DinoDetrObjectDetectionOutput` (`logits`, `pred_boxes`).
            threshold: minimum score kept.
            target_sizes: `(N, 2)` tensor or list of (height, width): the original image sizes; boxes are scaled to
                them and clamped inside. Without, boxes stay relative.
            top_k: pairs kept before thresholding (default `self.top_k`).

        Returns:
            One dict per image: `scores` `(K,)`, `labels` `(K,)` and `boxes` `(K, 4)` as (x0, y0, x1, y1).
        """
        results = super().post_process_object_detection(
            outputs, threshold=threshold, target_sizes=target_sizes, top_k=top_k or self.top_k
        )
        if target_sizes is None:
            return [{**result, "boxes": result["boxes"].clamp(0, 1)} for result in results]
        for result, (height, width) in zip(results, _sizes(target_sizes), strict=True):
            boxes = result["boxes"]
            limits = boxes.new_tensor([width, height, width, height])
            result["boxes"] = torch.minimum(boxes.clamp(min=0), limits)
        return results

    def preprocess(self, images, annotations=None, return_segmentation_masks=None, masks_path=None, **kwargs):
        """Transform `images` (and COCO `annotations`) for the detector: `pixel_values`, `pixel_mask`, `labels`.

        Args:
            images: one image or a list (PIL, numpy, torch; channels first or last).
            annotations: COCO detection annotations per image (`image_id`, `annotations` with `bbox` x, y, w, h and
                `category_id`), turned into normalised (cx, cy, w, h) `boxes` and `class_labels`.
            return_segmentation_masks: as `DeformableDetrImageProcessor` (not used by DINO).
            masks_path: as `DeformableDetrImageProcessor` (panoptic annotations only).
            **kwargs: per-call overrides of the processor's settings.
        """
        return super().preprocess(images, annotations, return_segmentation_masks, masks_path, **kwargs)


def _sizes(target_sizes) -> list[tuple[float, float]]:
    if isinstance(target_sizes, torch.Tensor):
        return [tuple(size) for size in target_sizes.tolist()]
    return [tuple(size) for size in target_sizes]


__all__ = ["DinoDetrImageProcessor", "official_rescale_size"]
