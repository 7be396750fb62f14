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

from typing import Protocol

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


# Attribute naming the official initialisation of an operator's linear (read by the model's weight init).
DCNV3_INIT_ATTR = "_dcnv3_init"

# Activation names of the official implementation (its `build_act_layer`).
ACTIVATIONS = {"GELU": nn.GELU, "ReLU": nn.ReLU, "SiLU": nn.SiLU}


def build_activation(name: str) -> nn.Module:
    """The activation module for an official activation name (``"GELU"``, ``"ReLU"`` or ``"SiLU"``)."""
    return ACTIVATIONS[name]()


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


def _size_tensor(width, height, dtype, device) -> torch.Tensor:
    """``[width, height]`` as a tensor that follows the input shape in every tracer.

    Under `torch.jit.trace` (the TorchScript ONNX exporter) sizes are 0-d tensors and `torch.tensor` would freeze
    their example values into the graph, so they are stacked instead. Everywhere else (eager, `torch.export`,
    `torch.compile`) `torch.tensor` is right: there `torch.as_tensor` of a symbolic size would specialise it.
    """
    if torch.jit.is_tracing():
        return torch.stack([width, height]).to(dtype=dtype, device=device)
    return torch.tensor([width, height], dtype=dtype, device=device)


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

    Args:
        value: ``(N, H, W, group * group_channels)`` channels-last input.
        offset: ``(N, H_out, W_out, group * P * 2)`` offsets in pixels; channel ``(g * P + p) * 2`` is dx, ``+ 1`` dy.
        mask: ``(N, H_out, W_out, group * P)`` already-normalised point weights.
        kernel_h, kernel_w: kernel size (``P = kernel_h * kernel_w``, minus one with `remove_center`).
        stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w: as in a convolution; they give H_out, W_out.
        group, group_channels: channel groups and channels per group.
        offset_scale: multiplies the tap positions and offsets.
        remove_center: skip the centre tap (odd kernels only).

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
    size = _size_tensor(width, height, compute_dtype, value.device)
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


def _softmax_then_core(
    value, offset, mask_logits, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
    group, group_channels, offset_scale, remove_center,
):  # fmt: skip
    mask = softmax_over_points(mask_logits, group)
    return dcnv3_core(
        value, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
        dilation_h, dilation_w, group, group_channels, offset_scale, remove_center,
    )  # fmt: skip


# Under torch.compile the portable core runs as this opaque op, with the very same eager code: inductor's
# decomposition of `grid_sample` into gathers compiled for minutes and ran slower than the ATen kernel, while the
# rest of the model (LayerNorms, activations, residuals, linears) is what compiling speeds up.
@torch.library.custom_op("internimage_hf::dcnv3_softmax_core", mutates_args=())
def _dcnv3_softmax_core_op(
    value: torch.Tensor, offset: torch.Tensor, mask_logits: torch.Tensor, kernel_h: int, kernel_w: int,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int,
    group_channels: int, offset_scale: float, remove_center: bool,
) -> torch.Tensor:  # fmt: skip
    output = _softmax_then_core(value, offset, mask_logits, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                dilation_h, dilation_w, group, group_channels, offset_scale, remove_center)  # fmt: skip
    return output.contiguous()  # the strides the fake implementation promises


@_dcnv3_softmax_core_op.register_fake
def _(value, offset, mask_logits, *args):
    return value.new_empty(value.shape[0], offset.shape[1], offset.shape[2], value.shape[3])


def _op_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.arguments = inputs[3:]


def _op_backward(ctx, grad_output):
    # Recompute the eager forward with autograd on: the op keeps no intermediate (grid, samples) alive.
    with torch.enable_grad():
        tensors = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        output = _softmax_then_core(*tensors, *ctx.arguments)
        wanted = [t for t in tensors if t.requires_grad]
        grads = iter(torch.autograd.grad(output, wanted, grad_output) if wanted else ())
    return (*(next(grads) if t.requires_grad else None for t in tensors), *([None] * len(ctx.arguments)))


_dcnv3_softmax_core_op.register_autograd(_op_backward, setup_context=_op_setup_context)


def _compiling_not_exporting() -> bool:
    # An exported program must stay portable (standard operators only), so export traces the plain formulation.
    return torch.compiler.is_compiling() and not torch.compiler.is_exporting()


