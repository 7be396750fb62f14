"""A tiny InternImage classifier whose DCNv3 sampling points lie off the pixel grid (kernel-vs-PyTorch tests)."""

from __future__ import annotations

import torch

from internimage_hf import InternImageConfig, InternImageForImageClassification
from internimage_hf.ops.dcnv3 import InternImageDCNv3


def tiny_model() -> InternImageForImageClassification:
    config = InternImageConfig(channels=16, depths=(1, 1, 2, 1), groups=(2, 2, 4, 4), num_labels=3, drop_path_rate=0.0)
    torch.manual_seed(0)
    model = InternImageForImageClassification(config).eval()
    # Move the points off the pixel grid: at the official zero-offset init every sample sits on a pixel centre, where
    # the bilinear gradient w.r.t. the offset is one-sided and the kernel and grid_sample may take different sides.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, InternImageDCNv3):
                module.offset.weight.normal_(std=0.1)
                module.mask.weight.normal_(std=0.1)
    return model
