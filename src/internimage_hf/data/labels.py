"""Class names shipped with the package, the JSON files beside this module (written by `scripts/make_label_files.py`).

Classification (from the synset lists of the `timm` wheel):

- ImageNet-1k: the 1,000 ILSVRC-2012 classes in the standard index order.
- ImageNet-22k: the 21,841 fall11 classes sorted by WordNet id, the order of the official InternImage 22k heads
  (their `meta_data/22k_class_to_idx.json`).

Each name is the WordNet lemma list of the synset, e.g. ``"tench, Tinca tinca"``.

Semantic segmentation (from the dataset metadata, `METAINFO["classes"]`, of mmsegmentation 1.2.2, the reference
implementation the official InternImage segmentation models were trained with), in model-output order:

- ``"ade20k"``: the 150 ADE20K (SceneParsing) classes, index 0 ``"wall"`` (the annotation's "other" is dropped);
- ``"cityscapes"``: the 19 Cityscapes train ids, index 0 ``"road"``;
- ``"coco_stuff"``: the 171 COCO-Stuff 164k classes (80 things then 91 stuff), index 0 ``"person"``.

Object detection (from the dataset metadata of mmdetection 3.3.0, the reference implementation of the official
InternImage DINO detectors): ``"coco"``, the 80 COCO classes in the contiguous order of the detectors' outputs
(index 0 ``"person"``; COCO's own category ids, 1..90 with gaps, are mapped by the evaluation).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

IMAGENET_LABEL_FILES = {1000: "imagenet1k_labels.json", 21841: "imagenet22k_labels.json"}
SEGMENTATION_LABEL_FILES = {
    "ade20k": "ade20k_labels.json",
    "cityscapes": "cityscapes_labels.json",
    "coco_stuff": "coco_stuff_labels.json",
}
DETECTION_LABEL_FILES = {"coco": "coco_labels.json"}


@cache
def _load(file_name: str) -> tuple[str, ...]:
    """Names in class-index order (cached; the 22k file is ~0.8 MB)."""
    text = resources.files(__package__).joinpath(file_name).read_text(encoding="utf-8")
    mapping = json.loads(text)
    return tuple(mapping[str(i)] for i in range(len(mapping)))


def has_imagenet_labels(num_classes: int) -> bool:
    """Whether `num_classes` is an ImageNet head size with shipped names (1000 or 21841)."""
    return num_classes in IMAGENET_LABEL_FILES


def imagenet_id2label(num_classes: int) -> dict[int, str]:
    """`id2label` for an ImageNet-1k (1000) or ImageNet-22k (21841) head."""
    if num_classes not in IMAGENET_LABEL_FILES:
        raise ValueError(f"no ImageNet label names for {num_classes} classes; shipped: {sorted(IMAGENET_LABEL_FILES)}")
    return dict(enumerate(_load(IMAGENET_LABEL_FILES[num_classes])))


def segmentation_id2label(dataset: str) -> dict[int, str]:
    """`id2label` of a segmentation dataset: ``"ade20k"`` (150), ``"cityscapes"`` (19) or ``"coco_stuff"`` (171).

    Args:
        dataset: the dataset name, one of `SEGMENTATION_LABEL_FILES`.

    Returns:
        ``{class index: name}`` in the order of the model's output channels (mmsegmentation's class order).
    """
    return _dataset_id2label(dataset, SEGMENTATION_LABEL_FILES, "segmentation")


def detection_id2label(dataset: str) -> dict[int, str]:
    """`id2label` of a detection dataset: ``"coco"`` (80).

    Args:
        dataset: the dataset name, one of `DETECTION_LABEL_FILES`.

    Returns:
        ``{class index: name}`` in the order of the detector's class outputs (mmdetection's class order).
    """
    return _dataset_id2label(dataset, DETECTION_LABEL_FILES, "detection")


def _dataset_id2label(dataset: str, files: dict[str, str], task: str) -> dict[int, str]:
    if dataset not in files:
        raise ValueError(f"`dataset` must be one of {sorted(files)} ({task} label names), got {dataset!r}")
    return dict(enumerate(_load(files[dataset])))


__all__ = [
    "DETECTION_LABEL_FILES",
    "IMAGENET_LABEL_FILES",
    "SEGMENTATION_LABEL_FILES",
    "detection_id2label",
    "has_imagenet_labels",
    "imagenet_id2label",
    "segmentation_id2label",
]
