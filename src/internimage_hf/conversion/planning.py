"""Deciding what to build before any model exists: task, validated configuration, labels and image size."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import UperNetConfig

from ..data.labels import has_imagenet_labels, imagenet_id2label, segmentation_id2label
from ..models.internimage.configuration_internimage import InternImageConfig
from .errors import ConversionError
from .families import FLASH_INTERNIMAGE, ModelFamily, detect_family, family_from_config
from .releases import (
    BackboneRelease,
    DetectionRelease,
    Release,
    SegmentationRelease,
    dataset_label_set,
    parse_mmseg_name,
)
from .sources import Source, read_json
from .validation import SIZE_LIMITS, build_config, check_config_values, official_config_kwargs

TASKS = ("classification", "backbone", "upernet", "mask2former", "dino")
SEGMENTATION_TASKS = ("upernet", "mask2former")
DENSE_TASKS = ("backbone", *SEGMENTATION_TASKS, "dino")  # backbones of mmdet/mmseg models
STAGE_FEATURES = ["stage1", "stage2", "stage3", "stage4"]
# mmseg defaults of the official UperNet configs (`_base_/models/upernet_r50.py`); pool scales are not
# recoverable from the weights (only their number is).
MMSEG_POOL_SCALES = (1, 2, 3, 6)
MMSEG_IGNORE_INDEX = 255
DINO_TEST_SHORT_SIDE = 800  # the official DINO test resize: shorter side 800, longer at most 1333


def read_config_file(path: str | os.PathLike) -> dict:
    """An official-style config.json as validated configuration kwargs (see `check_config_values`)."""
    path = Path(path)
    return check_config_values(read_json(path), f"config file {path.name}")


def infer_preset(backbone_state_dict: Mapping[str, torch.Tensor], presets: Mapping[str, dict]) -> str:
    """The official size whose stem width matches the weights (every size of a family has a different width)."""
    stem = backbone_state_dict.get("patch_embed.conv2.weight")
    if stem is None:
        raise ConversionError("cannot infer the model size: no patch_embed.conv2.weight; pass --preset or --config")
    for name, preset in presets.items():
        if preset["channels"] == stem.shape[0]:
            return name
    raise ConversionError(f"no official size has {stem.shape[0]} stem channels; pass --config with the architecture")


def head_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Classes of the official classification head (`head.weight` rows), if present."""
    head = state_dict.get("head.weight")
    return int(head.shape[0]) if head is not None else None


def has_layer_scale(backbone_state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith((".gamma1", ".gamma2")) for k in backbone_state_dict)


@dataclass
class ConversionPlan:
    """Everything decided before building the model: task, backbone config, labels, image size, release.

    `segmentation_release` is the official Mask2Former release the source is; `segmentation_labels` the
    `data.labels.segmentation_id2label` set of a segmentation head (its names go into the head's config);
    `detection_release` the official DINO release.
    """

    task: str
    config: InternImageConfig
    image_size: int
    release: Release | None
    notes: list[str] = field(default_factory=list)
    segmentation_release: SegmentationRelease | None = None
    segmentation_labels: str | None = None
    detection_release: DetectionRelease | None = None


def base_config_kwargs(
    source: Source,
    preset: str | None,
    config_file: Path | None,
    release: Release | SegmentationRelease | DetectionRelease | BackboneRelease | None,
    family: ModelFamily,
) -> tuple[dict, str]:
    """Architecture kwargs and a description of where they came from (priority: file, hub dir, release, preset)."""
    if config_file is not None:
        return read_config_file(config_file), f"config file {Path(config_file).name}"
    if source.official_config is not None:
        return official_config_kwargs(source.official_config), f"{source.path.name}/config.json"
    parsed = parse_mmseg_name(source.path.name) if source.kind == "mmlab" else None
    name = preset or (release.preset if release else None) or (parsed[0] if parsed else None)
    origin = f"{family.display_name} preset {name!r}" if name else None
    if name is None:
        name = infer_preset(source.backbone_state_dict, family.presets)
        origin = f"{family.display_name} preset {name!r} (inferred from the stem width)"
    key = name.lower().removeprefix("flash").lstrip("-_").removeprefix("internimage").lstrip("-_")
    if key not in family.presets:
        raise ConversionError(f"unknown {family.display_name} preset {name!r}; choose one of {sorted(family.presets)}")
    return dict(family.presets[key]), origin


