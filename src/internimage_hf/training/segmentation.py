"""Fine-tuning semantic segmentation with an InternImage backbone (`scripts/train_segmentation.py`).

The head is Transformers' `UperNetForSemanticSegmentation` (the official InternImage segmentation head) or
`Mask2FormerForUniversalSegmentation`, built with `backbone_config=InternImageConfig(...)`. The run itself
(Accelerate, output_dir ownership and lock, checkpoints, `--resume`, EMA, trackers) is the classification
`Trainer`'s; `SegmentationTrainer` overrides its task hooks only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from ..models.internimage.configuration_internimage import InternImageConfig
from .arguments import CommonTrainingOptions, _help
from .loop import Trainer
from .models import is_preset, preset_config
from .run_dir import RESUME_OPTIONS, resume_settings
from .segmentation_data import (
    IGNORE_INDEX,
    JointTransform,
    build_segmentation_dataloaders,
    prepare_segmentation_data,
)
from .segmentation_metrics import confusion_matrix, segmentation_metrics

logger = logging.getLogger(__name__)

ARCHITECTURES = ("upernet", "mask2former")
BACKBONE_OUT_INDICES = [1, 2, 3, 4]  # the four stage outputs, as the official UperNet/Mask2Former configs use
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# The built-in synthetic task (coloured shapes on noise, 64x64): a tiny InternImage learns it on CPU in minutes.
SYNTHETIC_RECIPE = {
    "model": "tiny",
    "image_size": 64,
    "learning_rate": 2e-3,
    "weight_decay": 0.01,
    "num_train_epochs": 4.0,
    "warmup_steps": 20,
    "max_grad_norm": 1.0,
    "per_device_train_batch_size": 8,
    "min_scale": 0.75,
    "max_scale": 1.5,
    "output_dir": "outputs/segmentation_synthetic",
}
# Your own data: the usual mmseg UperNet schedule (AdamW 6e-5, 1,500 warmup steps then linear (poly 1.0) decay,
# 160k steps of 2 images per device on 8 devices, 512x512 crops, scale 0.5-2.0).
SEGMENTATION_RECIPE = {
    "model": "t",
    "image_size": 512,
    "learning_rate": 6e-5,
    "weight_decay": 0.05,
    "max_steps": 160_000,
    "warmup_steps": 1500,
    "max_grad_norm": 0.0,
    "per_device_train_batch_size": 2,
    "min_scale": 0.5,
    "max_scale": 2.0,
}
# Head sizes: the official InternImage heads, and a small head for the `tiny` backbone.
HEAD_CHANNELS = {"upernet": 512, "mask2former": 256}
TINY_HEAD_CHANNELS = 64
TINY_MASK2FORMER = {
    "num_queries": 16,
    "encoder_layers": 1,
    "decoder_layers": 3,
    "encoder_feedforward_dim": 128,
    "dim_feedforward": 128,
    "num_attention_heads": 4,
    "train_num_points": 2048,  # points sampled per mask for the mask losses (12544 by default, for 512+ crops)
}
SEGMENTATION_RESUME_OPTIONS = (
    *(name for name in RESUME_OPTIONS if name != "label_column"),
    "architecture",
    "head_channels",
    "annotation_column",
    "reduce_labels",
    "synthetic_train_samples",
)


@dataclass
class SegmentationOptions(CommonTrainingOptions):
    """Everything `scripts/train_segmentation.py` accepts; see `--help` or README "Fine-tuning segmentation"."""

    model: str | None = _help(
        "Backbone preset (`tiny`, `t`, `s`, `b`, `l`, `xl`, `h`, `g`: random init), a local InternImage directory "
        "or hub id (pretrained backbone, e.g. a converted classification checkpoint; the head is new), or a local "
        "UperNet/Mask2Former directory with an InternImage backbone (whole model; the classifier is replaced when "
        "the label set differs). Default: `tiny` on the synthetic task, else `t`.",
        default=None,
    )
    architecture: Literal["upernet", "mask2former"] = _help(
        "Segmentation head: `upernet` (UperNetForSemanticSegmentation, decode + auxiliary head) or `mask2former` "
        "(Mask2FormerForUniversalSegmentation, trained and evaluated on semantic masks).",
        default="upernet",
    )
    head_channels: int | None = _help(
        "Head width (UperNet hidden_size, Mask2Former hidden_dim). Default: 512 (UperNet) / 256 (Mask2Former) as "
        "in the official heads, 64 for the `tiny` backbone.",
        default=None,
    )
    dataset: str | None = _help(
        "A local folder with images/ and masks/ (same file stems; masks are PNGs of class indices, 255 = ignore), "
        "or one such folder per split (train/, validation/), or a `datasets` hub name with image and annotation "
        "columns. Default: a built-in synthetic task (coloured squares, discs and triangles on noise; 4 classes).",
        default=None,
    )
    annotation_column: str | None = _help(
        "Mask column of a `datasets` dataset. Default: `annotation`, `label`, `segmentation` or `mask`.", default=None
    )
    label_names: str | None = _help("Comma-separated class names (index order).", default=None)
    num_labels: int | None = _help(
        "Number of classes. Default: the length of --label_names, else 1 + the largest index in the training masks.",
        default=None,
    )
    reduce_labels: bool = _help(
        "Masks use 0 for 'unlabelled' (ADE20K): 0 becomes the ignore index 255 and every other class moves down "
        "by one.",
        default=False,
    )
    image_size: int | None = _help(
        "Square training crop and evaluation size. Default: 64 on the synthetic task, else 512.", default=None
    )
    min_scale: float | None = _help(
        "Training: the shorter side is resized to image_size times a random factor in [min_scale, max_scale] "
        "before the random crop. Default: 0.75 on the synthetic task, else 0.5.",
        default=None,
    )
    max_scale: float | None = _help("See --min_scale. Default: 1.5 on the synthetic task, else 2.0.", default=None)
    synthetic_train_samples: int = _help("Training images of the synthetic task.", default=256)
    synthetic_eval_samples: int = _help("Evaluation images of the synthetic task.", default=64)
    per_device_eval_batch_size: int = _help("Eval batch size per process.", default=16)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = _help(
        "Schedule after the linear warmup (linear is mmseg's poly schedule with power 1).", default="linear"
    )
    output_dir: str | None = _help(
        "Where everything goes. Default: outputs/segmentation_synthetic on the synthetic task.", default=None
    )


def uses_synthetic_data(options: SegmentationOptions) -> bool:
    return options.dataset is None


def resolve_segmentation_defaults(options: SegmentationOptions) -> SegmentationOptions:
    """Fill every `None` option from the recipe that fits the data (returns a new object)."""
    synthetic = uses_synthetic_data(options)
    if not synthetic and options.output_dir is None:
        raise ValueError("--output_dir is required when training on your own --dataset")
    recipe = SYNTHETIC_RECIPE if synthetic else SEGMENTATION_RECIPE
    updates = {name: value for name, value in recipe.items() if getattr(options, name) is None}
    if options.num_train_epochs is not None:
        updates.pop("max_steps", None)  # a length in epochs replaces the recipe's length in steps
    options = dataclasses.replace(options, **updates)
    if options.architecture == "upernet" and options.per_device_train_batch_size < 2:
        raise ValueError(
            "--per_device_train_batch_size must be at least 2 for UperNet: its pooling branch batch-normalises "
            "1x1 maps, which needs more than one image"
        )
    if options.head_channels is None:
        tiny = is_preset(options.model) and options.model.lower() == "tiny"
        options = dataclasses.replace(
            options, head_channels=TINY_HEAD_CHANNELS if tiny else HEAD_CHANNELS[options.architecture]
        )
    return options


def parse_segmentation_options(argv: list[str] | None = None) -> SegmentationOptions:
    """Parse command-line arguments (`argv`, default `sys.argv[1:]`) into resolved `SegmentationOptions`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        SegmentationOptions, description="Fine-tune UperNet or Mask2Former with an InternImage backbone."
    )
    (options,) = parser.parse_args_into_dataclasses(args=argv)
    return resolve_segmentation_defaults(options)


