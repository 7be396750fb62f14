"""Named DCNv4 cases (InternImage-shaped and odd ones) for the emulated CUDA kernel and the official-kernel
parity tests: their fused inputs and float64 reference gradients."""

from __future__ import annotations

import torch
from dcnv3_test_inputs import dcnv3_params, make_inputs, off_cell_boundaries

from internimage_hf.ops.dcnv4 import dcnv4_core, dcnv4_offset_mask_channels

# Launch-path cases of the DCNv4 kernels. `official` marks the ones the official kernel supports (group_channels a
# multiple of its 8-channel forward d_stride, 8 or 9 points); `columns` is D when it differs from the official
# projection's width (G * P * 3 rounded up to a multiple of 8).
DCNV4_CASES = {
    # FlashInternImage-T stage 1: 4 groups of 16 channels, D = 112 (4 padding columns).
    "flash_t": {"params": dcnv3_params(group=4, group_channels=16), "official": True},
    "cg32_remove_center": {
        "params": dcnv3_params(group=2, group_channels=32, remove_center=True),
        "official": True,
        "columns": 56,  # 8 padding columns beyond the 48 used
    },
    "cg64_stride2_pad0": {"params": dcnv3_params(group=1, group_channels=64, stride=2, pad=0), "official": True},
    "dilation2_pad2": {"params": dcnv3_params(group=2, group_channels=16, dilation=2, pad=2), "official": True},
    "cg8": {"params": dcnv3_params(group=3, group_channels=8, offset_scale=2.0), "official": True},
    "cg24_remove_center": {"params": dcnv3_params(group=2, group_channels=24, remove_center=True), "official": True},
    # Ours only: 5 channels (scalar path, 8 lanes of which 3 idle), a 5x5 kernel, a rectangular kernel.
    "odd_channels": {"params": dcnv3_params(group=3, group_channels=5, remove_center=True), "official": False},
    "kernel5": {"params": dcnv3_params(group=2, group_channels=32, kernel=5), "official": False},
    "rect": {
        "params": {
            **dcnv3_params(group=3, group_channels=6, kernel=3, kernel_w=5, remove_center=True),
            "stride_w": 2,
            "dilation_h": 2,
            "pad_h": 2,
            "pad_w": 1,
        },
        "official": False,
    },
}
OFFICIAL_CASES = sorted(name for name, case in DCNV4_CASES.items() if case["official"])


def points_of(params: dict) -> int:
    return params["kernel_h"] * params["kernel_w"] - int(bool(params["remove_center"]))


def fuse_offset_mask(offset: torch.Tensor, mask: torch.Tensor, group: int, columns: int, padding_fill=float("nan")):
    """DCNv3's (offset, mask) as DCNv4's offset_mask (N, Ho, Wo, columns): per group its (dx, dy) pairs then its
    weights; the columns past G * 3P hold `padding_fill` (NaN: a kernel that reads them poisons its result)."""
    n, h, w, _ = offset.shape
    per_group = torch.cat([offset.reshape(n, h, w, group, -1), mask.reshape(n, h, w, group, -1)], dim=-1)
    fused = per_group.reshape(n, h, w, -1)
    padding = torch.full((n, h, w, columns - fused.shape[-1]), padding_fill, dtype=fused.dtype)
    return torch.cat([fused, padding], dim=-1).contiguous()


def make_dcnv4_inputs(case: str, batch=2, height=9, width=7, dtype=torch.float32, seed=0, padding_fill=float("nan")):
    """(params, value, offset_mask) for a `DCNV4_CASES` entry: offsets inside bilinear cells (see
    `off_cell_boundaries`), unnormalised weights in [-1, 1), padding columns filled with `padding_fill`."""
    spec = DCNV4_CASES[case]
    params = spec["params"]
    value, offset, weights = make_inputs(params, batch, height, width, torch.float64, seed=seed, mask_logits=True)
    offset = off_cell_boundaries(offset, params["offset_scale"], seed=seed + 1)
    weights = torch.tanh(weights)  # DCNv4 weights are used as given: signed, not summing to one
    columns = spec.get("columns", dcnv4_offset_mask_channels(params["group"], points_of(params)))
    offset_mask = fuse_offset_mask(offset, weights, params["group"], columns, padding_fill)
    return params, value.to(dtype), offset_mask.to(dtype)


def grad_output_for(value: torch.Tensor, offset_mask: torch.Tensor, seed=3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (value.shape[0], offset_mask.shape[1], offset_mask.shape[2], value.shape[3])
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(value.dtype)


def reference_with_grads(grad_output, value, offset_mask, params: dict):
    """float64 `dcnv4_core` output and (grad_value, grad_offset_mask) by autograd (the core slices the padding
    columns away, so NaN there reaches neither the output nor their zero gradient)."""
    leaves = [value.double().requires_grad_(), offset_mask.double().requires_grad_()]
    out = dcnv4_core(*leaves, **params)
    out.backward(grad_output.double())
    return out.detach(), (leaves[0].grad, leaves[1].grad)
