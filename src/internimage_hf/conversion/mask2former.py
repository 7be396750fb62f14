"""Official InternImage Mask2Former checkpoints -> `transformers.Mask2FormerForUniversalSegmentation`.

The official segmentation repo trains Mask2Former with its own copy of mmdet 2.x's head
(``segmentation/mmseg_custom``: `Mask2FormerHead`, `MSDeformAttnPixelDecoder`, mmcv 1.x `DetrTransformerDecoder`),
so the checkpoints use mmcv 1.x module names under ``decode_head.``:

- pixel decoder: ``pixel_decoder.input_convs.{i}.conv|gn`` (i = 0 is the stride-32 level), the deformable encoder
  ``pixel_decoder.encoder.layers.{l}.attentions.0`` / ``ffns.0.layers.0.0`` / ``ffns.0.layers.1`` / ``norms.{0,1}``,
  ``level_encoding`` (an Embedding), ``lateral_convs.{i}`` / ``output_convs.{i}`` (FPN on the stride-4 map) and
  ``mask_feature``;
- transformer decoder ``transformer_decoder.layers.{l}`` with operation order (cross_attn, norm, self_attn, norm, ffn,
  norm): ``attentions.0`` is the masked cross-attention, ``attentions.1`` the self-attention (both
  `nn.MultiheadAttention` with a packed ``in_proj``), ``norms.{0,1,2}`` follow that order; ``post_norm`` is applied
  before every prediction;
- ``query_embed`` (positional), ``query_feat`` (content), ``level_embed``, ``cls_embed`` (num_classes + 1, the last
  is "no object"), ``mask_embed.{0,2,4}`` (a 3-layer MLP), optional ``decoder_input_projs.{i}``.

Transformers' module tree is the same computation (the levels run from low to high resolution in both; the sine
position encodings are normalised the same way, offset 0 and eps 1e-6); only the self-attention differs in layout: its
packed ``in_proj`` becomes separate ``q_proj``/``k_proj``/``v_proj`` linears.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from transformers import Mask2FormerConfig

from .errors import ConversionError, unknown_keys_error
from .keys import convert_official_backbone_key, split_backbone_state_dict

HEAD_PREFIX = "decode_head."
HF_BACKBONE_PREFIX = "model.pixel_level_module.encoder."
_PIXEL = "model.pixel_level_module.decoder."
_TRANSFORMER = "model.transformer_module."
_DECODER = _TRANSFORMER + "decoder."

# What Transformers' Mask2Former fixes in code (not in its config): three feature levels in the pixel decoder and
# the transformer decoder, four sampling points per head and level, GroupNorm with 32 groups.
NUM_FEATURE_LEVELS = 3
NUM_POINTS = 4
# The official configs' "no object" class weight (``class_weight=[1.0] * num_classes + [0.1]``).
NO_OBJECT_WEIGHT = 0.1

# (pattern, replacement) over the key after ``decode_head.``; the first matching rule applies.
MASK2FORMER_HEAD_RULES: tuple[tuple[str, str], ...] = (
    (r"^pixel_decoder\.input_convs\.(\d+)\.conv\.", _PIXEL + r"input_projections.\1.0."),
    (r"^pixel_decoder\.input_convs\.(\d+)\.gn\.", _PIXEL + r"input_projections.\1.1."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.attentions\.0\.", _PIXEL + r"encoder.layers.\1.self_attn."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.", _PIXEL + r"encoder.layers.\1.fc1."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.", _PIXEL + r"encoder.layers.\1.fc2."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.", _PIXEL + r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.norms\.1\.", _PIXEL + r"encoder.layers.\1.final_layer_norm."),
    (r"^pixel_decoder\.level_encoding\.weight$", _PIXEL + "level_embed"),
    # The official forward applies lateral_convs[i] / output_convs[i] to backbone level i; Transformers names the
    # modules of level i adapter_{i+1} / layer_{i+1}.
    (r"^pixel_decoder\.lateral_convs\.(\d+)\.(conv|gn)\.", lambda m: _fpn_name("adapter", m)),
    (r"^pixel_decoder\.output_convs\.(\d+)\.(conv|gn)\.", lambda m: _fpn_name("layer", m)),
    (r"^pixel_decoder\.mask_feature\.", _PIXEL + "mask_projection."),
    (r"^transformer_decoder\.layers\.(\d+)\.attentions\.0\.attn\.", _DECODER + r"layers.\1.cross_attn."),
    (
        r"^transformer_decoder\.layers\.(\d+)\.attentions\.1\.attn\.out_proj\.",
        _DECODER + r"layers.\1.self_attn.out_proj.",
    ),
    (r"^transformer_decoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.", _DECODER + r"layers.\1.fc1."),
    (r"^transformer_decoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.", _DECODER + r"layers.\1.fc2."),
    (r"^transformer_decoder\.layers\.(\d+)\.norms\.0\.", _DECODER + r"layers.\1.cross_attn_layer_norm."),
    (r"^transformer_decoder\.layers\.(\d+)\.norms\.1\.", _DECODER + r"layers.\1.self_attn_layer_norm."),
    (r"^transformer_decoder\.layers\.(\d+)\.norms\.2\.", _DECODER + r"layers.\1.final_layer_norm."),
    (r"^transformer_decoder\.post_norm\.", _DECODER + "layernorm."),
    (r"^decoder_input_projs\.(\d+)\.", _TRANSFORMER + r"input_projections.\1."),
    (r"^query_embed\.", _TRANSFORMER + "queries_embedder."),
    (r"^query_feat\.", _TRANSFORMER + "queries_features."),
    (r"^level_embed\.", _TRANSFORMER + "level_embed."),
    (r"^cls_embed\.", "class_predictor."),
    (r"^mask_embed\.(0|2|4)\.", lambda m: f"{_DECODER}mask_predictor.mask_embedder.{int(m.group(1)) // 2}.0."),
)
# The self-attention's packed projection: rows [q; k; v], split into Transformers' three linears.
_SELF_ATTN_IN_PROJ = re.compile(r"^transformer_decoder\.layers\.(\d+)\.attentions\.1\.attn\.in_proj_(weight|bias)$")


def _fpn_name(kind: str, match: re.Match) -> str:
    index, part = int(match.group(1)), {"conv": 0, "gn": 1}[match.group(2)]
    return f"{_PIXEL}{kind}_{index + 1}.{part}."


def convert_mask2former_head_key(key: str) -> str:
    """One official ``decode_head.*`` key -> its Transformers name (the self-attention ``in_proj`` excepted).

    Raises `ValueError` for keys outside the official head (and for the packed self-attention projection, which
    is not a rename: see `convert_mask2former_state_dict`).
    """
    if not key.startswith(HEAD_PREFIX):
        raise ValueError(f"{key!r} is neither a backbone nor a Mask2Former decode head weight")
    name = key.removeprefix(HEAD_PREFIX)
    for pattern, replacement in MASK2FORMER_HEAD_RULES:
        renamed, count = re.subn(pattern, replacement, name, count=1)
        if count:
            return renamed
    raise ValueError(f"{key!r} is not a weight of the official Mask2Former head")


def split_in_proj(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """``...attentions.1.attn.in_proj_weight`` (3E, E) -> ``self_attn.{q,k,v}_proj.weight`` (E, E) each."""
    match = _SELF_ATTN_IN_PROJ.match(key.removeprefix(HEAD_PREFIX))
    if match is None:
        raise ValueError(f"{key!r} is not a packed self-attention projection")
    layer, kind = match.groups()
    if tensor.shape[0] % 3:
        raise ConversionError(f"{key}: {tensor.shape[0]} rows, not three equal q/k/v blocks")
    query, key_part, value = tensor.chunk(3, dim=0)
    prefix = f"{_DECODER}layers.{layer}.self_attn."
    return {f"{prefix}q_proj.{kind}": query, f"{prefix}k_proj.{kind}": key_part, f"{prefix}v_proj.{kind}": value}


def convert_mask2former_head_state_dict(head: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``decode_head.*`` weights -> `Mask2FormerForUniversalSegmentation` names (without the backbone).

    Raises `ConversionError` naming the keys that are no weight of the official head. Adds the loss's
    ``criterion.empty_weight`` buffer (1 per class, `NO_OBJECT_WEIGHT` for "no object"), which the
    official head keeps as a plain list (``loss_cls.class_weight``) rather than in the checkpoint.
    """
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in head.items():
        if _SELF_ATTN_IN_PROJ.match(key.removeprefix(HEAD_PREFIX)):
            converted.update(split_in_proj(key, tensor))
            continue
        try:
            converted[convert_mask2former_head_key(key)] = tensor
        except ValueError:
            unknown.append(key)
    if unknown:
        raise unknown_keys_error(unknown, "the official Mask2Former head")
    classes = converted.get("class_predictor.weight")
    if classes is not None:
        empty_weight = torch.ones(classes.shape[0], dtype=classes.dtype)
        empty_weight[-1] = NO_OBJECT_WEIGHT
        converted["criterion.empty_weight"] = empty_weight
    return converted


