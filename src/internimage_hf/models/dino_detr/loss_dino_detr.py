"""DINO's training targets and losses: contrastive denoising queries and the set losses of every prediction stage.

The matching (focal / L1 / GIoU costs) and the per-stage loss terms (sigmoid focal, L1 and GIoU, normalised by the
number of target boxes, averaged over processes) are Transformers' Deformable DETR ones: the same mathematics as the
official head. Written here: the denoising groups, laid out exactly as the official `CdnQueryGenerator` (positive then
negative copies of every target per group, zero padding up to the largest image, the attention mask between groups),
and the sum over stages (every decoder layer, the encoder proposals, the denoising queries of every layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher, DeformableDetrImageLoss
from transformers.models.deformable_detr.modeling_deformable_detr import inverse_sigmoid

from .configuration_dino_detr import DinoDetrConfig

DENOISING_EPS = 1e-3  # inverse sigmoid of the noisy boxes, as the official generator


@dataclass
class DenoisingQueries:
    """The denoising part of the decoder input for a batch.

    Args:
        queries: `(N, P, D)` label embeddings of the noisy labels (zeros where an image has fewer targets).
        boxes: `(N, P, 4)` noisy boxes in logit space.
        attention_mask: `(P + Q, P + Q)` bool, True where a query may not attend (other groups; matching queries
            never see denoising ones).
        num_groups: groups of positive + negative copies.
        group_size: queries per half group (the largest number of targets of an image).
    """

    queries: torch.Tensor
    boxes: torch.Tensor
    attention_mask: torch.Tensor
    num_groups: int
    group_size: int

    @property
    def num_queries(self) -> int:
        return self.queries.shape[1]


def denoising_groups(
    labels: list[dict[str, torch.Tensor]],
    label_embeddings: nn.Embedding,
    num_denoising: int,
    num_queries: int,
    label_noise_ratio: float,
    box_noise_scale: float,
    generator: torch.Generator | None = None,
) -> DenoisingQueries:
    """Contrastive denoising queries of DINO (its `CdnQueryGenerator`), on any device.

    Every target appears in each group twice: a positive copy whose box corners move by less than half its size,
    and a negative copy moved by between one half and one size; a label is replaced by a random class with
    probability `label_noise_ratio / 2`. Groups: `num_denoising // (largest number of targets)`, at least one.

    Args:
        labels: per image `class_labels` `(T,)` and `boxes` `(T, 4)` (cx, cy, w, h relative to the image).
        label_embeddings: the detector's `(num_labels, D)` label embedding.
        num_denoising: the denoising query budget (`config.num_denoising`).
        num_queries: the matching queries that follow the denoising ones.
        label_noise_ratio: twice the probability of a random label.
        box_noise_scale: scale of the box noise.
        generator: the random generator (default: torch's global one).
    """
    device = label_embeddings.weight.device
    counts = [len(target["class_labels"]) for target in labels]
    group_size = max(counts)
    num_groups = max(num_denoising // group_size, 1) if group_size else 1
    class_labels = torch.cat([target["class_labels"] for target in labels]).to(device)
    boxes = torch.cat([target["boxes"] for target in labels]).to(device=device, dtype=torch.float32)
    image_index = torch.cat([torch.full((count,), index, device=device) for index, count in enumerate(counts)])

    copies = 2 * num_groups  # [group 0 positives, group 0 negatives, group 1 positives, ...]
    noisy_labels = class_labels.repeat(copies)
    if label_noise_ratio > 0:
        replace = _rand(noisy_labels.shape, generator, device) < label_noise_ratio * 0.5
        random_labels = _randint(label_embeddings.num_embeddings, noisy_labels.shape, generator, device)
        noisy_labels = torch.where(replace, random_labels, noisy_labels)
    noisy_boxes = boxes.repeat(copies, 1)
    if box_noise_scale > 0:
        noisy_boxes = _noisy_boxes(noisy_boxes, len(boxes), num_groups, box_noise_scale, generator)

    total = group_size * copies
    slot = torch.cat([torch.arange(count, device=device) for count in counts])
    slots = torch.cat([slot + group_size * copy for copy in range(copies)])
    images = image_index.repeat(copies)
    width = label_embeddings.embedding_dim
    queries = torch.zeros(len(labels), total, width, device=device, dtype=label_embeddings.weight.dtype)
    query_boxes = torch.zeros(len(labels), total, 4, device=device)
    queries[images, slots] = label_embeddings(noisy_labels)
    query_boxes[images, slots] = inverse_sigmoid(noisy_boxes, eps=DENOISING_EPS)
    mask = _group_attention_mask(total, num_queries, group_size, num_groups, device)
    return DenoisingQueries(queries, query_boxes, mask, num_groups, group_size)


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device if generator else device).to(device)


def _randint(high: int, shape, generator, device) -> torch.Tensor:
    values = torch.randint(0, high, shape, generator=generator, device=generator.device if generator else device)
    return values.to(device)


def _noisy_boxes(boxes: torch.Tensor, num_targets: int, num_groups: int, scale: float, generator) -> torch.Tensor:
    """Move each corner by `scale * rand * (w/2, h/2)`; negatives (the second half of each group) by 1 + rand."""
    corners = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], -1)
    half_size = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:] / 2], -1)
    sign = _randint(2, boxes.shape, generator, boxes.device).to(boxes.dtype) * 2.0 - 1.0
    part = _rand(boxes.shape, generator, boxes.device)
    negative = torch.arange(len(boxes), device=boxes.device) // num_targets % 2 == 1
    part = part + negative[:, None].to(part.dtype)
    corners = (corners + part * sign * half_size * scale).clamp(0.0, 1.0)
    return torch.cat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], -1)


def _group_attention_mask(total: int, num_queries: int, group_size: int, num_groups: int, device) -> torch.Tensor:
    """True where a query may not attend: matching queries never see denoising ones, a group sees only itself."""
    size = total + num_queries
    blocked = torch.zeros(size, size, dtype=torch.bool, device=device)
    blocked[total:, :total] = True
    span = 2 * group_size
    for group in range(num_groups):
        rows = slice(span * group, span * (group + 1))
        blocked[rows, : span * group] = True
        blocked[rows, span * (group + 1) : total] = True
    return blocked


def denoising_indices(labels: list[dict[str, torch.Tensor]], denoising: DenoisingQueries) -> list[tuple]:
    """(query indices, target indices) per image: target j is matched to its positive copy in every group."""
    indices = []
    for target in labels:
        count = len(target["class_labels"])
        device = target["class_labels"].device
        targets = torch.arange(count, device=device).repeat(denoising.num_groups)
        groups = torch.arange(denoising.num_groups, device=device).repeat_interleave(count)
        indices.append((groups * 2 * denoising.group_size + targets, targets))
    return indices


class DinoDetrLoss(nn.Module):
    """The weighted DINO loss of one batch.

    Args:
        config (`DinoDetrConfig`): matching costs, focal parameters and loss weights.
    """

    def __init__(self, config: DinoDetrConfig) -> None:
        super().__init__()
        matcher = DeformableDetrHungarianMatcher(
            class_cost=config.class_cost, bbox_cost=config.bbox_cost, giou_cost=config.giou_cost
        )
        self.criterion = DeformableDetrImageLoss(
            matcher=matcher, num_classes=config.num_labels, focal_alpha=config.focal_alpha, losses=["labels", "boxes"]
        )
        self.weights = {
            "loss_ce": config.class_loss_coefficient,
            "loss_bbox": config.bbox_loss_coefficient,
            "loss_giou": config.giou_loss_coefficient,
        }
        self.auxiliary_loss = config.auxiliary_loss

    def forward(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        encoder_logits: torch.Tensor,
        encoder_boxes: torch.Tensor,
        labels: list[dict[str, torch.Tensor]],
        denoising: DenoisingQueries | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its terms.

        Args:
            logits: `(N, L, P + Q, C)` class logits of every decoder layer (denoising queries first).
            boxes: `(N, L, P + Q, 4)` their boxes.
            encoder_logits / encoder_boxes: the selected encoder proposals `(N, Q, C)` / `(N, Q, 4)`.
            labels: per image `class_labels` `(T,)` and `boxes` `(T, 4)`.
            denoising: the denoising queries of this batch (P of them), or None.

        Returns:
            The weighted sum and a dict of every term: `loss_ce`, `loss_bbox`, `loss_giou` of the last layer,
            `..._<i>` of layer i, `..._enc` of the proposals, `..._dn` / `..._dn_<i>` of the denoising queries.
        """
        split = denoising.num_queries if denoising is not None else 0
        stages = {"": (logits[:, -1, split:], boxes[:, -1, split:])}
        if self.auxiliary_loss:
            for layer in range(logits.shape[1] - 1):
                stages[f"_{layer}"] = (logits[:, layer, split:], boxes[:, layer, split:])
            stages["_enc"] = (encoder_logits, encoder_boxes)
        num_boxes = _mean_over_processes(sum(len(target["class_labels"]) for target in labels), logits.device)
        terms = {}
        for suffix, (stage_logits, stage_boxes) in stages.items():
            stage = {"logits": stage_logits, "pred_boxes": stage_boxes}
            terms.update(self._stage_terms(stage, labels, self.criterion.matcher(stage, labels), num_boxes, suffix))
        if denoising is not None:
            indices = denoising_indices(labels, denoising)
            num_targets = sum(len(target["class_labels"]) for target in labels)
            num_denoised = _mean_over_processes(denoising.num_groups * num_targets, logits.device)
            layers = range(logits.shape[1]) if self.auxiliary_loss else [logits.shape[1] - 1]
            for layer in layers:
                stage = {"logits": logits[:, layer, :split], "pred_boxes": boxes[:, layer, :split]}
                suffix = "_dn" if layer == logits.shape[1] - 1 else f"_dn_{layer}"
                terms.update(self._stage_terms(stage, labels, indices, num_denoised, suffix))
        total = sum(value * self.weights[_base_name(name)] for name, value in terms.items())
        return total, terms

    def _stage_terms(self, stage: dict, labels: list[dict], indices: list, num_boxes: float, suffix: str) -> dict:
        terms = {}
        for kind in ("labels", "boxes"):
            stage_terms = self.criterion.get_loss(kind, stage, labels, indices, max(num_boxes, 1.0))
            terms.update({name + suffix: value for name, value in stage_terms.items()})
        return terms


def _base_name(term: str) -> str:
    return next(name for name in ("loss_ce", "loss_bbox", "loss_giou") if term.startswith(name))


def _mean_over_processes(value: int, device) -> float:
    """`value` averaged over the processes of an Accelerate run (the official `reduce_mean`), else itself.

    Transformers' detection losses divide that mean by the number of processes once more; the target count is
    therefore computed here and passed to their per-term functions.
    """
    try:
        from accelerate import PartialState
        from accelerate.utils import reduce
    except ImportError:
        return float(value)
    if PartialState._shared_state == {}:
        return float(value)
    return float(reduce(torch.tensor([float(value)], device=device), reduction="mean"))


__all__ = ["DenoisingQueries", "DinoDetrLoss", "denoising_groups", "denoising_indices"]
