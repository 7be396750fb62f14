"""Official InternImage weight names -> this model's names: the renames the model needs to read official weights.

Two official formats exist:

- the released `.pth` files (weights under ``"model"``), named like ``levels.0.blocks.0.dcn.offset.weight``;
- the official hub repos (remote code), named ``"model." + official key`` with ``gamma1/2`` -> ``layer_scale1/2``.

Both are described by one ordered list of regex renames over the official key (`OFFICIAL_KEY_RULES`), which also
covers FlashInternImage (OpenGVLab/DCNv4): its names are InternImage's except inside the DCNv4 operator.
`InternImagePreTrainedModel.from_pretrained` reads the hub format through `official_hub_key_mapping`; the
checkpoint converter (`internimage_hf.conversion.keys`) applies the same rules to whole state dicts.
"""

from __future__ import annotations

# (pattern, replacement) applied in order to an official key. Patterns starting with "^" are anchored at the
# start of the official key; the others only match name fragments that never occur in this package's names.
OFFICIAL_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^head\.", "classifier."),
    (r"^patch_embed\.conv(\d)\.", r"internimage.embeddings.conv\1."),
    (r"^patch_embed\.norm(\d)\.1\.", r"internimage.embeddings.norm\1."),
    (r"^levels\.", "internimage.encoder.stages."),
    (r"^conv_head\.0\.", "head.conv."),
    (r"^conv_head\.1\.0\.", "head.norm."),
    (r"^dcnv3_head_x4\.0\.", "head.stage4_proj."),
    (r"^dcnv3_head_x3\.", "head.stage3_proj."),
    (r"^clip_projector\.", "head.attention_pool."),
    (r"^fc_norm\.0\.", "head.fc_norm."),
    (r"\.blocks\.", ".layers."),
    (r"\.dw_conv\.0\.", ".depthwise_conv."),
    (r"\.offset_mask_dw\.", ".depthwise_conv."),  # FlashInternImage (DCNv4): its plain depthwise convolution
    (r"\.dw_conv\.1\.1\.", ".depthwise_norm."),
    (r"\.norm1\.0\.", ".norm1."),
    (r"\.norm2\.0\.", ".norm2."),
    (r"\.res_post_norm1\.0\.", ".res_post_norm1."),
    (r"\.res_post_norm2\.0\.", ".res_post_norm2."),
    (r"\.gamma1$", ".layer_scale1"),
    (r"\.gamma2$", ".layer_scale2"),
    (r"\.post_norms\.(\d+)\.0\.", r".post_norms.\1."),
    (r"\.norm\.0\.", ".norm."),
    (r"\.downsample\.norm\.1\.", ".downsample.norm."),
    (r"\.norm1_q\.0\.", ".norm_q."),
    (r"\.norm1_k\.0\.", ".norm_k."),
    (r"\.norm1_v\.0\.", ".norm_v."),
    (r"\.cross_dcn\.", ".cross_attention."),
)

HUB_PREFIX = "model."


def official_hub_key_mapping() -> dict[str, str]:
    """`key_mapping` for `from_pretrained` that reads the official hub repos' ``model.``-prefixed names."""
    return {
        (r"^model\." + pattern[1:] if pattern.startswith("^") else pattern): replacement
        for pattern, replacement in OFFICIAL_KEY_RULES
    }


__all__ = ["HUB_PREFIX", "OFFICIAL_KEY_RULES", "official_hub_key_mapping"]
