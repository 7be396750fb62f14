"""Reading a checkpoint (official ``.pth``, official hub directory, mmdet/mmseg) into official key names.

Weights are read with safetensors or ``torch.load(weights_only=True)``: a checkpoint that pickles anything else is
refused, since unpickling it could run arbitrary code.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import ConversionError
from .keys import UPERNET_HEAD_PREFIXES, split_backbone_state_dict, strip_ddp_prefix
from .mask2former import has_mask2former_head
from .validation import check_config_values


@dataclass
class Source:
    """A checkpoint read into memory, normalised to official (``.pth``) key names.

    `kind` is ``"classification"`` (official names, maybe a head), ``"hub"`` (an official hub directory) or
    ``"mmlab"`` (mmdet/mmseg `state_dict`: official backbone names under ``backbone.`` plus head weights: an
    mmseg UperNet or the official repo's Mask2Former).
    """

    path: Path
    kind: str
    state_dict: dict[str, torch.Tensor]
    official_config: dict | None = None
    image_size: int | None = None
    ignored_keys: list[str] = field(default_factory=list)

    @property
    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Official names of the backbone weights (classification head keys and mm heads dropped)."""
        if self.kind == "mmlab":
            return split_backbone_state_dict(self.state_dict)[0]
        return {k: v for k, v in self.state_dict.items() if is_backbone_key(k)}

    @property
    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Segmentation decode/auxiliary head weights (official names); empty for other sources."""
        if self.kind != "mmlab":
            return {}
        return {
            k: v
            for k, v in split_backbone_state_dict(self.state_dict)[1].items()
            if k.startswith(UPERNET_HEAD_PREFIXES)
        }

    @property
    def detection_state_dict(self) -> dict[str, torch.Tensor]:
        """An mmdet detector's neck and head weights (`neck.*`, `bbox_head.*`, official names); else empty."""
        if self.kind != "mmlab":
            return {}
        return {k: v for k, v in strip_ddp_prefix(self.state_dict).items() if k.startswith(("neck.", "bbox_head."))}

    @property
    def has_dino_head(self) -> bool:
        heads = self.detection_state_dict
        return "bbox_head.transformer.query_embed.weight" in heads and "bbox_head.label_embedding.weight" in heads

    @property
    def has_composite_backbone(self) -> bool:
        """A CB-InternImage detector: two InternImage backbones joined by `cb_linears` (`backbone.cb_modules.*`)."""
        return any(k.startswith(("backbone.cb_modules.", "backbone.cb_linears.")) for k in self.state_dict)

    @property
    def has_upernet_head(self) -> bool:
        return any(k.startswith("decode_head.psp_modules.") for k in self.head_state_dict)

    @property
    def has_mask2former_head(self) -> bool:
        return has_mask2former_head(self.head_state_dict)


def is_backbone_key(official_key: str) -> bool:
    """Whether an official key is part of the stem/stages (not the classification head)."""
    return official_key.startswith(("patch_embed.", "levels."))


def torch_load_weights_only(path: Path) -> object:
    """`torch.load(weights_only=True)` with errors that say what is wrong with the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() or "weights_only" in str(error).lower():
            raise ConversionError(
                f"{path} is not a weights-only checkpoint: it pickles Python objects other than tensors and plain "
                "containers, and unpickling those can run arbitrary code, so it is refused. If you trust the file, "
                "load it yourself and re-save just the weights (torch.save({'model': state_dict}, path)).\n"
                f"torch said: {str(error).splitlines()[0]}"
            ) from error
        raise ConversionError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {error}"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ConversionError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {error}"
        ) from error


def load_weights_file(path: Path) -> object:
    """A ``.safetensors`` file or a PyTorch checkpoint, loaded safely."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise ConversionError(
                f"{path} is not a readable safetensors file (truncated or corrupt?): {error}"
            ) from error
    return torch_load_weights_only(path)


