"""FlashInternImage model configuration: InternImage's, with the options of the DCNv4 models."""

from huggingface_hub.dataclasses import strict

from ..internimage.configuration_internimage import InternImageConfig

# Official model sizes (classification/configs/flash_intern_image_*.yaml of OpenGVLab/DCNv4). Only the fields that
# differ from the FlashInternImage-T defaults of `FlashInternImageConfig` are listed.
FLASH_PRESETS: dict[str, dict] = {
    "t": {"channels": 64, "depths": (4, 4, 18, 4), "groups": (4, 8, 16, 32), "drop_path_rate": 0.1, "image_size": 224},
    "s": {
        "channels": 80,
        "depths": (4, 4, 21, 4),
        "groups": (5, 10, 20, 40),
        "layer_scale": 1e-5,
        "post_norm": True,
        "dw_kernel_size": 3,
        "drop_path_rate": 0.4,
        "image_size": 224,
    },
    "b": {
        "channels": 112,
        "depths": (4, 4, 21, 4),
        "groups": (7, 14, 28, 56),
        "layer_scale": 1e-5,
        "offset_scale": 0.5,
        "post_norm": True,
        "dw_kernel_size": 3,
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
        "dw_kernel_size": 3,
        "dcn_output_bias": True,
        "mlp_fc2_bias": True,
        "drop_path_rate": 0.1,
        "image_size": 384,
    },
}


@strict
class FlashInternImageConfig(InternImageConfig):
    r"""
    Configuration of a FlashInternImage model (`FlashInternImageModel`, `FlashInternImageForImageClassification`,
    `FlashInternImageBackbone`): InternImage with DCNv4 (OpenGVLab/DCNv4). Field names are those of the official
    `FlashInternImage` constructor; every field of `InternImageConfig` means what it means there, except:

    Args:
        core_op: `"DCNv4"` (the only operator of the official models; the kernel is chosen by `kernelize`).
        dw_kernel_size: kernel of the plain depthwise convolution in front of the offset/weight projection (3 for
            S/B/L); `None` (T): the projection reads the block input directly.
        mlp_fc2_bias: give the MLP's second linear layer a bias (official: only L).
        dcn_output_bias: give the DCNv4 output projection a bias (official: only L).
        center_feature_scale: as in the official FlashInternImage, only keeps each stage's final LayerNorm under
            `post_norm`; its blocks build DCNv4 without the centre-feature gate.
        remove_center: sample 8 points instead of 9 (DCNv4 supports it; no official FlashInternImage sets it).
    """

    model_type = "flash_internimage"
    supported_core_ops = ("DCNv4",)

    core_op: str = "DCNv4"
    mlp_fc2_bias: bool = False
    dcn_output_bias: bool = False

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "FlashInternImageConfig":
        """Configuration of an official model size: `t`, `s`, `b` or `l` (also `flash_internimage-t`, ...).

        Keyword arguments override preset fields, e.g. `from_preset("t", num_labels=10, drop_path_rate=0.0)`.
        """
        key = name.lower().replace("_", "").removeprefix("flashinternimage").removeprefix("flash").lstrip("-")
        if key not in FLASH_PRESETS:
            raise ValueError(f"Unknown FlashInternImage preset {name!r}; choose one of {sorted(FLASH_PRESETS)}")
        return cls(**{**FLASH_PRESETS[key], **overrides})


__all__ = ["FLASH_PRESETS", "FlashInternImageConfig"]
