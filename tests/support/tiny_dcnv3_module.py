"""A minimal module around `internimage_hf.ops.dcnv3.DCNv3Core`, for kernelize tests without the full model."""

from __future__ import annotations

import torch
from torch import nn

from internimage_hf.ops.dcnv3 import DCNv3Core


class TinyDCNv3(nn.Module):
    """Holds one DCNv3Core and a parameter (so kernelize can infer the device); forward(value, offset, mask_logits)."""

    def __init__(self, params: dict) -> None:
        super().__init__()
        self.params = dict(params)
        self.scale = nn.Parameter(torch.ones(()))
        self.core = DCNv3Core()

    def forward(self, value, offset, mask_logits):
        p = self.params
        return self.core(
            value * self.scale, offset, mask_logits, p["kernel_h"], p["kernel_w"], p["stride_h"], p["stride_w"],
            p["pad_h"], p["pad_w"], p["dilation_h"], p["dilation_w"], p["group"], p["group_channels"],
            p["offset_scale"], p["remove_center"],
        )  # fmt: skip
