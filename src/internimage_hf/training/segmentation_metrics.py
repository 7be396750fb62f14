"""Semantic-segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel accuracy.

The definitions are mmseg's (`mmseg.evaluation.IoUMetric`): pixels labelled `ignore_index` count nowhere; a class
that appears neither in the labels nor in the predictions of the whole evaluation set has no IoU (NaN) and is left
out of the mean.
"""

from __future__ import annotations

import math

import torch


def confusion_matrix(
    predictions: torch.Tensor, labels: torch.Tensor, num_labels: int, ignore_index: int = 255
) -> torch.Tensor:
    """`(num_labels, num_labels)` int64 counts, rows the true class and columns the predicted class.

    Args:
        predictions: `(...)` predicted class indices.
        labels: `(...)` true class indices, same shape; pixels equal to `ignore_index` are left out.
        num_labels: number of classes; a label outside `[0, num_labels)` other than `ignore_index` is an error.
        ignore_index: label value of unlabelled pixels.
    """
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
    labels = labels.reshape(-1).long()
    predictions = predictions.reshape(-1).long()
    keep = labels != ignore_index
    labels, predictions = labels[keep], predictions[keep]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(
            f"labels hold values outside [0, {num_labels}) other than ignore_index {ignore_index}: "
            f"{sorted(set(labels[(labels < 0) | (labels >= num_labels)].unique().tolist()))[:10]}"
        )
    counts = torch.bincount(labels * num_labels + predictions, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels)


def segmentation_metrics(confusion: torch.Tensor, label_names: list[str] | None = None) -> dict[str, float]:
    """`mean_iou`, `pixel_accuracy`, `mean_accuracy` and `iou_<name>` per class from a confusion matrix.

    Args:
        confusion: `(C, C)` counts, rows the true class (see `confusion_matrix`).
        label_names: C class names for the per-class keys (default: the class indices).
    """
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    labelled = confusion.sum(dim=1)  # pixels of each true class
    predicted = confusion.sum(dim=0)
    union = labelled + predicted - true_positive
    iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, math.nan))
    accuracy = torch.where(labelled > 0, true_positive / labelled.clamp(min=1), torch.full_like(labelled, math.nan))
    names = label_names if label_names is not None else [str(index) for index in range(len(iou))]
    total = float(labelled.sum())
    metrics = {
        "mean_iou": float(iou.nanmean()) if not iou.isnan().all() else math.nan,
        "pixel_accuracy": float(true_positive.sum()) / total if total else math.nan,
        "mean_accuracy": float(accuracy.nanmean()) if not accuracy.isnan().all() else math.nan,
    }
    metrics.update({f"iou_{name}": float(value) for name, value in zip(names, iou, strict=True)})
    return metrics
