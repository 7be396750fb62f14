"""Random DCNv4 inputs and an independent per-point reference, shared by the portable-core and kernel tests."""

from __future__ import annotations

import math

import torch

from internimage_hf.ops.dcnv3 import dcnv3_output_size
from internimage_hf.ops.dcnv4 import dcnv4_offset_mask_channels

ARG_ORDER = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w", "group",
             "group_channels", "offset_scale", "remove_center")  # fmt: skip


def dcnv4_params(group=2, group_channels=4, kernel=3, stride=1, pad=None, dilation=1, offset_scale=1.0,
                 remove_center=False, kernel_w=None) -> dict:  # fmt: skip
    """Keyword arguments of a DCNv4 call (same names as `internimage_hf.ops.dcnv4.dcnv4_core`)."""
    kernel_w = kernel if kernel_w is None else kernel_w
    if pad is None:
        pad = dilation * (kernel - 1) // 2
    return dict(
        kernel_h=kernel, kernel_w=kernel_w, stride_h=stride, stride_w=stride, pad_h=pad, pad_w=pad,
        dilation_h=dilation, dilation_w=dilation, group=group, group_channels=group_channels,
        offset_scale=offset_scale, remove_center=remove_center,
    )  # fmt: skip


def positional(params: dict) -> tuple:
    return tuple(params[name] for name in ARG_ORDER)


def points_of(params: dict) -> int:
    return params["kernel_h"] * params["kernel_w"] - int(bool(params["remove_center"]))


def make_dcnv4_inputs(params: dict, batch=2, height=7, width=6, dtype=torch.float32, offset_range=2.0, seed=0,
                      padding_value=0.0):  # fmt: skip
    """value (N,H,W,G*Cg) and offset_mask (N,Ho,Wo,D) with D the official width (G*P*3 rounded up to 8).

    Offsets are uniform in +-offset_range px, point weights standard normal (DCNv4 does not normalise them), and the
    padding columns hold `padding_value`.
    """
    gen = torch.Generator().manual_seed(seed)
    group, cg, points = params["group"], params["group_channels"], points_of(params)
    out_h = dcnv3_output_size(height, params["kernel_h"], params["stride_h"], params["pad_h"], params["dilation_h"])
    out_w = dcnv3_output_size(width, params["kernel_w"], params["stride_w"], params["pad_w"], params["dilation_w"])
    value = torch.randn(batch, height, width, group * cg, generator=gen, dtype=torch.float64)
    offsets = (
        torch.rand(batch, out_h, out_w, group, 2 * points, generator=gen, dtype=torch.float64) * 2 - 1
    ) * offset_range
    weights = torch.randn(batch, out_h, out_w, group, points, generator=gen, dtype=torch.float64)
    used = torch.cat([offsets, weights], dim=-1).flatten(-2)
    width_d = dcnv4_offset_mask_channels(group, points)
    padding = torch.full((batch, out_h, out_w, width_d - used.shape[-1]), padding_value, dtype=torch.float64)
    offset_mask = torch.cat([used, padding], dim=-1)
    return value.to(dtype), offset_mask.to(dtype)


def used_columns(params: dict) -> int:
    return params["group"] * points_of(params) * 3


def naive_dcnv4(value: torch.Tensor, offset_mask: torch.Tensor, params: dict) -> torch.Tensor:
    """DCNv4 written out point by point in float64 Python: for each output pixel, group and tap (i along x over
    kernel_w, j along y over kernel_h, x-major, the centre skipped with remove_center), the location
    ``base + offset_scale * (tap + (dx, dy))`` is interpolated bilinearly with zero padding and weighted as given.
    For tiny inputs only; independent of `dcnv3_core` and of the kernel."""
    p = params
    value = value.double()
    offset_mask = offset_mask.double()
    batch, height, width, _ = value.shape
    _, out_h, out_w, _ = offset_mask.shape
    group, cg, points = p["group"], p["group_channels"], points_of(p)
    centre_x = p["dilation_w"] * (p["kernel_w"] - 1) // 2
    centre_y = p["dilation_h"] * (p["kernel_h"] - 1) // 2
    taps = [
        (i, j)
        for i in range(p["kernel_w"])
        for j in range(p["kernel_h"])
        if not (p["remove_center"] and i == p["kernel_w"] // 2 and j == p["kernel_h"] // 2)
    ]
    out = torch.zeros(batch, out_h, out_w, group * cg, dtype=torch.float64)

    def pixel(n, y, x, g):
        if 0 <= y < height and 0 <= x < width:
            return value[n, y, x, g * cg : (g + 1) * cg]
        return torch.zeros(cg, dtype=torch.float64)

    for n in range(batch):
        for ho in range(out_h):
            for wo in range(out_w):
                base_x = wo * p["stride_w"] - p["pad_w"] + centre_x
                base_y = ho * p["stride_h"] - p["pad_h"] + centre_y
                for g in range(group):
                    row = offset_mask[n, ho, wo, g * 3 * points : (g + 1) * 3 * points].tolist()
                    acc = torch.zeros(cg, dtype=torch.float64)
                    for k, (i, j) in enumerate(taps):
                        dx, dy, weight = row[2 * k], row[2 * k + 1], row[2 * points + k]
                        x = base_x + p["offset_scale"] * (i * p["dilation_w"] - centre_x + dx)
                        y = base_y + p["offset_scale"] * (j * p["dilation_h"] - centre_y + dy)
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        sample = (
                            (1 - fy) * (1 - fx) * pixel(n, y0, x0, g)
                            + (1 - fy) * fx * pixel(n, y0, x0 + 1, g)
                            + fy * (1 - fx) * pixel(n, y0 + 1, x0, g)
                            + fy * fx * pixel(n, y0 + 1, x0 + 1, g)
                        )
                        acc += weight * sample
                    out[n, ho, wo, g * cg : (g + 1) * cg] = acc
    return out
