"""Differentiable, torch.compile-friendly wrappers around the compiled DCNv3 ops.

The ops are defined in C++ (``torch_binding.cpp``); here they get fake (meta) implementations, so that
``torch.compile(fullgraph=True)`` traces them without graph breaks, and an autograd formula that calls the
compiled backward op. Op names always go through ``add_op_namespace_prefix``: every build has its own
namespace.
"""

from __future__ import annotations

import torch

from ._ops import add_op_namespace_prefix, ops

_FORWARD = add_op_namespace_prefix("dcnv3_forward")
_SOFTMAX_FORWARD = add_op_namespace_prefix("dcnv3_softmax_forward")
_BACKWARD = add_op_namespace_prefix("dcnv3_backward")
_SOFTMAX_BACKWARD = add_op_namespace_prefix("dcnv3_softmax_backward")
_DEPTHWISE_NORM_ACT = add_op_namespace_prefix("depthwise_norm_act")
_MSDA_FORWARD = add_op_namespace_prefix("msda_forward")
_MSDA_BACKWARD = add_op_namespace_prefix("msda_backward")
_DCNV4_FORWARD = add_op_namespace_prefix("dcnv4_forward")
_DCNV4_BACKWARD = add_op_namespace_prefix("dcnv4_backward")


def _register_python_side() -> None:
    """Fake impls + autograd, once per op namespace.

    A kernel variant imported a second time from another path (e.g. a local build and its hub-cache copy)
    reuses the already-loaded library and namespace; registering again would raise.
    """
    packet = ops.dcnv3_forward
    if getattr(packet, "_dcnv3_python_registered", False):
        return

    @torch.library.register_fake(_FORWARD)
    def _forward_fake(value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                      dilation_w, group, group_channels, offset_scale, remove_center):  # fmt: skip
        _check_meta(value, offset, mask)
        # Output (N, H_out, W_out, G * Cg): batch and output size from offset, channels from value.
        return value.new_empty((offset.shape[0], offset.shape[1], offset.shape[2], value.shape[3]))

    @torch.library.register_fake(_SOFTMAX_FORWARD)
    def _softmax_forward_fake(value, offset, mask_logits, *args):
        return _forward_fake(value, offset, mask_logits, *args)

    @torch.library.register_fake(_BACKWARD)
    def _backward_fake(grad_output, value, offset, mask, *args):
        _check_meta(value, offset, mask, grad_output)
        # The real op returns contiguous gradients shaped like its inputs.
        return value.new_empty(value.shape), offset.new_empty(offset.shape), mask.new_empty(mask.shape)

    @torch.library.register_fake(_SOFTMAX_BACKWARD)
    def _softmax_backward_fake(grad_output, value, offset, mask_logits, *args):
        return _backward_fake(grad_output, value, offset, mask_logits, *args)

    @torch.library.register_fake(_DEPTHWISE_NORM_ACT)
    def _depthwise_norm_act_fake(input, conv_weight, conv_bias, norm_weight, norm_bias, eps, activation):
        torch._check(input.dim() == 4, lambda: f"depthwise_norm_act: `input` must be 4-D, got {tuple(input.shape)}")
        return torch.empty_like(input, memory_format=torch.contiguous_format)

    @torch.library.register_fake(_MSDA_FORWARD)
    def _msda_forward_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        _check_msda_meta(value, sampling_locations, attention_weights)
        batch, queries, heads = sampling_locations.shape[:3]
        return value.new_empty((batch, queries, heads * value.shape[3]))

    @torch.library.register_fake(_MSDA_BACKWARD)
    def _msda_backward_fake(grad_output, value, spatial_shapes, level_start_index, sampling_locations, weights):
        _check_msda_meta(value, sampling_locations, weights)
        return (
            value.new_empty(value.shape),
            sampling_locations.new_empty(sampling_locations.shape),
            weights.new_empty(weights.shape),
        )

    @torch.library.register_fake(_DCNV4_FORWARD)
    def _dcnv4_forward_fake(value, offset_mask, *args):
        _check_dcnv4_meta(value, offset_mask)
        # Output (N, H_out, W_out, G * Cg): batch and output size from offset_mask, channels from value.
        return value.new_empty((*offset_mask.shape[:3], value.shape[3]))

    @torch.library.register_fake(_DCNV4_BACKWARD)
    def _dcnv4_backward_fake(grad_output, value, offset_mask, *args):
        _check_dcnv4_meta(value, offset_mask, grad_output)
        return value.new_empty(value.shape), offset_mask.new_empty(offset_mask.shape)

    torch.library.register_autograd(_FORWARD, _backward, setup_context=_setup_context)
    torch.library.register_autograd(_SOFTMAX_FORWARD, _softmax_backward, setup_context=_setup_context)
    torch.library.register_autograd(_MSDA_FORWARD, _msda_backward, setup_context=_msda_setup_context)
    torch.library.register_autograd(_DCNV4_FORWARD, _dcnv4_backward, setup_context=_dcnv4_setup_context)
    packet._dcnv3_python_registered = True


