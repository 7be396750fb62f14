"""Official InternImage checkpoint names -> this package's names.

Two official formats exist:

- the released `.pth` files (weights under ``"model"``), named like ``levels.0.blocks.0.dcn.offset.weight``;
- the official hub repos (remote code), named ``"model." + official key`` with ``gamma1/2`` -> ``layer_scale1/2``.

Both are described by one ordered list of regex renames over the official key, `OFFICIAL_KEY_RULES`, which lives
with the model (`internimage_hf.models.internimage.checkpoint_keys`: the model reads official hub weights with it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..models.internimage.checkpoint_keys import HUB_PREFIX, OFFICIAL_KEY_RULES


def convert_official_key(key: str) -> str:
    """Rename one official key (`.pth` or hub format) to this package's name."""
    key = key.removeprefix(HUB_PREFIX)
    for pattern, replacement in OFFICIAL_KEY_RULES:
        key = re.sub(pattern, replacement, key)
    return key


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert an official InternImage state dict to the names of `InternImageForImageClassification`.

    Accepts the released `.pth` names (pass ``checkpoint["model"]``) and the official hub names.
    The result loads with `model.load_state_dict(..., strict=True)`; `InternImageModel` and
    `InternImageBackbone` take the keys under ``internimage.`` with that prefix removed.

    Args:
        state_dict: the official weights, keyed by the `.pth` or hub names.

    Returns:
        The same tensors under this package's names.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        raise ValueError("pass the weights, `checkpoint['model']`, not the whole released checkpoint")
    return {convert_official_key(key): tensor for key, tensor in state_dict.items()}


# ---------------------------------------------------------------------------------------------------------------
# Detection / segmentation checkpoints (mmdet / mmseg)
#
# They store ``{"state_dict": {...}}`` (sometimes with a ``module.`` prefix from DistributedDataParallel). The
# InternImage backbone keys are the official names under ``backbone.``; an mmseg UperNet adds ``decode_head.*``
# (UPerHead) and ``auxiliary_head.*`` (FCNHead), whose ConvModules name their BatchNorm ``bn`` and whose
# classifier is ``conv_seg``.
# ---------------------------------------------------------------------------------------------------------------

DDP_PREFIX = "module."
BACKBONE_PREFIX = "backbone."
BASE_MODEL_PREFIX = "internimage."
UPERNET_HEAD_PREFIXES = ("decode_head.", "auxiliary_head.")

# mmseg UPerHead / FCNHead names -> `transformers.UperNetForSemanticSegmentation` names. The module tree is the
# same (psp_modules.{i}.1, bottleneck, lateral_convs.{i}, fpn_convs.{i}, fpn_bottleneck, convs.{i}, conv_cat);
# only the BatchNorm and the classifier are named differently.
MMSEG_HEAD_RULES: tuple[tuple[str, str], ...] = (
    (r"\.bn\.", ".batch_norm."),
    (r"\.conv_seg\.", ".classifier."),
)


def strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix that DistributedDataParallel adds to every key."""
    return {key.removeprefix(DDP_PREFIX): value for key, value in state_dict.items()}


def convert_official_backbone_key(key: str) -> str:
    """Official key -> name inside `InternImageModel` / `InternImageBackbone` (no ``internimage.`` prefix)."""
    converted = convert_official_key(key)
    if not converted.startswith(BASE_MODEL_PREFIX):
        raise ValueError(f"{key!r} is not a backbone weight (it belongs to the classification head)")
    return converted.removeprefix(BASE_MODEL_PREFIX)


def split_backbone_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an mmdet/mmseg state dict into (official backbone weights without ``backbone.``, everything else)."""
    backbone, rest = {}, {}
    for key, value in strip_ddp_prefix(state_dict).items():
        if key.startswith(BACKBONE_PREFIX):
            backbone[key.removeprefix(BACKBONE_PREFIX)] = value
        else:
            rest[key] = value
    return backbone, rest


def convert_mmseg_head_key(key: str) -> str:
    """``decode_head.bottleneck.bn.weight`` -> ``decode_head.bottleneck.batch_norm.weight`` (and conv_seg)."""
    if not key.startswith(UPERNET_HEAD_PREFIXES):
        raise ValueError(f"{key!r} is neither a backbone nor an UperNet decode/auxiliary head weight")
    for pattern, replacement in MMSEG_HEAD_RULES:
        key = re.sub(pattern, replacement, key)
    return key


def convert_mmseg_upernet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert an official InternImage UperNet (mmseg) state dict to `UperNetForSemanticSegmentation` names.

    ``backbone.<official key>`` -> ``backbone.<InternImageBackbone key>``; ``decode_head.*`` and
    ``auxiliary_head.*`` keep their module paths with ``bn`` -> ``batch_norm`` and ``conv_seg`` -> ``classifier``.
    Raises `ValueError` on any other key (e.g. a detection neck).
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        raise ValueError("pass the weights, `checkpoint['state_dict']`, not the whole mmseg checkpoint")
    backbone, heads = split_backbone_state_dict(state_dict)
    converted = {BACKBONE_PREFIX + convert_official_backbone_key(k): v for k, v in backbone.items()}
    converted.update({convert_mmseg_head_key(k): v for k, v in heads.items()})
    return converted


__all__ = [
    "MMSEG_HEAD_RULES",
    "convert_mmseg_head_key",
    "convert_mmseg_upernet_state_dict",
    "convert_official_backbone_key",
    "convert_official_key",
    "convert_official_state_dict",
    "split_backbone_state_dict",
    "strip_ddp_prefix",
]
