"""Fine-tuning the DINO detector with an InternImage backbone (`scripts/train_detection.py`).

The model is `DinoDetrForObjectDetection`; its loss takes Transformers-DETR-style `labels`. The run itself (Accelerate,
output_dir ownership and lock, checkpoints, `--resume`, EMA, trackers) is the classification `Trainer`'s;
`DetectionTrainer` overrides its task hooks only. Evaluation is COCO box mAP (faster-coco-eval) of the saved
processor's post-processing, with the detections of all processes gathered and each image counted once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Literal

import torch

from ..models.dino_detr.configuration_dino_detr import DEFAULT_BACKBONE, DinoDetrConfig
from ..models.internimage.configuration_internimage import InternImageConfig
from .arguments import CommonTrainingOptions, _help
from .detection_data import (
    DetectionTransform,
    build_detection_dataloaders,
    coco_ground_truth,
    prepare_detection_data,
    train_scales,
)
from .detection_metrics import coco_box_map, detection_records
from .loop import Trainer
from .models import is_preset, preset_config
from .optimization import build_optimizer
from .run_dir import RESUME_OPTIONS, resume_settings
from .segmentation import saved_model_type

logger = logging.getLogger(__name__)

# The built-in synthetic task (shapes of random colours on noise, 64x64, 3 classes): a tiny InternImage DINO learns
# it on CPU in minutes.
SYNTHETIC_RECIPE = {
    "model": "tiny",
    "image_size": 64,
    "max_size": 107,  # 64 * 1333 / 800, the official aspect-ratio bound
    "learning_rate": 1e-3,
    "weight_decay": 1e-4,
    # A backbone trained from scratch has no pretrained features for the decay to protect.
    "layer_decay": 1.0,
    "num_train_epochs": 12.0,
    "warmup_steps": 50,
    "max_grad_norm": 1.0,
    "per_device_train_batch_size": 8,
    "min_scale": 0.75,
    "max_scale": 1.25,
    "lr_scheduler": "cosine",
    "output_dir": "outputs/detection_synthetic",
}
# Your own data: the official `dino_4scale_internimage_t_1x_coco_layer_wise_lr` recipe (AdamW 1e-4, weight decay
# 1e-4, layer-wise lr decay 0.9 over the 30 backbone blocks, gradient clip 0.1, 500 warmup steps, 12 epochs of 2
# images per device on 8 devices, the lr divided by 10 after epoch 11; shorter side 480..800, longer at most 1333).
DETECTION_RECIPE = {
    "model": "t",
    "image_size": 800,
    "max_size": 1333,
    "learning_rate": 1e-4,
    "weight_decay": 1e-4,
    "layer_decay": 0.9,
    "num_train_epochs": 12.0,
    "warmup_steps": 500,
    "max_grad_norm": 0.1,
    "per_device_train_batch_size": 2,
    "min_scale": 0.6,
    "max_scale": 1.0,
    "lr_scheduler": "step",
}
# A DINO small enough for 64x64 images on CPU: ~0.7M parameters with the `tiny` backbone.
TINY_DINO = {
    "d_model": 64,
    "num_queries": 30,
    "encoder_layers": 1,
    "decoder_layers": 3,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "encoder_n_points": 2,
    "decoder_n_points": 2,
    "neck_norm_groups": 8,
    "num_denoising": 20,
}
# The official optimizer constructor's extra rules for DINO: the level embeddings train at the stem's (lowest) rate,
# the deformable attention's sampling offsets without weight decay.
DINO_OPTIMIZER_RULES = {"stem_name_parts": ("level_embeddings",), "no_decay_name_parts": ("sampling_offsets",)}
DETECTION_RESUME_OPTIONS = (
    *(name for name in RESUME_OPTIONS if name != "label_column"),
    "max_size",
    "min_scale",
    "max_scale",
    "crop_probability",
    "objects_column",
    "coco_train_json",
    "synthetic_train_samples",
)


@dataclass
class DetectionOptions(CommonTrainingOptions):
    """Everything `scripts/train_detection.py` accepts; see `--help` or README "Detection"."""

    model: str | None = _help(
        "Backbone preset (`tiny`, `t`, `s`, `b`, `l`, `xl`, `h`, `g`: random init), a local InternImage directory or "
        "hub id (pretrained backbone, e.g. a converted classification checkpoint; the detector is new), or a "
        "DinoDetrForObjectDetection directory or hub id (whole model, e.g. a converted COCO detector; the class "
        "heads are replaced when the label set differs). Default: `tiny` on the synthetic task, else `t`.",
        default=None,
    )
    dataset: str | None = _help(
        "A `datasets` object-detection dataset (hub id or save_to_disk folder) with an image column and an "
        "`objects` column (`bbox`: COCO x, y, w, h in pixels; `category`). Default (and without --coco_train_json): "
        "a built-in synthetic task (rectangles, ellipses and triangles of random colours on noise; 3 classes).",
        default=None,
    )
    objects_column: str = _help("Objects column of a `datasets` dataset.", default="objects")
    coco_train_json: str | None = _help(
        "COCO detection JSON of the training images (instead of --dataset).", default=None
    )
    coco_train_images: str | None = _help("Folder the training JSON's `file_name`s are relative to.", default=None)
    coco_eval_json: str | None = _help("COCO detection JSON of the evaluation images.", default=None)
    coco_eval_images: str | None = _help("Folder the evaluation JSON's `file_name`s are relative to.", default=None)
    label_names: str | None = _help(
        "Comma-separated class names (index order) of a `datasets` dataset whose category is not a ClassLabel.",
        default=None,
    )
    layer_decay: float | None = _help(
        "Layer-wise lr decay over the backbone blocks (official DINO: 0.9); 1.0 disables. Default: 0.9, or 1.0 on "
        "the synthetic task (random init).",
        default=None,
    )
    image_size: int | None = _help(
        "Shorter side at evaluation (the saved processor's `shortest_edge`). Default: 64 on the synthetic task, "
        "else 800.",
        default=None,
    )
    max_size: int | None = _help(
        "Longer side bound (the processor's `longest_edge`, also at training). Default: 107 / 1333.", default=None
    )
    min_scale: float | None = _help(
        "Training: the shorter side is resized to image_size times one of 8 factors from min_scale to max_scale "
        "(official: 480..800 of 800). Default: 0.75 on the synthetic task, else 0.6.",
        default=None,
    )
    max_scale: float | None = _help("See --min_scale. Default: 1.25 on the synthetic task, else 1.0.", default=None)
    crop_probability: float = _help(
        "Training: probability of a random crop of 60-100%% of each side before the resize (boxes clipped, those "
        "left empty dropped).",
        default=0.5,
    )
    synthetic_train_samples: int = _help("Training images of the synthetic task.", default=512)
    synthetic_eval_samples: int = _help("Evaluation images of the synthetic task.", default=64)
    per_device_eval_batch_size: int = _help("Eval batch size per process.", default=8)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup", "step"] | None = _help(
        "Schedule after the linear warmup; `step` is mmdet's 1x schedule (constant, then 0.1x after 11/12 of the "
        "run). Default: cosine on the synthetic task, else step.",
        default=None,
    )
    output_dir: str | None = _help(
        "Where everything goes. Default: outputs/detection_synthetic on the synthetic task.", default=None
    )
    num_predictions: int = _help(
        "After training on the synthetic task: reload the saved model into pipeline('object-detection') and "
        "print its detections for this many held-out images.",
        default=2,
    )


def uses_synthetic_data(options: DetectionOptions) -> bool:
    return options.dataset is None and options.coco_train_json is None


def resolve_detection_defaults(options: DetectionOptions) -> DetectionOptions:
    """Fill every `None` option from the recipe that fits the data (returns a new object)."""
    synthetic = uses_synthetic_data(options)
    if not synthetic and options.output_dir is None:
        raise ValueError("--output_dir is required when training on your own data")
    recipe = SYNTHETIC_RECIPE if synthetic else DETECTION_RECIPE
    updates = {name: value for name, value in recipe.items() if getattr(options, name) is None}
    if options.max_steps is not None:
        updates.pop("num_train_epochs", None)
    return dataclasses.replace(options, **updates)


def parse_detection_options(argv: list[str] | None = None) -> DetectionOptions:
    """Parse command-line arguments (`argv`, default `sys.argv[1:]`) into resolved `DetectionOptions`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(DetectionOptions, description="Fine-tune the DINO detector with an InternImage backbone.")
    (options,) = parser.parse_args_into_dataclasses(args=argv)
    return resolve_detection_defaults(options)


