"""Random DCNv3 inputs shared by the kernel tests."""

from __future__ import annotations

import torch

from internimage_hf.ops.dcnv3 import dcnv3_core, dcnv3_output_size, softmax_over_points


def dcnv3_params(group=2, group_channels=4, kernel=3, stride=1, pad=None, dilation=1, offset_scale=1.0,
                 remove_center=False, kernel_w=None) -> dict:  # fmt: skip
    """Keyword arguments of a DCNv3 call (same names as `internimage_hf.ops.dcnv3.dcnv3_core`)."""
    kernel_w = kernel if kernel_w is None else kernel_w
    if pad is None:
        pad = dilation * (kernel - 1) // 2
    return dict(
        kernel_h=kernel, kernel_w=kernel_w, stride_h=stride, stride_w=stride, pad_h=pad, pad_w=pad,
        dilation_h=dilation, dilation_w=dilation, group=group, group_channels=group_channels,
        offset_scale=offset_scale, remove_center=remove_center,
    )  # fmt: skip


def make_inputs(params: dict, batch=2, height=7, width=6, dtype=torch.float32, offset_range=2.0, seed=0,
                device="cpu", mask_logits=False):  # fmt: skip
    """value (N,H,W,G*Cg), offset (N,Ho,Wo,G*P*2) uniform in +-offset_range px, mask softmaxed per group.

    With ``mask_logits`` the third tensor is the mask before the softmax (what `DCNv3Core` takes).
    """
    gen = torch.Generator().manual_seed(seed)
    group, cg = params["group"], params["group_channels"]
    points = params["kernel_h"] * params["kernel_w"] - int(bool(params["remove_center"]))
    out_h = dcnv3_output_size(height, params["kernel_h"], params["stride_h"], params["pad_h"], params["dilation_h"])
    out_w = dcnv3_output_size(width, params["kernel_w"], params["stride_w"], params["pad_w"], params["dilation_w"])
    value = torch.randn(batch, height, width, group * cg, generator=gen, dtype=torch.float64)
    offset = torch.rand(batch, out_h, out_w, group * points * 2, generator=gen, dtype=torch.float64) * 2 - 1
    offset = offset * offset_range
    logits = torch.randn(batch, out_h, out_w, group, points, generator=gen, dtype=torch.float64)
    mask = logits if mask_logits else logits.softmax(-1)
    mask = mask.reshape(batch, out_h, out_w, group * points)
    return tuple(t.to(device=device, dtype=dtype) for t in (value, offset, mask))


def reference_core(value, offset, mask_logits, params: dict) -> torch.Tensor:
    """What `DCNv3Core` computes: softmax over each group's points, then the PyTorch `dcnv3_core`."""
    return dcnv3_core(value, offset, softmax_over_points(mask_logits, params["group"]), **params)


# Launch-path cases shared by the CUDA tests (GPU and emulated).
CUDA_CASES = {
    "internimage_t": dcnv3_params(group=4, group_channels=16),
    # Cg = 5: scalar (vec 1) path, 8 lanes per (pixel, group) of which 3 only join the shuffle reductions.
    "odd_channels": dcnv3_params(group=3, group_channels=5, remove_center=True),
    # Cg = 160: more vectors than 32 lanes (each thread loops over several).
    "wide_groups": dcnv3_params(group=2, group_channels=160, offset_scale=2.0),
    "stride_dilation": dcnv3_params(group=2, group_channels=8, stride=2, dilation=2),
    "kernel5": dcnv3_params(group=2, group_channels=32, kernel=5, remove_center=True),
    # Rectangular kernel with different h / w stride, dilation and padding (catches h/w or i/j swaps);
    # Cg = 6 gives vec 2 for every dtype (not a multiple of the 16-byte width).
    "rect": {
        **dcnv3_params(group=3, group_channels=6, kernel=3, kernel_w=5, remove_center=True),
        "stride_w": 2,
        "dilation_h": 2,
        "pad_h": 2,
        "pad_w": 1,
    },
}
# Comparison tolerance of a kernel in each dtype against the float64 reference on the rounded inputs.
DTYPE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}


def off_cell_boundaries(offset: torch.Tensor, offset_scale: float, seed: int = 1) -> torch.Tensor:
    """Offsets whose sampling locations sit 0.25..0.75 px inside a bilinear cell.

    The offset gradient jumps where a location crosses an integer, so a location that rounding to a half
    dtype moves onto (or across) a pixel centre would make the float64 comparison flaky. The location is
    base + s * (tap + dx) with integer base and tap; for integer s, fractional(s * dx) decides the cell.
    """
    assert float(offset_scale).is_integer(), "jitter below assumes an integer offset_scale"
    gen = torch.Generator().manual_seed(seed)
    jitter = 0.25 + 0.5 * torch.rand(offset.shape, dtype=offset.dtype, generator=gen).to(offset.device)
    return ((offset * offset_scale).round() + jitter) / offset_scale
