"""Building the model to train: an official preset (random init), a local directory or a hub id."""

from __future__ import annotations

import logging

from ..models.internimage.configuration_internimage import PRESETS, InternImageConfig

logger = logging.getLogger(__name__)

# A small InternImage for 32x32 inputs (the built-in digits run): ~0.4M parameters, trains in ~1-2 min on CPU.
TINY_PRESET = {
    "channels": 16,
    "depths": (1, 1, 2, 1),
    "groups": (1, 2, 4, 8),
    "drop_path_rate": 0.0,
    "layer_scale": None,
    "image_size": 32,
}


def is_preset(name: str) -> bool:
    """True for `tiny` and the official sizes (`t`, `internimage-t`, ...)."""
    key = name.lower().removeprefix("internimage").lstrip("-_")
    return key == "tiny" or key in PRESETS


def preset_config(name: str, **overrides) -> InternImageConfig:
    """Config of a preset with `overrides` applied (None values are ignored)."""
    overrides = {key: value for key, value in overrides.items() if value is not None}
    key = name.lower().removeprefix("internimage").lstrip("-_")
    if key == "tiny":
        return InternImageConfig(**{**TINY_PRESET, **overrides})
    return InternImageConfig.from_preset(key, **overrides)


def build_model(options, id2label: dict[int, str], label2id: dict[str, int]):
    """An `InternImageForImageClassification` (or any Auto image classifier) for the dataset's labels.

    Pretrained weights get a fresh classifier when their label set differs (`ignore_mismatched_sizes=True`);
    `--drop_path_rate` overrides the saved config in both cases.
    """
    from transformers import AutoModelForImageClassification

    from ..models.internimage.modeling_internimage import InternImageForImageClassification

    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": label2id}
    if is_preset(options.model):
        config = preset_config(
            options.model, drop_path_rate=options.drop_path_rate, layer_scale=options.layer_scale,
            image_size=options.image_size, **labels,
        )  # fmt: skip
        return InternImageForImageClassification(config)
    extra = {"drop_path_rate": options.drop_path_rate} if options.drop_path_rate is not None else {}
    return AutoModelForImageClassification.from_pretrained(
        options.model, ignore_mismatched_sizes=True, **labels, **extra
    )


def enable_gradient_checkpointing(model) -> None:
    """Transformers' checkpointing switch under its 5.23+ name, or the older one."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def apply_hub_kernel(model, device: str):
    """Swap the DCNv3 core for the hub kernel via `internimage_hf.kernelize` (training mode, on `device`).

    `kernelize` keeps the PyTorch core (and logs why) when no kernel fits; returns the model to train.
    """
    import internimage_hf

    kernelize = getattr(internimage_hf, "kernelize", None)
    if kernelize is None:
        raise RuntimeError(
            "--use_kernel: this installation of internimage_hf has no `kernelize` (hub kernel support is missing)"
        )
    result = kernelize(model, mode="training", device=device)
    return model if result is None else result


def model_image_size(model, options) -> int:
    """`--image_size`, else the model config's `image_size` (224 when it has none)."""
    return options.image_size or getattr(model.config, "image_size", None) or 224