# ----------------------------------------------------------------------------------------------------------
# Model


def backbone_config_for(options) -> InternImageConfig:
    """The InternImage config of `--model` (a preset, or a pretrained directory/hub id) emitting all four stages."""
    overrides = {"drop_path_rate": options.drop_path_rate, "out_indices": BACKBONE_OUT_INDICES}
    if is_preset(options.model):
        return preset_config(options.model, layer_scale=options.layer_scale, image_size=options.image_size, **overrides)
    overrides = {key: value for key, value in overrides.items() if value is not None}
    return InternImageConfig.from_pretrained(options.model, **overrides)


def head_config(architecture: str, backbone_config: InternImageConfig, channels: int, labels: dict, small: bool):
    """`UperNetConfig` or `Mask2FormerConfig` around `backbone_config` with `channels`-wide layers."""
    from transformers import Mask2FormerConfig, UperNetConfig

    if architecture == "upernet":
        return UperNetConfig(
            backbone_config=backbone_config, hidden_size=channels, auxiliary_channels=channels // 2,
            use_auxiliary_head=True, loss_ignore_index=IGNORE_INDEX, **labels,
        )  # fmt: skip
    sizes = {"hidden_dim": channels, "mask_feature_size": channels, "feature_size": channels}
    return Mask2FormerConfig(
        backbone_config=backbone_config, ignore_value=IGNORE_INDEX, **sizes, **(TINY_MASK2FORMER if small else {}),
        **labels,
    )  # fmt: skip


