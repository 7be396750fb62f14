"""The official InternImage Mask2Former head's weight names and shapes (mmcv 1.x modules of the official repo's
``segmentation/mmseg_custom``), written out from its module structure, for synthetic checkpoints in official layout.

`tests/reference/test_mask2former_reference.py` checks this layout against the weights of mmdet's own head.
"""

from __future__ import annotations

import torch

LEVELS, POINTS = 3, 4
# Head sizes for tests: the official head of the 256-d releases (Cityscapes, Mapillary, Pascal-Context, NYU) at
# full size, and the 1024-d one (ADE20K, COCO-Stuff: 32 heads, 200 queries) scaled down to 64-d, 2 heads, 12 queries.
CITYSCAPES_HEAD = dict(
    dim=256, heads=8, enc_layers=6, dec_layers=9, enc_ffn=1024, dec_ffn=2048, queries=100, classes=19
)
SMALL_HEAD = dict(dim=64, heads=2, enc_layers=2, dec_layers=4, enc_ffn=256, dec_ffn=256, queries=12, classes=150)


def official_head_shapes(
    in_channels, dim, heads, enc_layers, dec_layers, enc_ffn, dec_ffn, queries, classes
) -> dict[str, tuple[int, ...]]:
    """``decode_head.*`` key -> shape, for `feat_channels = out_channels = embed_dims = dim`."""
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name, rows, cols):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (rows, cols), (rows,)

    def norm(name):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (dim,), (dim,)

    # ConvModule(conv, GN): input convs for the three lowest resolutions, stride 32 first, with a conv bias
    for i, channels in enumerate(reversed(in_channels[-LEVELS:])):
        shapes[f"pixel_decoder.input_convs.{i}.conv.weight"] = (dim, channels, 1, 1)
        shapes[f"pixel_decoder.input_convs.{i}.conv.bias"] = (dim,)
        norm(f"pixel_decoder.input_convs.{i}.gn")
    for layer in range(enc_layers):  # BaseTransformerLayer(self_attn, norm, ffn, norm)
        prefix = f"pixel_decoder.encoder.layers.{layer}."
        linear(prefix + "attentions.0.sampling_offsets", heads * LEVELS * POINTS * 2, dim)
        linear(prefix + "attentions.0.attention_weights", heads * LEVELS * POINTS, dim)
        linear(prefix + "attentions.0.value_proj", dim, dim)
        linear(prefix + "attentions.0.output_proj", dim, dim)
        linear(prefix + "ffns.0.layers.0.0", enc_ffn, dim)
        linear(prefix + "ffns.0.layers.1", dim, enc_ffn)
        norm(prefix + "norms.0")
        norm(prefix + "norms.1")
    shapes["pixel_decoder.level_encoding.weight"] = (LEVELS, dim)
    # FPN on the stride-4 map: convs without bias (GN follows)
    shapes["pixel_decoder.lateral_convs.0.conv.weight"] = (dim, in_channels[0], 1, 1)
    norm("pixel_decoder.lateral_convs.0.gn")
    shapes["pixel_decoder.output_convs.0.conv.weight"] = (dim, dim, 3, 3)
    norm("pixel_decoder.output_convs.0.gn")
    shapes["pixel_decoder.mask_feature.weight"] = (dim, dim, 1, 1)
    shapes["pixel_decoder.mask_feature.bias"] = (dim,)
    for layer in range(dec_layers):  # DetrTransformerDecoderLayer(cross_attn, norm, self_attn, norm, ffn, norm)
        prefix = f"transformer_decoder.layers.{layer}."
        for attention in (0, 1):
            shapes[f"{prefix}attentions.{attention}.attn.in_proj_weight"] = (3 * dim, dim)
            shapes[f"{prefix}attentions.{attention}.attn.in_proj_bias"] = (3 * dim,)
            linear(f"{prefix}attentions.{attention}.attn.out_proj", dim, dim)
        linear(prefix + "ffns.0.layers.0.0", dec_ffn, dim)
        linear(prefix + "ffns.0.layers.1", dim, dec_ffn)
        for index in range(3):
            norm(f"{prefix}norms.{index}")
    norm("transformer_decoder.post_norm")
    shapes["query_embed.weight"] = shapes["query_feat.weight"] = (queries, dim)
    shapes["level_embed.weight"] = (LEVELS, dim)
    linear("cls_embed", classes + 1, dim)
    for index in (0, 2, 4):
        linear(f"mask_embed.{index}", dim, dim)
    return {"decode_head." + key: shape for key, shape in shapes.items()}


def random_official_head(seed: int, **sizes) -> dict[str, torch.Tensor]:
    """Random weights in official names (std 0.5 / sqrt(fan-in), norm scales around 1)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in official_head_shapes(**sizes).items():
        noise = torch.randn(shape, generator=generator)
        is_norm_scale = key.endswith(".weight") and len(shape) == 1
        weights[key] = 1.0 + 0.2 * noise if is_norm_scale else 0.5 * noise / shape[-1] ** 0.5
    return weights