def check_family(family: ModelFamily, kwargs: Mapping, release) -> None:
    """A configuration or release naming the other family than the weights' (`detect_family`) is an error."""
    config_family = family_from_config(kwargs)
    claims = []
    if config_family is not None:
        claims.append(("the configuration", config_family.model_type))
    if release is not None:
        claims.append((f"the release {release.name}", release.family))
    for what, model_type in claims:
        if model_type != family.model_type:
            operator = "DCNv4" if family is FLASH_INTERNIMAGE else "DCNv3"
            raise ConversionError(
                f"{what} describes a {model_type} model, but the weights are {family.display_name} "
                f"({operator} operator weights)"
            )


def decide_task(source: Source, task: str) -> str:
    """``auto`` -> classification for classifier checkpoints, upernet / mask2former for those heads, else backbone."""
    if task != "auto":
        if task not in TASKS:
            raise ConversionError(f"unknown task {task!r}; choose auto or one of {TASKS}")
        if task == "upernet" and not source.has_upernet_head:
            raise ConversionError(f"{source.path} has no mmseg UperNet decode head (decode_head.psp_modules.*)")
        if task == "mask2former" and not source.has_mask2former_head:
            raise ConversionError(f"{source.path} has no Mask2Former decode head (decode_head.transformer_decoder.*)")
        if task == "dino" and not source.has_dino_head:
            raise ConversionError(f"{source.path} has no DINO head (bbox_head.transformer.*)")
        if task == "classification" and source.kind == "mmlab":
            raise ConversionError(f"{source.path} is a detection/segmentation checkpoint without a classification head")
        return task
    if source.kind == "mmlab":
        if source.has_dino_head:
            return "dino"
        if source.has_mask2former_head:
            return "mask2former"
        return "upernet" if source.has_upernet_head else "backbone"
    return "classification"


