"""InternImage model configuration."""

import ast
import logging
import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

# Official model sizes (classification configs of OpenGVLab/InternImage). Only the fields that differ from
# the InternImage-T defaults of `InternImageConfig` are listed.
PRESETS: dict[str, dict] = {
    "t": {"channels": 64, "depths": (4, 4, 18, 4), "groups": (4, 8, 16, 32), "drop_path_rate": 0.1, "image_size": 224},
    "s": {
        "channels": 80,
        "depths": (4, 4, 21, 4),
        "groups": (5, 10, 20, 40),
        "layer_scale": 1e-5,
        "post_norm": True,
        "drop_path_rate": 0.4,
        "image_size": 224,
    },
    "b": {
        "channels": 112,
        "depths": (4, 4, 21, 4),
        "groups": (7, 14, 28, 56),
        "layer_scale": 1e-5,
        "post_norm": True,
        "drop_path_rate": 0.5,
        "image_size": 224,
    },
    "l": {
        "channels": 160,
        "depths": (5, 5, 22, 5),
        "groups": (10, 20, 40, 80),
        "layer_scale": 1e-5,
        "offset_scale": 2.0,
        "post_norm": True,
        "drop_path_rate": 0.1,
        "image_size": 384,
    },
    "xl": {
        "channels": 192,
        "depths": (5, 5, 24, 5),
        "groups": (12, 24, 48, 96),
        "layer_scale": 1e-5,
        "offset_scale": 2.0,
        "post_norm": True,
        "drop_path_rate": 0.2,
        "image_size": 384,
    },
    "h": {
        "channels": 320,
        "depths": (6, 6, 32, 6),
        "groups": (10, 20, 40, 80),
        "res_post_norm": True,
        "dw_kernel_size": 5,
        "level2_post_norm": True,
        "level2_post_norm_block_ids": (5, 11, 17, 23, 29),
        "center_feature_scale": True,
        "use_clip_projector": True,
        "drop_path_rate": 0.2,
        "image_size": 640,
    },
    "g": {
        "channels": 512,
        "depths": (2, 2, 48, 4),
        "groups": (16, 32, 64, 128),
        "post_norm": True,
        "dw_kernel_size": 5,
        "level2_post_norm": True,
        "level2_post_norm_block_ids": (5, 11, 17, 23, 29, 35, 41, 47),
        "center_feature_scale": True,
        "use_clip_projector": True,
        "drop_path_rate": 0.4,
        "image_size": 512,
    },
}

SUPPORTED_CORE_OPS = ("DCNv3", "DCNv3_pytorch")
SUPPORTED_ACTIVATIONS = ("GELU", "ReLU", "SiLU")

logger = logging.getLogger(__name__)

# Keys of the official remote-code `config.json` that only describe how the remote code is loaded.
_REMOTE_CODE_CLASSES = ("configuration_internimage.", "modeling_internimage.")


