"""DINO detector configuration (DETR with improved denoising anchor boxes, Zhang et al. 2022)."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ...data.labels import detection_id2label
from ..internimage.configuration_internimage import InternImageConfig

# The backbone of the official InternImage-T DINO detector: the stages it reads (`out_indices=(1, 2, 3)` in mmdet's
# numbering), layer scale 1.0 (so its checkpoints carry `gamma1`/`gamma2`) and drop path 0.2.
DEFAULT_BACKBONE = {"out_features": ["stage2", "stage3", "stage4"], "layer_scale": 1.0, "drop_path_rate": 0.2}


@strict
class DinoDetrConfig(PreTrainedConfig):
    r"""Configuration of `DinoDetrForObjectDetection`: a backbone, a channel mapper, a deformable encoder and the DINO
    decoder. The defaults are the official InternImage-T DINO detector (`dino_4scale_internimage_t_1x_coco`).

    Args:
        backbone_config (`PreTrainedConfig` or `dict`, *optional*): the backbone (any `AutoBackbone` config). Default:
            InternImage-T as the official detector builds it (`stage2`-`stage4`, layer scale 1.0, drop path 0.2).
        d_model: width of the neck, encoder and decoder (256).
        num_queries: detection queries, also the number of encoder proposals selected (900).
        num_feature_levels: levels seen by the encoder: the backbone's outputs plus stride-2 extra levels (4).
        encoder_layers / decoder_layers: transformer layers (6 / 6).
        encoder_attention_heads / decoder_attention_heads: attention heads (8 / 8).
        encoder_ffn_dim / decoder_ffn_dim: hidden width of the feed-forward blocks (2048 / 2048).
        encoder_n_points / decoder_n_points: sampling points per head and level of the deformable attention (4 / 4).
        activation_function: feed-forward activation ("relu").
        dropout / attention_dropout / activation_dropout: dropout rates (0.0; the official DINO trains without).
        neck_norm_groups: GroupNorm groups of the channel mapper (32).
        position_embedding_temperature: temperature of the sine embedding of feature positions (20, as the official
            configs; the original DETR uses 10000).
        query_position_temperature: temperature of the sine embedding of the query boxes (10000).
        num_denoising: denoising queries per image in training (100, split into groups of positive and negative
            copies of the targets); 0 turns denoising off.
        label_noise_ratio: probability that a denoising query's label is replaced by a random class (0.5).
        box_noise_scale: scale of the box noise of the denoising queries (1.0).
        class_cost / bbox_cost / giou_cost: Hungarian matching costs (2 / 5 / 2).
        focal_alpha / focal_gamma: focal loss parameters (0.25 / 2.0).
        class_loss_coefficient / bbox_loss_coefficient / giou_loss_coefficient: loss weights (1 / 5 / 2).
        auxiliary_loss: also supervise every decoder layer and the encoder proposals (True).
        init_std: standard deviation of the normal initialisation of the query and level embeddings (1.0, as
            PyTorch's `nn.Embedding` default that the official code keeps).
        layer_norm_eps: epsilon of the transformer's layer norms (1e-5).
        disable_custom_kernels: never use a compiled multi-scale deformable attention kernel (False).
        padding_invariant: give every image of a padded batch the detections it gets alone (True). Images whose
            padded sizes differ then run through the backbone and neck one size at a time, padded positions are never
            selected as queries, and the decoder's query positions are relative to each image's own padded size.
            False runs the whole padded batch at once as the official code does (its detections depend on the batch;
            slightly faster in training).
        pad_size_divisor: the multiple each image is padded to when alone (32, as the image processor): with
            `padding_invariant`, an image's detections in a batch are those of that padded image.

    Every other keyword (`num_labels`, `id2label`, ...) is an argument of `transformers.PreTrainedConfig`. Without
    labels the detector has the 80 COCO classes and their names.
    """

    model_type = "dino_detr"
    sub_configs = {"backbone_config": AutoConfig}

    backbone_config: dict | PreTrainedConfig | None = None
    d_model: int = 256
    num_queries: int = 900
    num_feature_levels: int = 4
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    encoder_n_points: int = 4
    decoder_n_points: int = 4
    activation_function: str = "relu"
    dropout: float | int = 0.0
    attention_dropout: float | int = 0.0
    activation_dropout: float | int = 0.0
    neck_norm_groups: int = 32
    position_embedding_temperature: float | int = 20
    query_position_temperature: float | int = 10000
    num_denoising: int = 100
    label_noise_ratio: float | int = 0.5
    box_noise_scale: float | int = 1.0
    class_cost: float | int = 2.0
    bbox_cost: float | int = 5.0
    giou_cost: float | int = 2.0
    focal_alpha: float | int = 0.25
    focal_gamma: float | int = 2.0
    class_loss_coefficient: float | int = 1.0
    bbox_loss_coefficient: float | int = 5.0
    giou_loss_coefficient: float | int = 2.0
    auxiliary_loss: bool = True
    init_std: float | int = 1.0
    layer_norm_eps: float | int = 1e-5
    disable_custom_kernels: bool = False
    padding_invariant: bool = True
    pad_size_divisor: int = 32

    def __post_init__(self, **kwargs):
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = detection_id2label("coco")
            self.label2id = {name: index for index, name in self.id2label.items()}
        self.backbone_config = _backbone_config(self.backbone_config)
        super().__post_init__(**kwargs)
        self.validate_architecture()

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        return self.encoder_attention_heads

    def validate_architecture(self) -> None:
        """Raise a `ValueError` naming the field when the configuration cannot build a detector."""
        num_backbone_levels = len(getattr(self.backbone_config, "out_features", None) or [])
        if num_backbone_levels == 0:
            raise ValueError("backbone_config: the backbone must return at least one feature map (`out_features`)")
        if self.num_feature_levels < num_backbone_levels:
            raise ValueError(
                f"num_feature_levels={self.num_feature_levels} is smaller than the {num_backbone_levels} feature maps "
                f"the backbone returns ({self.backbone_config.out_features})"
            )
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, name)
            if heads < 1 or self.d_model % heads:
                raise ValueError(f"{name}={heads} must divide d_model={self.d_model}")
        if self.d_model % 2 or self.d_model % self.neck_norm_groups:
            raise ValueError(
                f"d_model={self.d_model} must be even and divisible by neck_norm_groups={self.neck_norm_groups}"
            )
        for name in (
            "num_queries",
            "encoder_layers",
            "decoder_layers",
            "encoder_n_points",
            "decoder_n_points",
            "pad_size_divisor",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_denoising < 0:
            raise ValueError(f"num_denoising must be >= 0, got {self.num_denoising}")


def _backbone_config(backbone_config: dict | PreTrainedConfig | None) -> PreTrainedConfig:
    if backbone_config is None:
        return InternImageConfig(**DEFAULT_BACKBONE)
    if isinstance(backbone_config, dict):
        model_type = backbone_config.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"backbone_config: unknown model_type {model_type!r}")
        return CONFIG_MAPPING[model_type].from_dict(backbone_config)
    return backbone_config


__all__ = ["DinoDetrConfig"]