# ----------------------------------------------------------------------------------------------------------
# Model and processor


def backbone_config_for(options) -> InternImageConfig:
    """The InternImage config of `--model` returning the three stages DINO reads (`stage2`-`stage4`).

    Official presets get the official detector's backbone settings (layer scale 1.0, drop path 0.2); `tiny` keeps
    its own (no layer scale, no drop path: it trains from scratch in minutes); a pretrained directory keeps its
    saved settings (its weights depend on them). `--drop_path_rate` / `--layer_scale` override where they apply.
    """
    out_features = DEFAULT_BACKBONE["out_features"]
    if not is_preset(options.model):
        extra = {"drop_path_rate": options.drop_path_rate} if options.drop_path_rate is not None else {}
        return InternImageConfig.from_pretrained(options.model, out_features=out_features, **extra)
    settings = {"drop_path_rate": options.drop_path_rate, "layer_scale": options.layer_scale}
    if options.model.lower() != "tiny":
        settings = {**DEFAULT_BACKBONE, **{key: value for key, value in settings.items() if value is not None}}
    return preset_config(options.model, **{**settings, "out_features": out_features})


def detector_config(options, labels: dict) -> DinoDetrConfig:
    """A `DinoDetrConfig` around the `--model` backbone for `labels` (the small `TINY_DINO` for `tiny`)."""
    tiny = is_preset(options.model) and options.model.lower() == "tiny"
    return DinoDetrConfig(backbone_config=backbone_config_for(options), **(TINY_DINO if tiny else {}), **labels)