@use_kernel_forward_from_hub("DCNv3Core")
class DCNv3Core(nn.Module):
    """Stateless DCNv3 core: softmax over each group's points, then `dcnv3_core` sampling.

    The hub kernel replaces this forward (see `internimage_hf.kernelize`) and fuses the softmax into the
    sampling op. It has no parameters and no constructor arguments; the arguments below are `forward`'s.

    Args:
        value: ``(N, H, W, G*Cg)`` channels-last input.
        offset: ``(N, Ho, Wo, G*P*2)`` sampling offsets in pixels.
        mask_logits: ``(N, Ho, Wo, G*P)`` point weights before the softmax over each group's points.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
            offset_scale, remove_center: as in `dcnv3_core`.

    Returns:
        ``(N, Ho, Wo, G*Cg)``.
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
        core = _dcnv3_softmax_core_op if _compiling_not_exporting() else _softmax_then_core
        return core(
            value, offset, mask_logits, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
            dilation_h, dilation_w, group, group_channels, float(offset_scale), bool(remove_center),
        )  # fmt: skip


class OperatorSettings(Protocol):
    """The settings `InternImageDCNv3.from_config` reads: the attributes of that name of an `InternImageConfig`, or
    of any object that has them (this module does not depend on the model's configuration)."""

    dw_kernel_size: int | None
    offset_scale: float
    act_layer: str
    norm_layer: str
    layer_norm_eps: float
    center_feature_scale: bool
    remove_center: bool


@use_kernel_forward_from_hub("InternImageDCNv3")
class InternImageDCNv3(nn.Module):
    """The DCNv3 operator with its projections: ``(N, H, W, channels)`` -> ``(N, H, W, channels)``, channels-last.

    A depthwise convolution + LayerNorm + activation of the input predicts, for every pixel and group, the
    offsets and weight logits of `P` sampling points (`P = kernel_size**2`, one fewer with `remove_center`);
    `core` (a `DCNv3Core`, replaceable by the hub kernel) softmax-normalises the weights and aggregates the
    projected input (`input_proj`) at those points; `output_proj` mixes the result. The arguments and defaults
    are those of the official `DCNv3` module, so the layer can be used in any network; `from_config` builds
    it the way an InternImage stage does.

    Args:
        channels: input and output width `C`.
        kernel_size: side of the regular sampling grid.
        dw_kernel_size: odd kernel of the depthwise convolution that predicts offsets and weights
            (`None`: `kernel_size`).
        stride, pad, dilation: of the sampling grid. The operator keeps the spatial size (the offsets are
            predicted per input pixel), so `stride` must be 1 and `2 * pad` must equal `dilation * (kernel_size - 1)`
            (`pad=None`: that value).
        group: number of groups; must divide `channels`. Each group samples its own points.
        offset_scale: scale applied to the grid and the predicted offsets (2.0 in InternImage-L/XL).
        act_layer: activation after the depthwise convolution: `"GELU"`, `"ReLU"` or `"SiLU"`.
        norm_layer: normalisation after the depthwise convolution; only `"LN"` (LayerNorm), the official models'.
        layer_norm_eps: epsilon of that LayerNorm.
        center_feature_scale: blend the output with the projected input by a learned per-group sigmoid gate.
        remove_center: drop the centre sampling point (needs an odd `kernel_size`).
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        dw_kernel_size: int | None = None,
        stride: int = 1,
        pad: int | None = None,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        act_layer: str = "GELU",
        norm_layer: str = "LN",
        layer_norm_eps: float = 1e-6,
        center_feature_scale: bool = False,
        remove_center: bool = False,
    ) -> None:
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2 if pad is None else pad
        dw_kernel_size = dw_kernel_size or kernel_size
        _check_operator_arguments(channels, kernel_size, dw_kernel_size, stride, pad, dilation, group, act_layer,
                                  norm_layer, remove_center)  # fmt: skip
        self.channels = channels
        self.group = group
        self.group_channels = channels // group
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.offset_scale = offset_scale
        self.remove_center = bool(remove_center)
        self.points = kernel_size * kernel_size - int(self.remove_center)

        self.input_proj = nn.Linear(channels, channels)
        self.depthwise_conv = nn.Conv2d(
            channels, channels, kernel_size=dw_kernel_size, padding=(dw_kernel_size - 1) // 2, groups=channels
        )
        self.depthwise_norm = nn.LayerNorm(channels, eps=layer_norm_eps)
        self.depthwise_act = build_activation(act_layer)
        self.offset = nn.Linear(channels, group * self.points * 2)
        self.mask = nn.Linear(channels, group * self.points)
        self.output_proj = nn.Linear(channels, channels)
        for linear, rule in ((self.offset, "zeros"), (self.mask, "zeros"), (self.input_proj, "xavier_uniform"),
                             (self.output_proj, "xavier_uniform")):  # fmt: skip
            setattr(linear, DCNV3_INIT_ATTR, rule)
        self._reset_parameters()
        self.center_feature_scale = center_feature_scale
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self.core = DCNv3Core()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        """The official initialisation (also applied by `InternImagePreTrainedModel`): every point starts on the
        regular grid with equal weight (zero offset and logit projections), Xavier-uniform projections."""
        for linear in (self.offset, self.mask, self.input_proj, self.output_proj):
            if getattr(linear, DCNV3_INIT_ATTR) == "zeros":
                nn.init.zeros_(linear.weight)
            else:
                nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    @classmethod
    def from_config(cls, config: OperatorSettings, channels: int, group: int, kernel_size: int = 3) -> InternImageDCNv3:
        """The operator of an InternImage block of width `channels` with `group` groups, as `config` sets it up.

        Args:
            config: the operator settings shared by every block, e.g. an `InternImageConfig` (see `OperatorSettings`).
            channels: input and output width of the block.
            group: number of groups of the block's stage.
            kernel_size: side of the regular sampling grid.
        """
        return cls(
            channels=channels,
            kernel_size=kernel_size,
            dw_kernel_size=config.dw_kernel_size,
            group=group,
            offset_scale=config.offset_scale,
            act_layer=config.act_layer,
            norm_layer=config.norm_layer,
            layer_norm_eps=config.layer_norm_eps,
            center_feature_scale=config.center_feature_scale,
            remove_center=config.remove_center,
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        value = self.input_proj(hidden_states)
        query = self.depthwise_conv(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        query = self.depthwise_act(self.depthwise_norm(as_rows(query))).view(query.shape)
        offset = self.offset(query)
        mask_logits = self.mask(query)  # the core normalises them with a softmax over each group's points
        output = self.core(
            value, offset, mask_logits, self.kernel_size, self.kernel_size, self.stride, self.stride, self.pad,
            self.pad, self.dilation, self.dilation, self.group, self.group_channels, self.offset_scale,
            self.remove_center,
        )  # fmt: skip
        if self.center_feature_scale:
            gate = F.linear(query, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias).sigmoid()
            # One gate per group, broadcast over its channels (`repeat_interleave` here made the TorchScript ONNX
            # exporter write an Unsqueeze axis that onnxruntime rejects).
            gate = gate[..., None]
            grouped = (self.group, self.group_channels)
            output = output.unflatten(-1, grouped) * (1 - gate) + value.unflatten(-1, grouped) * gate
            output = output.flatten(-2)
        return self.output_proj(output)


def as_rows(hidden_states: torch.Tensor) -> torch.Tensor:
    """``(..., C)`` -> ``(rows, C)``, a view when the channels are innermost (what a convolution's channels-last
    output gives after its permute). Normalising the rows computes what normalising ``(..., C)`` does, but
    torch.compile (inductor, CPU) stored a LayerNorm of the permuted 4-d convolution output in a transposed layout
    and copied it back for the next op: 7% of a compiled InternImage-T forward at batch 1 went to that."""
    return hidden_states.reshape(-1, hidden_states.shape[-1])


def _check_operator_arguments(
    channels, kernel_size, dw_kernel_size, stride, pad, dilation, group, act_layer, norm_layer, remove_center
):
    for name, number in (("channels", channels), ("kernel_size", kernel_size), ("dw_kernel_size", dw_kernel_size),
                         ("stride", stride), ("dilation", dilation), ("group", group)):  # fmt: skip
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise ValueError(f"InternImageDCNv3: `{name}` must be a positive int, got {number!r}")
    if channels % group:
        raise ValueError(f"InternImageDCNv3: `group` ({group}) must divide `channels` ({channels})")
    if stride != 1 or 2 * pad != dilation * (kernel_size - 1):
        raise ValueError(
            "InternImageDCNv3 keeps the spatial size (offsets are predicted per input pixel): it needs stride=1 and "
            f"2 * pad == dilation * (kernel_size - 1), got stride={stride}, pad={pad}, dilation={dilation}, "
            f"kernel_size={kernel_size}"
        )
    if dw_kernel_size % 2 == 0:
        raise ValueError(f"InternImageDCNv3: `dw_kernel_size` must be odd, got {dw_kernel_size}")
    if act_layer not in ACTIVATIONS:
        raise ValueError(f"InternImageDCNv3: `act_layer` must be one of {sorted(ACTIVATIONS)}, got {act_layer!r}")
    if norm_layer != "LN":
        raise ValueError(f"InternImageDCNv3: `norm_layer` must be 'LN' (LayerNorm), got {norm_layer!r}")
    if remove_center and kernel_size % 2 == 0:
        raise ValueError(f"InternImageDCNv3: `remove_center` needs an odd `kernel_size`, got {kernel_size}")