def _check_meta(value, offset, mask, *others) -> None:
    """Rank / dtype / device checks of the C++ op, repeated for fake tensors (full checks run in C++)."""
    for name, tensor in (("offset", offset), ("mask", mask), *(("grad_output", t) for t in others)):
        torch._check(tensor.dim() == 4, lambda n=name, t=tensor: f"dcnv3: `{n}` must be 4-D, got {tuple(t.shape)}")
        torch._check(
            tensor.device == value.device,
            lambda n=name, t=tensor: f"dcnv3: `{n}` is on {t.device} but `value` is on {value.device}",
        )
        torch._check(
            tensor.dtype == value.dtype,
            lambda n=name, t=tensor: f"dcnv3: `{n}` has dtype {t.dtype} but `value` has dtype {value.dtype}",
        )
    torch._check(value.dim() == 4, lambda: f"dcnv3: `value` must be 4-D, got {tuple(value.shape)}")


def _check_dcnv4_meta(value, offset_mask, *others) -> None:
    """Rank / dtype / device checks of the C++ DCNv4 op, repeated for fake tensors (full checks run in C++)."""
    torch._check(value.dim() == 4, lambda: f"dcnv4: `value` must be 4-D, got {tuple(value.shape)}")
    for name, tensor in (("offset_mask", offset_mask), *(("grad_output", t) for t in others)):
        torch._check(tensor.dim() == 4, lambda n=name, t=tensor: f"dcnv4: `{n}` must be 4-D, got {tuple(t.shape)}")
        torch._check(
            tensor.device == value.device and tensor.dtype == value.dtype,
            lambda n=name, t=tensor: (
                f"dcnv4: `{n}` is {t.dtype} on {t.device} but `value` is {value.dtype} on {value.device}"
            ),
        )


def _check_msda_meta(value, sampling_locations, attention_weights) -> None:
    """Rank / dtype / device checks of the C++ MSDA op, repeated for fake tensors (full checks run in C++)."""
    torch._check(value.dim() == 4, lambda: f"msda: `value` must be 4-D (N, S, M, D), got {tuple(value.shape)}")
    checked = (("sampling_locations", sampling_locations, 6), ("attention_weights", attention_weights, 5))
    for name, tensor, rank in checked:
        torch._check(
            tensor.dim() == rank, lambda n=name, t=tensor, r=rank: f"msda: `{n}` must be {r}-D, got {tuple(t.shape)}"
        )
        torch._check(
            tensor.device == value.device and tensor.dtype == value.dtype,
            lambda n=name, t=tensor: (
                f"msda: `{n}` is {t.dtype} on {t.device} but `value` is {value.dtype} on {value.device}"
            ),
        )


def _msda_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _msda_backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = ops.msda_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    return grad_value, None, None, grad_locations, grad_weights


def _setup_context(ctx, inputs, output):
    value, offset, mask = inputs[:3]
    ctx.save_for_backward(value, offset, mask)
    ctx.params = inputs[3:]


def _backward(ctx, grad_output):
    value, offset, mask = ctx.saved_tensors
    grad_value, grad_offset, grad_mask = ops.dcnv3_backward(grad_output, value, offset, mask, *ctx.params)
    return (grad_value, grad_offset, grad_mask) + (None,) * len(ctx.params)


