"""The files of a converted directory: config.json, model.safetensors, preprocessor_config.json and README.md."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.utils import is_torchvision_available

from ..configuration_internimage import PRESETS
from ..model_card import ModelCardInfo, render_model_card
from .planning import ConversionPlan
from .releases import UPERNET_ADE20K, parse_mmseg_name
from .sources import Source


def make_image_processor(image_size: int, center_crop: bool = True):
    """The official evaluation transform at `image_size` (torchvision backend when available, else PIL)."""
    if is_torchvision_available():
        from ..image_processing_internimage import InternImageImageProcessor as processor_class
    else:
        from ..image_processing_pil_internimage import InternImageImageProcessorPil as processor_class
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


def write_model_card(directory: Path, info: ModelCardInfo) -> None:
    (directory / "README.md").write_text(render_model_card(info), encoding="utf-8")


__all__ = ["card_info", "count_parameters", "make_image_processor", "write_converted", "write_model_card"]