def _literal(value):
    """The official YAML configs write `None` / `1e-5` as strings; read them the way yacs does."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


@strict
class InternImageConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an InternImage model (`InternImageModel`, `InternImageForImageClassification`,
    `InternImageBackbone`). Field names are those of the official implementation and of the official hub
    `config.json` files, so those files load unchanged (their `num_classes` becomes `num_labels`).

    Args:
        num_channels: input image channels.
        channels: width of the first stage; stage `i` has `channels * 2**i` channels.
        depths: number of blocks per stage.
        groups: DCNv3 groups per stage; each must divide that stage's width.
        mlp_ratio: hidden width of the MLP relative to the stage width.
        drop_rate: dropout after the stem and inside the MLP.
        drop_path_rate: stochastic-depth rate (the largest rate with `drop_path_type="linear"`).
        drop_path_type: `"linear"` (rates rise linearly with block index) or `"uniform"`.
        layer_scale: initial value of the per-channel layer scale, or `None` for no layer scale.
        offset_scale: DCNv3 offset scale (2.0 for L/XL).
        post_norm: normalise each branch output instead of its input.
        res_post_norm: extra LayerNorm on each branch output (H).
        dw_kernel_size: kernel of the depthwise convolution that predicts offsets (`None` means 3).
        level2_post_norm: apply extra LayerNorms after the blocks `level2_post_norm_block_ids` of stage 3.
        level2_post_norm_block_ids: block ids of stage 3 followed by a LayerNorm.
        center_feature_scale: blend the DCNv3 output with its input by a learned per-group gate.
        remove_center: drop the centre sampling point (8 instead of 9 points).
        use_clip_projector: H/G classification head (attention pooling) instead of the conv head.
        cls_scale: width multiplier of the conv head.
        norm_layer: `"LN"` (the only normalisation the official models use inside stages).
        act_layer: `"GELU"`, `"ReLU"` or `"SiLU"`.
        core_op: `"DCNv3"` or `"DCNv3_pytorch"` (same weights; the kernel is chosen by `kernelize`).
        with_cp: enable gradient checkpointing when the model is built.
        layer_norm_eps: epsilon of every LayerNorm (1e-6 in the official models).
        image_size: training/evaluation resolution of the checkpoint.
        initializer_range: standard deviation of the truncated normal used for linear layers.
        hidden_size: the last-stage width, `channels * 2**3` (what generic tooling such as
            `VisionEncoderDecoderModel` reads). Derived, never an input of its own: it is set from the widths
            when the config is built and whenever `channels` or `depths` is assigned; a different value passed
            to the constructor (or found in a `config.json`) is ignored with a warning, because the model is built
            from `channels` and a second, disagreeing width would mislead whatever reads it. It can be assigned
            like any attribute (generic tools do), which changes nothing in the model.
        hidden_sizes: the stage widths `channels * 2**i`, read-only in effect: accepted as a keyword or an
            assignment for generic tooling, and ignored with a warning when it disagrees with `channels`.
        out_features / out_indices: stages returned by `InternImageBackbone`
            (names `"stem", "stage1", ..., "stage4"`).

    Every other keyword (`num_labels`, `id2label`, `label2id`, `problem_type`, `dtype`, ...) is an argument of
    `transformers.PreTrainedConfig` and means what it means there; unknown keywords are kept as attributes.
    """

    model_type = "internimage"
    supported_core_ops = SUPPORTED_CORE_OPS  # a class attribute, not a field (FlashInternImage has its own)

    num_channels: int = 3
    channels: int = 64
    depths: list[int] | tuple[int, ...] = (4, 4, 18, 4)
    groups: list[int] | tuple[int, ...] = (4, 8, 16, 32)
    mlp_ratio: float | int = 4.0
    drop_rate: float | int = 0.0
    drop_path_rate: float | int = 0.1
    drop_path_type: str = "linear"
    # a string is read as a YAML-style literal ("1e-5", "None"), as the official configs write it
    layer_scale: float | int | str | None = None
    offset_scale: float | int = 1.0
    post_norm: bool = False
    res_post_norm: bool = False
    dw_kernel_size: int | None = None
    level2_post_norm: bool = False
    level2_post_norm_block_ids: list[int] | tuple[int, ...] | None = None
    center_feature_scale: bool = False
    remove_center: bool = False
    use_clip_projector: bool = False
    cls_scale: float | int = 1.5
    norm_layer: str = "LN"
    act_layer: str = "GELU"
    core_op: str = "DCNv3"
    with_cp: bool = False
    layer_norm_eps: float | int = 1e-6
    image_size: int = 224
    initializer_range: float | int = 0.02
    hidden_size: int | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        requested_hidden_size = self.hidden_size
        num_classes = kwargs.pop("num_classes", None)
        if num_classes is not None and self.id2label is None and kwargs.get("num_labels") is None:
            kwargs["num_labels"] = int(num_classes)
        self._drop_remote_code_auto_map(kwargs)
        self.depths = [int(d) for d in self.depths]
        self.groups = [int(g) for g in self.groups]
        self.layer_scale = _literal(self.layer_scale)
        if self.level2_post_norm_block_ids is not None:
            self.level2_post_norm_block_ids = [int(i) for i in self.level2_post_norm_block_ids]
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)
        self.validate_architecture()
        self._derive_hidden_size(requested_hidden_size)

    def _derive_hidden_size(self, requested: int | None) -> None:
        """Set `hidden_size` to the last-stage width; a disagreeing requested value is ignored with a warning."""
        self.hidden_size = self.hidden_sizes[-1]
        if requested not in (None, self.hidden_size):
            logger.warning(
                "InternImageConfig: `hidden_size`=%s is ignored; it is the last-stage width `channels` * 2**3 = %s "
                "(set `channels` to change it)",
                requested,
                self.hidden_size,
            )

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        # Keep the derived `hidden_size` equal to the last-stage width when the widths change after construction.
        if name in ("channels", "depths") and "hidden_size" in self.__dict__ and self.depths:
            super().__setattr__("hidden_size", self.hidden_sizes[-1])

    @staticmethod
    def _drop_remote_code_auto_map(kwargs: dict) -> None:
        """Official hub configs point `auto_map` at their remote code; our classes replace it, so drop it."""
        auto_map = kwargs.get("auto_map")
        if isinstance(auto_map, dict) and all(
            str(ref).startswith(_REMOTE_CODE_CLASSES) for ref in auto_map.values() if isinstance(ref, str)
        ):
            kwargs.pop("auto_map")

    def validate_architecture(self) -> None:
        """Raise a `ValueError` naming the offending field when the architecture cannot be built."""
        if len(self.depths) != 4 or len(self.groups) != 4:
            raise ValueError(
                f"`depths` and `groups` need 4 entries (one per stage), got {self.depths} and {self.groups}"
            )
        if any(d < 1 for d in self.depths):
            raise ValueError(f"`depths` must be positive, got {self.depths}")
        if self.channels < 2 or self.channels % 2:
            raise ValueError(f"`channels` must be an even positive number (the stem halves it), got {self.channels}")
        for stage, (width, group) in enumerate(zip(self.hidden_sizes, self.groups, strict=True)):
            if group < 1 or width % group:
                raise ValueError(
                    f"`groups[{stage}]` = {group} does not divide the stage-{stage + 1} width {width} "
                    f"(`channels` * 2**{stage})"
                )
        if self.core_op not in self.supported_core_ops:
            raise ValueError(f"`core_op` must be one of {self.supported_core_ops}, got {self.core_op!r}")
        if self.norm_layer != "LN":
            raise ValueError(f"`norm_layer` must be 'LN' (as in every official model), got {self.norm_layer!r}")
        if self.act_layer not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"`act_layer` must be one of {SUPPORTED_ACTIVATIONS}, got {self.act_layer!r}")
        if self.drop_path_type not in ("linear", "uniform"):
            raise ValueError(f"`drop_path_type` must be 'linear' or 'uniform', got {self.drop_path_type!r}")
        if self.dw_kernel_size is not None and (self.dw_kernel_size < 1 or self.dw_kernel_size % 2 == 0):
            raise ValueError(f"`dw_kernel_size` must be a positive odd number or None, got {self.dw_kernel_size}")
        if self.level2_post_norm and self.level2_post_norm_block_ids:
            bad = [i for i in self.level2_post_norm_block_ids if not 0 <= i < self.depths[2]]
            if bad:
                raise ValueError(f"`level2_post_norm_block_ids` {bad} are outside stage 3 (depth {self.depths[2]})")
        self._validate_numbers()

    def _validate_numbers(self) -> None:
        """Ranges of the numeric fields (types are checked by `@strict`); NaN and infinity fail every check."""
        for name in ("num_channels", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}")
        for name in ("mlp_ratio", "offset_scale", "cls_scale", "layer_norm_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite positive number, got {value}")
        for name in ("drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}")
        if not (math.isfinite(self.initializer_range) and self.initializer_range >= 0):
            raise ValueError(f"`initializer_range` must be a finite non-negative number, got {self.initializer_range}")
        scale = self.layer_scale
        if scale is not None and (isinstance(scale, (str, bool)) or not (math.isfinite(scale) and scale > 0)):
            raise ValueError(f"`layer_scale` must be a finite positive number or None, got {scale!r}")

    @property
    def hidden_sizes(self) -> list[int]:
        """Channels of each stage: `channels * 2**i`."""
        return [self.channels * 2**i for i in range(len(self.depths))]

    @hidden_sizes.setter
    def hidden_sizes(self, value) -> None:
        # Generic tooling passes `hidden_sizes` as a kwarg or assigns it; like `hidden_size`, the widths come from
        # `channels`, so a disagreeing value is ignored with a warning rather than building a second truth.
        if value is not None and list(value) != self.hidden_sizes:
            logger.warning(
                "InternImageConfig: `hidden_sizes`=%s is ignored; the stage widths are `channels` * 2**i = %s "
                "(set `channels` to change them)",
                list(value),
                self.hidden_sizes,
            )

    @property
    def num_features(self) -> int:
        """Channels of the last stage."""
        return self.hidden_sizes[-1]

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "InternImageConfig":
        """Configuration of an official model size: `t`, `s`, `b`, `l`, `xl`, `h` or `g` (also `internimage-t`, ...).

        Keyword arguments override preset fields, e.g. `from_preset("t", num_labels=10, drop_path_rate=0.0)`.
        """
        key = name.lower().removeprefix("internimage").lstrip("-_")
        if key not in PRESETS:
            raise ValueError(f"Unknown InternImage preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[key], **overrides})


__all__ = ["InternImageConfig", "PRESETS"]
