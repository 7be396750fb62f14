"""PyTorch InternImage: a CNN built on deformable convolution v3 (Wang et al., CVPR 2023).

Inside the stages activations are channels-last ``(N, H, W, C)`` like the official implementation (every
projection is a `nn.Linear`); everything a user sees (`hidden_states`, `last_hidden_state`, backbone
`feature_maps`) is channels-first ``(N, C, H, W)``: a view of the channels-last tensor (memory format
`torch.channels_last`), which the network itself continues from, so gradients reach it (Grad-CAM, attribution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)

from ...ops.dcnv3 import DCNV3_INIT_ATTR, InternImageDCNv3, as_rows, build_activation, use_kernel_forward_from_hub
from .checkpoint_keys import official_hub_key_mapping
from .configuration_internimage import InternImageConfig

# Constants of the official CLIP-projector head of InternImage-H/G.
CLIP_PRETRAIN_EMBED_DIM = 1024
CLIP_EMBED_DIM = 768
CLIP_ATTENTION_HEADS = 16
CLIP_POOL_STRIDE = 2
# The network downsamples by 32; smaller inputs collapse several stages to a single pixel.
MIN_INPUT_SIZE = 32


def to_channels_first(hidden_states: torch.Tensor) -> torch.Tensor:
    """``(N, H, W, C)`` -> ``(N, C, H, W)`` view in channels-last memory: no copy, stays in the autograd graph."""
    return hidden_states.permute(0, 3, 1, 2)


def to_channels_last(hidden_states: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, H, W, C)`` view; the inverse of `to_channels_first`."""
    return hidden_states.permute(0, 2, 3, 1)


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: zero whole residual branches with probability `drop_prob`."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    # The per-sample factor is scaled, not the branch: one pass over the activation (and its gradient), not two.
    scale = hidden_states.new_empty(shape).bernoulli_(keep_prob).div_(keep_prob)
    return hidden_states * scale