def build_detection_model(options, id2label: dict[int, str], label2id: dict[str, int]):
    """A `DinoDetrForObjectDetection` for the dataset's labels (see `--model`)."""
    from ..models.dino_detr.modeling_dino_detr import DinoDetrForObjectDetection
    from ..models.internimage.modeling_internimage import InternImageBackbone

    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": label2id}
    saved = None if is_preset(options.model) else saved_model_type(options.model)
    if saved == "dino_detr":
        return DinoDetrForObjectDetection.from_pretrained(options.model, ignore_mismatched_sizes=True, **labels)
    model = DinoDetrForObjectDetection(detector_config(options, labels))
    if not is_preset(options.model):
        pretrained = InternImageBackbone.from_pretrained(options.model, out_features=DEFAULT_BACKBONE["out_features"])
        missing, unexpected = model.model.backbone.load_state_dict(pretrained.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"--model {options.model}: the backbone weights do not fit (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        logger.info("backbone weights from %s; the DINO neck, transformer and heads are new", options.model)
    return model


def build_detection_processor(image_size: int, max_size: int):
    """The processor saved with the model: keep-ratio resize to `image_size` (shorter) / `max_size` (longer side),
    ImageNet normalisation, padding to a multiple of 32 (the official test transform at this size)."""
    from ..models.dino_detr.image_processing_dino_detr import DinoDetrImageProcessor

    return DinoDetrImageProcessor(size={"shortest_edge": image_size, "longest_edge": max_size})


# ----------------------------------------------------------------------------------------------------------
# Evaluation across processes


def unique_by_image(per_image: list[tuple[int, list[dict]]]) -> dict[int, list[dict]]:
    """`(image_id, records)` pairs gathered from all processes -> records by image id, each image once.

    Accelerate's even batches repeat the first images on the processes that run short; their predictions are the
    same (identical replicas), so the first occurrence is kept.
    """
    by_image: dict[int, list[dict]] = {}
    for image_id, records in per_image:
        by_image.setdefault(int(image_id), records)
    return by_image


def gather_detections(accelerator, per_image: list[tuple[int, list[dict]]]) -> dict[int, list[dict]]:
    """This process's `(image_id, records)` pairs -> every process's, each image once (see `unique_by_image`)."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        per_image = gather_object(per_image)
    return unique_by_image(per_image)


# ----------------------------------------------------------------------------------------------------------
# Training


class DetectionTrainer(Trainer):
    """`Trainer` for DINO detection: the loop, run dir, checkpoints and resume are the base class's."""

    def _check_requirements(self) -> None:
        import importlib.util

        missing = [name for name in ("torchvision", "faster_coco_eval") if importlib.util.find_spec(name) is None]
        if missing:
            raise RuntimeError(f"detection training needs {', '.join(missing)} (pip install 'internimage_hf[train]')")

    def _prepare_data(self):
        data = prepare_detection_data(self.options)
        self.ground_truth = coco_ground_truth(data.eval, data.label_names)
        return data

    def _resume_settings(self) -> dict:
        return resume_settings(
            self.options, self.accelerator.num_processes, len(self.data.train), self.data.label_names,
            names=DETECTION_RESUME_OPTIONS,
        )  # fmt: skip

    def _build_model(self):
        return build_detection_model(self.options, self.data.id2label, self.data.label2id)

    def _build_image_processor(self):
        return build_detection_processor(self.image_size, self.options.max_size)

    def _make_loaders(self):
        options = self.options
        scales = train_scales(self.image_size, options.min_scale, options.max_scale)
        transform = DetectionTransform(scales, options.max_size, options.crop_probability)
        return build_detection_dataloaders(self.data, options, self.image_processor, transform)

    def _build_optimizer(self, model) -> torch.optim.Optimizer:
        return build_optimizer(model, self.options, **DINO_OPTIMIZER_RULES)

    def _compute_loss(self, batch) -> torch.Tensor:
        with self.accelerator.autocast():
            outputs = self.model(
                pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]
            )
        return outputs.loss

    @torch.no_grad()
    def predict_records(self, model, batch) -> list[tuple[int, list[dict]]]:
        """`(image_id, COCO result records)` per image of `batch`, through the saved processor's post-processing
        (top 100 (query, class) pairs, boxes in original pixels)."""
        with self.accelerator.autocast():
            outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        results = self.image_processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=batch["orig_sizes"]
        )
        image_ids = batch["image_ids"].tolist()
        records = detection_records(results, image_ids, self.data.category_ids)
        return [(image_id, [r for r in records if r["image_id"] == image_id]) for image_id in image_ids]

    @torch.no_grad()
    def _evaluate(self, model) -> dict[str, float]:
        """COCO box AP/AR over the whole eval set (all processes, each image once)."""
        was_training = model.training
        model.eval()
        per_image = []
        for batch in self.eval_loader:
            per_image.extend(self.predict_records(model, batch))
        model.train(was_training)
        by_image = gather_detections(self.accelerator, per_image)
        expected = {int(image["id"]) for image in self.ground_truth["images"]}
        if set(by_image) != expected:
            raise RuntimeError(f"evaluated {len(by_image)} images, expected the {len(expected)} of the eval set")
        records = [record for image_id in sorted(by_image) for record in by_image[image_id]]
        metrics = coco_box_map(self.ground_truth, records)
        return {**metrics, "images": float(len(by_image))}

    def _push_to_hub(self, output_dir, results: dict) -> None:
        """Detection runs are not uploaded (the model card and remote code are the classifier's)."""


