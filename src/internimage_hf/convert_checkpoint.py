"""Convert official InternImage checkpoints into this package's Hugging Face format.

Sources (detected automatically):

- an official classification ``.pth`` (weights under ``"model"``), read with ``torch.load(weights_only=True)``;
- an official hub repo directory (remote-code format: ``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``, weights named ``"model." + official key`` with ``gamma`` -> ``layer_scale``);
- an mmdet / mmseg checkpoint (``"state_dict"``, backbone under ``backbone.``, optional ``module.`` prefix).
  With an UperNet decode head it becomes a `transformers.UperNetForSemanticSegmentation`; otherwise only the
  backbone is converted (an `InternImageBackbone` checkpoint).

The output directory holds ``config.json`` (with ImageNet class names for 1000/21841-class heads),
``model.safetensors``, ``preprocessor_config.json`` and a model card ``README.md``. It is written to a temporary
directory next to it and renamed into place only after everything (including ``--verify``) succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import UperNetConfig, UperNetForSemanticSegmentation
from transformers.utils import is_torchvision_available

from .configuration_internimage import PRESETS, InternImageConfig
from .conversion import (
    UPERNET_HEAD_PREFIXES,
    convert_mmseg_head_key,
    convert_official_backbone_key,
    convert_official_state_dict,
    split_backbone_state_dict,
    strip_ddp_prefix,
)
from .labels import has_imagenet_labels, imagenet_id2label
from .model_card import ModelCardInfo, render_model_card
from .modeling_internimage import InternImageBackbone, InternImageForImageClassification

RELEASE_BASE_URL = "https://huggingface.co/OpenGVLab/InternImage/resolve/main/"
HUB_BASE_URL = "https://huggingface.co/"
TASKS = ("classification", "backbone", "upernet")
STAGE_FEATURES = ["stage1", "stage2", "stage3", "stage4"]
VERIFY_TOLERANCE = 1e-4
# mmseg defaults of the official UperNet configs (`_base_/models/upernet_r50.py`); pool scales are not
# recoverable from the weights (only their number is).
MMSEG_POOL_SCALES = (1, 2, 3, 6)
MMSEG_IGNORE_INDEX = 255
# Keys of an official hub config.json that describe the remote code, not the model.
_HUB_CONFIG_DROP = ("_name_or_path", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype")
_MAX_LISTED_KEYS = 12


class ConversionError(Exception):
    """A checkpoint that cannot be converted (unreadable, unsafe, or not matching the configuration)."""


# ---------------------------------------------------------------------------------------------------------------
# Known releases
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """One official checkpoint: its architecture, head, resolution and published ImageNet-1k top-1.

    `pth_file` is the file under `RELEASE_BASE_URL`; `hub_repo` the official remote-code repo holding the same
    weights. The hub-only names (``internimage_l_22k_384`` ...) point at the ``.pth`` of the same weights.
    """

    name: str
    preset: str
    num_classes: int
    image_size: int
    pretraining: str
    top1: float | None
    pth_file: str | None
    hub_repo: str | None

    @property
    def pth_url(self) -> str | None:
        return RELEASE_BASE_URL + self.pth_file if self.pth_file else None

    @property
    def hub_url(self) -> str | None:
        return HUB_BASE_URL + self.hub_repo if self.hub_repo else None

    @property
    def label_set(self) -> str:
        return "ImageNet-1k" if self.num_classes == 1000 else "ImageNet-22k"


def _in1k(name: str, preset: str, size: int, pretraining: str, top1: float) -> Release:
    return Release(name, preset, 1000, size, pretraining, top1, f"{name}.pth", f"OpenGVLab/{name}")


def _in22k(name: str, preset: str, pretraining: str, pth: str, hub: str) -> Release:
    """An ImageNet-22k (21841-class) 384-px checkpoint; `pth`/`hub` are names without the ``internimage_``."""
    return Release(
        name, preset, 21841, 384, pretraining, None, f"internimage_{pth}.pth", f"OpenGVLab/internimage_{hub}"
    )


_IN22K = "ImageNet-22k"
_JOINT = "joint 427M public images -> ImageNet-22k"
# Official README tables (classification/README.md): model, resolution, top-1; 22k names from its
# "ImageNet-22K pretrained" table, which pairs each .pth with the hub repo of the same weights.
RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        _in1k("internimage_t_1k_224", "t", 224, "ImageNet-1k", 83.5),
        _in1k("internimage_s_1k_224", "s", 224, "ImageNet-1k", 84.2),
        _in1k("internimage_b_1k_224", "b", 224, "ImageNet-1k", 84.9),
        _in1k("internimage_l_22kto1k_384", "l", 384, f"{_IN22K} -> ImageNet-1k", 87.7),
        _in1k("internimage_xl_22kto1k_384", "xl", 384, f"{_IN22K} -> ImageNet-1k", 88.0),
        _in1k("internimage_h_22kto1k_640", "h", 640, f"{_JOINT} -> ImageNet-1k", 89.6),
        _in1k("internimage_g_22kto1k_512", "g", 512, f"{_JOINT} -> ImageNet-1k", 90.1),
        _in22k("internimage_l_22k_192to384", "l", _IN22K, "l_22k_192to384", "l_22k_384"),
        _in22k("internimage_xl_22k_192to384", "xl", _IN22K, "xl_22k_192to384", "xl_22k_384"),
        _in22k("internimage_h_jointto22k_384", "h", _JOINT, "h_jointto22k_384", "h_jointto22k_384"),
        _in22k("internimage_g_pretrainto22k_384", "g", _JOINT, "g_pretrainto22k_384", "g_jointto22k_384"),
        # hub repo names of the 22k pre-trained weights (the same weights as the .pth above)
        _in22k("internimage_l_22k_384", "l", _IN22K, "l_22k_192to384", "l_22k_384"),
        _in22k("internimage_xl_22k_384", "xl", _IN22K, "xl_22k_192to384", "xl_22k_384"),
        _in22k("internimage_g_jointto22k_384", "g", _JOINT, "g_pretrainto22k_384", "g_jointto22k_384"),
    )
}  # fmt: skip


# Official ADE20K UperNet results (segmentation/README.md): size -> (crop size, mIoU single-scale, multi-scale).
UPERNET_ADE20K: dict[str, tuple[int, float, float]] = {
    "t": (512, 47.9, 48.1),
    "s": (512, 50.1, 50.9),
    "b": (512, 50.8, 51.3),
    "l": (640, 53.9, 54.1),
    "xl": (640, 55.0, 55.3),
    "h": (896, 59.9, 60.3),
}
_MMSEG_NAME = re.compile(r"upernet_internimage_(t|s|b|l|xl|h|g)_(\d+)(?:x\d+)?_")


def parse_mmseg_name(name: str) -> tuple[str, int] | None:
    """``upernet_internimage_l_640_160k_ade20k.pth`` -> ("l", 640); cityscapes ``512x1024`` gives the short side."""
    match = _MMSEG_NAME.search(Path(name).name)
    return (match.group(1), int(match.group(2))) if match else None


def find_release(name: str | None) -> Release | None:
    """The release called `name` (a file stem, directory name or hub repo id also work), else `None`."""
    if not name:
        return None
    key = Path(str(name).rstrip("/")).name.removesuffix(".pth").lower()
    return RELEASES.get(key)


# ---------------------------------------------------------------------------------------------------------------
# Reading sources
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Source:
    """A checkpoint read into memory, normalised to official (``.pth``) key names.

    `kind` is ``"classification"`` (official names, maybe a head), ``"hub"`` (an official hub directory) or
    ``"mmlab"`` (mmdet/mmseg `state_dict`: official backbone names under ``backbone.`` plus head weights).
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
        """mmseg decode/auxiliary head weights (mmseg names); empty for other sources."""
        if self.kind != "mmlab":
            return {}
        return {
            k: v
            for k, v in split_backbone_state_dict(self.state_dict)[1].items()
            if k.startswith(UPERNET_HEAD_PREFIXES)
        }

    @property
    def has_upernet_head(self) -> bool:
        return any(k.startswith("decode_head.psp_modules.") for k in self.head_state_dict)


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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConversionError(f"cannot read {path}: {error}") from error


