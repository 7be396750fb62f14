"""Building the converted model from the source weights, and checking it against the source."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, UperNetForSemanticSegmentation

from ..data.labels import detection_id2label
from ..models.dino_detr.configuration_dino_detr import DinoDetrConfig
from ..models.dino_detr.modeling_dino_detr import DinoDetrForObjectDetection
from ..models.internimage.configuration_internimage import InternImageConfig
from .dino_detr import convert_official_dino_state_dict
from .errors import ConversionError
from .families import family_of
from .keys import convert_mmseg_head_key, convert_official_backbone_key, convert_official_state_dict, strip_ddp_prefix
from .mask2former import build_mask2former_config, convert_mask2former_head_state_dict
from .planning import SEGMENTATION_TASKS, ConversionPlan, build_upernet_config, segmentation_label_names
from .releases import DetectionRelease, SegmentationRelease
from .sources import Source, is_backbone_key, official_to_hub_names

VERIFY_TOLERANCE = 1e-4
DINO_VERIFY_SIZE = (256, 320)  # 1,700 positions over the four levels: more than the 900 queries
# Not recoverable from the weights: the official detectors all use 8 heads (the head count times the points is)
DINO_ATTENTION_HEADS = 8
_MAX_LISTED_KEYS = 12


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
    kept = set(source.head_state_dict) if task in SEGMENTATION_TASKS else set()
    kept |= set(source.detection_state_dict) if task == "dino" else set()
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


def convert_mask2former_weights(source: Source) -> dict[str, torch.Tensor]:
    converted = {"model.pixel_level_module.encoder." + k: v for k, v in convert_backbone_weights(source).items()}
    converted.update(convert_mask2former_head_state_dict(source.head_state_dict))
    return converted


def check_segmentation_release(config: Mask2FormerConfig, release: SegmentationRelease) -> None:
    """The head read off the weights must be the release's (classes, queries, width, heads); else it is another model.

    The head count is read off the sampling offsets assuming 4 points per head and level (`infer_num_heads`).
    """
    found = {"classes": config.num_labels, "queries": config.num_queries, "hidden_dim": config.hidden_dim}
    expected = {"classes": release.num_classes, "queries": release.num_queries, "hidden_dim": release.hidden_dim}
    found["heads"], expected["heads"] = config.num_attention_heads, release.num_heads
    differing = [
        f"{fact} {found[fact]} (the release has {expected[fact]})" for fact in expected if found[fact] != expected[fact]
    ]
    if differing:
        raise ConversionError(
            f"the checkpoint's Mask2Former head is not that of {release.name}: {', '.join(differing)}; "
            "pass the right --name, or none"
        )


def build_mask2former(plan: ConversionPlan, source: Source) -> torch.nn.Module:
    release = plan.segmentation_release
    config = build_mask2former_config(plan.config, source.head_state_dict)
    if release is not None:
        check_segmentation_release(config, release)
    config.update(segmentation_label_names(plan, config.num_labels))
    return materialise(Mask2FormerForUniversalSegmentation, config, convert_mask2former_weights(source), "Mask2Former")


def _layer_count(weights: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in weights if k.startswith(prefix)})


def build_dino_config(
    backbone_config: InternImageConfig, weights: Mapping[str, torch.Tensor], release: DetectionRelease | None
) -> DinoDetrConfig:
    """`DinoDetrConfig` read off the official DINO weights (widths, levels, queries, classes, layers, points)."""
    try:
        levels, width = weights["bbox_head.transformer.level_embeds"].shape
        num_queries = weights["bbox_head.transformer.query_embed.weight"].shape[0]
        num_labels = weights["bbox_head.cls_branches.0.weight"].shape[0]
        encoder = "bbox_head.transformer.encoder.layers."
        decoder = "bbox_head.transformer.decoder.layers."
        encoder_points = weights[encoder + "0.attentions.0.attention_weights.weight"].shape[0]
        decoder_points = weights[decoder + "0.attentions.1.attention_weights.weight"].shape[0]
        encoder_ffn = weights[encoder + "0.ffns.0.layers.0.0.weight"].shape[0]
        decoder_ffn = weights[decoder + "0.ffns.0.layers.0.0.weight"].shape[0]
    except KeyError as error:
        raise ConversionError(f"DINO head incomplete: {error.args[0]} missing") from error
    per_head = DINO_ATTENTION_HEADS * levels
    if encoder_points % per_head or decoder_points % per_head:
        raise ConversionError(
            f"the deformable attention weights do not fit {DINO_ATTENTION_HEADS} heads x {levels} levels"
        )
    labels = {"id2label": detection_id2label("coco")} if num_labels == 80 else {"num_labels": int(num_labels)}
    return DinoDetrConfig(
        backbone_config=backbone_config,
        d_model=int(width),
        num_feature_levels=int(levels),
        num_queries=int(num_queries),
        encoder_layers=_layer_count(weights, encoder),
        decoder_layers=_layer_count(weights, decoder),
        encoder_ffn_dim=int(encoder_ffn),
        decoder_ffn_dim=int(decoder_ffn),
        encoder_n_points=encoder_points // per_head,
        decoder_n_points=decoder_points // per_head,
        num_denoising=release.num_denoising if release else DinoDetrConfig.num_denoising,
        **labels,
    )


def build_dino(plan: ConversionPlan, source: Source) -> torch.nn.Module:
    config = build_dino_config(plan.config, source.detection_state_dict, plan.detection_release)
    weights = convert_official_dino_state_dict(
        {"backbone." + k: v for k, v in source.backbone_state_dict.items()} | source.detection_state_dict
    )
    return materialise(DinoDetrForObjectDetection, config, weights, "DINO")


def build_model(plan: ConversionPlan, source: Source) -> torch.nn.Module:
    """The converted model with the source weights, after a strict key/shape check."""
    family = family_of(plan.config)
    if plan.task == "classification":
        model_class = family.classification_class
        return materialise(model_class, plan.config, convert_classification_weights(source), model_class.__name__)
    if plan.task == "backbone":
        model_class = family.backbone_class
        return materialise(model_class, plan.config, convert_backbone_weights(source), model_class.__name__)
    if plan.task == "mask2former":
        return build_mask2former(plan, source)
    if plan.task == "dino":
        return build_dino(plan, source)
    upernet_config = build_upernet_config(plan.config, source.head_state_dict)
    upernet_config.update(segmentation_label_names(plan, upernet_config.num_labels))
    return materialise(UperNetForSemanticSegmentation, upernet_config, convert_upernet_weights(source), "UperNet")


def verify_converted(directory: Path, plan: ConversionPlan, source: Source, verify_size: int | None = None) -> float:
    """Reload `directory` and compare its outputs with a model loaded from the source by another route.

    The reference loads the source weights in official hub names through the model's own `from_pretrained`
    key mapping (Transformers' renaming machinery), independent of the ``re.sub`` conversion used for writing.
    Returns the largest absolute difference of logits (classification, UperNet; Mask2Former: class and mask
    logits) or feature maps (backbone).
    """
    size = verify_size or min(plan.image_size, 224)
    size = max(32, size - size % 32)  # the H/G head needs multiples of 32
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, plan.config.num_channels, size, size, generator=generator)
    hub_weights = official_to_hub_names(
        source.backbone_state_dict if plan.task != "classification" else source.state_dict
    )
    family = family_of(plan.config)
    with torch.no_grad():
        if plan.task == "classification":
            converted = family.classification_class.from_pretrained(directory).eval()
            reference = _reference(family.classification_class, plan.config, hub_weights)
            return (converted(pixel_values).logits - reference(pixel_values).logits).abs().max().item()
        if plan.task == "backbone":
            converted = family.backbone_class.from_pretrained(directory).eval()
            reference = _reference(family.backbone_class, plan.config, hub_weights)
            pairs = zip(converted(pixel_values).feature_maps, reference(pixel_values).feature_maps, strict=True)
            return max((a - b).abs().max().item() for a, b in pairs)
        backbone = _reference(family.backbone_class, plan.config, hub_weights)
        if plan.task == "dino":
            return _verify_dino(directory, source, backbone, generator)
        if plan.task == "mask2former":
            converted = Mask2FormerForUniversalSegmentation.from_pretrained(directory).eval()
            weights = {"model.pixel_level_module.encoder." + k: v for k, v in backbone.state_dict().items()}
            weights.update(convert_mask2former_head_state_dict(source.head_state_dict))
            reference = materialise(Mask2FormerForUniversalSegmentation, converted.config, weights, "Mask2Former")
            ours, theirs = converted(pixel_values), reference(pixel_values)
            return max(
                (ours.class_queries_logits - theirs.class_queries_logits).abs().max().item(),
                (ours.masks_queries_logits - theirs.masks_queries_logits).abs().max().item(),
            )
        converted = UperNetForSemanticSegmentation.from_pretrained(directory).eval()
        weights = {"backbone." + k: v for k, v in backbone.state_dict().items()}
        weights.update({convert_mmseg_head_key(k): v for k, v in source.head_state_dict.items()})
        reference = materialise(UperNetForSemanticSegmentation, converted.config, weights, "UperNet")
        return (converted(pixel_values).logits - reference(pixel_values).logits).abs().max().item()


def _verify_dino(directory: Path, source: Source, backbone: torch.nn.Module, generator) -> float:
    """Largest difference of logits and boxes between the written detector and one assembled from the backbone
    loaded by the hub-name route and the head converted from the source."""
    converted = DinoDetrForObjectDetection.from_pretrained(directory).eval()
    weights = {"model.backbone." + k: v for k, v in backbone.state_dict().items()}
    weights |= convert_official_dino_state_dict(source.detection_state_dict)
    reference = materialise(DinoDetrForObjectDetection, converted.config, weights, "DINO")
    channels = converted.config.backbone_config.num_channels
    pixel_values = torch.randn(1, channels, *DINO_VERIFY_SIZE, generator=generator)
    ours, theirs = converted(pixel_values), reference(pixel_values)
    return max(
        (ours.logits - theirs.logits).abs().max().item(), (ours.pred_boxes - theirs.pred_boxes).abs().max().item()
    )


def _reference(model_class, config: InternImageConfig, hub_weights: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """`model_class` loaded from official-hub-named weights via `from_pretrained`'s key mapping (strict)."""
    model, info = model_class.from_pretrained(
        None, config=config, state_dict=dict(hub_weights), output_loading_info=True
    )
    problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        raise ConversionError(f"verification reference did not load cleanly: {problems or info['error_msgs']}")
    return model.eval()


__all__ = ["VERIFY_TOLERANCE", "build_model", "unused_keys", "verify_converted"]
