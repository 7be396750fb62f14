"""DCNv3 (InternImage deformable convolution v3) sampling core as a Hugging Face hub kernel.

``dcnv3(value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
group, group_channels, offset_scale, remove_center)`` computes, for NHWC ``value`` (N, H, W, G*Cg), pixel
``offset`` (N, Ho, Wo, G*P*2) and ``mask`` (N, Ho, Wo, G*P), the output (N, Ho, Wo, G*Cg); ``dcnv3_softmax`` takes
mask logits and applies InternImage's softmax over each group's points inside the op (CPU and CUDA).
``depthwise_norm_act`` (CPU, float32 inference) fuses the depthwise convolution, LayerNorm and activation that
predict the operator's query. ``layers`` holds the modules used by ``kernels.kernelize`` (``DCNv3Core``,
``InternImageMLP``, ``InternImageDCNv3``, and ``MultiScaleDeformableAttention`` for Transformers' Deformable DETR
module of that name). ``multi_scale_deformable_attention`` is that module's sampling core (CPU and CUDA).
"""

from . import layers
from ._core import (
    dcnv3,
    dcnv3_backward,
    dcnv3_forward,
    dcnv3_softmax,
    depthwise_norm_act,
    multi_scale_deformable_attention,
)

__all__ = [
    "dcnv3",
    "dcnv3_backward",
    "dcnv3_forward",
    "dcnv3_softmax",
    "depthwise_norm_act",
    "layers",
    "multi_scale_deformable_attention",
]