def reload_and_detect(output_dir: str | os.PathLike, images, threshold: float = 0.3) -> list[list[dict]]:
    """Reload the saved detector with `AutoModelForObjectDetection` into `pipeline("object-detection")` and run it on
    `images`: per image, the detections above `threshold` (`score`, `label`, `box`)."""
    from transformers import AutoModelForObjectDetection, pipeline

    model = AutoModelForObjectDetection.from_pretrained(output_dir)
    detector = pipeline("object-detection", model=model, image_processor=str(output_dir))
    return [detector(image, threshold=threshold) for image in images]


def main(argv: list[str] | None = None) -> int:
    """Parse options and fine-tune; the main process prints the final metrics as JSON and, on the synthetic task,
    the reloaded pipeline's detections of a few held-out images."""
    from .cli import run_trainer

    trainer, results = run_trainer(DetectionTrainer, parse_detection_options(argv))
    if trainer is None:
        return 2
    options = trainer.options
    if trainer.accelerator.is_main_process:
        print(
            f"held-out COCO box AP {results['eval_AP']:.3f} (AP50 {results['eval_AP50']:.3f}, AR@100 "
            f"{results['eval_AR_100']:.3f}) on {int(results['eval_images'])} images"
        )
    if trainer.accelerator.is_main_process and uses_synthetic_data(options) and options.num_predictions > 0:
        count = min(options.num_predictions, len(trainer.data.eval))
        pairs = [trainer.data.eval[index] for index in range(count)]
        detections = reload_and_detect(options.output_dir, [image for image, _ in pairs])
        for (_, target), found in zip(pairs, detections, strict=True):
            truth = [trainer.data.label_names[label] for label in target["class_labels"].tolist()]
            found = [(detection["label"], round(detection["score"], 2)) for detection in found]
            print(f"image {target['image_id']}: true {truth}; pipeline {found}")
    return 0