class InternImageDropPath(nn.Module):
    """Stochastic depth on a residual branch."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class ChannelsLastConv2d(nn.Conv2d):
    """`nn.Conv2d` that convolves with its weight in channels-last memory, the layout of the activations it meets.

    With a channels-last weight PyTorch runs the convolution channels-last and lays its output out channels-last
    (which the LayerNorm after it reads as ``(rows, C)``); with a contiguous one it would copy the weight into
    channels-last on every call. The parameter itself stays contiguous, as Transformers' loading expects (it takes
    a non-contiguous parameter for one altered by a conversion): outside autograd the channels-last copy is cached
    until the parameter changes (another tensor, an in-place update, a new device or dtype); under autograd,
    ``torch.compile`` and export the conversion is part of the graph. Fused optimizers update weights without
    bumping their version counter, so the cache is also dropped by every forward with gradients (which any
    optimizer step needs first) and by `train`/`eval`.
    """

    def train(self, mode: bool = True):
        self.__dict__.pop("_channels_last_cache", None)
        return super().train(mode)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(hidden_states, self.channels_last_weight(), self.bias)

    def channels_last_weight(self) -> torch.Tensor:
        """The weight in channels-last memory: a cached copy, or a differentiable conversion when one is needed."""
        weight = self.weight
        needs_graph = torch.is_grad_enabled() and weight.requires_grad
        if needs_graph or torch.compiler.is_compiling() or torch.jit.is_tracing() or weight.device.type == "meta":
            self.__dict__.pop("_channels_last_cache", None)
            return weight.contiguous(memory_format=torch.channels_last)
        cached = self.__dict__.get("_channels_last_cache")
        if cached is None or not _cache_matches(cached, weight):
            # The source is kept (it shares the weight's storage), so a replaced weight can never reuse its address
            # while the copy is cached.
            source = weight.detach()
            cached = (source, weight._version, source.contiguous(memory_format=torch.channels_last))
            self.__dict__["_channels_last_cache"] = cached
        return cached[2]


def _cache_matches(cached: tuple, weight: torch.Tensor) -> bool:
    """Whether a ``(source, version, copy)`` cache entry was made from ``weight`` as it is now."""
    source, version, _ = cached
    return (
        source.data_ptr() == weight.data_ptr()
        and version == weight._version
        and source.dtype == weight.dtype
        and source.device == weight.device
        and source.shape == weight.shape
    )


class InternImageStem(nn.Module):
    """Two stride-2 3x3 convolutions: ``(N, 3, H, W)`` -> ``(N, C, H/4, W/4)`` (a view of a channels-last tensor)."""

    def __init__(self, config: InternImageConfig) -> None:
        super().__init__()
        half = config.channels // 2
        self.conv1 = ChannelsLastConv2d(config.num_channels, half, kernel_size=3, stride=2, padding=1)
        self.norm1 = nn.LayerNorm(half, eps=config.layer_norm_eps)
        self.act = build_activation(config.act_layer)
        self.conv2 = ChannelsLastConv2d(half, config.channels, kernel_size=3, stride=2, padding=1)
        self.norm2 = nn.LayerNorm(config.channels, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.conv1(pixel_values).permute(0, 2, 3, 1)
        hidden = self.act(self.norm1(as_rows(hidden))).view(hidden.shape).permute(0, 3, 1, 2)
        hidden = self.conv2(hidden).permute(0, 2, 3, 1)
        return to_channels_first(self.norm2(as_rows(hidden)).view(hidden.shape))


class InternImageDownsample(nn.Module):
    """Stride-2 3x3 convolution doubling the width: ``(N, H, W, C)`` -> ``(N, H/2, W/2, 2C)``."""

    def __init__(self, config: InternImageConfig, channels: int) -> None:
        super().__init__()
        self.conv = ChannelsLastConv2d(channels, 2 * channels, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * channels, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(as_rows(hidden_states)).view(hidden_states.shape)


@use_kernel_forward_from_hub("InternImageMLP")
class InternImageMLP(nn.Module):
    """Two-layer feed-forward network on channels-last input ``(..., C)``.

    Tagged for ``kernels``: on CPU, `internimage_hf.kernelize` swaps in the hub kernel's fused oneDNN version for
    float32 inference.
    """

    def __init__(self, config: InternImageConfig, channels: int, fc2_bias: bool = True) -> None:
        super().__init__()
        hidden = int(channels * config.mlp_ratio)
        self.fc1 = nn.Linear(channels, hidden)
        self.act = build_activation(config.act_layer)
        self.fc2 = nn.Linear(hidden, channels, bias=fc2_bias)
        self.dropout = nn.Dropout(config.drop_rate)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.act(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden_states))


class InternImageLayer(GradientCheckpointingLayer):
    """One InternImage block: DCNv3 and MLP residual branches on ``(N, H, W, C)``.

    Norm placement follows the official variants: pre-norm (T), post-norm of the branch output (S/B/L/XL/G),
    or pre-norm plus a residual post-norm (H); an optional per-channel layer scale multiplies each branch.
    FlashInternImage's block differs only in its two branches (`build_operator`, `build_mlp`).
    """

    def __init__(self, config: InternImageConfig, channels: int, group: int, drop_path_rate: float) -> None:
        super().__init__()
        self.post_norm = config.post_norm
        self.use_layer_scale = config.layer_scale is not None
        self.use_res_post_norm = config.res_post_norm and not self.use_layer_scale
        self.norm1 = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.dcn = self.build_operator(config, channels, group)
        self.norm2 = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.mlp = self.build_mlp(config, channels)
        self.drop_path = InternImageDropPath(drop_path_rate)
        if self.use_layer_scale:
            self.layer_scale1 = nn.Parameter(torch.full((channels,), float(config.layer_scale)))
            self.layer_scale2 = nn.Parameter(torch.full((channels,), float(config.layer_scale)))
        if config.res_post_norm:
            # The official model creates these whenever res_post_norm is set (and ignores them with layer scale).
            self.res_post_norm1 = nn.LayerNorm(channels, eps=config.layer_norm_eps)
            self.res_post_norm2 = nn.LayerNorm(channels, eps=config.layer_norm_eps)

    @staticmethod
    def build_operator(config: InternImageConfig, channels: int, group: int) -> nn.Module:
        """The deformable-convolution branch: DCNv3."""
        return InternImageDCNv3.from_config(config, channels, group)

    @staticmethod
    def build_mlp(config: InternImageConfig, channels: int) -> nn.Module:
        return InternImageMLP(config, channels)

    def _branch(self, hidden_states, transform, norm, index):
        if self.post_norm:
            branch = norm(transform(hidden_states))
        else:
            branch = transform(norm(hidden_states))
            if self.use_res_post_norm:
                branch = getattr(self, f"res_post_norm{index}")(branch)
        if self.use_layer_scale:
            branch = getattr(self, f"layer_scale{index}") * branch
        return hidden_states + self.drop_path(branch)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self._branch(hidden_states, self.dcn, self.norm1, 1)
        return self._branch(hidden_states, self.mlp, self.norm2, 2)


class InternImageStage(nn.Module):
    """A stage: blocks, optional post-norms after selected blocks, level norm, then an optional downsample.

    Takes ``(N, H, W, C)``; returns ``(stage_output, next_input)``: the stage output ``(N, C, H, W)`` before
    downsampling (what detection/segmentation heads consume) and the downsampled input of the next stage
    ``(N, H/2, W/2, 2C)`` (or `None`).
    """

    layer_class = InternImageLayer

    def __init__(self, config: InternImageConfig, index: int, drop_path_rates: list[float]) -> None:
        super().__init__()
        channels = config.hidden_sizes[index]
        group = config.groups[index]
        self.layers = nn.ModuleList([self.layer_class(config, channels, group, rate) for rate in drop_path_rates])
        use_post_norms = index == 2 and config.level2_post_norm and config.level2_post_norm_block_ids
        self.post_norm_block_ids = list(config.level2_post_norm_block_ids) if use_post_norms else []
        if self.post_norm_block_ids:
            self.post_norms = nn.ModuleList(
                [nn.LayerNorm(channels, eps=config.layer_norm_eps) for _ in self.post_norm_block_ids]
            )
        self.use_norm = (not config.post_norm) or config.center_feature_scale
        if self.use_norm:
            self.norm = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        is_last = index == len(config.depths) - 1
        self.downsample = None if is_last else InternImageDownsample(config, channels)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        for block_id, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states)
            if block_id in self.post_norm_block_ids:
                hidden_states = self.post_norms[self.post_norm_block_ids.index(block_id)](hidden_states)
        if self.use_norm:
            hidden_states = self.norm(hidden_states)
        # The downsample reads the very tensor handed out as the stage output, so that tensor gets gradients.
        stage_output = to_channels_first(hidden_states)
        next_input = self.downsample(to_channels_last(stage_output)) if self.downsample is not None else None
        return stage_output, next_input


def drop_path_schedule(config: InternImageConfig) -> list[list[float]]:
    """Per-stage lists of stochastic-depth rates (linear in block index, or uniform)."""
    total = sum(config.depths)
    if config.drop_path_type == "uniform":
        rates = [config.drop_path_rate] * total
    else:
        rates = [x.item() for x in torch.linspace(0, config.drop_path_rate, total, device="cpu")]
    starts = [sum(config.depths[:i]) for i in range(len(config.depths))]
    return [rates[start : start + depth] for start, depth in zip(starts, config.depths, strict=True)]


class InternImageEncoder(nn.Module):
    """The four stages: stem output ``(N, C, H/4, W/4)`` -> the stage outputs ``(N, C * 2**i, H / 2**(i+2), ...)``."""

    stage_class = InternImageStage

    def __init__(self, config: InternImageConfig) -> None:
        super().__init__()
        schedule = drop_path_schedule(config)
        self.stages = nn.ModuleList([self.stage_class(config, i, schedule[i]) for i in range(len(config.depths))])

    def forward(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        hidden_states = to_channels_last(embeddings)
        stage_outputs = []
        for stage in self.stages:
            stage_output, hidden_states = stage(hidden_states)
            stage_outputs.append(stage_output)
        return stage_outputs


class InternImagePreTrainedModel(PreTrainedModel):
    """Weight initialisation, checkpoint-format handling and the shared class attributes.

    Args:
        config (`InternImageConfig`): the model configuration; the weights are initialised as the official model
            does, `from_pretrained` then loads a checkpoint.
    """

    config_class = InternImageConfig
    config: InternImageConfig
    base_model_prefix = "internimage"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternImageLayer", "InternImageStem", "InternImageDownsample"]

    def get_input_embeddings(self) -> nn.Module:
        """The convolutional stem, InternImage's counterpart of patch embeddings (Accelerate's FSDP2 wrapping asks
        every model for its input embeddings; Transformers' default raises for models without a token embedding)."""
        return getattr(self, self.base_model_prefix, self).embeddings

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained` that also reads the official hub checkpoints (remote-code format), and
        runs kernels only when asked.

        Official weights are named ``"model." + official key``; a key mapping renames them on load (our own
        checkpoints never start with ``model.``). ``use_kernels`` defaults to False here, though Transformers >= 5.25
        defaults it to True: loading stays offline and quiet, and works whatever ``kernels`` is installed.
        ``use_kernels=True`` or ``kernel_config=`` kernelize after loading, through `set_use_kernels`.
        """
        kwargs.setdefault("key_mapping", official_hub_key_mapping())
        use_kernels = kwargs.pop("use_kernels", False)
        kernel_config = kwargs.pop("kernel_config", None)
        kernels_mode = kwargs.pop("kernels_mode", None)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, use_kernels=False, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info=True
        if use_kernels or kernel_config is not None:
            model.set_use_kernels(True, kernel_config, kernels_mode)
        return loaded

    def set_use_kernels(self, use_kernels, kernel_config=None, mode=None, device_map=None):
        """Transformers' kernel switch (``from_pretrained(..., use_kernels=True, kernel_config=...)``,
        ``model.use_kernels = True``, a mode change on ``train()``), served by `internimage_hf.kernelize`.

        The kernel, its build variant for the model's device and its trust follow the rules of
        `internimage_hf.kernelize`, so `dcnv3_backend` and the outputs are the same either way, with any ``kernels``
        release. A ``kernel_config`` names the kernel as in Transformers (``"org/name:DCNv3Core"``, or a local build
        ``"/path:DCNv3Core"`` with ``use_local_kernel=True``), on CPU too.

        Args:
            use_kernels (`bool`): kernelize (True) or restore the PyTorch modules (False).
            kernel_config (`KernelConfig`, *optional*): which kernel; default: `internimage_hf.kernelize`'s.
            mode (`kernels.Mode`, *optional*): default from ``model.training``.
            device_map (`dict`, *optional*): accepted for Transformers' signature; the device is the parameters'.
        """
        if not use_kernels and not self.use_kernels:
            return  # nothing to undo (Transformers calls this on every load; remote code has no hub_kernels)
        from ...hub_kernels import set_model_kernels

        set_model_kernels(self, use_kernels, kernel_config, mode)

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """Always writes this package's own key names (a loaded official checkpoint is not renamed back)."""
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Official initialisation: truncated-normal linears, PyTorch-default convs, DCNv3 regular grid."""
        if isinstance(module, nn.Linear):
            self._init_linear(module)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight[0].numel())
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, InternImageDCNv3):
            self._init_dcnv3(module)
        elif isinstance(module, InternImageLayer) and module.use_layer_scale:
            init.constant_(module.layer_scale1, self.config.layer_scale)
            init.constant_(module.layer_scale2, self.config.layer_scale)
        elif isinstance(module, InternImageCrossAttention):
            for bias in (module.q_bias, module.k_bias, module.v_bias):
                init.zeros_(bias)

    def _init_linear(self, module: nn.Linear) -> None:
        # Each linear is initialised once, here: Transformers >= 5.2x marks initialised tensors and its `init`
        # functions then leave them alone, so a parent module cannot re-initialise its children afterwards.
        rule = getattr(module, DCNV3_INIT_ATTR, None)
        if rule == "zeros":  # DCNv3 offsets and point logits: every point starts on the regular grid, equal weights
            init.zeros_(module.weight)
        elif rule == "xavier_uniform":  # DCNv3 input and output projections
            init.xavier_uniform_(module.weight)
        else:
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
        if module.bias is not None:
            init.zeros_(module.bias)

    @staticmethod
    def _init_dcnv3(module: InternImageDCNv3) -> None:
        # Its linears are initialised by `_init_linear` (see `DCNV3_INIT_ATTR`); only its own parameters here.
        if module.center_feature_scale:
            init.zeros_(module.center_feature_scale_proj_weight)
            init.zeros_(module.center_feature_scale_proj_bias)

    def _enable_checkpointing_from_config(self) -> None:
        """Honour the official `with_cp` flag through Transformers' own checkpointing switch."""
        if self.config.with_cp:
            enable = getattr(self, "activation_checkpointing_enable", None) or self.gradient_checkpointing_enable
            enable()

    def _check_pixel_values(self, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Validate the input image batch early, with errors that name the argument; cast to the model dtype."""
        if pixel_values is None:
            raise ValueError("`pixel_values` is required: a (batch, channels, height, width) float tensor")
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}")
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"`pixel_values` must be a floating-point tensor, got {pixel_values.dtype}; "
                "use the image processor to rescale and normalise images"
            )
        if pixel_values.dim() != 4:
            raise ValueError(
                f"`pixel_values` must be 4-D (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` has {pixel_values.shape[1]} channels but the model expects "
                f"config.num_channels={self.config.num_channels} (shape must be (batch, channels, height, width))"
            )
        height, width = pixel_values.shape[-2:]
        if height < MIN_INPUT_SIZE or width < MIN_INPUT_SIZE:
            raise ValueError(
                f"`pixel_values` is {height}x{width}; InternImage needs at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}"
            )
        weight = self._stem_weight()
        # Offloaded weights (accelerate) sit on "meta" until their hook loads them: nothing to compare then.
        if weight.device.type != "meta" and pixel_values.device != weight.device:
            raise ValueError(f"`pixel_values` is on {pixel_values.device} but the model is on {weight.device}")
        return pixel_values.to(weight.dtype)

    def _stem_weight(self) -> torch.Tensor:
        """First weight the input meets: its device and dtype are the model's."""
        return self.base_model.embeddings.conv1.weight

    @property
    def dcnv3_backend(self) -> str:
        """Which DCNv3 implementation runs: ``"pytorch"`` or the hub/local kernel in use."""
        from ...hub_kernels import dcnv3_backend

        return dcnv3_backend(self)


