"""DINO object detector (Zhang et al., "DINO: DETR with Improved DeNoising Anchor Boxes", 2022) as Transformers classes.

The layout follows the official InternImage detectors (mmdet `DINO` with `ChannelMapper` and `DINOHead`): a backbone,
a channel mapper (1x1 conv + GroupNorm per backbone level, stride-2 3x3 conv + GroupNorm per extra level), a
deformable encoder, two-stage mixed query selection (positional queries from the top-scoring encoder proposals, learned
content queries) and a decoder that refines its boxes layer by layer. The encoder and decoder layers, the multi-scale
deformable attention and the box MLPs are Transformers' own Deformable DETR modules: the mathematics is the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import load_backbone
from transformers.modeling_outputs import ModelOutput
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrDecoderLayer,
    DeformableDetrEncoderLayer,
    DeformableDetrMLPPredictionHead,
    DeformableDetrMultiscaleDeformableAttention,
    inverse_sigmoid,
)

from .configuration_dino_detr import DinoDetrConfig
from .loss_dino_detr import DenoisingQueries, DinoDetrLoss, denoising_groups

# Clamp of the inverse sigmoid around box refinement, as the official DINO head (Deformable DETR uses 1e-5).
REFINE_EPS = 1e-3


@dataclass
class DinoDetrModelOutput(ModelOutput):
    r"""Outputs of `DinoDetrModel`, with N images, Q = denoising + `num_queries` queries, L decoder layers.

    Args:
        last_hidden_state (`(N, Q, d_model)`): the last decoder layer's output after the decoder's layer norm.
        intermediate_hidden_states (`(N, L, Q, d_model)`): every decoder layer's normalised output.
        intermediate_logits (`(N, L, Q, num_labels)`): class logits of every decoder layer.
        intermediate_pred_boxes (`(N, L, Q, 4)`): boxes (cx, cy, w, h, relative to the unpadded image) of every layer.
        intermediate_reference_points (`(N, L + 1, Q, 4)`): the reference boxes each decoder layer started from,
            then the last layer's refined boxes.
        encoder_last_hidden_state (`(N, S, d_model)`): the encoder output over all S flattened positions.
        encoder_topk_logits (`(N, num_queries, num_labels)`): class logits of the selected encoder proposals.
        encoder_topk_boxes (`(N, num_queries, 4)`): boxes of the selected encoder proposals.
    """

    last_hidden_state: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    intermediate_logits: torch.Tensor | None = None
    intermediate_pred_boxes: torch.Tensor | None = None
    intermediate_reference_points: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_topk_logits: torch.Tensor | None = None
    encoder_topk_boxes: torch.Tensor | None = None


@dataclass
class DinoDetrObjectDetectionOutput(ModelOutput):
    r"""Outputs of `DinoDetrForObjectDetection`.

    Args:
        loss (`()`, *optional*): the weighted sum of `loss_dict` (when `labels` are given).
        loss_dict (`dict`, *optional*): every loss term by name.
        logits (`(N, num_queries, num_labels)`): class logits of the last decoder layer (sigmoid scores).
        pred_boxes (`(N, num_queries, 4)`): boxes (cx, cy, w, h) relative to each image's unpadded size.
        auxiliary_outputs (`list[dict]`, *optional*): `logits`/`pred_boxes` of the other decoder layers.
        last_hidden_state, intermediate_hidden_states, intermediate_reference_points, encoder_last_hidden_state,
        encoder_topk_logits, encoder_topk_boxes: as in `DinoDetrModelOutput` (matching queries only).
    """

    loss: torch.Tensor | None = None
    loss_dict: dict | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    auxiliary_outputs: list[dict] | None = None
    last_hidden_state: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    intermediate_reference_points: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_topk_logits: torch.Tensor | None = None
    encoder_topk_boxes: torch.Tensor | None = None


def sine_position_embedding(valid_mask: torch.Tensor, num_features: int, temperature: float) -> torch.Tensor:
    """Normalised sine embedding of the valid (unpadded) positions of a feature map, as the official DINO's.

    Positions count 1..valid height/width from the top left and are scaled to (0, 2*pi]; Transformers' Deformable
    DETR embedding subtracts 0.5 first, so it is not reused.

    Args:
        valid_mask: `(N, H, W)` bool, True on the image, False on padding.
        num_features: features per coordinate (the embedding has `2 * num_features` channels: y, then x).
        temperature: the frequency base.

    Returns:
        `(N, 2 * num_features, H, W)` float32.
    """
    valid = valid_mask.to(torch.float32)
    y_embed = valid.cumsum(1)
    x_embed = valid.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = _wavelengths(num_features, temperature, valid_mask.device)
    pos_x = _interleave_sin_cos(x_embed[..., None] / dim_t)
    pos_y = _interleave_sin_cos(y_embed[..., None] / dim_t)
    return torch.cat((pos_y, pos_x), dim=-1).permute(0, 3, 1, 2)


def box_sine_embedding(boxes: torch.Tensor, num_features: int, temperature: float) -> torch.Tensor:
    """Sine embedding of boxes for the decoder's positional queries, in the order (y, x, w, h) as the official code.

    Args:
        boxes: `(N, Q, 4)` boxes (cx, cy, w, h) in [0, 1].
        num_features: features per coordinate.
        temperature: the frequency base.

    Returns:
        `(N, Q, 4 * num_features)`.
    """
    dim_t = _wavelengths(num_features, temperature, boxes.device)
    embedded = [_interleave_sin_cos(boxes[..., index, None] * (2 * math.pi) / dim_t) for index in range(4)]
    center_x, center_y, width, height = embedded
    return torch.cat((center_y, center_x, width, height), dim=-1)


def _wavelengths(num_features: int, temperature: float, device) -> torch.Tensor:
    """`(F,)` float32 divisors of the sine embeddings: `temperature ** (2 * (i // 2) / F)` (pairs share one)."""
    index = torch.arange(num_features, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_features)


def _interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """`(..., F)` angles -> `(..., F)`: sine of the even features and cosine of the odd ones, interleaved."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