def _softmax_backward(ctx, grad_output):
    value, offset, mask_logits = ctx.saved_tensors
    grads = ops.dcnv3_softmax_backward(grad_output, value, offset, mask_logits, *ctx.params)
    return tuple(grads) + (None,) * len(ctx.params)


def _dcnv4_setup_context(ctx, inputs, output):
    value, offset_mask = inputs[:2]
    ctx.save_for_backward(value, offset_mask)
    ctx.params = inputs[2:]


def _dcnv4_backward(ctx, grad_output):
    value, offset_mask = ctx.saved_tensors
    grad_value, grad_offset_mask = ops.dcnv4_backward(grad_output, value, offset_mask, *ctx.params)
    return (grad_value, grad_offset_mask) + (None,) * len(ctx.params)


_register_python_side()


def dcnv3_forward(value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                  group, group_channels, offset_scale, remove_center) -> torch.Tensor:  # fmt: skip
    """Raw forward op (differentiable). value (N,H,W,G*Cg), offset (N,Ho,Wo,G*P*2), mask (N,Ho,Wo,G*P)."""
    return ops.dcnv3_forward(value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                             dilation_h, dilation_w, group, group_channels, offset_scale, remove_center)  # fmt: skip


def dcnv3_backward(grad_output, value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                   dilation_h, dilation_w, group, group_channels, offset_scale, remove_center):  # fmt: skip
    """Raw backward op: (grad_value, grad_offset, grad_mask) for grad_output (N,Ho,Wo,G*Cg)."""
    return ops.dcnv3_backward(grad_output, value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                              dilation_h, dilation_w, group, group_channels, offset_scale, remove_center)  # fmt: skip


def dcnv3(
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
    remove_center: bool = False,
) -> torch.Tensor:
    """DCNv3 sampling core, differentiable in value, offset and mask.

    Args:
        value: ``(N, H, W, G * Cg)`` channels-last input.
        offset: ``(N, Ho, Wo, G * P * 2)`` pixel offsets, channel ``(g * P + p) * 2 + {0: dx, 1: dy}``.
        mask: ``(N, Ho, Wo, G * P)`` per-point weights (already softmax-normalised).
        kernel_h ... offset_scale, remove_center: as in InternImage's DCNv3 (points ``p = i * kernel_h + j``,
            x-major; ``remove_center`` skips the centre tap, so ``P = kernel_h * kernel_w - 1``).

    Offset and mask are cast to ``value.dtype`` (as the official module does for the mask), so autocast
    outputs of different precision can be mixed. Half-precision inputs accumulate in float32.

    Returns:
        ``(N, Ho, Wo, G * Cg)`` in ``value.dtype``.
    """
    if offset.dtype != value.dtype:
        offset = offset.to(value.dtype)
    if mask.dtype != value.dtype:
        mask = mask.to(value.dtype)
    return ops.dcnv3_forward(
        value, offset, mask, int(kernel_h), int(kernel_w), int(stride_h), int(stride_w), int(pad_h), int(pad_w),
        int(dilation_h), int(dilation_w), int(group), int(group_channels), float(offset_scale), bool(remove_center),
    )  # fmt: skip


def dcnv3_softmax(
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
    remove_center: bool = False,
) -> torch.Tensor:
    """`dcnv3` with ``mask = softmax over each group's P points of mask_logits`` (InternImage's normalisation).

    The softmax runs inside the op on every device (no normalised mask is written to memory), and its Jacobian
    inside the backward op. Differentiable in value, offset and mask_logits.
    """
    if offset.dtype != value.dtype:
        offset = offset.to(value.dtype)
    if mask_logits.dtype != value.dtype:
        mask_logits = mask_logits.to(value.dtype)
    return ops.dcnv3_softmax_forward(
        value, offset, mask_logits, int(kernel_h), int(kernel_w), int(stride_h), int(stride_w), int(pad_h),
        int(pad_w), int(dilation_h), int(dilation_w), int(group), int(group_channels), float(offset_scale),
        bool(remove_center),
    )  # fmt: skip


