"""DINO's denoising queries and losses (the official head's numbers are compared in the parity tests)."""

from __future__ import annotations

import pytest
import torch
from test_modeling_dino_detr import padded_batch, tiny_config, tiny_detector
from torch import nn

from internimage_hf import DinoDetrForObjectDetection
from internimage_hf.models.dino_detr.loss_dino_detr import denoising_groups, denoising_indices

LABELS = [
    {"class_labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]])},
    {"class_labels": torch.tensor([4]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
]


def groups(num_denoising=10, label_noise=0.5, box_noise=1.0, seed=0):
    embeddings = nn.Embedding(5, 8)
    generator = torch.Generator().manual_seed(seed)
    return embeddings, denoising_groups(LABELS, embeddings, num_denoising, 30, label_noise, box_noise, generator)


def test_groups_follow_the_official_layout():
    """10 queries for at most 2 targets per image: 5 groups of [2 positives, 2 negatives]; zero padding."""
    embeddings, denoising = groups(label_noise=0.0, box_noise=0.0)
    assert (denoising.num_groups, denoising.group_size, denoising.num_queries) == (5, 2, 20)
    for copy in range(10):
        torch.testing.assert_close(denoising.queries[0, 2 * copy : 2 * copy + 2], embeddings(torch.tensor([1, 3])))
        torch.testing.assert_close(denoising.queries[1, 2 * copy], embeddings(torch.tensor(4)))
        assert (denoising.queries[1, 2 * copy + 1] == 0).all()  # image 1 has one target: its second slot is padding
    torch.testing.assert_close(denoising.boxes[0, :2].sigmoid(), LABELS[0]["boxes"], atol=1e-6, rtol=0)


def test_attention_mask_isolates_groups_and_hides_them_from_matching_queries():
    _, denoising = groups()
    blocked = denoising.attention_mask
    assert blocked.shape == (50, 50)
    assert blocked[20:, :20].all() and not blocked[20:, 20:].any()  # matching queries see only each other
    assert not blocked[:20, 20:].any()  # denoising queries see the matching ones
    for group in range(5):
        rows = slice(4 * group, 4 * group + 4)
        assert not blocked[rows, rows].any()
        assert blocked[rows, :20].sum() == 4 * 16  # every other group blocked


def test_positive_boxes_stay_near_their_target_and_negatives_move_further():
    _, denoising = groups(label_noise=0.0, box_noise=1.0)
    boxes = denoising.boxes.sigmoid()
    target = LABELS[0]["boxes"][0]
    corners = torch.cat([target[:2] - target[2:] / 2, target[:2] + target[2:] / 2])
    for group in range(denoising.num_groups):
        positive, negative = boxes[0, 4 * group], boxes[0, 4 * group + 2]
        moved_positive = (torch.cat([positive[:2] - positive[2:] / 2, positive[:2] + positive[2:] / 2]) - corners).abs()
        moved_negative = (torch.cat([negative[:2] - negative[2:] / 2, negative[:2] + negative[2:] / 2]) - corners).abs()
        assert (moved_positive <= 0.1 + 1e-5).all()  # half the box size (0.2 / 2)
        assert moved_negative.max() > 0.1  # at least one corner leaves the positive range (clamping may pull others)


def test_label_noise_replaces_about_a_quarter_of_the_labels():
    embeddings, denoising = groups(num_denoising=2000, label_noise=0.5, box_noise=0.0)
    copies = denoising.queries[0, 0::2][: 2 * denoising.num_groups]  # image 0, target 0, every copy
    kept = (copies == embeddings.weight[1]).all(-1).float().mean()
    assert 0.75 < kept < 0.9  # 1/4 replaced, of which 1/5 by the same class again: 0.8 expected


def test_denoising_targets_are_the_positive_copies():
    _, denoising = groups()
    (queries0, targets0), (queries1, targets1) = denoising_indices(LABELS, denoising)
    assert queries0.tolist() == [0, 1, 4, 5, 8, 9, 12, 13, 16, 17] and targets0.tolist() == [0, 1] * 5
    assert queries1.tolist() == [0, 4, 8, 12, 16] and targets1.tolist() == [0] * 5


def test_training_step_has_every_term_and_gradients():
    model = tiny_detector(num_denoising=10, decoder_layers=3).train()
    pixel_values, pixel_mask = padded_batch()
    outputs = model(pixel_values, pixel_mask=pixel_mask, labels=LABELS)
    names = set(outputs.loss_dict)
    for base in ("loss_ce", "loss_bbox", "loss_giou"):
        expected = {base, f"{base}_0", f"{base}_1", f"{base}_enc", f"{base}_dn", f"{base}_dn_0", f"{base}_dn_1"}
        assert expected <= names
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    total = sum(
        value * next(weight for base, weight in weights.items() if name.startswith(base))
        for name, value in outputs.loss_dict.items()
    )
    torch.testing.assert_close(outputs.loss, total)
    assert outputs.logits.shape == (2, 20, 5)  # matching queries only
    outputs.loss.backward()
    assert model.model.denoising_label_embeddings.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.model.backbone.parameters() if p.requires_grad)


def test_evaluation_loss_has_no_denoising_terms():
    model = tiny_detector(num_denoising=10).eval()
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        outputs = model(pixel_values, pixel_mask=pixel_mask, labels=LABELS)
    assert not [name for name in outputs.loss_dict if "_dn" in name]
    assert torch.isfinite(outputs.loss)


def test_images_without_targets_train():
    model = tiny_detector(num_denoising=10).train()
    pixel_values, pixel_mask = padded_batch()
    empty = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    outputs = model(pixel_values, pixel_mask=pixel_mask, labels=empty)
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss)
    assert model.model.denoising_label_embeddings.weight.grad is not None  # used every step, as DDP needs


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([LABELS[0]], "1 dicts for a batch of 2"),
        ([{"boxes": torch.zeros(1, 4)}, LABELS[1]], r"labels\[0\] needs `class_labels` and `boxes`"),
        ([{"class_labels": torch.tensor([5]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}, LABELS[1]], r"\[0, 5\)"),
        ([LABELS[0], {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.1]])}], "w, h > 0"),
        ([LABELS[0], {"class_labels": torch.tensor([1]), "boxes": torch.zeros(2, 4)}], r"\(T, 4\)"),
    ],
)
def test_bad_labels_name_the_problem(labels, message):
    model = DinoDetrForObjectDetection(tiny_config()).train()
    pixel_values, pixel_mask = padded_batch()
    with pytest.raises(ValueError, match=message):
        model(pixel_values, pixel_mask=pixel_mask, labels=labels)
