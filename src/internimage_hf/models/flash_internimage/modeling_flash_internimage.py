"""PyTorch FlashInternImage: InternImage with deformable convolution v4 (Xiong et al., CVPR 2024).

The network is InternImage's (stem, stages, downsampling, heads, outputs; see `modeling_internimage`), and those
modules are reused as they are. A block differs in its two branches, as in the official
`classification/models/flash_intern_image.py`:

- the deformable branch is DCNv4 (`FlashInternImageDCNv4`): one fused offset/weight projection, unnormalised point
  weights, an optional plain depthwise convolution (`dw_kernel_size`) and an optional output-projection bias
  (`dcn_output_bias`); the official block never enables the operator's centre-feature gate;
- the MLP's second linear layer has a bias only with `mlp_fc2_bias`.

The official code flattens activations to sequences ``(N, H*W, C)`` around every block; the arithmetic is the same on
the channels-last ``(N, H, W, C)`` tensors used here.
"""

from __future__ import annotations

from torch import nn

from ...ops.dcnv4 import FlashInternImageDCNv4
from ..internimage.modeling_internimage import (
    InternImageBackbone,
    InternImageEncoder,
    InternImageForImageClassification,
    InternImageLayer,
    InternImageMLP,
    InternImageModel,
    InternImagePreTrainedModel,
    InternImageStage,
)
from .configuration_flash_internimage import FlashInternImageConfig


class FlashInternImageLayer(InternImageLayer):
    """One FlashInternImage block: DCNv4 and MLP residual branches on ``(N, H, W, C)`` (norms as in InternImage)."""

    @staticmethod
    def build_operator(config: FlashInternImageConfig, channels: int, group: int) -> nn.Module:
        # The official block builds DCNv4 without `center_feature_scale` (the config's flag only keeps the stage norm)
        # and without `remove_center` (an option of this package, False in every official model).
        return FlashInternImageDCNv4(
            channels=channels,
            group=group,
            offset_scale=config.offset_scale,
            dw_kernel_size=config.dw_kernel_size,
            remove_center=config.remove_center,
            output_bias=config.dcn_output_bias,
        )

    @staticmethod
    def build_mlp(config: FlashInternImageConfig, channels: int) -> nn.Module:
        return InternImageMLP(config, channels, fc2_bias=config.mlp_fc2_bias)


class FlashInternImageStage(InternImageStage):
    """A stage of FlashInternImage blocks (see `InternImageStage`)."""

    layer_class = FlashInternImageLayer


class FlashInternImageEncoder(InternImageEncoder):
    """The four FlashInternImage stages (see `InternImageEncoder`)."""

    stage_class = FlashInternImageStage


class FlashInternImagePreTrainedModel(InternImagePreTrainedModel):
    """Weight initialisation, checkpoint-format handling and the shared class attributes (see
    `InternImagePreTrainedModel`; the base model is also named ``internimage``, so both families share one
    checkpoint layout and one set of official-key renames). InternImage's initialisation is the official one here too:
    DCNv4's linears carry their rule (`DCNV3_INIT_ATTR`), its depthwise convolution keeps PyTorch's default.

    Args:
        config (`FlashInternImageConfig`): the model configuration; the weights are initialised as the official model
            does, `from_pretrained` then loads a checkpoint.
    """

    config_class = FlashInternImageConfig
    config: FlashInternImageConfig
    _no_split_modules = ["FlashInternImageLayer", "InternImageStem", "InternImageDownsample"]


class FlashInternImageModel(FlashInternImagePreTrainedModel, InternImageModel):
    """FlashInternImage stem and stages, with a global-average-pooled output (outputs as `InternImageModel`).

    Args:
        config (`FlashInternImageConfig`): the model configuration; the weights are initialised as the official model
            does, `from_pretrained` then loads a checkpoint.
    """

    encoder_class = FlashInternImageEncoder


class FlashInternImageForImageClassification(FlashInternImagePreTrainedModel, InternImageForImageClassification):
    """FlashInternImage with its official classification head (outputs and arguments as
    `InternImageForImageClassification`).

    Args:
        config (`FlashInternImageConfig`): the model configuration; the weights are initialised as the official model
            does, `from_pretrained` then loads a checkpoint.
    """

    base_model_class = FlashInternImageModel


class FlashInternImageBackbone(FlashInternImagePreTrainedModel, InternImageBackbone):
    """FlashInternImage as a feature extractor for dense-prediction heads (feature maps as `InternImageBackbone`:
    the stage outputs before downsampling, channels-first, for `config.out_features`).

    Args:
        config (`FlashInternImageConfig`): the model configuration; the weights are initialised as the official model
            does, `from_pretrained` then loads a checkpoint.
    """

    encoder_class = FlashInternImageEncoder


__all__ = [
    "FlashInternImageBackbone",
    "FlashInternImageForImageClassification",
    "FlashInternImageModel",
    "FlashInternImagePreTrainedModel",
]