def model_class(architecture: str):
    from transformers import Mask2FormerForUniversalSegmentation, UperNetForSemanticSegmentation

    if architecture not in ARCHITECTURES:
        raise ValueError(f"--architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    return UperNetForSemanticSegmentation if architecture == "upernet" else Mask2FormerForUniversalSegmentation


def backbone_of(model) -> torch.nn.Module:
    """The InternImage backbone inside a UperNet or Mask2Former model."""
    if hasattr(model, "backbone"):
        return model.backbone
    return model.model.pixel_level_module.encoder


def saved_model_type(path: str) -> str | None:
    """`model_type` of a local directory's config.json (None for presets, hub ids and directories without one)."""
    import os

    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        return None
    with open(config_file, encoding="utf-8") as handle:
        return json.load(handle).get("model_type")


def build_segmentation_model(options, id2label: dict[int, str], label2id: dict[str, int]):
    """A UperNet or Mask2Former model with an InternImage backbone for the dataset's labels (see `--model`)."""
    from ..models.internimage.modeling_internimage import InternImageBackbone

    cls = model_class(options.architecture)
    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": label2id}
    saved = None if is_preset(options.model) else saved_model_type(options.model)
    if saved in ARCHITECTURES:
        if saved != options.architecture:
            raise ValueError(f"--model {options.model} is a {saved} model but --architecture is {options.architecture}")
        return cls.from_pretrained(options.model, ignore_mismatched_sizes=True, **labels)
    backbone_config = backbone_config_for(options)
    small = is_preset(options.model) and options.model.lower() == "tiny"
    model = cls(head_config(options.architecture, backbone_config, options.head_channels, labels, small))
    if not is_preset(options.model):
        pretrained = InternImageBackbone.from_pretrained(options.model, out_indices=BACKBONE_OUT_INDICES)
        missing, unexpected = backbone_of(model).load_state_dict(pretrained.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"--model {options.model}: the backbone weights do not fit (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        logger.info("backbone weights from %s; the %s head is newly initialised", options.model, options.architecture)
    return model


def build_segmentation_processor(architecture: str, image_size: int, reduce_labels: bool):
    """The image processor saved with the model: resize to `image_size` squared, ImageNet normalisation.

    UperNet gets `InternImageImageProcessor(Pil)`, Mask2Former `Mask2FormerImageProcessorPil`; both give
    `post_process_semantic_segmentation`, so `pipeline("image-segmentation")` works on the saved directory.
    """
    import PIL.Image

    size = {"height": image_size, "width": image_size}
    if architecture == "mask2former":
        return mask2former_processor_class()(
            size=size, ignore_index=IGNORE_INDEX, do_reduce_labels=reduce_labels, resample=PIL.Image.BILINEAR
        )
    from ..models.internimage.image_processing_internimage import InternImageImageProcessor
    from ..models.internimage.image_processing_pil_internimage import InternImageImageProcessorPil
    from .data import has_torchvision

    cls = InternImageImageProcessor if has_torchvision() else InternImageImageProcessorPil
    return cls(size=size, do_center_crop=False, resample=PIL.Image.BILINEAR)


def mask2former_processor_class():
    # From its module: Transformers < 5.23 refuses the top-level name without torchvision, which this class
    # does not need.
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    return Mask2FormerImageProcessorPil


def mask2former_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX):
    """Per image, the binary masks `(K, H, W)` and class indices `(K,)` of the K classes its label map holds.

    Args:
        labels: `(N, H, W)` class indices; `ignore_index` pixels belong to no mask (as in Transformers'
            Mask2Former image processor).
    """
    mask_labels, class_labels = [], []
    for label_map in labels:
        classes = label_map.unique()
        classes = classes[classes != ignore_index]
        mask_labels.append((label_map[None] == classes[:, None, None]).float())
        class_labels.append(classes.long())
    return mask_labels, class_labels


# ----------------------------------------------------------------------------------------------------------
# Training


class SegmentationTrainer(Trainer):
    """`Trainer` for semantic segmentation: the loop, run dir, checkpoints and resume are the base class's."""

    def _check_requirements(self) -> None:
        model_class(self.options.architecture)

    def _prepare_data(self):
        return prepare_segmentation_data(self.options)

    def _resume_settings(self) -> dict:
        return resume_settings(
            self.options, self.accelerator.num_processes, len(self.data.train), self.data.label_names,
            names=SEGMENTATION_RESUME_OPTIONS,
        )  # fmt: skip

    def _build_model(self):
        return build_segmentation_model(self.options, self.data.id2label, self.data.label2id)

    def _build_image_processor(self):
        options = self.options
        return build_segmentation_processor(options.architecture, self.image_size, options.reduce_labels)

    def _make_loaders(self):
        options = self.options
        normalisation = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        train_transform = JointTransform(
            self.image_size, **normalisation, train=True, min_scale=options.min_scale, max_scale=options.max_scale
        )
        eval_transform = JointTransform(self.image_size, **normalisation)
        return build_segmentation_dataloaders(self.data, options, train_transform, eval_transform)

    def _compute_loss(self, batch) -> torch.Tensor:
        pixel_values, labels = batch["pixel_values"], batch["labels"]
        with self.accelerator.autocast():
            if self.options.architecture == "mask2former":
                mask_labels, class_labels = mask2former_targets(labels)
                return self.model(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss
            return self.model(pixel_values=pixel_values, labels=labels).loss

    @torch.no_grad()
    def predict_label_maps(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(N, H, W)` predicted classes at the input resolution."""
        size = tuple(pixel_values.shape[-2:])
        with self.accelerator.autocast():
            outputs = model(pixel_values=pixel_values)
        if self.options.architecture == "mask2former":
            # The saved processor's post-processing (what `pipeline` runs): class scores x mask probabilities.
            processor = self.image_processor
            return torch.stack(processor.post_process_semantic_segmentation(outputs, [size] * len(pixel_values)))
        logits = outputs.logits.float()
        if tuple(logits.shape[-2:]) != size:
            logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.argmax(dim=1)

    @torch.no_grad()
    def _evaluate(self, model) -> dict[str, float]:
        """mIoU, per-class IoU, pixel and mean accuracy over the whole eval set (all processes)."""
        was_training = model.training
        model.eval()
        num_labels = len(self.data.label_names)
        confusion = torch.zeros(num_labels, num_labels, dtype=torch.long)
        for batch in self.eval_loader:
            predictions = self.predict_label_maps(model, batch["pixel_values"])
            predictions, labels = self.accelerator.gather_for_metrics((predictions, batch["labels"]))
            confusion += confusion_matrix(predictions.cpu(), labels.cpu(), num_labels, IGNORE_INDEX)
        model.train(was_training)
        return segmentation_metrics(confusion, self.data.label_names)

    def _push_to_hub(self, output_dir, results: dict) -> None:
        """Segmentation runs are not uploaded (the model card and remote code are the classifier's)."""


def main(argv: list[str] | None = None) -> int:
    """Parse options and fine-tune; the main process prints the final metrics as JSON."""
    from .cli import run_trainer

    trainer, _ = run_trainer(SegmentationTrainer, parse_segmentation_options(argv))
    return 0 if trainer is not None else 2