def _tensor_items(mapping: Mapping, what: str) -> dict[str, torch.Tensor]:
    """The tensor entries of a state dict; a non-tensor value means the structure is not understood."""
    bad = [k for k, v in mapping.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{what} holds non-tensor entries, e.g. {bad[:5]}")
    return dict(mapping)


def hub_to_official_names(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official hub names (``model.`` + key, ``layer_scale1/2``) -> ``.pth`` names (``gamma1/2``)."""
    renamed = {}
    for key, value in state_dict.items():
        key = key.removeprefix("model.")
        key = re.sub(r"\.layer_scale([12])$", r".gamma\1", key)
        renamed[key] = value
    return renamed


def official_to_hub_names(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``.pth`` names -> official hub names (the format the model's `from_pretrained` key mapping reads)."""
    return {"model." + re.sub(r"\.gamma([12])$", r".layer_scale\1", k): v for k, v in state_dict.items()}


def classify_state_dict(path: Path, checkpoint: object) -> Source:
    """Recognise the layout of a loaded checkpoint file."""
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    if isinstance(checkpoint.get("model"), Mapping):
        weights = strip_ddp_prefix(_tensor_items(checkpoint["model"], f"{path}['model']"))
        ignored = sorted(k for k in checkpoint if k != "model")
        return Source(path, "classification", weights, ignored_keys=ignored)
    if isinstance(checkpoint.get("state_dict"), Mapping):
        weights = strip_ddp_prefix(_tensor_items(checkpoint["state_dict"], f"{path}['state_dict']"))
        return Source(path, "mmlab", weights, ignored_keys=sorted(k for k in checkpoint if k != "state_dict"))
    weights = strip_ddp_prefix(_tensor_items(checkpoint, str(path)))
    if any(k.startswith("backbone.") for k in weights):
        return Source(path, "mmlab", weights)
    if weights and all(k.startswith("model.") for k in weights):
        return Source(path, "hub", hub_to_official_names(weights))
    if any(is_backbone_key(k) for k in weights):
        return Source(path, "classification", weights)
    raise ConversionError(
        f"{path}: no InternImage weights found (expected 'model' or 'state_dict' entries, or official key names); "
        f"top-level keys: {sorted(checkpoint)[:10]}"
    )


def read_json(path: Path) -> object:
    """The parsed JSON file, or a `ConversionError` saying why it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"cannot read {path}: {error}") from error


def image_size_from_preprocessor(path: Path) -> int | None:
    """The crop size of an official (CLIP-style) or Transformers ``preprocessor_config.json``."""
    if not path.is_file():
        return None
    processor = read_json(path)
    crop = processor.get("crop_size") if isinstance(processor, dict) else None
    if isinstance(crop, dict):
        crop = crop.get("height")
    if crop is None:
        return None
    if not isinstance(crop, int) or isinstance(crop, bool) or crop < 1:
        raise ConversionError(f"{path}: `crop_size` must be a positive integer, got {crop!r}")
    return crop


def load_hub_directory(path: Path) -> Source:
    """An official remote-code hub repo: config.json + model.safetensors (or pytorch_model.bin).

    The config is validated before the weights are read, so a broken config fails in milliseconds.
    """
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{path} is a directory without config.json (expected an official hub repo)")
    official_config = read_json(config_file)
    check_config_values(official_config, f"{path.name}/config.json")
    image_size = image_size_from_preprocessor(path / "preprocessor_config.json")
    for weights_name in ("model.safetensors", "pytorch_model.bin"):
        if (path / weights_name).is_file():
            weights = load_weights_file(path / weights_name)
            break
    else:
        raise ConversionError(f"{path} holds neither model.safetensors nor pytorch_model.bin")
    source = classify_state_dict(path / weights_name, weights)
    source.path = path
    source.official_config = official_config
    source.image_size = image_size
    return source


def load_source(path: str | os.PathLike) -> Source:
    """Read any supported source: a ``.pth``/``.bin``/``.safetensors`` file or an official hub directory."""
    path = Path(path)
    if path.is_dir():
        return load_hub_directory(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    return classify_state_dict(path, load_weights_file(path))


__all__ = ["Source", "load_source", "official_to_hub_names"]
