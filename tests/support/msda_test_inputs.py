"""Inputs and the reference for the multi-scale deformable attention (MSDA) kernel tests: Transformers' PyTorch
`MultiScaleDeformableAttention` (grid_sample per level), the module the kernel layer replaces."""

from __future__ import annotations

import torch
from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

# name -> (level sizes, batch, heads, channels per head, queries, points per level)
MSDA_CASES = {
    # odd sizes, a 1x1 level, channels that fill no vector, batch 2
    "odd_levels": ([(7, 9), (4, 5), (3, 1), (1, 1)], 2, 3, 6, 13, 3),
    # DETR's head geometry (8 heads x 32 channels, 4 levels x 4 points) on small levels
    "detr_heads": ([(10, 17), (5, 9), (3, 5), (2, 3)], 1, 8, 32, 24, 4),
}


def level_tables(shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(spatial_shapes (L, 2), level_start_index (L,)) as Deformable DETR builds them (int64)."""
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def make_msda_inputs(case: str, dtype=torch.float32, seed: int = 0, spread: float = 0.2):
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights for `case`.

    Locations are uniform in [-spread, 1 + spread] (some samples partly or wholly in the zero padding); weights are
    positive and not normalised (the op must not assume they sum to 1).
    """
    shapes, batch, heads, channels, queries, points = MSDA_CASES[case]
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = level_tables(shapes)
    levels, spatial = len(shapes), int(spatial_shapes.prod(1).sum())
    value = torch.randn(batch, spatial, heads, channels, generator=generator, dtype=torch.float64)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=generator, dtype=torch.float64)
    locations = locations * (1 + 2 * spread) - spread
    weights = torch.rand(batch, queries, heads, levels, points, generator=generator, dtype=torch.float64)
    return value.to(dtype), spatial_shapes, level_start_index, locations.to(dtype), weights.to(dtype)


def reference_msda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Transformers' PyTorch implementation (what `kernelize` replaces)."""
    shapes_list = [tuple(int(s) for s in row) for row in spatial_shapes.tolist()]
    return MultiScaleDeformableAttention()(
        value, spatial_shapes, shapes_list, level_start_index, sampling_locations, attention_weights, 64
    )


def reference_with_grads(grad_output, value, spatial_shapes, level_start_index, sampling_locations, weights):
    """float64 reference output and gradients w.r.t. value, sampling_locations and attention_weights."""
    leaves = [t.detach().double().requires_grad_() for t in (value, sampling_locations, weights)]
    out = reference_msda(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    out.backward(grad_output.double())
    return out.detach(), [leaf.grad for leaf in leaves]
