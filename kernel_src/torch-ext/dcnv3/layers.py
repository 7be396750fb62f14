"""Kernel layers for ``kernels.kernelize``.

Each class replaces the forward of the InternImage module of the same name (same parameters, same kinds) and
uses that module's attributes. The classes must stay pure ``nn.Module``: no ``__init__``, no members besides
``forward``, ``has_backward`` and ``can_torch_compile``.

- ``DCNv3Core`` (``internimage_hf.dcnv3.DCNv3Core``): softmax over each group's points + DCNv3 sampling, in one
  op (forward and backward) on CPU and CUDA.
- ``DCNv4Core`` (``internimage_hf.ops.dcnv4.DCNv4Core``): the DCNv4 sampling with fused offsets and weights, one op
  (forward and backward) on CPU and CUDA.
- ``InternImageMLP`` (``internimage_hf.modeling_internimage.InternImageMLP``, mapped for CPU only): in float32
  inference, oneDNN linears with the bias and the activation fused into the matrix multiply, which saves
  InternImage's largest activation (the 4x-wide hidden layer) two passes through memory.
- ``InternImageDCNv3`` (``internimage_hf.dcnv3.InternImageDCNv3``, the operator with its projections; CPU only): in
  float32 inference its four linears run as single oneDNN ops with the bias fused and the core as one op call.
  `nn.Linear` is an ``addmm`` that first copies the bias into the output, and about ten dispatched operators per
  call; at batch 1 those 4 x 30 small projections cost more in dispatch than in arithmetic. The depthwise
  convolution, LayerNorm and activation that predict the query run as the kernel's one-pass
  ``depthwise_norm_act`` (three operators and two intermediate tensors fewer per block).
- ``FlashInternImageDCNv4`` (``internimage_hf.ops.dcnv4.FlashInternImageDCNv4``, FlashInternImage's operator with
  its projections; CPU only): in float32 inference its three linears run as single oneDNN ops with the bias fused
  and the core as one op call.
- ``MultiScaleDeformableAttention`` (Transformers' Deformable DETR module of that name, used by the DINO detector;
  CPU and CUDA): the multi-scale sampling and weighting in one op, forward and backward, instead of one
  ``grid_sample`` per level plus the stack, product and sum of the sampled values.

Both keep their oneDNN linears under ``torch.compile``, where inductor leaves them as they are (one external call
each) and fuses the LayerNorms, activations and residuals around them. Without that, inductor with frozen weights
turns float32 linears of fixed shape into MKL's packed GEMM, which on InternImage's narrow projections (64 to 512
channels) took up to 1.4x the time of the oneDNN op here, and 2.2x on the 108-wide offset head of stage 1.
"""

from __future__ import annotations

import torch
from torch import nn

from ._core import dcnv3_softmax, dcnv4, depthwise_norm_act, multi_scale_deformable_attention

# Names of the activations InternImage configs use: oneDNN post-ops and the kernel's depthwise_norm_act.
_ONEDNN_ACTIVATIONS = {nn.GELU: "gelu", nn.ReLU: "relu", nn.SiLU: "swish"}
_KERNEL_ACTIVATIONS = {nn.GELU: "gelu", nn.ReLU: "relu", nn.SiLU: "silu"}


class DCNv3Core(nn.Module):
    """Stateless DCNv3 core: value (N,H,W,G*Cg), offset (N,Ho,Wo,G*P*2), mask_logits (N,Ho,Wo,G*P)."""

    has_backward = True
    can_torch_compile = True

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
        return dcnv3_softmax(
            value, offset, mask_logits, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
            dilation_h, dilation_w, group, group_channels, offset_scale, remove_center,
        )  # fmt: skip


class DCNv4Core(nn.Module):
    """Stateless DCNv4 core: value (N,H,W,G*Cg), offset_mask (N,Ho,Wo,D >= G*P*3) -> (N,Ho,Wo,G*Cg)."""

    has_backward = True
    can_torch_compile = True

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
        return dcnv4(
            value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
            group, group_channels, offset_scale, remove_center,
        )  # fmt: skip


def _activation_name(act: nn.Module, names: dict[type, str]) -> str | None:
    """`act`'s name in `names`, or None where it has none (nn.GELU only in its exact-erf form)."""
    if isinstance(act, nn.GELU):
        return names[nn.GELU] if act.approximate == "none" else None
    return names.get(type(act))