class DinoDetrChannelMapper(nn.Module):
    """The neck: every backbone map to `d_model` channels (1x1 conv + GroupNorm), then stride-2 extra levels
    (3x3 conv + GroupNorm; the first reads the last backbone map), as mmdet's `ChannelMapper` without activation."""

    def __init__(self, config: DinoDetrConfig, in_channels: list[int]) -> None:
        super().__init__()
        width, groups = config.d_model, config.neck_norm_groups
        self.input_projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, width, kernel_size=1, bias=False), nn.GroupNorm(groups, width))
            for channels in in_channels
        )
        num_extra = config.num_feature_levels - len(in_channels)
        self.extra_projections = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels[-1] if index == 0 else width, width, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(groups, width),
            )
            for index in range(num_extra)
        )

    def forward(self, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """`(N, C_i, H_i, W_i)` backbone maps -> `num_feature_levels` maps `(N, d_model, H_l, W_l)`."""
        outputs = [
            projection(features) for projection, features in zip(self.input_projections, feature_maps, strict=True)
        ]
        previous = feature_maps[-1]
        for projection in self.extra_projections:
            outputs.append(projection(previous))
            previous = outputs[-1]
        return outputs


def valid_ratios(valid_mask: torch.Tensor) -> torch.Tensor:
    """`(N, H, W)` valid mask -> `(N, 2)`: the unpadded fraction of the width and of the height."""
    _, height, width = valid_mask.shape
    valid_height = valid_mask[:, :, 0].sum(1)
    valid_width = valid_mask[:, 0, :].sum(1)
    return torch.stack([valid_width.float() / width, valid_height.float() / height], -1)


def images_by_padded_size(pixel_mask: torch.Tensor, divisor: int) -> dict[tuple[int, int], list[int]]:
    """`(N, H, W)` mask -> {own padded size: indices of the images}: each image's unpadded size rounded up to a
    multiple of `divisor` (at most the batch's size), the size it is padded to when alone."""
    height, width = pixel_mask.shape[-2:]
    valid_heights = pixel_mask[:, :, 0].sum(1).tolist()
    valid_widths = pixel_mask[:, 0, :].sum(1).tolist()
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (valid_height, valid_width) in enumerate(zip(valid_heights, valid_widths, strict=True)):
        size = (min(-(-valid_height // divisor) * divisor, height), min(-(-valid_width // divisor) * divisor, width))
        groups.setdefault(size, []).append(index)
    return groups


def _merge_size_groups(
    parts: dict[tuple[int, int], tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]],
    groups: dict[tuple[int, int], list[int]],
    batch_size: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Put the level maps, masks and ratios of every size group back into one batch, in the original image order:
    each level as large as the largest group's, zero (and masked) beyond a group's own maps."""
    first_sources, _, first_ratios = next(iter(parts.values()))
    num_levels = len(first_sources)
    sources, masks = [], []
    for level in range(num_levels):
        height = max(part[0][level].shape[-2] for part in parts.values())
        width = max(part[0][level].shape[-1] for part in parts.values())
        template = first_sources[level]
        source = template.new_zeros(batch_size, template.shape[1], height, width)
        mask = torch.zeros(batch_size, height, width, dtype=torch.bool, device=template.device)
        for size, indices in groups.items():
            part_source, part_mask = parts[size][0][level], parts[size][1][level]
            source[indices, :, : part_source.shape[-2], : part_source.shape[-1]] = part_source
            mask[indices, : part_mask.shape[-2], : part_mask.shape[-1]] = part_mask
        sources.append(source)
        masks.append(mask)
    ratios = first_ratios.new_empty(batch_size, *first_ratios.shape[1:])
    for size, indices in groups.items():
        ratios[indices] = parts[size][2]
    return sources, masks, ratios


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], ratios: torch.Tensor) -> torch.Tensor:
    """Pixel centres of every level, relative to the unpadded image, seen from every level.

    Args:
        spatial_shapes: (H_l, W_l) of each level.
        ratios: `(N, L, 2)` valid ratios (width, height) per level.

    Returns:
        `(N, S, L, 2)` points (x, y), S = sum of H_l * W_l.
    """
    points = []
    for level, (height, width) in enumerate(spatial_shapes):
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=ratios.device),
            torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=ratios.device),
            indexing="ij",
        )
        ref_y = grid_y.reshape(-1)[None] / (ratios[:, None, level, 1] * height)
        ref_x = grid_x.reshape(-1)[None] / (ratios[:, None, level, 0] * width)
        points.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(points, 1)[:, :, None] * ratios[:, None]


def encoder_proposals(
    memory: torch.Tensor, padding_mask: torch.Tensor, spatial_shapes: list[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One box proposal per encoder position (its pixel centre, side 0.05 * 2**level) and the memory that scores it.

    Proposals outside (0.01, 0.99) and padded positions get `inf` (in logit space) and zero memory, as in the
    official implementation.

    Args:
        memory: `(N, S, D)` encoder output.
        padding_mask: `(N, S)` bool, True on padding.
        spatial_shapes: (H_l, W_l) of each level.

    Returns:
        `(N, S, D)` masked memory and `(N, S, 4)` proposals as inverse sigmoids of (cx, cy, w, h).
    """
    batch_size = memory.shape[0]
    proposals, start = [], 0
    for level, (height, width) in enumerate(spatial_shapes):
        level_padding = padding_mask[:, start : start + height * width].view(batch_size, height, width)
        valid_height = (~level_padding[:, :, 0]).sum(1)
        valid_width = (~level_padding[:, 0, :]).sum(1)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, height - 1, height, dtype=torch.float32, device=memory.device),
            torch.linspace(0, width - 1, width, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.stack([grid_x, grid_y], -1)
        scale = torch.stack([valid_width, valid_height], -1).view(batch_size, 1, 1, 2)
        grid = (grid[None].expand(batch_size, -1, -1, -1) + 0.5) / scale
        size = torch.full_like(grid, 0.05 * (2.0**level))
        proposals.append(torch.cat((grid, size), -1).view(batch_size, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    inside = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask[..., None], float("inf")).masked_fill(~inside, float("inf"))
    memory = memory.masked_fill(padding_mask[..., None], 0.0).masked_fill(~inside, 0.0)
    return memory, proposals


class DinoDetrEncoder(nn.Module):
    """Deformable self-attention encoder over the flattened multi-scale features."""

    def __init__(self, config: DinoDetrConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableDetrEncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(
        self,
        hidden_states: torch.Tensor,
        valid_mask: torch.Tensor,
        position_embeddings: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """`(N, S, D)` features, `(N, S)` valid mask, `(N, S, D)` positions, `(N, S, L, 2)` points -> `(N, S, D)`."""
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=valid_mask,
                spatial_position_embeddings=position_embeddings,
                reference_points=reference_points,
                spatial_shapes=spatial_shapes,
                spatial_shapes_list=spatial_shapes_list,
                level_start_index=level_start_index,
            )
        return hidden_states


class DinoDetrDecoder(nn.Module):
    """The DINO decoder: positional queries from the sine embedding of each layer's reference boxes, and boxes
    refined after every layer by the box heads of the detector (passed to `forward`)."""

    def __init__(self, config: DinoDetrConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(DeformableDetrDecoderLayer(config) for _ in range(config.decoder_layers))
        self.reference_points_head = DeformableDetrMLPPredictionHead(
            2 * config.d_model, config.d_model, config.d_model, 2
        )
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(
        self,
        queries: torch.Tensor,
        reference_points: torch.Tensor,
        memory: torch.Tensor,
        valid_mask: torch.Tensor,
        ratios: torch.Tensor,
        own_ratios: torch.Tensor,
        spatial_shapes: torch.Tensor,
        spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        box_heads: nn.ModuleList,
        self_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the layers.

        Args:
            queries: `(N, Q, D)` content queries.
            reference_points: `(N, Q, 4)` initial boxes (cx, cy, w, h) in [0, 1].
            memory: `(N, S, D)` encoder output; `valid_mask` `(N, S)` True on the image.
            ratios: `(N, L, 2)` valid ratios per level, where the deformable attention samples.
            own_ratios: `(N, L, 2)` valid ratios within each image's own padded size, for the query positions (equal
                to `ratios` unless images of the batch were padded further than alone; see `padding_invariant`).
            box_heads: one box MLP per layer (the detector's), giving the refinement in logit space.
            self_attention_mask: `(N, 1, Q, Q)` additive mask between queries (denoising groups), or None.

        Returns:
            `(N, L, Q, D)` normalised layer outputs and `(N, L + 1, Q, 4)` reference boxes (the starting boxes of
            each layer, then the last layer's refined boxes; not detached, for "look forward twice").
        """
        hidden_states = queries
        intermediate, references = [], [reference_points]
        scaled_ratios = torch.cat([ratios, ratios], -1)[:, None]
        position_ratios = torch.cat([own_ratios[:, 0], own_ratios[:, 0]], -1)[:, None]
        num_features = self.config.d_model // 2
        for index, layer in enumerate(self.layers):
            level_points = reference_points[:, :, None] * scaled_ratios
            query_position = self.reference_points_head(
                box_sine_embedding(
                    reference_points * position_ratios, num_features, self.config.query_position_temperature
                )
            )
            hidden_states = layer(
                hidden_states,
                object_queries_position_embeddings=query_position,
                reference_points=level_points,
                spatial_shapes=spatial_shapes,
                spatial_shapes_list=spatial_shapes_list,
                level_start_index=level_start_index,
                encoder_hidden_states=memory,
                encoder_attention_mask=valid_mask,
                attention_mask=self_attention_mask,
            )
            refined = (box_heads[index](hidden_states) + inverse_sigmoid(reference_points, eps=REFINE_EPS)).sigmoid()
            reference_points = refined.detach()
            intermediate.append(self.layer_norm(hidden_states))
            references.append(refined)
        return torch.stack(intermediate, 1), torch.stack(references, 1)


class DinoDetrPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the class attributes shared by the DINO classes.

    Args:
        config (`DinoDetrConfig`): the detector configuration; weights start as the official initialisation.
    """

    config_class = DinoDetrConfig
    config: DinoDetrConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["DeformableDetrEncoderLayer", "DeformableDetrDecoderLayer"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained` that runs kernels only when asked, as the InternImage classes do:
        ``use_kernels=True`` or ``kernel_config=`` kernelize the loaded detector through `set_use_kernels`."""
        from ...hub_kernels import load_with_kernel_switch

        return load_with_kernel_switch(super().from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs)

    def set_use_kernels(self, use_kernels, kernel_config=None, mode=None, device_map=None):
        """Transformers' kernel switch (``from_pretrained(..., use_kernels=True)``, ``model.use_kernels = True``, a
        mode change on ``train()``), served by `internimage_hf.kernelize` with its kernel, variant and trust rules: the
        backbone's DCNv3 and the encoder's and decoder's deformable attention run the kernel (``use_kernels=False``
        restores PyTorch). The arguments are those of `InternImagePreTrainedModel.set_use_kernels`."""
        if not use_kernels and not self.use_kernels:
            return  # nothing to undo (Transformers calls this on every load)
        from ...hub_kernels import set_model_kernels

        set_model_kernels(self, use_kernels, kernel_config, mode)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official initialisation: xavier-uniform linears, deformable attention on its regular sampling star,
        normal query and level embeddings, box heads starting at zero, class heads at prior probability 0.01.

        Transformers visits children before parents, so the model branch overrides the generic linear rule for the
        attention and head layers."""
        if isinstance(module, DinoDetrModel):
            # Transformers skips modules without parameters of their own (the attention modules): set them here.
            for attention in module.modules():
                if isinstance(attention, DeformableDetrMultiscaleDeformableAttention):
                    _init_deformable_attention(attention)
            init.normal_(module.level_embeddings, std=self.config.init_std)
            init.normal_(module.query_embeddings.weight, std=self.config.init_std)
            init.normal_(module.denoising_label_embeddings.weight, std=self.config.init_std)
            prior_bias = -math.log((1 - 0.01) / 0.01)
            for head in module.class_heads:
                init.xavier_uniform_(head.weight)
                init.constant_(head.bias, prior_bias)
            for head in module.box_heads:
                init.zeros_(head.layers[-1].weight)
                init.zeros_(head.layers[-1].bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)


def _init_deformable_attention(module: DeformableDetrMultiscaleDeformableAttention) -> None:
    """Offsets start on a star of directions (one per head), `k + 1` steps out for point k; equal point weights."""
    init.zeros_(module.sampling_offsets.weight)
    thetas = torch.arange(module.n_heads, dtype=torch.float32) * (2.0 * math.pi / module.n_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(module.n_heads, 1, 1, 2)
    grid = grid.repeat(1, module.n_levels, module.n_points, 1)
    for point in range(module.n_points):
        grid[:, :, point, :] *= point + 1
    init.copy_(module.sampling_offsets.bias, grid.view(-1))
    init.zeros_(module.attention_weights.weight)
    init.zeros_(module.attention_weights.bias)
    init.xavier_uniform_(module.value_proj.weight)
    init.zeros_(module.value_proj.bias)
    init.xavier_uniform_(module.output_proj.weight)
    init.zeros_(module.output_proj.bias)


class DinoDetrModel(DinoDetrPreTrainedModel):
    """Backbone, neck, encoder, query selection and decoder; the class and box heads live here because the query
    selection and the box refinement use them. `DinoDetrForObjectDetection` adds the losses.

    Args:
        config (`DinoDetrConfig`): the detector configuration (the backbone is built from `config.backbone_config`).
    """

    def __init__(self, config: DinoDetrConfig) -> None:
        super().__init__(config)
        self.backbone = load_backbone(config)
        self.neck = DinoDetrChannelMapper(config, list(self.backbone.channels))
        self.level_embeddings = nn.Parameter(torch.empty(config.num_feature_levels, config.d_model))
        self.encoder = DinoDetrEncoder(config)
        self.proposal_projection = nn.Linear(config.d_model, config.d_model)
        self.proposal_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.query_embeddings = nn.Embedding(config.num_queries, config.d_model)
        self.decoder = DinoDetrDecoder(config)
        # One head per decoder layer, then one for the encoder proposals.
        self.class_heads = nn.ModuleList(
            nn.Linear(config.d_model, config.num_labels) for _ in range(config.decoder_layers + 1)
        )
        self.box_heads = nn.ModuleList(
            DeformableDetrMLPPredictionHead(config.d_model, config.d_model, 4, 3)
            for _ in range(config.decoder_layers + 1)
        )
        self.denoising_label_embeddings = nn.Embedding(config.num_labels, config.d_model)
        self.post_init()

    def image_features(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Backbone and neck over a padded batch.

        With `config.padding_invariant`, images whose own padded sizes (`own_padded_sizes`) differ from the batch's
        run one size at a time, so that padding they would not have alone never reaches their features (the
        backbone's convolutions and deformable sampling, the neck's GroupNorm statistics read it).

        Returns:
            `num_feature_levels` maps `(N, d_model, H_l, W_l)` (zero beyond an image's own padded size), their valid
            masks `(N, H_l, W_l)` and `(N, L, 2)` the valid ratios (width, height) of every image within its own
            padded size at each level.
        """
        batch_size, _, height, width = pixel_values.shape
        groups = {(height, width): list(range(batch_size))}
        if self.config.padding_invariant:
            groups = images_by_padded_size(pixel_mask, self.config.pad_size_divisor)
        if list(groups) == [(height, width)]:
            return self.level_features(pixel_values, pixel_mask)
        parts = {}
        for (group_height, group_width), indices in groups.items():
            parts[group_height, group_width] = self.level_features(
                pixel_values[indices, :, :group_height, :group_width], pixel_mask[indices, :group_height, :group_width]
            )
        return _merge_size_groups(parts, groups, batch_size)

    def level_features(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """`(N, 3, H, W)` images and `(N, H, W)` mask -> level maps, their masks and valid ratios (`image_features`),
        with the whole batch through the backbone at once."""
        sources = self.neck(list(self.backbone(pixel_values).feature_maps))
        masks = [
            F.interpolate(pixel_mask[None].float(), size=source.shape[-2:])[0].to(torch.bool) for source in sources
        ]
        return sources, masks, torch.stack([valid_ratios(mask) for mask in masks], 1)

    def flatten_levels(
        self, sources: list[torch.Tensor], masks: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int]], torch.Tensor]:
        """Flatten the levels: features `(N, S, D)`, valid mask `(N, S)`, positions + level embeddings `(N, S, D)`,
        the (H, W) of every level and the `(N, L, 2)` valid ratios."""
        features, flat_masks, positions, shapes, ratios = [], [], [], [], []
        for level, (source, mask) in enumerate(zip(sources, masks, strict=True)):
            position = sine_position_embedding(
                mask, self.config.d_model // 2, self.config.position_embedding_temperature
            )
            features.append(source.flatten(2).transpose(1, 2))
            flat_masks.append(mask.flatten(1))
            positions.append(position.to(source.dtype).flatten(2).transpose(1, 2) + self.level_embeddings[level])
            shapes.append(tuple(source.shape[-2:]))
            ratios.append(valid_ratios(mask))
        return (
            torch.cat(features, 1),
            torch.cat(flat_masks, 1),
            torch.cat(positions, 1),
            shapes,
            torch.stack(ratios, 1),
        )

    def select_queries(
        self, memory: torch.Tensor, valid_mask: torch.Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixed query selection: the `num_queries` encoder proposals with the highest class score.

        Returns:
            `(N, K, C)` their logits, `(N, K, 4)` their boxes (sigmoid, with gradients for the encoder loss) and
            `(N, K, 4)` the same boxes in logit space, detached: the decoder's starting anchors.
        """
        if memory.shape[1] < self.config.num_queries:
            raise ValueError(
                f"pixel_values: the {memory.shape[1]} positions of the feature levels {spatial_shapes} are fewer than "
                f"num_queries={self.config.num_queries}; use larger images (DINO selects its queries among them)"
            )
        masked_memory, proposals = encoder_proposals(memory, ~valid_mask, spatial_shapes)
        scored_memory = self.proposal_layer_norm(self.proposal_projection(masked_memory))
        logits = self.class_heads[-1](scored_memory)
        boxes = self.box_heads[-1](scored_memory) + proposals
        ranked = logits
        if self.config.padding_invariant:
            # A padded position scores its class head's bias alone; how many there are depends on the batch.
            ranked = logits.masked_fill(~valid_mask[..., None], float("-inf"))
        top = self.rank_proposals(ranked)
        top_logits = torch.gather(logits, 1, top[..., None].expand(-1, -1, logits.shape[-1]))
        top_boxes = torch.gather(boxes, 1, top[..., None].expand(-1, -1, 4))
        return top_logits, top_boxes.sigmoid(), top_boxes.detach()

    def rank_proposals(self, logits: torch.Tensor) -> torch.Tensor:
        """`(N, S, C)` proposal logits -> `(N, num_queries)` indices of the best class scores, best first."""
        return torch.topk(logits.max(-1)[0], self.config.num_queries, dim=1)[1]

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        denoising: DenoisingQueries | None = None,
        **kwargs,
    ) -> DinoDetrModelOutput:
        r"""Run the detector without its losses.

        Args:
            pixel_values: `(N, 3, H, W)` normalised images, padded at the bottom and right.
            pixel_mask: `(N, H, W)`, 1 on the image and 0 on padding (default: no padding).
            denoising: denoising queries (training, from `denoising_groups`), placed before the matching queries;
                the outputs then cover both.
        """
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
        batch_size, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones((batch_size, height, width), dtype=torch.long, device=pixel_values.device)
        elif pixel_mask.shape != (batch_size, height, width):
            raise ValueError(f"pixel_mask must have shape {(batch_size, height, width)}, got {tuple(pixel_mask.shape)}")
        sources, level_masks, own_ratios = self.image_features(pixel_values, pixel_mask)
        features, valid_mask, positions, shapes_list, ratios = self.flatten_levels(sources, level_masks)
        spatial_shapes = torch.as_tensor(shapes_list, dtype=torch.long, device=features.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        memory = self.encoder(
            features,
            valid_mask,
            positions,
            encoder_reference_points(shapes_list, ratios),
            spatial_shapes,
            shapes_list,
            level_start_index,
        )
        topk_logits, topk_boxes, anchors = self.select_queries(memory, valid_mask, shapes_list)
        queries = self.query_embeddings.weight[None].expand(batch_size, -1, -1)
        attention_mask = None
        if denoising is not None:
            queries = torch.cat([denoising.queries, queries], 1)
            anchors = torch.cat([denoising.boxes, anchors], 1)
            attention_mask = _additive_mask(denoising.attention_mask, queries.dtype, batch_size)
        hidden_states, references = self.decoder(
            queries,
            anchors.sigmoid(),
            memory,
            valid_mask,
            ratios,
            own_ratios,
            spatial_shapes,
            shapes_list,
            level_start_index,
            self.box_heads,
            self_attention_mask=attention_mask,
        )
        logits, boxes = self.predict(hidden_states, references)
        return DinoDetrModelOutput(
            last_hidden_state=hidden_states[:, -1],
            intermediate_hidden_states=hidden_states,
            intermediate_logits=logits,
            intermediate_pred_boxes=boxes,
            intermediate_reference_points=references,
            encoder_last_hidden_state=memory,
            encoder_topk_logits=topk_logits,
            encoder_topk_boxes=topk_boxes,
        )

    def predict(self, hidden_states: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(N, L, Q, D)` layer outputs and `(N, L + 1, Q, 4)` references -> logits `(N, L, Q, C)`, boxes
        `(N, L, Q, 4)`: each layer's boxes are its box head's offset from the reference that layer started from."""
        logits, boxes = [], []
        for index in range(hidden_states.shape[1]):
            logits.append(self.class_heads[index](hidden_states[:, index]))
            offset = self.box_heads[index](hidden_states[:, index])
            boxes.append((offset + inverse_sigmoid(references[:, index], eps=REFINE_EPS)).sigmoid())
        return torch.stack(logits, 1), torch.stack(boxes, 1)


def _additive_mask(blocked: torch.Tensor, dtype: torch.dtype, batch_size: int) -> torch.Tensor:
    """`(Q, Q)` bool (True = may not attend) -> `(N, 1, Q, Q)` additive mask for the decoder's self-attention."""
    mask = torch.zeros(blocked.shape, dtype=dtype, device=blocked.device)
    mask = mask.masked_fill(blocked, torch.finfo(dtype).min)
    return mask[None, None].expand(batch_size, 1, -1, -1)


def check_labels(
    labels: list[dict], batch_size: int, num_labels: int, dtype: torch.dtype, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """Validate the training targets early, naming what is wrong; returns them on `device`, boxes in `dtype`.

    Args:
        labels: one dict per image with `class_labels` `(T,)` and `boxes` `(T, 4)`.
        batch_size: images in the batch.
        num_labels: classes of the detector.
        dtype / device: those of the model's predictions.
    """
    if len(labels) != batch_size:
        raise ValueError(f"labels: {len(labels)} dicts for a batch of {batch_size} images")
    checked = []
    for index, target in enumerate(labels):
        if "class_labels" not in target or "boxes" not in target:
            raise ValueError(f"labels[{index}] needs `class_labels` and `boxes`, got {sorted(target)}")
        classes, boxes = torch.as_tensor(target["class_labels"]), torch.as_tensor(target["boxes"])
        if classes.dim() != 1 or boxes.shape != (len(classes), 4):
            raise ValueError(
                f"labels[{index}]: class_labels must be (T,) and boxes (T, 4), got {tuple(classes.shape)} and "
                f"{tuple(boxes.shape)}"
            )
        if len(classes) and (classes.min() < 0 or classes.max() >= num_labels):
            raise ValueError(f"labels[{index}]: class_labels must lie in [0, {num_labels}), got {classes.tolist()}")
        if len(boxes) and not (torch.isfinite(boxes).all() and (boxes[:, 2:] > 0).all()):
            raise ValueError(f"labels[{index}]: boxes must be finite (cx, cy, w, h) with w, h > 0")
        checked.append({**target, "class_labels": classes.to(device, torch.long), "boxes": boxes.to(device, dtype)})
    return checked


class DinoDetrForObjectDetection(DinoDetrPreTrainedModel):
    """DINO with its losses; `logits`/`pred_boxes` are the last decoder layer's predictions for the matching queries.

    Scores are the sigmoid of `logits`; the official head keeps the top-k (query, class) pairs of an image.

    Args:
        config (`DinoDetrConfig`): the detector configuration.
    """

    def __init__(self, config: DinoDetrConfig) -> None:
        super().__init__(config)
        self.model = DinoDetrModel(config)
        self.criterion = DinoDetrLoss(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict] | None = None,
        **kwargs,
    ) -> DinoDetrObjectDetectionOutput:
        r"""Detect objects.

        Args:
            pixel_values: `(N, 3, H, W)` normalised images, padded at the bottom and right.
            pixel_mask: `(N, H, W)`, 1 on the image and 0 on padding.
            labels: one dict per image with `class_labels` `(T,)` and `boxes` `(T, 4)` (cx, cy, w, h relative to the
                unpadded image) to compute the losses; in training mode they also give the denoising queries.
        """
        denoising = None
        if labels is not None:
            labels = check_labels(
                labels, pixel_values.shape[0], self.config.num_labels, pixel_values.dtype, pixel_values.device
            )
            if self.training and self.config.num_denoising > 0 and any(len(t["class_labels"]) for t in labels):
                denoising = denoising_groups(
                    labels,
                    self.model.denoising_label_embeddings,
                    self.config.num_denoising,
                    self.config.num_queries,
                    self.config.label_noise_ratio,
                    self.config.box_noise_scale,
                )
        outputs = self.model(pixel_values, pixel_mask=pixel_mask, denoising=denoising)
        loss = loss_dict = None
        if labels is not None:
            loss, loss_dict = self.criterion(
                outputs.intermediate_logits,
                outputs.intermediate_pred_boxes,
                outputs.encoder_topk_logits,
                outputs.encoder_topk_boxes,
                labels,
                denoising,
            )
            if denoising is None and self.training:
                # the label embedding takes part in every step, as DDP requires (the official head does the same)
                loss = loss + 0.0 * self.model.denoising_label_embeddings.weight.sum()
        split = denoising.num_queries if denoising is not None else 0
        logits = outputs.intermediate_logits[:, :, split:]
        boxes = outputs.intermediate_pred_boxes[:, :, split:]
        auxiliary = [
            {"logits": logits[:, index], "pred_boxes": boxes[:, index]} for index in range(logits.shape[1] - 1)
        ]
        return DinoDetrObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits[:, -1],
            pred_boxes=boxes[:, -1],
            auxiliary_outputs=auxiliary,
            last_hidden_state=outputs.last_hidden_state[:, split:],
            intermediate_hidden_states=outputs.intermediate_hidden_states[:, :, split:],
            intermediate_reference_points=outputs.intermediate_reference_points[:, :, split:],
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_topk_logits=outputs.encoder_topk_logits,
            encoder_topk_boxes=outputs.encoder_topk_boxes,
        )


__all__ = [
    "DinoDetrForObjectDetection",
    "DinoDetrModel",
    "DinoDetrModelOutput",
    "DinoDetrObjectDetectionOutput",
    "DinoDetrPreTrainedModel",
]
