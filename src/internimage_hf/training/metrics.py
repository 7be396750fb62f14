"""Classification metrics and losses used by the training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the top-k logits, per k (k is capped at the class count)."""
    max_k = min(max(ks), logits.shape[-1])
    top = logits.topk(max_k, dim=-1).indices
    hits = top.eq(labels.unsqueeze(-1))
    return {k: int(hits[:, : min(k, max_k)].any(dim=-1).sum()) for k in ks}


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy with label smoothing; `targets` are class indices or (MixUp/CutMix) class probabilities."""
    logits = logits.float()
    if targets.is_floating_point():
        if label_smoothing > 0:
            targets = targets * (1.0 - label_smoothing) + label_smoothing / logits.shape[-1]
        return F.cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
