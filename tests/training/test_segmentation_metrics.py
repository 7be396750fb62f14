"""mIoU, per-class IoU and pixel accuracy from a confusion matrix, with the ignore index left out."""

from __future__ import annotations

import math

import pytest
import torch

from internimage_hf.training.segmentation_metrics import confusion_matrix, segmentation_metrics


def test_confusion_matrix_counts_pixels_and_skips_the_ignore_index():
    labels = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    predictions = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    confusion = confusion_matrix(predictions, labels, num_labels=4)
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 2], expected[2, 0] = 1, 1, 2, 1, 1
    assert torch.equal(confusion, expected)


def test_metrics_follow_the_iou_definition():
    labels = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    predictions = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    metrics = segmentation_metrics(confusion_matrix(predictions, labels, 4), ["a", "b", "c", "d"])
    # class a: TP 1, FN 1, FP 1 -> 1/3; b: TP 2, FP 1 -> 2/3; c: TP 1, FN 1 -> 1/2; d: absent everywhere -> NaN
    assert metrics["iou_a"] == pytest.approx(1 / 3)
    assert metrics["iou_b"] == pytest.approx(2 / 3)
    assert metrics["iou_c"] == pytest.approx(1 / 2)
    assert math.isnan(metrics["iou_d"])
    assert metrics["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(4 / 6)
    assert metrics["mean_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


def test_a_class_only_predicted_counts_with_iou_zero():
    labels = torch.zeros(2, 2, dtype=torch.long)
    predictions = torch.tensor([[0, 0], [0, 1]])
    metrics = segmentation_metrics(confusion_matrix(predictions, labels, 2))
    assert metrics["iou_1"] == 0.0
    assert metrics["mean_iou"] == pytest.approx((3 / 4 + 0) / 2)


def test_labels_outside_the_classes_are_an_error():
    with pytest.raises(ValueError, match=r"outside \[0, 3\).*\[7\]"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.tensor([0, 7, 255]), num_labels=3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(3), torch.zeros(4), num_labels=3)
