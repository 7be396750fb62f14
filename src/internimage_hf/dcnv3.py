"""Deformable convolution v3 (DCNv3): the sampling core and the InternImage operator module.

Layout conventions (identical to the official implementation and to the hub kernel):

- ``value``: ``(N, H, W, G * Cg)``, channels-last. Channel ``g * Cg + c`` belongs to group ``g``.
- ``offset``: ``(N, H_out, W_out, G * P * 2)``, in pixels; channel ``(g * P + p) * 2`` is dx, ``+ 1`` is dy.
- ``mask``: ``(N, H_out, W_out, G * P)``, the (already softmax-normalised) weight of each sampling point.
- output: ``(N, H_out, W_out, G * Cg)``.

Sampling point ``p = i * kernel_h + j`` (x-major) of output pixel ``(h, w)`` and group ``g`` sits at

    x = w * stride_w - pad_w + c_w + offset_scale * (i * dilation_w - c_w + dx)
    y = h * stride_h - pad_h + c_h + offset_scale * (j * dilation_h - c_h + dy)

with ``c_w = dilation_w * (kernel_w - 1) // 2`` (``c_h`` likewise), pixel centres at integer
coordinates and zeros outside the image. With ``remove_center`` the centre tap is skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

try:  # the decorator only tags the class; without `kernels` the module keeps its own forward
    from kernels import use_kernel_forward_from_hub
except ImportError:  # pragma: no cover - exercised in environments without `kernels`

    def use_kernel_forward_from_hub(layer_name):
        def decorate(cls):
            cls.kernel_layer_name = layer_name
            return cls

        return decorate


def dcnv3_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Spatial output size of a DCNv3 sampling pass along one axis."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def _check_core_inputs(value, offset, mask, kernel_h, kernel_w, group, group_channels, remove_center):
    for name, tensor in (("value", value), ("offset", offset), ("mask", mask)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"dcnv3_core: `{name}` must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"dcnv3_core: `{name}` must be 4-D (N, H, W, C), got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"dcnv3_core: `{name}` must be a floating-point tensor, got {tensor.dtype}")
        if tensor.device != value.device:
            raise ValueError(f"dcnv3_core: `{name}` is on {tensor.device} but `value` is on {value.device}")
    if group <= 0 or group_channels <= 0:
        raise ValueError(f"dcnv3_core: `group` ({group}) and `group_channels` ({group_channels}) must be positive")
    if value.shape[-1] != group * group_channels:
        raise ValueError(
            f"dcnv3_core: `value` has {value.shape[-1]} channels but group * group_channels = "
            f"{group} * {group_channels} = {group * group_channels}"
        )
    if remove_center and (kernel_h % 2 == 0 or kernel_w % 2 == 0):
        raise ValueError("dcnv3_core: `remove_center` needs odd kernel_h and kernel_w")
    points = kernel_h * kernel_w - int(bool(remove_center))
    expected = (value.shape[0], offset.shape[1], offset.shape[2])
    if offset.shape[-1] != group * points * 2:
        raise ValueError(
            f"dcnv3_core: `offset` must have group * points * 2 = {group * points * 2} channels, got {offset.shape[-1]}"
        )
    if mask.shape[-1] != group * points:
        raise ValueError(
            f"dcnv3_core: `mask` must have group * points = {group * points} channels, got {mask.shape[-1]}"
        )
    if tuple(offset.shape[:3]) != expected or tuple(mask.shape[:3]) != expected:
        raise ValueError(
            f"dcnv3_core: `offset` {tuple(offset.shape)} and `mask` {tuple(mask.shape)} must share batch and "
            f"output size (N={value.shape[0]}, H_out, W_out)"
        )
    return points


def _tap_positions(kernel_h, kernel_w, dilation_h, dilation_w, remove_center, dtype, device):
    """Regular-grid tap offsets (x, y) relative to the kernel centre, in x-major point order: (P, 2)."""
    centre_w = dilation_w * (kernel_w - 1) // 2
    centre_h = dilation_h * (kernel_h - 1) // 2
    xs = torch.arange(kernel_w, dtype=dtype, device=device) * dilation_w - centre_w
    ys = torch.arange(kernel_h, dtype=dtype, device=device) * dilation_h - centre_h
    taps = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), dim=-1).reshape(-1, 2)
    if remove_center:
        centre = (kernel_w // 2) * kernel_h + kernel_h // 2
        taps = torch.cat([taps[:centre], taps[centre + 1 :]])
    return taps


def dcnv3_core(
    value: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    group: int,
    group_channels: int,
    offset_scale: float,
    remove_center: bool | int = False,
) -> torch.Tensor:
    """Portable PyTorch DCNv3 sampling core (see the module docstring for the exact semantics).

    Runs on any device and in float32/float64, and in float16/bfloat16 without autocast: half inputs are
    computed in float32 and the result is cast back. Differentiable in ``value``, ``offset`` and ``mask``.

    Returns:
        ``(N, H_out, W_out, group * group_channels)`` in ``value.dtype``.
    """
    points = _check_core_inputs(value, offset, mask, kernel_h, kernel_w, group, group_channels, remove_center)
    batch, height, width, channels = value.shape
    out_h, out_w = offset.shape[1], offset.shape[2]
    if (out_h, out_w) != (
        dcnv3_output_size(height, kernel_h, stride_h, pad_h, dilation_h),
        dcnv3_output_size(width, kernel_w, stride_w, pad_w, dilation_w),
    ):
        raise ValueError(
            f"dcnv3_core: `offset` spatial size {(out_h, out_w)} does not match the output size of a "
            f"{kernel_h}x{kernel_w} kernel with stride ({stride_h}, {stride_w}), pad ({pad_h}, {pad_w}), "
            f"dilation ({dilation_h}, {dilation_w}) on a {height}x{width} input"
        )
    if batch == 0 or out_h <= 0 or out_w <= 0:
        return value.new_zeros(batch, max(out_h, 0), max(out_w, 0), channels)

    compute_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    value_c, offset_c, mask_c = (t.to(compute_dtype) for t in (value, offset, mask))

    # Sampling position (x, y) = base + offset_scale * (tap + offset) in input pixels; grid_sample (align_corners
    # False) wants (2 * position + 1) / size - 1. Folding the constant part into one small tensor turns the
    # per-point arithmetic into a single fused multiply-add over the offsets.
    taps = _tap_positions(kernel_h, kernel_w, dilation_h, dilation_w, remove_center, compute_dtype, value.device)
    centre_w = dilation_w * (kernel_w - 1) // 2
    centre_h = dilation_h * (kernel_h - 1) // 2
    base_x = torch.arange(out_w, dtype=compute_dtype, device=value.device) * stride_w - pad_w + centre_w
    base_y = torch.arange(out_h, dtype=compute_dtype, device=value.device) * stride_h - pad_h + centre_h
    base = torch.stack(torch.meshgrid(base_x, base_y, indexing="xy"), dim=-1)  # (H_out, W_out, 2)
    size = torch.tensor([width, height], dtype=compute_dtype, device=value.device)
    constant = (2 * (base[:, :, None, None, :] + offset_scale * taps) + 1) / size - 1  # (H_out, W_out, 1, P, 2)
    offset_c = offset_c.reshape(batch, out_h, out_w, group, points, 2)
    grid = torch.addcmul(constant, offset_c, 2 * offset_scale / size)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(batch * group, out_h * out_w, points, 2)

    value_c = value_c.reshape(batch, height, width, group, group_channels).permute(0, 3, 4, 1, 2)
    value_c = value_c.reshape(batch * group, group_channels, height, width)
    sampled = F.grid_sample(value_c, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # sampled: (N*G, Cg, H_out*W_out, P); weight each point by its mask and sum over P.
    mask_c = mask_c.reshape(batch, out_h * out_w, group, points).permute(0, 2, 1, 3)
    mask_c = mask_c.reshape(batch * group, 1, out_h * out_w, points)
    output = (sampled * mask_c).sum(-1)
    output = output.reshape(batch, group, group_channels, out_h, out_w).permute(0, 3, 4, 1, 2)
    return output.reshape(batch, out_h, out_w, channels).to(value.dtype)


def softmax_over_points(mask_logits: torch.Tensor, group: int) -> torch.Tensor:
    """Softmax over each group's sampling points: ``(..., G * P)`` logits -> ``(..., G * P)`` weights.

    On CPU `torch.softmax` over such a narrow (8 or 9 wide) innermost dimension is about 4x slower than these
    elementwise ops. Subtracting the detached maximum keeps it stable without changing the gradient.
    """
    logits = mask_logits.unflatten(-1, (group, -1))
    if logits.device.type != "cpu":
        return logits.softmax(-1).flatten(-2)
    weights = (logits - logits.detach().amax(-1, keepdim=True)).exp()
    return (weights / weights.sum(-1, keepdim=True)).flatten(-2)


@use_kernel_forward_from_hub("DCNv3Core")
class DCNv3Core(nn.Module):
    """Stateless DCNv3 core: softmax over each group's points, then `dcnv3_core` sampling.

    The hub kernel replaces this forward (see `internimage_hf.kernelize`); on CPU it fuses the softmax into
    the sampling op. Inputs: value ``(N, H, W, G*Cg)``, offset ``(N, Ho, Wo, G*P*2)``, mask_logits
    ``(N, Ho, Wo, G*P)`` (before the softmax) -> ``(N, Ho, Wo, G*Cg)``.
    """

    def forward(
        self,
        value: torch.Tensor,
        offset: torch.Tensor,
        mask_logits: torch.Tensor,
        kernel_h: int,
        kernel_w: int,
        stride_h: int,
        stride_w: int,
        pad_h: int,
        pad_w: int,
        dilation_h: int,
        dilation_w: int,
        group: int,
        group_channels: int,
        offset_scale: float,
        remove_center: bool,
    ) -> torch.Tensor:
        mask = softmax_over_points(mask_logits, group)
        return dcnv3_core(
            value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
            dilation_h, dilation_w, group, group_channels, offset_scale, remove_center,
        )  # fmt: skip