def check_image_size(value: int | None, option: str, limit: int = SIZE_LIMITS["image_size"]) -> None:
    """A command-line size must be a positive integer no larger than `limit`."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit):
        raise ConversionError(f"{option} must be an integer from 1 to {limit}, got {value!r}")


def plan_conversion(
    source: Source,
    *,
    task: str = "auto",
    preset: str | None = None,
    config_file: Path | None = None,
    release: Release | None = None,
    image_size: int | None = None,
    segmentation_release: SegmentationRelease | None = None,
    detection_release: DetectionRelease | None = None,
    dense_release: BackboneRelease | None = None,
) -> ConversionPlan:
    """Decide the task and build the configuration (labels included) for `source`: `InternImageConfig` or
    `FlashInternImageConfig`, the family of its operator weights (`families.detect_family`).

    `segmentation_release` (an official Mask2Former checkpoint) gives the architecture, crop size and label set of
    a Mask2Former source, `detection_release` (an official DINO detector) the architecture of a DINO source; each
    is an error for any other task. `dense_release` (an official FlashInternImage detector or segmenter) gives its
    backbone's size. For a detector or segmentation model the config is its backbone's.
    """
    if source.has_composite_backbone:
        raise ConversionError(
            f"{source.path} is a CB-InternImage detector (a composite backbone: two InternImage backbones joined by "
            "`backbone.cb_linears`), which internimage_hf has no model for; convert the single-backbone DINO "
            "releases instead"
        )
    task = decide_task(source, task)
    if segmentation_release is not None and task != "mask2former":
        raise ConversionError(f"{segmentation_release.name} is a Mask2Former release, but the task is {task}")
    if detection_release is not None and task != "dino":
        raise ConversionError(f"{detection_release.name} is a DINO release, but the task is {task}")
    if release is not None and (task not in ("classification", "backbone") or source.kind == "mmlab"):
        raise ConversionError(
            f"{release.name} is an ImageNet classification release, but {source.path.name} is a {task} checkpoint "
            "of mmdet/mmseg; name its own release, or give its backbone with --preset or --config"
        )
    if dense_release is not None and source.kind != "mmlab":
        raise ConversionError(
            f"{dense_release.name} is a {dense_release.method} release, but {source.path.name} is no mmdet/mmseg model"
        )
    chosen = release or segmentation_release or detection_release or dense_release
    family = detect_family(source.backbone_state_dict)
    kwargs, origin = base_config_kwargs(source, preset, config_file, chosen, family)
    check_family(family, kwargs, chosen)
    notes = [f"architecture from {origin}"]
    if dense_release is not None:
        notes.append(
            f"official release {dense_release.name}: {dense_release.method}, {dense_release.dataset} "
            f"{dense_release.metric} (official README)"
        )
    num_classes = kwargs.pop("num_classes", None)
    kwargs.pop("num_labels", None)
    backbone_weights = source.backbone_state_dict
    if task in DENSE_TASKS:
        # Detection/segmentation configs use layer_scale=1.0 even for T (gammas in the checkpoint); the value
        # only matters at initialisation, the presence of the parameters is what must match the weights.
        wants_scale = has_layer_scale(backbone_weights)
        if wants_scale != (kwargs.get("layer_scale") is not None):
            kwargs["layer_scale"] = 1.0 if wants_scale else None
            notes.append(f"layer_scale set to {kwargs['layer_scale']} to match the checkpoint's gamma weights")
        kwargs["out_features"] = dino_backbone_features(source) if task == "dino" else list(STAGE_FEATURES)
    parsed = parse_mmseg_name(source.path.name) if task in SEGMENTATION_TASKS else None
    release_size = release.image_size if release else (segmentation_release and segmentation_release.crop_size)
    if task == "dino":
        release_size = DINO_TEST_SHORT_SIDE
    size = image_size or release_size or source.image_size or (parsed and parsed[1])
    size = size or kwargs.get("image_size")
    kwargs["image_size"] = int(size or family.presets["t"]["image_size"])
    if task == "classification":
        num_classes = (release.num_classes if release else None) or num_classes or head_classes(source.state_dict)
        if num_classes is None:
            raise ConversionError("cannot tell the number of classes: no head.weight; pass --config or --name")
        kwargs["num_labels"] = int(num_classes)
        if has_imagenet_labels(int(num_classes)):
            kwargs["id2label"] = imagenet_id2label(int(num_classes))
            kwargs["label2id"] = {label: i for i, label in kwargs["id2label"].items()}
    config = build_config(kwargs, origin, family.config_class)
    labels = None
    if task in SEGMENTATION_TASKS:
        labels = segmentation_release.label_set if segmentation_release else dataset_label_set(source.path.name)
    return ConversionPlan(
        task, config, kwargs["image_size"], release, notes, segmentation_release, labels, detection_release
    )


def dino_backbone_features(source: Source) -> list[str]:
    """The backbone stages a DINO checkpoint's neck reads: its last `neck.convs.*` count of stages."""
    inputs = {k.split(".")[2] for k in source.detection_state_dict if k.startswith("neck.convs.")}
    if not 1 <= len(inputs) <= len(STAGE_FEATURES):
        raise ConversionError(f"the DINO neck reads {len(inputs)} backbone levels (neck.convs.*); expected 1 to 4")
    return STAGE_FEATURES[-len(inputs) :]


def segmentation_label_names(plan: ConversionPlan, num_labels: int) -> dict:
    """``id2label``/``label2id`` config kwargs for a segmentation head: the plan's label set when its size matches.

    A set of another size gives no names (``{}``) and a note in `plan.notes`, which the model card shows.
    """
    if plan.segmentation_labels is None:
        return {}
    id2label = segmentation_id2label(plan.segmentation_labels)
    if len(id2label) != num_labels:
        plan.notes.append(
            f"no class names: the head has {num_labels} classes, the {plan.segmentation_labels} set {len(id2label)}"
        )
        return {}
    return {"id2label": id2label, "label2id": {name: index for index, name in id2label.items()}}


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


__all__ = [
    "TASKS",
    "ConversionPlan",
    "check_image_size",
    "plan_conversion",
    "read_config_file",
    "segmentation_label_names",
]
