"""The model families the converter knows: InternImage (DCNv3) and FlashInternImage (DCNv4).

Both share the official key layout (`OFFICIAL_KEY_RULES`); the family decides the configuration class, the presets
and the model classes. A checkpoint's family is read off its DCN weights: DCNv3 has a separate `dcn.mask`
projection, DCNv4 one fused `dcn.offset_mask` projection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..models.flash_internimage.configuration_flash_internimage import FLASH_PRESETS, FlashInternImageConfig
from ..models.flash_internimage.modeling_flash_internimage import (
    FlashInternImageBackbone,
    FlashInternImageForImageClassification,
)
from ..models.internimage.configuration_internimage import PRESETS, InternImageConfig
from ..models.internimage.modeling_internimage import InternImageBackbone, InternImageForImageClassification
from .errors import ConversionError


@dataclass(frozen=True)
class ModelFamily:
    """One family: its `model_type`, display name, configuration class, official sizes and model classes."""

    model_type: str
    display_name: str
    config_class: type[InternImageConfig]
    presets: Mapping[str, dict]
    classification_class: type
    backbone_class: type


INTERNIMAGE = ModelFamily(
    "internimage", "InternImage", InternImageConfig, PRESETS, InternImageForImageClassification, InternImageBackbone
)
FLASH_INTERNIMAGE = ModelFamily(
    "flash_internimage",
    "FlashInternImage",
    FlashInternImageConfig,
    FLASH_PRESETS,
    FlashInternImageForImageClassification,
    FlashInternImageBackbone,
)
FAMILIES: dict[str, ModelFamily] = {family.model_type: family for family in (INTERNIMAGE, FLASH_INTERNIMAGE)}

# Official key endings of the two operators' projections (DCNv3: separate offset and mask; DCNv4: fused).
DCNV3_MASK_SUFFIX = ".dcn.mask.weight"
DCNV4_OFFSET_MASK_SUFFIX = ".dcn.offset_mask.weight"


def detect_family(backbone_state_dict: Mapping[str, torch.Tensor]) -> ModelFamily:
    """The family of official backbone weights: FlashInternImage when its blocks have `dcn.offset_mask` and no
    `dcn.mask`, InternImage otherwise (weights without blocks are left to the strict key check)."""
    has_v3 = any(key.endswith(DCNV3_MASK_SUFFIX) for key in backbone_state_dict)
    has_v4 = any(key.endswith(DCNV4_OFFSET_MASK_SUFFIX) for key in backbone_state_dict)
    if has_v3 and has_v4:
        raise ConversionError(
            f"the checkpoint mixes DCNv3 ({DCNV3_MASK_SUFFIX}) and DCNv4 ({DCNV4_OFFSET_MASK_SUFFIX}) operator weights"
        )
    return FLASH_INTERNIMAGE if has_v4 else INTERNIMAGE


def family_of(config: InternImageConfig) -> ModelFamily:
    """The family a configuration belongs to."""
    return FAMILIES[config.model_type]


# Constructor arguments only the official FlashInternImage has.
FLASH_ONLY_FIELDS = ("mlp_fc2_bias", "dcn_output_bias")


def family_from_config(kwargs: Mapping) -> ModelFamily | None:
    """The family a config file names: by `model_type` (this package's configs), else by the official `core_op` or a
    FlashInternImage-only field; `None` when it names none (the weights decide then)."""
    model_type = kwargs.get("model_type")
    if model_type is not None:
        if model_type not in FAMILIES:
            raise ConversionError(f"unknown model_type {model_type!r}; expected one of {sorted(FAMILIES)}")
        return FAMILIES[model_type]
    if kwargs.get("core_op") == "DCNv4" or any(name in kwargs for name in FLASH_ONLY_FIELDS):
        return FLASH_INTERNIMAGE
    return INTERNIMAGE if "core_op" in kwargs else None


__all__ = [
    "FAMILIES",
    "FLASH_INTERNIMAGE",
    "INTERNIMAGE",
    "ModelFamily",
    "detect_family",
    "family_from_config",
    "family_of",
]