def _onednn_inference(hidden_states: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN linears compute what `nn.Linear` would: CPU float32, no gradient, no autocast."""
    needs_grad = torch.is_grad_enabled() and (hidden_states.requires_grad or weight.requires_grad)
    return (
        hidden_states.device.type == "cpu"
        and hidden_states.dtype == torch.float32
        and not needs_grad
        and not torch.is_autocast_enabled("cpu")  # autocast picks the linears' dtype; leave it in charge
        and torch._C._has_mkldnn  # not torch.backends.mkldnn.is_available(): torch.compile breaks the graph on it
    )


def _fusable(mlp: nn.Module, hidden_states: torch.Tensor) -> bool:
    """Whether the oneDNN path computes what the plain modules would (the activation is checked separately)."""
    return _onednn_inference(hidden_states, mlp.fc1.weight) and not (mlp.training and mlp.dropout.p > 0)


def _linear(hidden_states: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(hidden_states, linear.weight, linear.bias, "none", [], "")


def _query(dcn: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """The operator's depthwise convolution + LayerNorm + activation, fused into one op where the kernel has it."""
    activation = _activation_name(dcn.depthwise_act, _KERNEL_ACTIVATIONS)
    conv = dcn.depthwise_conv
    if activation is not None and conv.bias is not None and dcn.depthwise_norm.weight is not None:
        norm = dcn.depthwise_norm
        return depthwise_norm_act(hidden_states, conv.weight, conv.bias, norm.weight, norm.bias, norm.eps, activation)
    query = conv(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    # Normalised as (rows, C): inductor stored the LayerNorm of the permuted 4-d tensor transposed (see the model).
    return dcn.depthwise_act(dcn.depthwise_norm(query.reshape(-1, query.shape[-1]))).view(query.shape)


class InternImageMLP(nn.Module):
    """fc1 -> activation -> dropout -> fc2 -> dropout on channels-last input ``(..., C)``.

    Fused oneDNN path when it computes the same thing faster: CPU float32 without autocast, no gradient needed,
    dropout inactive, an activation oneDNN fuses (eager and under torch.compile). Otherwise the plain modules.
    """

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        activation = _activation_name(self.act, _ONEDNN_ACTIVATIONS)
        if activation is None or not _fusable(self, hidden_states):
            hidden_states = self.dropout(self.act(self.fc1(hidden_states)))
            return self.dropout(self.fc2(hidden_states))
        hidden_states = torch.ops.mkldnn._linear_pointwise(
            hidden_states, self.fc1.weight, self.fc1.bias, activation, [], "none"
        )
        return _linear(hidden_states, self.fc2)


class InternImageDCNv3(nn.Module):
    """The DCNv3 operator ``(N, H, W, C)`` -> ``(N, H, W, C)``: input projection, depthwise conv + LayerNorm +
    activation predicting offsets and point logits, the sampling core (softmax fused), optional centre-feature
    gate, output projection.

    CPU float32 inference without autocast (eager and under torch.compile): oneDNN linears with fused bias and one
    core op. Otherwise the module's own forward (whose core is the kernel's ``DCNv3Core`` after kernelize).
    """

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not _onednn_inference(hidden_states, self.input_proj.weight):
            return type(self).forward(self, hidden_states)
        value = _linear(hidden_states, self.input_proj)
        query = _query(self, hidden_states)
        output = dcnv3_softmax(
            value, _linear(query, self.offset), _linear(query, self.mask), self.kernel_size, self.kernel_size,
            self.stride, self.stride, self.pad, self.pad, self.dilation, self.dilation, self.group,
            self.group_channels, self.offset_scale, self.remove_center,
        )  # fmt: skip
        if self.center_feature_scale:
            gate = torch.nn.functional.linear(
                query, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias
            ).sigmoid()
            gate = gate.repeat_interleave(self.group_channels, dim=-1)
            output = output * (1 - gate) + value * gate
        return _linear(output, self.output_proj)


class FlashInternImageDCNv4(nn.Module):
    """The DCNv4 operator ``(N, H, W, C)`` -> ``(N, H, W, C)``: value projection, optional depthwise convolution
    predicting the fused offsets and point weights, the sampling core, output projection.

    CPU float32 inference without autocast and without the centre-feature gate (which no official model uses), eager
    and under torch.compile: oneDNN linears with fused bias and one core op. Otherwise the module's own forward
    (whose core is the kernel's ``DCNv4Core`` after kernelize).
    """

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.center_feature_scale or not _onednn_inference(hidden_states, self.value_proj.weight):
            return type(self).forward(self, hidden_states)
        value = _linear(hidden_states, self.value_proj)
        query = hidden_states
        if self.depthwise_conv is not None:
            query = self.depthwise_conv(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        output = dcnv4(
            value, _linear(query, self.offset_mask), self.kernel_size, self.kernel_size, 1, 1, self.pad, self.pad,
            1, 1, self.group, self.group_channels, self.offset_scale, self.remove_center,
        )  # fmt: skip
        return _linear(output, self.output_proj)


class MultiScaleDeformableAttention(nn.Module):
    """Transformers' Deformable DETR core: value ``(N, S, M, D)``, sampling_locations ``(N, Q, M, L, P, 2)``,
    attention_weights ``(N, Q, M, L, P)`` -> ``(N, Q, M * D)``, as one kernel op.

    ``value_spatial_shapes_list`` and ``im2col_step`` are accepted for the signature only: the op reads the level
    sizes from ``value_spatial_shapes`` and needs no batching.
    """

    has_backward = True
    can_torch_compile = True

    def forward(
        self,
        value: torch.Tensor,
        value_spatial_shapes: torch.Tensor,
        value_spatial_shapes_list: list[tuple],
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        im2col_step: int,
    ) -> torch.Tensor:
        return multi_scale_deformable_attention(
            value, value_spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
