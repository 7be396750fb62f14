"""Official InternImage DINO detector weights (mmdet `DINO`: `backbone.*`, `neck.*`, `bbox_head.*`) -> the names of
`DinoDetrForObjectDetection`.

Everything is a rename except the decoder's self-attention, whose packed `in_proj_weight` / `in_proj_bias`
(`torch.nn.MultiheadAttention`) are split into the query, key and value projections of Transformers' attention.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .errors import unknown_keys_error
from .keys import BACKBONE_PREFIX, convert_official_backbone_key, strip_ddp_prefix

MODEL_PREFIX = "model."

_ENCODER = r"^bbox_head\.transformer\.encoder\.layers\.(\d+)\."
_DECODER = r"^bbox_head\.transformer\.decoder\.layers\.(\d+)\."

# (official pattern, our name); `\1`, `\2` keep the layer / branch indices. Searched in order, first match wins.
DINO_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^neck\.convs\.(\d+)\.conv\.", r"neck.input_projections.\1.0."),
    (r"^neck\.convs\.(\d+)\.gn\.", r"neck.input_projections.\1.1."),
    (r"^neck\.extra_convs\.(\d+)\.conv\.", r"neck.extra_projections.\1.0."),
    (r"^neck\.extra_convs\.(\d+)\.gn\.", r"neck.extra_projections.\1.1."),
    (r"^bbox_head\.transformer\.level_embeds$", "level_embeddings"),
    (r"^bbox_head\.transformer\.enc_output\.", "proposal_projection."),
    (r"^bbox_head\.transformer\.enc_output_norm\.", "proposal_layer_norm."),
    (r"^bbox_head\.transformer\.query_embed\.", "query_embeddings."),
    (_ENCODER + r"attentions\.0\.", r"encoder.layers.\1.self_attn."),
    (_ENCODER + r"norms\.0\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (_ENCODER + r"norms\.1\.", r"encoder.layers.\1.final_layer_norm."),
    (_ENCODER + r"ffns\.0\.layers\.0\.0\.", r"encoder.layers.\1.mlp.fc1."),
    (_ENCODER + r"ffns\.0\.layers\.1\.", r"encoder.layers.\1.mlp.fc2."),
    (
        _DECODER + r"attentions\.0\.attn\.out_proj\.",
        r"decoder.layers.\1.self_attn.o_proj.",
    ),
    (_DECODER + r"attentions\.1\.", r"decoder.layers.\1.encoder_attn."),
    (_DECODER + r"norms\.0\.", r"decoder.layers.\1.self_attn_layer_norm."),
    (_DECODER + r"norms\.1\.", r"decoder.layers.\1.encoder_attn_layer_norm."),
    (_DECODER + r"norms\.2\.", r"decoder.layers.\1.final_layer_norm."),
    (_DECODER + r"ffns\.0\.layers\.0\.0\.", r"decoder.layers.\1.mlp.fc1."),
    (_DECODER + r"ffns\.0\.layers\.1\.", r"decoder.layers.\1.mlp.fc2."),
    (r"^bbox_head\.transformer\.decoder\.ref_point_head\.0\.", "decoder.reference_points_head.layers.0."),
    (r"^bbox_head\.transformer\.decoder\.ref_point_head\.2\.", "decoder.reference_points_head.layers.1."),
    (r"^bbox_head\.transformer\.decoder\.norm\.", "decoder.layer_norm."),
    (r"^bbox_head\.cls_branches\.(\d+)\.", r"class_heads.\1."),
    (r"^bbox_head\.reg_branches\.(\d+)\.0\.", r"box_heads.\1.layers.0."),
    (r"^bbox_head\.reg_branches\.(\d+)\.2\.", r"box_heads.\1.layers.1."),
    (r"^bbox_head\.reg_branches\.(\d+)\.4\.", r"box_heads.\1.layers.2."),
    (r"^bbox_head\.label_embedding\.", "denoising_label_embeddings."),
)
PACKED_ATTENTION = re.compile(_DECODER + r"attentions\.0\.attn\.in_proj_(weight|bias)$")


def convert_official_dino_key(key: str) -> str:
    """One official DINO key (not a packed attention projection) -> its name in `DinoDetrForObjectDetection`."""
    if key.startswith(BACKBONE_PREFIX):
        return f"{MODEL_PREFIX}backbone.{convert_official_backbone_key(key.removeprefix(BACKBONE_PREFIX))}"
    for pattern, replacement in DINO_KEY_RULES:
        converted, count = re.subn(pattern, replacement, key)
        if count:
            return MODEL_PREFIX + converted
    raise ValueError(f"{key!r} is not a weight of the official InternImage DINO detector")


def convert_official_dino_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official DINO state dict (optionally with a DDP ``module.`` prefix) -> `DinoDetrForObjectDetection` names.

    Raises:
        ConversionError: keys that belong to no part of the detector (named in the message).
    """
    converted, unknown = {}, []
    for key, tensor in strip_ddp_prefix(state_dict).items():
        packed = PACKED_ATTENTION.match(key)
        if packed is None:
            try:
                converted[convert_official_dino_key(key)] = tensor
            except ValueError:
                unknown.append(key)
            continue
        layer, kind = packed.groups()
        query, key_part, value = tensor.chunk(3, dim=0)
        prefix = f"{MODEL_PREFIX}decoder.layers.{layer}.self_attn."
        for name, part in (("q_proj", query), ("k_proj", key_part), ("v_proj", value)):
            converted[f"{prefix}{name}.{kind}"] = part.clone()
    if unknown:
        raise unknown_keys_error(unknown, "the official InternImage DINO detector")
    return converted


__all__ = ["DINO_KEY_RULES", "convert_official_dino_key", "convert_official_dino_state_dict"]
