"""DCNv3 (InternImage deformable convolution v3) sampling core as a Hugging Face hub kernel.

``dcnv3(value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
group, group_channels, offset_scale, remove_center)`` computes, for NHWC ``value`` (N, H, W, G*Cg), pixel
``offset`` (N, Ho, Wo, G*P*2) and ``mask`` (N, Ho, Wo, G*P), the output (N, Ho, Wo, G*Cg); ``dcnv3_softmax`` takes
mask logits and applies InternImage's softmax over each group's points inside the op (CPU and CUDA).
``dcnv4(value, offset_mask, <same parameters>)`` is FlashInternImage's DCNv4 core: the same sampling with the offsets
and point weights fused in ``offset_mask`` (N, Ho, Wo, D >= G*P*3), group ``g`` at columns ``[g*3P, (g+1)*3P)``
(P offset pairs, then P weights, used as given); the columns from ``G*3P`` on are padding.
``depthwise_norm_act`` (CPU, float32 inference) fuses the depthwise convolution, LayerNorm and activation that
predict the operator's query. ``layers`` holds the modules used by ``kernels.kernelize`` (``DCNv3Core``,
``DCNv4Core``, ``InternImageMLP``, ``InternImageDCNv3``, ``FlashInternImageDCNv4``, and
``MultiScaleDeformableAttention`` for Transformers' Deformable DETR module of that name).
``multi_scale_deformable_attention`` is that module's sampling core (CPU and CUDA).
"""

from . import layers
from ._core import (
    dcnv3,
    dcnv3_backward,
    dcnv3_forward,
    dcnv3_softmax,
    dcnv4,
    dcnv4_backward,
    depthwise_norm_act,
    multi_scale_deformable_attention,
)

__all__ = [
    "dcnv3",
    "dcnv3_backward",
    "dcnv3_forward",
    "dcnv3_softmax",
    "dcnv4",
    "dcnv4_backward",
    "depthwise_norm_act",
    "layers",
    "multi_scale_deformable_attention",
]