def convert_mask2former_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official InternImage Mask2Former state dict -> `Mask2FormerForUniversalSegmentation` names.

    ``backbone.<official key>`` -> ``model.pixel_level_module.encoder.<InternImageBackbone key>``; ``decode_head.*``
    as `convert_mask2former_head_state_dict` (`ConversionError` for keys outside the head). Raises `ValueError` on
    keys that are neither backbone nor head.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        raise ValueError("pass the weights, `checkpoint['state_dict']`, not the whole checkpoint")
    backbone, head = split_backbone_state_dict(state_dict)
    converted = {HF_BACKBONE_PREFIX + convert_official_backbone_key(k): v for k, v in backbone.items()}
    converted.update(convert_mask2former_head_state_dict(head))
    return converted


def has_mask2former_head(head: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(HEAD_PREFIX + "transformer_decoder.") for k in head)


def _count(head: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many distinct indices `pattern` (one group) takes over the head keys."""
    return len({m.group(1) for k in head if (m := re.match(HEAD_PREFIX + pattern, k))})


def _weight(head: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    tensor = head.get(HEAD_PREFIX + name)
    if tensor is None:
        raise ConversionError(f"official Mask2Former head incomplete: {HEAD_PREFIX + name} missing")
    return tensor


def infer_num_heads(head: Mapping[str, torch.Tensor]) -> int:
    """Attention heads from the deformable attention's offsets: rows = heads x 3 levels x 4 points x 2."""
    rows = _weight(head, "pixel_decoder.encoder.layers.0.attentions.0.sampling_offsets.weight").shape[0]
    per_head = NUM_FEATURE_LEVELS * NUM_POINTS * 2
    if rows % per_head:
        raise ConversionError(
            f"the pixel decoder's sampling offsets have {rows} rows, not heads x {NUM_FEATURE_LEVELS} levels x "
            f"{NUM_POINTS} points x 2, the only layout Transformers' Mask2Former has"
        )
    return rows // per_head


def build_mask2former_config(
    backbone_config, head: Mapping[str, torch.Tensor], num_heads: int | None = None
) -> Mask2FormerConfig:
    """`Mask2FormerConfig` whose sizes are read off the official head weights (``decode_head.*`` names).

    `num_heads` (from a release table) is checked against the weights; without it the head count is inferred
    assuming 4 sampling points. Settings Transformers cannot express raise a `ConversionError` naming them.
    """
    levels = _weight(head, "pixel_decoder.level_encoding.weight").shape[0]
    if levels != NUM_FEATURE_LEVELS or _weight(head, "level_embed.weight").shape[0] != NUM_FEATURE_LEVELS:
        raise ConversionError(f"{levels} feature levels; Transformers' Mask2Former always uses {NUM_FEATURE_LEVELS}")
    num_fpn = _count(head, r"pixel_decoder\.lateral_convs\.(\d+)\.")
    if num_fpn != 1:
        raise ConversionError(f"{num_fpn} extra FPN levels; with strides 4-32 and 3 encoder levels Transformers has 1")
    inferred_heads = infer_num_heads(head)
    if num_heads is not None and num_heads != inferred_heads:
        raise ConversionError(
            f"the release has {num_heads} attention heads but its sampling offsets give {inferred_heads} with "
            f"{NUM_POINTS} points: the checkpoint uses another number of sampling points, which Transformers' "
            "Mask2Former cannot express"
        )
    query_feat = _weight(head, "query_feat.weight")
    feature_size = int(_weight(head, "pixel_decoder.input_convs.0.conv.weight").shape[0])
    return Mask2FormerConfig(
        backbone_config=backbone_config,
        feature_size=feature_size,
        mask_feature_size=int(_weight(head, "pixel_decoder.mask_feature.weight").shape[0]),
        hidden_dim=int(query_feat.shape[1]),
        num_queries=int(query_feat.shape[0]),
        num_attention_heads=inferred_heads,
        encoder_layers=_count(head, r"pixel_decoder\.encoder\.layers\.(\d+)\."),
        # Transformers counts the query initialisation as a decoder layer (it builds decoder_layers - 1 layers)
        decoder_layers=_count(head, r"transformer_decoder\.layers\.(\d+)\.") + 1,
        encoder_feedforward_dim=int(_weight(head, "pixel_decoder.encoder.layers.0.ffns.0.layers.0.0.weight").shape[0]),
        dim_feedforward=int(_weight(head, "transformer_decoder.layers.0.ffns.0.layers.0.0.weight").shape[0]),
        enforce_input_projection=any(k.startswith(HEAD_PREFIX + "decoder_input_projs.") for k in head),
        no_object_weight=NO_OBJECT_WEIGHT,
        num_labels=int(_weight(head, "cls_embed.weight").shape[0]) - 1,
    )


__all__ = [
    "MASK2FORMER_HEAD_RULES",
    "build_mask2former_config",
    "convert_mask2former_head_key",
    "convert_mask2former_head_state_dict",
    "convert_mask2former_state_dict",
    "has_mask2former_head",
    "infer_num_heads",
]
