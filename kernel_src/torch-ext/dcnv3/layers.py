"""Kernel layers for ``kernels.kernelize``.

``DCNv3Core`` replaces the forward of ``internimage_hf.dcnv3.DCNv3Core`` (same parameters, same kinds). The
class must stay a pure ``nn.Module``: no ``__init__``, no members besides ``forward``, ``has_backward`` and
``can_torch_compile``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._core import dcnv3


class DCNv3Core(nn.Module):
    """Stateless DCNv3 sampling core: value (N,H,W,G*Cg), offset (N,Ho,Wo,G*P*2), mask (N,Ho,Wo,G*P)."""

    has_backward = True
    can_torch_compile = True

    def forward(
        self,
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
        remove_center: bool,
    ) -> torch.Tensor:
        return dcnv3(
            value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
            dilation_h, dilation_w, group, group_channels, offset_scale, remove_center,
        )  # fmt: skip
