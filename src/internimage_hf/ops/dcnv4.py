"""Deformable convolution v4 (DCNv4, FlashInternImage's operator): the sampling core and the operator module.

DCNv4 samples exactly as DCNv3 (same point order, positions, bilinear interpolation and zero padding; see
`internimage_hf.ops.dcnv3`) with two differences in what it takes:

- the point weights are used as given (no softmax over a group's points);
- offsets and weights come in one fused tensor ``offset_mask`` ``(N, H_out, W_out, D)``: group ``g`` owns the
  columns ``[g * 3P, (g + 1) * 3P)``, the first ``2P`` of them the (dx, dy) pairs of its points, the last ``P`` their
  weights. The official projection rounds ``D`` up to a multiple of 8 (`dcnv4_offset_mask_channels`); the columns
  from ``G * 3P`` on are never read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dcnv3 import DCNV3_INIT_ATTR, dcnv3_core, use_kernel_forward_from_hub


def dcnv4_offset_mask_channels(group: int, points: int) -> int:
    """Width of the official fused offset/weight projection: ``G * P * 3`` rounded up to a multiple of 8."""
    return math.ceil(group * points * 3 / 8) * 8


def split_offset_mask(offset_mask: torch.Tensor, group: int, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused ``(N, Ho, Wo, D)`` tensor split into DCNv3's ``offset`` ``(N, Ho, Wo, G*P*2)`` and ``mask``
    ``(N, Ho, Wo, G*P)``.

    Raises:
        ValueError: `offset_mask` is not 4-D or has fewer than ``G * P * 3`` channels.
    """
    if offset_mask.dim() != 4:
        raise ValueError(f"dcnv4_core: `offset_mask` must be 4-D (N, H_out, W_out, D), got {tuple(offset_mask.shape)}")
    needed = group * points * 3
    if offset_mask.shape[-1] < needed:
        raise ValueError(
            f"dcnv4_core: `offset_mask` must have at least group * points * 3 = {needed} channels, "
            f"got {offset_mask.shape[-1]}"
        )
    # reshape with the sizes read from the tensor, not unflatten: the TorchScript tracer bakes unflatten's sizes into
    # the graph, and an ONNX file exported that way only runs at the example's height and width.
    batch, out_h, out_w, _ = offset_mask.shape
    per_group = offset_mask[..., :needed].reshape(batch, out_h, out_w, group, 3 * points)
    offset = per_group[..., : 2 * points].flatten(-2)
    mask = per_group[..., 2 * points :].flatten(-2)
    return offset, mask