def dcnv4(
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
    remove_center: bool = False,
) -> torch.Tensor:
    """DCNv4 (FlashInternImage) sampling core, differentiable in value and offset_mask; CPU and CUDA.

    Samples as `dcnv3` (same points, positions, bilinear interpolation and zero padding) with the offsets and point
    weights fused in one tensor and the weights used as given (no softmax).

    Args:
        value: ``(N, H, W, G * Cg)`` channels-last input.
        offset_mask: ``(N, Ho, Wo, D)`` with ``D >= G * P * 3``: group ``g`` owns the columns
            ``[g * 3P, (g + 1) * 3P)``, first its ``P`` (dx, dy) pairs, then its ``P`` point weights. Columns from
            ``G * 3P`` on (the official projection pads ``D`` to a multiple of 8) are never read and get zero
            gradient.
        kernel_h ... offset_scale, remove_center: as in `dcnv3`.

    offset_mask is cast to ``value.dtype``. Half-precision inputs are computed in float32. Any batch size and group
    width.

    Returns:
        ``(N, Ho, Wo, G * Cg)`` in ``value.dtype``.
    """
    if offset_mask.dtype != value.dtype:
        offset_mask = offset_mask.to(value.dtype)
    return ops.dcnv4_forward(
        value, offset_mask, int(kernel_h), int(kernel_w), int(stride_h), int(stride_w), int(pad_h), int(pad_w),
        int(dilation_h), int(dilation_w), int(group), int(group_channels), float(offset_scale), bool(remove_center),
    )  # fmt: skip


def dcnv4_backward(grad_output, value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                   dilation_w, group, group_channels, offset_scale, remove_center):  # fmt: skip
    """Raw DCNv4 backward op: (grad_value, grad_offset_mask) for grad_output (N,Ho,Wo,G*Cg)."""
    return ops.dcnv4_backward(grad_output, value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                              dilation_h, dilation_w, group, group_channels, offset_scale, remove_center)  # fmt: skip


def depthwise_norm_act(
    input: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
    activation: str,
) -> torch.Tensor:
    """``activation(layer_norm(depthwise_conv(input)))`` on channels-last input, in one pass (CPU, float32, no grad).

    Args:
        input: ``(N, H, W, C)`` float32 CPU tensor.
        conv_weight: ``(C, 1, k, k)`` depthwise kernel, odd ``k``; stride 1 and zero padding ``k // 2``.
        conv_bias: ``(C,)``.
        norm_weight, norm_bias, eps: the LayerNorm over the ``C`` channels of each pixel.
        activation: ``"gelu"`` (exact-erf form), ``"relu"`` or ``"silu"``.

    Returns:
        ``(N, H, W, C)``. Not differentiable: the training path runs the separate modules.
    """
    return ops.depthwise_norm_act(input, conv_weight, conv_bias, norm_weight, norm_bias, float(eps), str(activation))


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention (Deformable DETR), differentiable in value, sampling_locations and
    attention_weights; CPU and CUDA.

    Args:
        value: ``(N, S, M, D)``: ``L`` flattened feature levels, ``M`` heads of ``D`` channels.
        spatial_shapes: ``(L, 2)`` int64 ``(H_l, W_l)``, with ``sum(H_l * W_l) == S``.
        level_start_index: ``(L,)`` int64 first position of each level in ``value`` (the running sum of
            ``H_l * W_l``).
        sampling_locations: ``(N, Q, M, L, P, 2)`` ``(x, y)`` per level, ``[0, 1]`` spanning the level (pixel
            centres at ``(i + 0.5) / size``); locations outside read zeros, as ``grid_sample`` with
            ``align_corners=False`` and zero padding.
        attention_weights: ``(N, Q, M, L, P)``.

    sampling_locations and attention_weights are cast to ``value.dtype``; spatial_shapes and level_start_index to
    int64 on value's device. Half-precision inputs accumulate in float32.

    Returns:
        ``(N, Q, M * D)`` in ``value.dtype``.
    """
    if sampling_locations.dtype != value.dtype:
        sampling_locations = sampling_locations.to(value.dtype)
    if attention_weights.dtype != value.dtype:
        attention_weights = attention_weights.to(value.dtype)
    spatial_shapes = spatial_shapes.to(device=value.device, dtype=torch.int64)
    level_start_index = level_start_index.to(device=value.device, dtype=torch.int64)
    return ops.msda_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