class InternImageModel(InternImagePreTrainedModel):
    """InternImage stem and stages, with a global-average-pooled output.

    Outputs: `last_hidden_state` ``(N, 8C, H/32, W/32)``, `pooler_output` ``(N, 8C)`` and, on request,
    `hidden_states` = (stem ``(N, C, H/4, W/4)``, stage 1..4 outputs before downsampling), all channels-first
    views in channels-last memory; each is the tensor the network continues from, so `retain_grad()` works.

    Args:
        config (`InternImageConfig`): the model configuration; the weights are initialised as the official model
            does, `from_pretrained` then loads a checkpoint.
    """

    encoder_class = InternImageEncoder

    def __init__(self, config: InternImageConfig) -> None:
        super().__init__(config)
        self.embeddings = InternImageStem(config)
        self.dropout = nn.Dropout(config.drop_rate)
        self.encoder = self.encoder_class(config)
        self.pooler = nn.AdaptiveAvgPool2d(1)
        self.post_init()
        self._enable_checkpointing_from_config()

    def forward_stages(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run stem and stages: returns the stem output and the four stage outputs, all ``(N, C_i, H_i, W_i)``."""
        embedding_output = self.embeddings(self._check_pixel_values(pixel_values))
        return embedding_output, self.encoder(self.dropout(embedding_output))

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPoolingAndNoAttention:
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        embedding_output, stage_outputs = self.forward_stages(pixel_values)
        last_hidden_state = stage_outputs[-1]
        pooled_output = self.pooler(last_hidden_state).flatten(1)
        hidden_states = (embedding_output, *stage_outputs) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (last_hidden_state, pooled_output, hidden_states) if v is not None)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state, pooler_output=pooled_output, hidden_states=hidden_states
        )


class InternImageBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` that normalises in float32 when input or parameters are in lower precision than its statistics.

    FSDP2 mixed precision casts parameters to bf16/fp16 but leaves the running statistics (buffers) in float32, a mix
    `batch_norm` rejects ("expected scalar type BFloat16 but found Float"); FSDP1 kept BatchNorm out of mixed precision
    for this reason. In float32 this is `nn.BatchNorm2d` unchanged.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtypes = {hidden_states.dtype} | {t.dtype for t in (self.weight, self.running_mean) if t is not None}
        if len(dtypes) == 1 or (self.running_mean is not None and self.running_mean.dtype != torch.float32):
            return super().forward(hidden_states)  # one dtype throughout (e.g. `model.to(torch.bfloat16)`)
        momentum = self.momentum or 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as in `nn.BatchNorm2d`
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        output = F.batch_norm(
            hidden_states.float(),
            self.running_mean if track else None,
            self.running_var if track else None,
            None if self.weight is None else self.weight.float(),
            None if self.bias is None else self.bias.float(),
            use_batch_stats,
            momentum,
            self.eps,
        )
        return output.to(hidden_states.dtype)


class InternImageConvHead(nn.Module):
    """T/S/B/L/XL head: 1x1 conv widening by `cls_scale`, BatchNorm, activation, global average pool.

    ``(N, 8C, h, w)`` -> ``(N, int(8C * cls_scale))``.
    """

    def __init__(self, config: InternImageConfig) -> None:
        super().__init__()
        width = int(config.num_features * config.cls_scale)
        self.conv = ChannelsLastConv2d(config.num_features, width, kernel_size=1, bias=False)
        self.norm = InternImageBatchNorm2d(width)
        self.act = build_activation(config.act_layer)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = width

    def forward(self, stage_outputs: list[torch.Tensor]) -> torch.Tensor:
        hidden = self.act(self.norm(self.conv(stage_outputs[-1])))
        return self.pool(hidden).flatten(1)


class InternImageCrossAttention(nn.Module):
    """Multi-head cross attention with separate q/k/v bias parameters: queries ``(N, Lq, D)`` -> ``(N, Lq, D_out)``."""

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, out_dim)

    def _heads(self, tokens: torch.Tensor, linear: nn.Linear, bias: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape
        projected = F.linear(tokens, linear.weight, bias)
        return projected.reshape(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q = self._heads(query, self.q, self.q_bias) * self.scale
        k = self._heads(key, self.k, self.k_bias)
        v = self._heads(value, self.v, self.v_bias)
        attention = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        attended = (attention @ v).transpose(1, 2).flatten(2)
        return self.proj(attended)


class InternImageAttentionPooling(nn.Module):
    """Pools tokens ``(N, L, D)`` to ``(N, D_out)``: the token mean attends to all (normalised) tokens."""

    def __init__(self, config: InternImageConfig, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.norm_k = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.norm_v = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.cross_attention = InternImageCrossAttention(dim, num_heads, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = self.norm_q(tokens.mean(1, keepdim=True))
        pooled = self.cross_attention(query, self.norm_k(tokens), self.norm_v(tokens))
        return pooled.squeeze(1)


class InternImageClipHead(nn.Module):
    """H/G head: fuse stages 3 and 4 into 1024-d tokens, attention-pool them, project to 768-d.

    Stage 3 ``(N, 4C, h, w)`` and stage 4 ``(N, 8C, h/2, w/2)`` -> ``(N, 768)``; needs inputs whose height and
    width are multiples of 32 so the pixel-shuffled stage 4 matches stage 3.
    """

    def __init__(self, config: InternImageConfig) -> None:
        super().__init__()
        stride = CLIP_POOL_STRIDE
        self.stage4_proj = ChannelsLastConv2d(config.num_features, CLIP_PRETRAIN_EMBED_DIM * stride**2, kernel_size=1)
        self.pixel_shuffle = nn.PixelShuffle(stride)
        self.stage3_proj = ChannelsLastConv2d(config.num_features // 2, CLIP_PRETRAIN_EMBED_DIM, kernel_size=1)
        self.attention_pool = InternImageAttentionPooling(
            config, CLIP_PRETRAIN_EMBED_DIM, CLIP_ATTENTION_HEADS, CLIP_EMBED_DIM
        )
        self.fc_norm = nn.LayerNorm(CLIP_EMBED_DIM, eps=config.layer_norm_eps)
        self.out_features = CLIP_EMBED_DIM

    def forward(self, stage_outputs: list[torch.Tensor]) -> torch.Tensor:
        fused = self.pixel_shuffle(self.stage4_proj(stage_outputs[-1])) + self.stage3_proj(stage_outputs[-2])
        tokens = fused.flatten(2).transpose(1, 2)
        return self.fc_norm(self.attention_pool(tokens))


@dataclass
class InternImageImageClassifierOutput(ImageClassifierOutputWithNoAttention):
    """`ImageClassifierOutputWithNoAttention` plus, on request, the head's feature before the classifier.

    Args:
        loss (`torch.FloatTensor` of shape `(1,)`, *optional*): the loss, when `labels` were given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): classification scores before softmax.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): stem and stage outputs, with
            `output_hidden_states=True`.
        pre_logits (`torch.FloatTensor` of shape `(batch_size, head_features)`, *optional*):
            What the classifier layer reads (`logits == model.classifier(pre_logits)`): the pooled output of the
            conv head for T..XL (``int(8C * cls_scale)`` features, 768 for InternImage-T), the attention-pooled,
            projected and normalised feature of the CLIP-projector head for H/G (768 features). Returned when
            `output_pre_logits=True`; an image embedding for retrieval or linear probing.
    """

    pre_logits: torch.FloatTensor | None = None


class InternImageForImageClassification(InternImagePreTrainedModel):
    """InternImage with its official classification head (conv head for T..XL, CLIP-projector head for H/G).

    `labels` select the loss by `config.problem_type`: single-label cross-entropy, multi-label BCE or
    regression (MSE). Returns logits ``(N, num_labels)`` and, with `output_pre_logits=True`, the head's feature
    the classifier reads (`pre_logits`).

    Args:
        config (`InternImageConfig`): the model configuration; the weights are initialised as the official model
            does, `from_pretrained` then loads a checkpoint.
    """

    accepts_loss_kwargs = False
    base_model_class = InternImageModel

    def __init__(self, config: InternImageConfig) -> None:
        super().__init__(config)
        self.internimage = self.base_model_class(config)
        self.head = InternImageClipHead(config) if config.use_clip_projector else InternImageConvHead(config)
        self.classifier = (
            nn.Linear(self.head.out_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_pre_logits: bool = False,
        **kwargs,
    ) -> tuple | InternImageImageClassifierOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images, normalised by the image processor; at least 32x32 (multiples of 32 for H/G).
            labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor`, *optional*):
                Class indices (single-label), multi-hot targets (multi-label) or regression targets; the loss
                follows `config.problem_type`.
            output_hidden_states (`bool`, *optional*):
                Return the stem and the four stage outputs (they stay in the autograd graph).
            return_dict (`bool`, *optional*):
                Return an `InternImageImageClassifierOutput` instead of a tuple.
            output_pre_logits (`bool`, *optional*, defaults to `False`):
                Also return `pre_logits`, the head's feature before the classifier (appended last in tuples).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if self.config.use_clip_projector and pixel_values is not None and pixel_values.dim() == 4:
            height, width = pixel_values.shape[-2:]
            if height % 32 or width % 32:
                raise ValueError(
                    f"`pixel_values` is {height}x{width}; the CLIP-projector head of InternImage-H/G needs a height "
                    "and width that are multiples of 32"
                )
        embedding_output, stage_outputs = self.internimage.forward_stages(pixel_values)
        pre_logits = self.head(stage_outputs)
        logits = self.classifier(pre_logits)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        hidden_states = (embedding_output, *stage_outputs) if output_hidden_states else None
        pre_logits = pre_logits if output_pre_logits else None
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden_states, pre_logits) if v is not None)
        return InternImageImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=hidden_states, pre_logits=pre_logits
        )


class InternImageBackbone(BackboneMixin, InternImagePreTrainedModel):
    """InternImage as a feature extractor for dense-prediction heads (UperNet, Mask2Former, DETR family).

    `feature_maps` are the raw stage outputs before downsampling, channels-first, for `config.out_features`
    (any of ``"stem", "stage1", ..., "stage4"``): exactly what the official mmdet/mmseg backbone emits. They are
    views in channels-last memory of the tensors the network continues from, so gradients reach each of them.

    Args:
        config (`InternImageConfig`): the model configuration; the weights are initialised as the official model
            does, `from_pretrained` then loads a checkpoint.
    """

    has_attentions = False
    encoder_class = InternImageEncoder

    def __init__(self, config: InternImageConfig) -> None:
        super().__init__(config)
        self.embeddings = InternImageStem(config)
        self.dropout = nn.Dropout(config.drop_rate)
        self.encoder = self.encoder_class(config)
        self.num_features = [config.channels] + config.hidden_sizes
        self.post_init()
        self._enable_checkpointing_from_config()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | BackboneOutput:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        embedding_output = self.embeddings(self._check_pixel_values(pixel_values))
        stage_outputs = self.encoder(self.dropout(embedding_output))
        all_states = dict(zip(self.stage_names, [embedding_output, *stage_outputs], strict=True))
        feature_maps = tuple(all_states[name] for name in self.out_features)
        hidden_states = tuple(all_states.values()) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (feature_maps, hidden_states) if v is not None)
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states, attentions=None)


__all__ = [
    "InternImageBackbone",
    "InternImageForImageClassification",
    "InternImageModel",
    "InternImageImageClassifierOutput",
    "InternImagePreTrainedModel",
]