def dcnv4_core(
    value: torch.Tensor,
    offset_mask: torch.Tensor,
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
    """Portable PyTorch DCNv4 sampling core (see the module docstring for the layout).

    Runs on any device, any batch size, in float32/float64 and in float16/bfloat16 (computed in float32, cast
    back); differentiable in ``value`` and ``offset_mask`` (the unused padding columns get zero gradient).

    Args:
        value: ``(N, H, W, group * group_channels)`` channels-last input.
        offset_mask: ``(N, H_out, W_out, D)`` with ``D >= group * P * 3``; unnormalised point weights.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
            offset_scale, remove_center: as in `internimage_hf.ops.dcnv3.dcnv3_core`.

    Returns:
        ``(N, H_out, W_out, group * group_channels)`` in ``value.dtype``.
    """
    if not isinstance(offset_mask, torch.Tensor):
        raise TypeError(f"dcnv4_core: `offset_mask` must be a torch.Tensor, got {type(offset_mask).__name__}")
    points = kernel_h * kernel_w - int(bool(remove_center))
    offset, mask = split_offset_mask(offset_mask, group, points)
    return dcnv3_core(
        value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
        group, group_channels, offset_scale, remove_center,
    )  # fmt: skip


@use_kernel_forward_from_hub("DCNv4Core")
class DCNv4Core(nn.Module):
    """Stateless DCNv4 core: `dcnv4_core` as a module, so that the hub kernel can replace its forward.

    Args (of `forward`):
        value: ``(N, H, W, G*Cg)`` channels-last input.
        offset_mask: ``(N, Ho, Wo, D)`` fused offsets and weights, ``D >= G*P*3``.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
            offset_scale, remove_center: as in `dcnv4_core`.

    Returns:
        ``(N, Ho, Wo, G*Cg)``.
    """

    def forward(
        self,
        value: torch.Tensor,
        offset_mask: torch.Tensor,
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
        return dcnv4_core(
            value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
            group, group_channels, float(offset_scale), bool(remove_center),
        )  # fmt: skip


@use_kernel_forward_from_hub("FlashInternImageDCNv4")
class FlashInternImageDCNv4(nn.Module):
    """The DCNv4 operator with its projections: ``(N, H, W, channels)`` -> ``(N, H, W, channels)``, channels-last.

    One linear layer (`offset_mask`), applied to the input or to a plain depthwise convolution of it
    (`dw_kernel_size`), predicts every group's point offsets and weights in DCNv4's fused layout; `core` (a
    `DCNv4Core`, replaceable by the hub kernel) aggregates the projected input (`value_proj`) at those points with
    those weights, unnormalised; `output_proj` mixes the result. Arguments and defaults follow the official `DCNv4`
    module (stride 1, "same" padding: offsets are predicted per input pixel).

    Args:
        channels: input and output width `C`.
        kernel_size: side of the regular sampling grid.
        group: number of groups; must divide `channels`.
        offset_scale: scale applied to the grid and the predicted offsets.
        dw_kernel_size: odd kernel of the depthwise convolution in front of `offset_mask` (`None`: no convolution).
        center_feature_scale: blend the output with the projected input by a learned per-group sigmoid gate whose
            query is the sampled output (DCNv3's query is the depthwise features).
        remove_center: drop the centre sampling point.
        output_bias: give `output_proj` a bias (the official FlashInternImage-T/S/B have none).
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        group: int = 4,
        offset_scale: float = 1.0,
        dw_kernel_size: int | None = None,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        output_bias: bool = True,
    ) -> None:
        super().__init__()
        _check_operator_arguments(channels, kernel_size, group, dw_kernel_size)
        self.channels = channels
        self.kernel_size = kernel_size
        self.pad = (kernel_size - 1) // 2
        self.group = group
        self.group_channels = channels // group
        self.offset_scale = offset_scale
        self.remove_center = bool(remove_center)
        self.points = kernel_size * kernel_size - int(self.remove_center)

        self.value_proj = nn.Linear(channels, channels)
        self.depthwise_conv = None
        if dw_kernel_size is not None:
            self.depthwise_conv = nn.Conv2d(
                channels, channels, kernel_size=dw_kernel_size, padding=(dw_kernel_size - 1) // 2, groups=channels
            )
        self.offset_mask = nn.Linear(channels, dcnv4_offset_mask_channels(group, self.points))
        self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        for linear, rule in ((self.offset_mask, "zeros"), (self.value_proj, "xavier_uniform"),
                             (self.output_proj, "xavier_uniform")):  # fmt: skip
            setattr(linear, DCNV3_INIT_ATTR, rule)
        self._reset_parameters()
        self.center_feature_scale = center_feature_scale
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self.core = DCNv4Core()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        """The official initialisation: zero offset/weight projection, Xavier-uniform value and output projections,
        zero biases."""
        for linear in (self.offset_mask, self.value_proj, self.output_proj):
            if getattr(linear, DCNV3_INIT_ATTR) == "zeros":
                nn.init.zeros_(linear.weight)
            else:
                nn.init.xavier_uniform_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        value = self.value_proj(hidden_states)
        query = hidden_states
        if self.depthwise_conv is not None:
            query = self.depthwise_conv(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        offset_mask = self.offset_mask(query)
        output = self.core(
            value, offset_mask, self.kernel_size, self.kernel_size, 1, 1, self.pad, self.pad, 1, 1, self.group,
            self.group_channels, self.offset_scale, self.remove_center,
        )  # fmt: skip
        if self.center_feature_scale:
            gate = F.linear(output, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias)
            gate = gate.sigmoid()[..., None]
            grouped = (self.group, self.group_channels)
            output = output.unflatten(-1, grouped) * (1 - gate) + value.unflatten(-1, grouped) * gate
            output = output.flatten(-2)
        return self.output_proj(output)


def _check_operator_arguments(channels, kernel_size, group, dw_kernel_size):
    for name, number in (("channels", channels), ("kernel_size", kernel_size), ("group", group)):
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise ValueError(f"FlashInternImageDCNv4: `{name}` must be a positive int, got {number!r}")
    if channels % group:
        raise ValueError(f"FlashInternImageDCNv4: `group` ({group}) must divide `channels` ({channels})")
    if kernel_size % 2 == 0:
        raise ValueError(f"FlashInternImageDCNv4: `kernel_size` must be odd (same padding), got {kernel_size}")
    if dw_kernel_size is not None and (not isinstance(dw_kernel_size, int) or dw_kernel_size % 2 == 0):
        raise ValueError(f"FlashInternImageDCNv4: `dw_kernel_size` must be an odd int or None, got {dw_kernel_size!r}")