def image_size_from_preprocessor(path: Path) -> int | None:
    """The crop size of an official (CLIP-style) or Transformers ``preprocessor_config.json``."""
    if not path.is_file():
        return None
    crop = _read_json(path).get("crop_size")
    if isinstance(crop, dict):
        crop = crop.get("height")
    return int(crop) if crop else None


def load_hub_directory(path: Path) -> Source:
    """An official remote-code hub repo: config.json + model.safetensors (or pytorch_model.bin)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{path} is a directory without config.json (expected an official hub repo)")
    for weights_name in ("model.safetensors", "pytorch_model.bin"):
        if (path / weights_name).is_file():
            weights = load_weights_file(path / weights_name)
            break
    else:
        raise ConversionError(f"{path} holds neither model.safetensors nor pytorch_model.bin")
    source = classify_state_dict(path / weights_name, weights)
    source.path = path
    source.official_config = _read_json(config_file)
    source.image_size = image_size_from_preprocessor(path / "preprocessor_config.json")
    return source


def load_source(path: str | os.PathLike) -> Source:
    """Read any supported source (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return load_hub_directory(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    return classify_state_dict(path, load_weights_file(path))


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


def infer_preset(backbone_state_dict: Mapping[str, torch.Tensor]) -> str:
    """The official size whose stem width matches the weights (every size has a different width)."""
    stem = backbone_state_dict.get("patch_embed.conv2.weight")
    if stem is None:
        raise ConversionError("cannot infer the model size: no patch_embed.conv2.weight; pass --preset or --config")
    for name, preset in PRESETS.items():
        if preset["channels"] == stem.shape[0]:
            return name
    raise ConversionError(f"no official size has {stem.shape[0]} stem channels; pass --config with the architecture")


def head_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Classes of the official classification head (`head.weight` rows), if present."""
    head = state_dict.get("head.weight")
    return int(head.shape[0]) if head is not None else None


def has_layer_scale(backbone_state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith((".gamma1", ".gamma2")) for k in backbone_state_dict)


def official_config_kwargs(config: Mapping) -> dict:
    """Official (hub-style) config.json -> `InternImageConfig` kwargs, without the remote-code bookkeeping."""
    return {k: v for k, v in config.items() if k not in _HUB_CONFIG_DROP}


@dataclass
class ConversionPlan:
    """Everything decided before building the model: task, backbone config, labels, image size, release."""

    task: str
    config: InternImageConfig
    image_size: int
    release: Release | None
    notes: list[str] = field(default_factory=list)


def base_config_kwargs(
    source: Source, preset: str | None, config_file: Path | None, release: Release | None
) -> tuple[dict, str]:
    """Architecture kwargs and a description of where they came from (priority: file, hub dir, release, preset)."""
    if config_file is not None:
        return official_config_kwargs(_read_json(Path(config_file))), f"config file {Path(config_file).name}"
    if source.official_config is not None:
        return official_config_kwargs(source.official_config), f"{source.path.name}/config.json"
    parsed = parse_mmseg_name(source.path.name) if source.kind == "mmlab" else None
    name = preset or (release.preset if release else None) or (parsed[0] if parsed else None)
    origin = f"preset {name!r}" if name else None
    if name is None:
        name = infer_preset(source.backbone_state_dict)
        origin = f"preset {name!r} (inferred from the stem width)"
    key = name.lower().removeprefix("internimage").lstrip("-_")
    if key not in PRESETS:
        raise ConversionError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dict(PRESETS[key]), origin


def decide_task(source: Source, task: str) -> str:
    """``auto`` -> classification for classifier checkpoints, upernet for mmseg UperNet, else backbone."""
    if task != "auto":
        if task not in TASKS:
            raise ConversionError(f"unknown task {task!r}; choose auto or one of {TASKS}")
        if task == "upernet" and not source.has_upernet_head:
            raise ConversionError(f"{source.path} has no mmseg UperNet decode head (decode_head.psp_modules.*)")
        if task == "classification" and source.kind == "mmlab":
            raise ConversionError(f"{source.path} is a detection/segmentation checkpoint without a classification head")
        return task
    if source.kind == "mmlab":
        return "upernet" if source.has_upernet_head else "backbone"
    return "classification"


def plan_conversion(
    source: Source,
    *,
    task: str = "auto",
    preset: str | None = None,
    config_file: Path | None = None,
    release: Release | None = None,
    image_size: int | None = None,
) -> ConversionPlan:
    """Decide the task and build the `InternImageConfig` (labels included) for `source`."""
    task = decide_task(source, task)
    kwargs, origin = base_config_kwargs(source, preset, config_file, release)
    notes = [f"architecture from {origin}"]
    num_classes = kwargs.pop("num_classes", None)
    kwargs.pop("num_labels", None)
    backbone_weights = source.backbone_state_dict
    if task in ("backbone", "upernet"):
        # Detection/segmentation configs use layer_scale=1.0 even for T (gammas in the checkpoint); the value
        # only matters at initialisation, the presence of the parameters is what must match the weights.
        wants_scale = has_layer_scale(backbone_weights)
        if wants_scale != (kwargs.get("layer_scale") is not None):
            kwargs["layer_scale"] = 1.0 if wants_scale else None
            notes.append(f"layer_scale set to {kwargs['layer_scale']} to match the checkpoint's gamma weights")
        kwargs["out_features"] = list(STAGE_FEATURES)
    parsed = parse_mmseg_name(source.path.name) if task == "upernet" else None
    size = image_size or (release.image_size if release else None) or source.image_size or (parsed and parsed[1])
    size = size or kwargs.get("image_size")
    kwargs["image_size"] = int(size or PRESETS["t"]["image_size"])
    if task == "classification":
        num_classes = (release.num_classes if release else None) or num_classes or head_classes(source.state_dict)
        if num_classes is None:
            raise ConversionError("cannot tell the number of classes: no head.weight; pass --config or --name")
        kwargs["num_labels"] = int(num_classes)
        if has_imagenet_labels(int(num_classes)):
            kwargs["id2label"] = imagenet_id2label(int(num_classes))
            kwargs["label2id"] = {label: i for i, label in kwargs["id2label"].items()}
    try:
        config = InternImageConfig(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConversionError(f"invalid InternImage configuration ({origin}): {error}") from error
    return ConversionPlan(task, config, kwargs["image_size"], release, notes)


def build_upernet_config(backbone_config: InternImageConfig, heads: Mapping[str, torch.Tensor]) -> UperNetConfig:
    """`UperNetConfig` whose head sizes are read off the mmseg weights (channels, classes, aux convs)."""
    decode = heads.get("decode_head.conv_seg.weight")
    bottleneck = heads.get("decode_head.bottleneck.conv.weight")
    if decode is None or bottleneck is None:
        raise ConversionError("mmseg UperNet head incomplete: decode_head.conv_seg / decode_head.bottleneck missing")
    num_pool = len({k.split(".")[2] for k in heads if k.startswith("decode_head.psp_modules.")})
    if num_pool != len(MMSEG_POOL_SCALES):
        raise ConversionError(f"{num_pool} pyramid-pooling branches; the official UperNet uses {MMSEG_POOL_SCALES}")
    aux_convs = sorted(
        {int(k.split(".")[2]) for k in heads if re.match(r"auxiliary_head\.convs\.\d+\.conv\.weight", k)}
    )
    use_aux = "auxiliary_head.conv_seg.weight" in heads
    aux_channels = int(heads["auxiliary_head.conv_seg.weight"].shape[1]) if use_aux else 256
    num_labels = int(decode.shape[0])
    return UperNetConfig(
        backbone_config=backbone_config,
        hidden_size=int(bottleneck.shape[0]),
        pool_scales=list(MMSEG_POOL_SCALES),
        use_auxiliary_head=use_aux,
        auxiliary_channels=aux_channels,
        auxiliary_num_convs=len(aux_convs) if use_aux else 1,
        auxiliary_concat_input="auxiliary_head.conv_cat.conv.weight" in heads,
        loss_ignore_index=MMSEG_IGNORE_INDEX,
        num_labels=num_labels,
    )


# ---------------------------------------------------------------------------------------------------------------
# Building and checking the model
# ---------------------------------------------------------------------------------------------------------------


def _listing(title: str, keys: list[str]) -> str:
    shown = "\n".join(f"    {k}" for k in keys[:_MAX_LISTED_KEYS])
    more = f"\n    ... and {len(keys) - _MAX_LISTED_KEYS} more" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"  {title} ({len(keys)}):\n{shown}{more}"


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise `ConversionError` listing missing, unexpected and shape-mismatched keys (checked on any device)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != expected[k]
    )
    if missing or unexpected or mismatched:
        parts = [f"the checkpoint does not match {what}:"]
        parts += [
            _listing(t, ks)
            for t, ks in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
            if ks
        ]
        parts.append("Pick the right --preset/--name/--config for this checkpoint.")
        raise ConversionError("\n".join(parts))


def materialise(model_class, config, state_dict: Mapping[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Build `model_class(config)` on the meta device, check the weights against it, then assign them.

    Building on meta skips random initialisation (minutes and gigabytes for the H/G models).
    """
    with torch.device("meta"):
        model = model_class(config)
    check_state_dict(model, state_dict, what)
    model.load_state_dict({k: v.contiguous() for k, v in state_dict.items()}, strict=True, assign=True)
    return model.eval()


def unused_keys(source: Source, task: str) -> list[str]:
    """Source weights the task leaves out (a detector's neck and heads, a classifier's head for a backbone)."""
    if task == "classification":
        return []
    kept = set(source.head_state_dict) if task == "upernet" else set()
    if source.kind == "mmlab":
        backbone_keys = {"backbone." + k for k in source.backbone_state_dict}
        return sorted(k for k in strip_ddp_prefix(source.state_dict) if k not in backbone_keys and k not in kept)
    return sorted(k for k in source.state_dict if not is_backbone_key(k))


def convert_classification_weights(source: Source) -> dict[str, torch.Tensor]:
    return convert_official_state_dict(source.state_dict)


def convert_backbone_weights(source: Source) -> dict[str, torch.Tensor]:
    return {convert_official_backbone_key(k): v for k, v in source.backbone_state_dict.items()}


def convert_upernet_weights(source: Source) -> dict[str, torch.Tensor]:
    converted = {"backbone." + k: v for k, v in convert_backbone_weights(source).items()}
    converted.update({convert_mmseg_head_key(k): v for k, v in source.head_state_dict.items()})
    return converted


def build_model(plan: ConversionPlan, source: Source) -> torch.nn.Module:
    """The converted model with the source weights, after a strict key/shape check."""
    if plan.task == "classification":
        what = "InternImageForImageClassification"
        return materialise(InternImageForImageClassification, plan.config, convert_classification_weights(source), what)
    if plan.task == "backbone":
        return materialise(InternImageBackbone, plan.config, convert_backbone_weights(source), "InternImageBackbone")
    upernet_config = build_upernet_config(plan.config, source.head_state_dict)
    return materialise(UperNetForSemanticSegmentation, upernet_config, convert_upernet_weights(source), "UperNet")


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def make_image_processor(image_size: int, center_crop: bool = True):
    """The official evaluation transform at `image_size` (torchvision backend when available, else PIL)."""
    if is_torchvision_available():
        from .image_processing_internimage import InternImageImageProcessor as processor_class
    else:
        from .image_processing_pil_internimage import InternImageImageProcessorPil as processor_class
    return processor_class(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=center_crop,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def card_info(
    plan: ConversionPlan, model: torch.nn.Module, source: Source, verification: str | None, repo_id: str | None
) -> ModelCardInfo:
    """Model-card facts for the converted checkpoint."""
    release, config = plan.release, plan.config
    variant = next((n for n, p in PRESETS.items() if p["channels"] == config.channels), f"custom-{config.channels}")
    metrics = []
    if plan.task == "classification" and release and release.top1 is not None:
        metrics.append(("ImageNet-1k top-1 (%)", f"{release.top1} at {release.image_size}x{release.image_size}"))
    parsed = parse_mmseg_name(source.path.name) if plan.task == "upernet" else None
    if parsed and "ade20k" in source.path.name and parsed[0] in UPERNET_ADE20K:
        crop, single, multi = UPERNET_ADE20K[parsed[0]]
        metrics.append(("ADE20K val mIoU (%), single / multi-scale", f"{single} / {multi} at {crop}x{crop}"))
    num_labels = model.config.num_labels
    label_set = {1000: "ImageNet-1k", 21841: "ImageNet-22k"}.get(num_labels) if plan.task == "classification" else None
    title = (
        release.name if release and plan.task == "classification" else f"InternImage-{variant.upper()} ({plan.task})"
    )
    summary_fields = ("channels", "depths", "groups", "offset_scale", "post_norm", "res_post_norm", "layer_scale")
    return ModelCardInfo(
        title=title,
        task=plan.task,
        variant=variant,
        num_parameters=count_parameters(model),
        image_size=plan.image_size,
        num_labels=num_labels,
        source=release.pth_file if release and release.pth_file and source.kind != "hub" else source.path.name,
        source_url=(release.hub_url if source.kind == "hub" else release.pth_url) if release else None,
        pretraining=release.pretraining if release else None,
        label_set=label_set,
        metrics=metrics,
        notes=[f"Conversion: {note}." for note in plan.notes],
        verification=verification,
        repo_id=repo_id,
        config_summary={k: getattr(config, k) for k in summary_fields},
    )


def write_converted(directory: Path, model: torch.nn.Module, plan: ConversionPlan) -> None:
    """config.json + model.safetensors + preprocessor_config.json into `directory`."""
    model.save_pretrained(directory)
    # Segmentation evaluates whole (resized, not cropped) images; classification uses the official crop.
    make_image_processor(plan.image_size, center_crop=plan.task != "upernet").save_pretrained(directory)


def verify_converted(directory: Path, plan: ConversionPlan, source: Source, verify_size: int | None = None) -> float:
    """Reload `directory` and compare its outputs with a model loaded from the source by another route.

    The reference loads the source weights in official hub names through the model's own `from_pretrained`
    key mapping (Transformers' renaming machinery), independent of the ``re.sub`` conversion used for writing.
    Returns the largest absolute difference of logits (classification, UperNet) or feature maps (backbone).
    """
    size = verify_size or min(plan.image_size, 224)
    size = max(32, size - size % 32)  # the H/G head needs multiples of 32
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, plan.config.num_channels, size, size, generator=generator)
    hub_weights = official_to_hub_names(
        source.backbone_state_dict if plan.task != "classification" else source.state_dict
    )
    with torch.no_grad():
        if plan.task == "classification":
            converted = InternImageForImageClassification.from_pretrained(directory).eval()
            reference = _reference(InternImageForImageClassification, plan.config, hub_weights)
            return (converted(pixel_values).logits - reference(pixel_values).logits).abs().max().item()
        if plan.task == "backbone":
            converted = InternImageBackbone.from_pretrained(directory).eval()
            reference = _reference(InternImageBackbone, plan.config, hub_weights)
            pairs = zip(converted(pixel_values).feature_maps, reference(pixel_values).feature_maps, strict=True)
            return max((a - b).abs().max().item() for a, b in pairs)
        converted = UperNetForSemanticSegmentation.from_pretrained(directory).eval()
        backbone = _reference(InternImageBackbone, plan.config, hub_weights)
        weights = {"backbone." + k: v for k, v in backbone.state_dict().items()}
        weights.update({convert_mmseg_head_key(k): v for k, v in source.head_state_dict.items()})
        reference = materialise(UperNetForSemanticSegmentation, converted.config, weights, "UperNet")
        return (converted(pixel_values).logits - reference(pixel_values).logits).abs().max().item()


def _reference(model_class, config: InternImageConfig, hub_weights: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """`model_class` loaded from official-hub-named weights via `from_pretrained`'s key mapping (strict)."""
    model, info = model_class.from_pretrained(
        None, config=config, state_dict=dict(hub_weights), output_loading_info=True
    )
    problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        raise ConversionError(f"verification reference did not load cleanly: {problems or info['error_msgs']}")
    return model.eval()


def replace_directory(staging: Path, output: Path, overwrite: bool) -> None:
    """Move the finished `staging` directory to `output` (same filesystem, so the final step is a rename)."""
    if output.exists():
        if not overwrite:
            raise ConversionError(f"{output} already exists (pass --overwrite to replace it)")
        backup = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.old-"))
        backup.rmdir()
        output.rename(backup)
        staging.rename(output)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        staging.rename(output)


@dataclass
class ConversionResult:
    """What `convert_checkpoint` produced."""

    output_dir: Path
    task: str
    config: object
    num_parameters: int
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)


def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    name: str | None = None,
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    task: str = "auto",
    image_size: int | None = None,
    verify: bool = False,
    verify_size: int | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    log=print,
) -> ConversionResult:
    """Convert `source` into a Hugging Face directory at `output_dir` (see the module docstring).

    `name` (or the source's file/directory name) selects a known release: its preset, class count, label names,
    image size and published accuracy. `preset` / `config_file` override the architecture. Nothing is left at
    `output_dir` when any step fails.
    """
    output = Path(output_dir).resolve()
    if output.exists() and not overwrite:
        raise ConversionError(f"{output} already exists (pass --overwrite to replace it)")
    if name and find_release(name) is None:
        raise ConversionError(f"unknown release {name!r}; known: {', '.join(sorted(RELEASES))}")
    release = find_release(name) or find_release(Path(source).name)
    loaded = load_source(source)
    if loaded.ignored_keys:
        log(f"ignoring non-weight entries of the checkpoint: {', '.join(loaded.ignored_keys)}")
    plan = plan_conversion(
        loaded, task=task, preset=preset, config_file=Path(config_file) if config_file else None, release=release,
        image_size=image_size,
    )  # fmt: skip
    for note in plan.notes:
        log(note)
    dropped = unused_keys(loaded, plan.task)
    if dropped:
        log(f"not converted ({len(dropped)} keys, e.g. {', '.join(dropped[:3])}): not part of the {plan.task} model")
    model = build_model(plan, loaded)
    log(f"{plan.task}: {count_parameters(model):,} parameters, all {len(model.state_dict())} tensors matched")

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    try:
        write_converted(staging, model, plan)
        max_diff, verification = None, None
        if verify:
            max_diff = verify_converted(staging, plan, loaded, verify_size)
            log(f"verify: max abs diff of {'feature maps' if plan.task == 'backbone' else 'logits'} = {max_diff:.3e}")
            if not max_diff <= VERIFY_TOLERANCE:
                raise ConversionError(f"verification failed: max abs diff {max_diff:.3e} > {VERIFY_TOLERANCE}")
            verification = (
                f"Verified at conversion time: the converted model and the source weights loaded through the "
                f"official hub key names agree to a max abs difference of {max_diff:.1e} on a random input."
            )
        readme = render_model_card(card_info(plan, model, loaded, verification, repo_id))
        (staging / "README.md").write_text(readme, encoding="utf-8")
        replace_directory(staging, output, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {output}")
    return ConversionResult(output, plan.task, model.config, count_parameters(model), max_diff, plan.notes)


def push_to_hub(output_dir: str | os.PathLike, repo_id: str, *, private: bool = False, api=None) -> str:
    """Upload the converted directory (weights, config, processor, card) to `repo_id`; returns the commit URL."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
    commit = api.upload_folder(
        folder_path=str(output_dir), repo_id=repo_id, repo_type="model",
        commit_message="Add InternImage checkpoint converted with internimage_hf",
    )  # fmt: skip
    return str(getattr(commit, "commit_url", commit))


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    releases = ", ".join(sorted(RELEASES))
    parser = argparse.ArgumentParser(
        prog="convert_checkpoint.py",
        description="Convert an official InternImage checkpoint (.pth, official hub directory, or mmdet/mmseg "
        "checkpoint) into a Hugging Face directory loadable with the Auto classes after `import internimage_hf`.",
        epilog=f"Known release names: {releases}.",
    )
    parser.add_argument("source", help="official .pth/.bin/.safetensors file or official hub repo directory")
    parser.add_argument("output_dir", help="directory to create (must not exist unless --overwrite)")
    arch = parser.add_mutually_exclusive_group()
    arch.add_argument("--preset", help=f"model size: {', '.join(PRESETS)}")
    arch.add_argument("--config", dest="config_file", help="official-style config.json (official field names)")
    parser.add_argument("--name", help="release name (default: the source's file or directory name if known)")
    parser.add_argument("--task", default="auto", choices=("auto", *TASKS), help="what to convert (default: auto)")
    parser.add_argument("--image_size", "--image-size", type=int, help="override the processor resolution")
    parser.add_argument("--verify", action="store_true", help="reload the output and compare with the source")
    parser.add_argument("--verify_size", "--verify-size", type=int, help="input size for --verify (default 224)")
    parser.add_argument("--push_to_hub", "--push-to-hub", metavar="REPO", help="upload the result to this repo")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return parser


def main(argv: list[str] | None = None, api=None) -> int:
    """CLI entry point; returns the process exit code (2 for a conversion error)."""
    args = build_parser().parse_args(argv)
    try:
        result = convert_checkpoint(
            args.source, args.output_dir, name=args.name, preset=args.preset, config_file=args.config_file,
            task=args.task, image_size=args.image_size, verify=args.verify, verify_size=args.verify_size,
            repo_id=args.push_to_hub, overwrite=args.overwrite,
        )  # fmt: skip
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.push_to_hub:
        url = push_to_hub(result.output_dir, args.push_to_hub, private=args.private, api=api)
        print(f"uploaded to {args.push_to_hub}: {url}")
    return 0


__all__ = [
    "RELEASES",
    "ConversionError",
    "ConversionResult",
    "Release",
    "convert_checkpoint",
    "find_release",
    "load_source",
    "main",
    "push_to_hub",
]
