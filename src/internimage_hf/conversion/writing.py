"""The files of a converted directory: config.json, model.safetensors, preprocessor_config.json and README.md."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import is_torchvision_available

from ..hub.model_card import ModelCardInfo, render_model_card
from .errors import ConversionError
from .families import family_of
from .planning import ConversionPlan
from .releases import UPERNET_ADE20K, Release, SegmentationRelease, find_release, parse_mmseg_name
from .sources import Source

# `data.labels.segmentation_id2label` sets as the model card names them.
LABEL_SET_NAMES = {"ade20k": "ADE20K", "cityscapes": "Cityscapes", "coco_stuff": "COCO-Stuff"}


def make_image_processor(image_size: int, center_crop: bool = True):
    """The official evaluation transform at `image_size` (torchvision backend when available, else PIL)."""
    if is_torchvision_available():
        from ..models.internimage.image_processing_internimage import InternImageImageProcessor as processor_class
    else:
        from ..models.internimage.image_processing_pil_internimage import (
            InternImageImageProcessorPil as processor_class,
        )
    return processor_class(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=center_crop,
    )


def mask2former_processor_config(image_size: int, num_labels: int, release: SegmentationRelease | None = None) -> dict:
    """``preprocessor_config.json`` of Transformers' Mask2Former processor set to the official test transform.

    Keep-ratio resize to a (short, long) side, then up to a multiple of 32, and ImageNet normalisation. A release
    gives its test scale and whether its labels are shifted by one (``reduce_zero_label``); otherwise the short side
    is `image_size` and the long side 4x that. The processor's `post_process_semantic_segmentation` is the official
    semantic inference (class softmax without "no object" times the mask sigmoids), which
    ``pipeline("image-segmentation")`` uses. Written as JSON rather than through the processor class because
    Transformers 5.4 builds either backend of that class only with torchvision installed; loading picks the backend.
    """
    long_side, short_side = release.test_scale if release else (4 * image_size, image_size)
    return {
        "image_processor_type": "Mask2FormerImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": short_side, "longest_edge": long_side},
        "size_divisor": 32,
        "resample": 2,  # bilinear, as mmseg's Resize
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_DEFAULT_MEAN),
        "image_std": list(IMAGENET_DEFAULT_STD),
        "ignore_index": 255,
        "do_reduce_labels": release.reduce_zero_label if release else False,
        "num_labels": num_labels,
    }


def make_detection_processor(max_detections: int | None):
    """The official DINO test transform (`DinoDetrImageProcessor`), keeping `max_detections` per image."""
    try:
        from ..models.dino_detr.image_processing_dino_detr import DinoDetrImageProcessor
    except ImportError as error:
        raise ConversionError(f"writing a DINO image processor needs torchvision ({error})") from error
    return DinoDetrImageProcessor(**({"top_k": max_detections} if max_detections else {}))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def card_info(
    plan: ConversionPlan, model: torch.nn.Module, source: Source, verification: str | None, repo_id: str | None
) -> ModelCardInfo:
    """Model-card facts for the converted checkpoint."""
    release, config = plan.release, plan.config
    family = family_of(config)
    presets = family.presets.items()
    variant = next((n for n, p in presets if p["channels"] == config.channels), f"custom-{config.channels}")
    metrics = []
    if plan.task == "classification" and release and release.top1 is not None:
        metrics.append(("ImageNet-1k top-1 (%)", f"{release.top1} at {release.image_size}x{release.image_size}"))
    # InternImage's UperNet results; FlashInternImage's come with its release note (`FLASH_DENSE_RELEASES`)
    is_internimage_upernet = plan.task == "upernet" and family.model_type == "internimage"
    parsed = parse_mmseg_name(source.path.name) if is_internimage_upernet else None
    if parsed and "ade20k" in source.path.name and parsed[0] in UPERNET_ADE20K:
        crop, single, multi = UPERNET_ADE20K[parsed[0]]
        metrics.append(("ADE20K val mIoU (%), single / multi-scale", f"{single} / {multi} at {crop}x{crop}"))
    segmentation = plan.segmentation_release
    detection = plan.detection_release
    if detection:
        metrics.append((f"{detection.dataset} val box AP (%)", f"{detection.box_ap} (single-scale)"))
        if detection.reported_params is not None:
            metrics.append(("parameters (official README)", detection.reported_params))
    notes = [f"Conversion: {note}." for note in plan.notes]
    if segmentation and segmentation.miou:
        single, multi = segmentation.miou
        scales, value = (
            ("single / multi-scale", f"{single} / {multi}") if multi is not None else ("single-scale", single)
        )
        metric = f"{segmentation.dataset} val mIoU (%), {scales}"
        metrics.append((metric, f"{value} (trained on {segmentation.crop_size}-px crops)"))
    if segmentation and segmentation.slide:
        notes.append(
            f"The official evaluation slides a {segmentation.slide}x{segmentation.slide} window (stride 512) over the "
            "resized image; the image processor here resizes the whole image, which Transformers' Mask2Former "
            "processor and pipeline do."
        )
    num_labels = model.config.num_labels
    label_set = {1000: "ImageNet-1k", 21841: "ImageNet-22k"}.get(num_labels) if plan.task == "classification" else None
    if plan.segmentation_labels and model.config.id2label.get(0, "LABEL_0") != "LABEL_0":
        label_set = LABEL_SET_NAMES[plan.segmentation_labels]
    if plan.task == "dino" and model.config.id2label.get(0) == "person":
        label_set = "COCO"
    title = (
        release.name
        if release and plan.task == "classification"
        else f"{family.display_name}-{variant.upper()} ({plan.task})"
    )
    title = segmentation.name if segmentation else title
    title = detection.name if detection else title
    summary_fields = ("channels", "depths", "groups", "offset_scale", "post_norm", "res_post_norm", "layer_scale")
    source_url = (segmentation or detection).pth_url if segmentation or detection else _release_url(release, source)
    return ModelCardInfo(
        title=title,
        task=plan.task,
        variant=variant,
        num_parameters=count_parameters(model),
        image_size=plan.image_size,
        num_labels=num_labels,
        source=_source_name(plan, source),
        source_url=source_url,
        pretraining=(segmentation or detection or release).pretraining
        if segmentation or detection or release
        else None,
        label_set=label_set,
        metrics=metrics,
        notes=notes,
        verification=verification,
        repo_id=repo_id,
        config_summary={k: getattr(config, k) for k in summary_fields},
        release=_known_release(source_url),
        family=family.model_type,
    )


def _known_release(source_url: str | None) -> Release | None:
    """The official release the weights come from, read off the card's `source_url` (its last part is the release
    name: ``.../resolve/main/<release>.pth`` or ``https://huggingface.co/OpenGVLab/<release>``), else `None`."""
    return find_release(source_url.rsplit("/", 1)[-1]) if source_url else None


def _source_name(plan: ConversionPlan, source: Source) -> str:
    if plan.segmentation_release or plan.detection_release:
        return (plan.segmentation_release or plan.detection_release).pth_file
    release = plan.release
    return release.pth_file if release and release.pth_file and source.kind != "hub" else source.path.name


def _release_url(release, source: Source) -> str | None:
    return (release.hub_url if source.kind == "hub" else release.pth_url) if release else None


def write_converted(directory: Path, model: torch.nn.Module, plan: ConversionPlan) -> None:
    """config.json + model.safetensors + preprocessor_config.json into `directory`."""
    model.save_pretrained(directory)
    if plan.task == "dino":
        release = plan.detection_release
        make_detection_processor(release.max_detections if release else None).save_pretrained(directory)
    elif plan.task == "mask2former":
        processor = mask2former_processor_config(plan.image_size, model.config.num_labels, plan.segmentation_release)
        (directory / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
    else:
        # Segmentation evaluates whole (resized, not cropped) images; classification uses the official crop.
        make_image_processor(plan.image_size, center_crop=plan.task != "upernet").save_pretrained(directory)


def write_model_card(directory: Path, info: ModelCardInfo) -> None:
    (directory / "README.md").write_text(render_model_card(info), encoding="utf-8")


__all__ = [
    "card_info",
    "count_parameters",
    "make_image_processor",
    "mask2former_processor_config",
    "write_converted",
    "write_model_card",
]
