"""Data for object detection: a built-in synthetic task, COCO-format JSON + image folders, `datasets` datasets.

Every source is a sequence of `(image, target)` pairs: an RGB `PIL.Image` and a target dict with `image_id` (int),
`boxes` `(T, 4)` float64 COCO (x, y, w, h) in pixels of that image and `class_labels` `(T,)` int64 class indices
(0..C-1, in `label_names` order). A source also gives `size(i)` and `target(i)` without decoding the image, and
`category_ids` (the COCO id of each class index, for evaluation records).

Annotations are checked when a source is built, so a bad box, an unknown category or a missing image stops the run
before training with a `ValueError` naming the image and annotation. Images without objects are allowed.

Training samples go through a joint image/box augmentation (torchvision.transforms.v2 with `tv_tensors.BoundingBoxes`:
horizontal flip, random crop, random keep-ratio resize; boxes clipped to the image and degenerate ones dropped), under
the per-sample seed `(seed, epoch, index)` as the other tasks, so `--resume` continues exactly. `DinoDetrImageProcessor`
then rescales, normalises and pads the batch and turns the boxes into the model's normalised `labels`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .data import (
    ColumnError,
    EpochPermutationSampler,
    LabelMaps,
    SeededAugmentationDataset,
    find_column,
    seeded_loaders,
    select_named_splits,
)

SYNTHETIC_LABELS = ("rectangle", "ellipse", "triangle")
IMAGE_COLUMN_CANDIDATES = ("image", "img")
# A box may overhang the image by this many pixels (rounding in COCO-style exports); it is clipped to the image.
BOX_TOLERANCE = 1.0


@dataclass
class DetectionData(LabelMaps):
    """Training and evaluation sources and the class names (index order) and COCO category ids they share."""

    train: Any
    eval: Any
    label_names: list[str]
    category_ids: list[int] = field(default_factory=list)
    train_split: str = "train"
    eval_split: str = "validation"

    @property
    def num_train_samples(self) -> int:
        return len(self.train)


def empty_target(image_id: int) -> dict:
    return {"image_id": image_id, "boxes": np.zeros((0, 4)), "class_labels": np.zeros((0,), dtype=np.int64)}


# ----------------------------------------------------------------------------------------------------------
# Annotation checks


def check_box(box, width: int, height: int, where: str) -> np.ndarray:
    """The COCO (x, y, w, h) `box` as float64, clipped to the image; a `ValueError` naming `where` when it is bad.

    Bad: not four finite numbers, a width or height <= 0, or lying outside the `width` x `height` image (by more than
    `BOX_TOLERANCE` pixels).
    """
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"{where}: bbox must be four finite numbers (x, y, w, h), got {box!r}")
    x, y, w, h = values
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: bbox {values.tolist()} has a width or height <= 0")
    tolerance = BOX_TOLERANCE
    if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        raise ValueError(f"{where}: bbox {values.tolist()} (x, y, w, h) lies outside the {width}x{height} image")
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, width), min(y + h, height)
    return np.array([x0, y0, x1 - x0, y1 - y0])


def checked_target(image_id: int, boxes, categories, width: int, height: int, category_index: dict, where) -> dict:
    """A target dict from raw COCO boxes and category ids, each checked (`where(i)` names annotation `i`)."""
    target = empty_target(image_id)
    if len(boxes) != len(categories):
        raise ValueError(f"{where(None)}: {len(boxes)} boxes but {len(categories)} categories")
    checked, labels = [], []
    for index, (box, category) in enumerate(zip(boxes, categories, strict=True)):
        if category not in category_index:
            raise ValueError(
                f"{where(index)}: category {category!r} is not one of the dataset's categories "
                f"{sorted(category_index)[:20]}"
            )
        checked.append(check_box(box, width, height, where(index)))
        labels.append(category_index[category])
    if checked:
        target["boxes"] = np.stack(checked)
        target["class_labels"] = np.asarray(labels, dtype=np.int64)
    return target


# ----------------------------------------------------------------------------------------------------------
# Built-in synthetic task


class SyntheticDetectionShapes:
    """Filled rectangles, ellipses and triangles of random colours on noise; `pairs[i]` is the same every time.

    Each image holds zero to three shapes (about one image in ten has none), boxes are the extent of the pixels
    drawn; classes are `SYNTHETIC_LABELS`, told apart by shape only (the colour is random). Shapes do not overlap, so
    every box is fully visible. `seed` and `split` pick disjoint image sets.
    """

    def __init__(self, num_samples: int, image_size: int = 64, seed: int = 0, split: str = "train") -> None:
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.split_id = {"train": 0, "validation": 1}.get(split, 2)
        self.category_ids = list(range(len(SYNTHETIC_LABELS)))

    def __len__(self) -> int:
        return self.num_samples

    def size(self, index: int) -> tuple[int, int]:
        return self.image_size, self.image_size

    def target(self, index: int) -> dict:
        return self[index][1]

    def __getitem__(self, index: int) -> tuple[PIL.Image.Image, dict]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, self.split_id, index))
        size = self.image_size
        image = rng.integers(0, 256, size=(size, size, 3)).astype(np.float64)
        occupied = np.zeros((size, size), dtype=bool)
        rows, cols = np.mgrid[0:size, 0:size]
        boxes, labels = [], []
        for _ in range(int(rng.choice(4, p=[0.1, 0.3, 0.3, 0.3]))):
            label = int(rng.integers(len(SYNTHETIC_LABELS)))
            inside = self._shape(label, rows, cols, rng)
            if not inside.any() or (inside & occupied).any():
                continue  # keep every shape whole: a hidden part would make its box unlearnable
            occupied |= inside
            image[inside] = rng.uniform(0, 255, size=3) + rng.normal(0, 10, size=(int(inside.sum()), 3))
            ys, xs = np.nonzero(inside)
            boxes.append([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()])
            labels.append(label)
        target = empty_target(index)
        if boxes:
            target["boxes"] = np.asarray(boxes, dtype=np.float64)
            target["class_labels"] = np.asarray(labels, dtype=np.int64)
        return PIL.Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)), target

    def _shape(self, label: int, rows: np.ndarray, cols: np.ndarray, rng) -> np.ndarray:
        """Boolean `(size, size)` mask of one shape of class `label`: random centre, half-width and half-height."""
        size = self.image_size
        half_h, half_w = rng.uniform(0.08, 0.22, size=2) * size
        centre_y = rng.uniform(half_h, size - half_h)
        centre_x = rng.uniform(half_w, size - half_w)
        dy, dx = (rows + 0.5 - centre_y) / half_h, (cols + 0.5 - centre_x) / half_w
        if label == 0:
            return (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
        if label == 1:
            return dy**2 + dx**2 <= 1
        # Upward triangle: apex at the top, base at the bottom.
        return (np.abs(dy) <= 1) & (np.abs(dx) <= (dy + 1) / 2)


# ----------------------------------------------------------------------------------------------------------
# COCO JSON + image folder


class CocoDetectionSource:
    """Images and boxes of a COCO detection JSON (`images`, `annotations`, `categories`) and its image folder.

    Crowd annotations (`iscrowd: 1`) are not trained on (as DETR); COCO evaluation still ignores detections on them.
    """

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike) -> None:
        self.annotation_file = str(annotation_file)
        self.image_dir = Path(image_dir)
        with open(annotation_file, encoding="utf-8") as handle:
            coco = json.load(handle)
        self.coco = coco
        categories = sorted(coco.get("categories", []), key=lambda category: category["id"])
        if not categories:
            raise ValueError(f"{annotation_file}: no `categories`")
        self.category_ids = [int(category["id"]) for category in categories]
        self.label_names = [str(category.get("name", category["id"])) for category in categories]
        self.images = list(coco.get("images", []))
        self._targets = self._check(coco)

    def _check(self, coco: dict) -> list[dict]:
        """Every image's checked target; `ValueError` naming the first bad image or annotation."""
        source = self.annotation_file
        category_index = {category_id: index for index, category_id in enumerate(self.category_ids)}
        by_id: dict[int, dict] = {}
        for image in self.images:
            missing = [key for key in ("id", "file_name", "width", "height") if key not in image]
            if missing:
                raise ValueError(f"{source}: an entry of `images` lacks {missing}: {image}")
            if image["id"] in by_id:
                raise ValueError(f"{source}: image id {image['id']} appears twice in `images`")
            path = self.image_dir / image["file_name"]
            if not path.is_file():
                raise ValueError(f"{source}: image {image['id']} ({image['file_name']}): file {path} not found")
            by_id[image["id"]] = image
        grouped: dict[int, list[dict]] = {image_id: [] for image_id in by_id}
        for annotation in coco.get("annotations", []):
            if annotation.get("image_id") not in by_id:
                raise ValueError(
                    f"{source}: annotation {annotation.get('id')} refers to image_id {annotation.get('image_id')!r}, "
                    "which is not in `images`"
                )
            if not annotation.get("iscrowd", 0):
                grouped[annotation["image_id"]].append(annotation)
        targets = []
        for image in self.images:
            annotations = grouped[image["id"]]

            def where(index, image=image, annotations=annotations):
                name = f"{source}: image {image['id']} ({image['file_name']})"
                return name if index is None else f"{name}, annotation {annotations[index].get('id')}"

            boxes = [annotation.get("bbox") for annotation in annotations]
            categories = [annotation.get("category_id") for annotation in annotations]
            targets.append(
                checked_target(
                    int(image["id"]),
                    boxes,
                    categories,
                    int(image["width"]),
                    int(image["height"]),
                    category_index,
                    where,
                )  # fmt: skip
            )
        return targets

    def __len__(self) -> int:
        return len(self.images)

    def size(self, index: int) -> tuple[int, int]:
        return int(self.images[index]["height"]), int(self.images[index]["width"])

    def target(self, index: int) -> dict:
        return self._targets[index]

    def __getitem__(self, index: int) -> tuple[PIL.Image.Image, dict]:
        image = self.images[index]
        with PIL.Image.open(self.image_dir / image["file_name"]) as raw:
            pixels = raw.convert("RGB")
        if (pixels.height, pixels.width) != self.size(index):
            raise ValueError(
                f"{self.annotation_file}: image {image['id']} ({image['file_name']}) is {pixels.width}x"
                f"{pixels.height} but the JSON says {image['width']}x{image['height']}"
            )
        return pixels, self._targets[index]

    def ground_truth(self) -> dict:
        """The JSON for COCO evaluation (crowd annotations included: detections on them are ignored), with the
        `area` (box area) and `iscrowd` (0) that COCOeval needs filled in where an annotation lacks them."""
        annotations = [
            {"area": annotation["bbox"][2] * annotation["bbox"][3], "iscrowd": 0, **annotation}
            for annotation in self.coco.get("annotations", [])
        ]
        return {**self.coco, "annotations": annotations}


# ----------------------------------------------------------------------------------------------------------
# `datasets` object-detection datasets


class DatasetObjectsSource:
    """Rows of a `datasets.Dataset` with an image column and an `objects` column holding `bbox` (COCO x, y, w, h in
    pixels) and `category` (class indices, a `ClassLabel` sequence or plain ints) per object, as the Hub's detection
    datasets (cppe-5, ...). The image id is the row's `image_id` column if there is one, else the row index.
    """

    def __init__(self, dataset, image_column: str, objects_column: str, label_names: list[str], split: str) -> None:
        from datasets import Image

        self.dataset = dataset
        self.image_column = image_column
        self.objects_column = objects_column
        self.category_ids = list(range(len(label_names)))
        self.split = split
        # Sizes from the image headers (PIL reads no pixels to tell the size) unless width/height columns exist.
        columns = dataset.column_names
        if "width" in columns and "height" in columns:
            self.sizes = [(int(h), int(w)) for h, w in zip(dataset["height"], dataset["width"], strict=True)]
        else:
            raw = dataset.cast_column(image_column, Image(decode=False))[image_column]
            self.sizes = [_header_size(cell) for cell in raw]
        ids = dataset["image_id"] if "image_id" in columns else range(len(dataset))
        self.image_ids = [int(image_id) for image_id in ids]
        if len(set(self.image_ids)) != len(self.image_ids):
            raise ValueError(f"split {split!r}: the image_id column repeats ids; each image needs its own")
        self._targets = [self._check(index, row) for index, row in enumerate(dataset[objects_column])]

    def _check(self, index: int, objects: dict) -> dict:
        height, width = self.sizes[index]

        def where(position):
            name = f"split {self.split!r}, row {index} (image_id {self.image_ids[index]})"
            return name if position is None else f"{name}, object {position}"

        category_index = {category: category for category in self.category_ids}
        return checked_target(
            self.image_ids[index], objects["bbox"], objects["category"], width, height, category_index, where
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def size(self, index: int) -> tuple[int, int]:
        return self.sizes[index]

    def target(self, index: int) -> dict:
        return self._targets[index]

    def __getitem__(self, index: int) -> tuple[PIL.Image.Image, dict]:
        value = self.dataset[int(index)][self.image_column]
        image = value if isinstance(value, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(value))
        return image.convert("RGB"), self._targets[index]


def _header_size(cell) -> tuple[int, int]:
    """(height, width) of an undecoded `datasets` image cell."""
    import io

    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
    with PIL.Image.open(source) as image:
        return image.height, image.width


def category_names(dataset, objects_column: str) -> list[str] | None:
    """Class names of a `ClassLabel` `category` feature inside `objects`, else None."""
    feature = dataset.features.get(objects_column)
    inner = feature.get("category") if isinstance(feature, dict) else getattr(feature, "feature", {}).get("category")
    inner = getattr(inner, "feature", inner)  # Sequence(ClassLabel) or [ClassLabel]
    if isinstance(inner, list):
        inner = inner[0]
    return list(inner.names) if hasattr(inner, "names") else None


def load_detection_dataset(name: str, config: str | None = None):
    """A `DatasetDict` from `save_to_disk` output or a hub dataset."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if os.path.isdir(name) and any((Path(name) / f).is_file() for f in ("dataset_dict.json", "dataset_info.json")):
        loaded = load_from_disk(name)
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    return load_dataset(name, config)


# ----------------------------------------------------------------------------------------------------------
# Choosing the data


def coco_ground_truth(source, label_names: list[str]) -> dict:
    """A COCO detection dict of `source` (original pixels) for `coco_box_map`."""
    if hasattr(source, "ground_truth"):
        return source.ground_truth()
    images, annotations = [], []
    for index in range(len(source)):
        height, width = source.size(index)
        target = source.target(index)
        images.append({"id": int(target["image_id"]), "width": width, "height": height})
        for box, label in zip(target["boxes"].tolist(), target["class_labels"].tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(target["image_id"]),
                    "category_id": int(source.category_ids[label]),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": int(i), "name": name} for i, name in zip(source.category_ids, label_names, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def prepare_detection_data(options) -> DetectionData:
    """The data `options` give: COCO JSON files, a `datasets` dataset, or (neither) the synthetic task."""
    if options.coco_train_json is not None:
        return _coco_data(options)
    if options.dataset is None:
        size = options.image_size
        train = SyntheticDetectionShapes(options.synthetic_train_samples, size, options.seed, "train")
        evaluation = SyntheticDetectionShapes(options.synthetic_eval_samples, size, options.seed, "validation")
        return DetectionData(train, evaluation, list(SYNTHETIC_LABELS), train.category_ids)
    raw = load_detection_dataset(options.dataset, options.dataset_config)
    train_set, eval_set, eval_split = select_named_splits(
        raw, options.train_split, options.eval_split, options.eval_fraction, options.seed
    )
    image_column = find_column(train_set, options.image_column, IMAGE_COLUMN_CANDIDATES, "image", "--image_column")
    objects = options.objects_column
    if objects not in train_set.column_names:
        raise ColumnError(f"--objects_column {objects!r} is not a column; the columns are {train_set.column_names}")
    if options.max_train_samples is not None:
        train_set = train_set.select(range(min(options.max_train_samples, len(train_set))))
    if options.max_eval_samples is not None:
        eval_set = eval_set.select(range(min(options.max_eval_samples, len(eval_set))))
    names = _dataset_label_names(options, train_set, objects)
    train = DatasetObjectsSource(train_set, image_column, objects, names, options.train_split)
    evaluation = DatasetObjectsSource(eval_set, image_column, objects, names, eval_split)
    return DetectionData(train, evaluation, names, train.category_ids, options.train_split, eval_split)


def _dataset_label_names(options, train_set, objects_column: str) -> list[str]:
    if options.label_names:
        return [name.strip() for name in options.label_names.split(",")]
    names = category_names(train_set, objects_column)
    if names is not None:
        return names
    largest = max((max(row["category"], default=-1) for row in train_set[objects_column]), default=-1)
    if largest < 0:
        raise ValueError("the training split has no objects; pass --label_names")
    return [str(index) for index in range(largest + 1)]


def _coco_data(options) -> DetectionData:
    if options.coco_eval_json is None:
        raise ValueError("--coco_train_json needs --coco_eval_json (and the image folders of both)")
    train = CocoDetectionSource(options.coco_train_json, options.coco_train_images or ".")
    evaluation = CocoDetectionSource(options.coco_eval_json, options.coco_eval_images or ".")
    if evaluation.category_ids != train.category_ids:
        raise ValueError(
            f"{options.coco_eval_json} has categories {evaluation.category_ids[:10]}, "
            f"{options.coco_train_json} {train.category_ids[:10]}: both must list the same ids"
        )
    return DetectionData(train, evaluation, train.label_names, train.category_ids)


# ----------------------------------------------------------------------------------------------------------
# Joint augmentation


@dataclass
class DetectionTransform:
    """Training geometry for an image and its boxes; returns `(uint8 (3, H', W') tensor, target)` with `boxes`
    `(T', 4)` as (x0, y0, x1, y1) pixels of the output and `class_labels` `(T',)`.

    Steps: horizontal flip (p 0.5); with `crop_probability`, a random crop of `U(min_crop, 1)` of each side; a
    keep-ratio resize of the shorter side to one of `scales` (the longer side at most `max_size`); boxes clipped to
    the crop, and those left thinner than one pixel dropped with their labels (`v2.SanitizeBoundingBoxes`). Random
    draws come from torch's global generator (seeded per sample by the caller).
    """

    scales: tuple[int, ...]
    max_size: int
    crop_probability: float = 0.5
    min_crop: float = 0.6

    def __post_init__(self) -> None:
        from torchvision.transforms import v2

        self.flip = v2.RandomHorizontalFlip()
        self.resize = v2.RandomShortestSize(min_size=list(self.scales), max_size=self.max_size, antialias=True)
        self.clean = v2.Compose([v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)])

    def __call__(self, image: PIL.Image.Image, target: dict) -> tuple[torch.Tensor, dict]:
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        pixels = tv_tensors.Image(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))
        boxes = tv_tensors.BoundingBoxes(
            torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4), format="XYWH",
            canvas_size=tuple(pixels.shape[-2:]),
        )  # fmt: skip
        boxes = v2.functional.convert_bounding_box_format(boxes, new_format="XYXY")
        sample = {"boxes": boxes, "labels": torch.as_tensor(target["class_labels"], dtype=torch.long)}
        pixels, sample = self.flip(pixels, sample)
        if float(torch.rand(())) < self.crop_probability:
            pixels, sample = self._random_crop(pixels, sample)
        pixels, sample = self.clean(*self.resize(pixels, sample))
        out = {"image_id": target["image_id"], "boxes": sample["boxes"].as_subclass(torch.Tensor)}
        out["class_labels"] = sample["labels"]
        return pixels.as_subclass(torch.Tensor), out

    def _random_crop(self, pixels, sample):
        from torchvision.transforms import v2

        height, width = pixels.shape[-2:]
        crop_h = max(1, round(height * float(torch.empty(()).uniform_(self.min_crop, 1.0))))
        crop_w = max(1, round(width * float(torch.empty(()).uniform_(self.min_crop, 1.0))))
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return v2.functional.crop(pixels, top, left, crop_h, crop_w), {
            "boxes": v2.functional.crop(sample["boxes"], top, left, crop_h, crop_w),
            "labels": sample["labels"],
        }


def train_scales(image_size: int, min_scale: float, max_scale: float, count: int = 8) -> tuple[int, ...]:
    """`count` shorter-side sizes from `image_size * min_scale` to `image_size * max_scale`, multiples of 8 where the
    range allows (as mmdet's 480..800 step 32)."""
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"need 0 < --min_scale <= --max_scale, got {min_scale} and {max_scale}")
    sizes = np.linspace(image_size * min_scale, image_size * max_scale, count)
    return tuple(sorted({max(8, int(math.floor(size / 8 + 0.5)) * 8) for size in sizes}))


# ----------------------------------------------------------------------------------------------------------
# Datasets, collation and loaders


class DetectionDataset(SeededAugmentationDataset):
    """Yields `{"image", "target", "orig_size"}`: the augmented (train) or original (eval) image and target."""

    def __getitem__(self, index: int) -> dict:
        image, target = self.rows[int(index)]
        orig_size = (image.height, image.width)
        if self.transform is None:
            pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
            return {"image": pixels, "target": target, "orig_size": orig_size}
        pixels, target = self.augment(index, image, target)
        return {"image": pixels, "target": target, "orig_size": orig_size}


def coco_annotation(target: dict, box_format: str) -> dict:
    """The target as the COCO annotation `DinoDetrImageProcessor` takes (`category_id` = class index)."""
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float64).reshape(-1, 4)
    if box_format == "xyxy":
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
    annotations = [
        {"bbox": box, "category_id": int(label), "area": box[2] * box[3], "iscrowd": 0}
        for box, label in zip(boxes.tolist(), torch.as_tensor(target["class_labels"]).tolist(), strict=True)
    ]
    return {"image_id": int(target["image_id"]), "annotations": annotations}


class DetectionCollator:
    """A batch for the detector through `DinoDetrImageProcessor`: `pixel_values` `(N, 3, H, W)` (normalised, padded
    to a multiple of 32), `pixel_mask` `(N, H, W)`, `labels` (per image `class_labels` `(T,)` and `boxes` `(T, 4)`
    normalised cx, cy, w, h), `image_ids` `(N,)` and `orig_sizes` `(N, 2)` (height, width before any resize).

    Training images come already resized by `DetectionTransform` (xyxy boxes); evaluation images are resized by the
    processor, exactly as `pipeline("object-detection")` does with the saved processor.
    """

    def __init__(self, image_processor, train: bool) -> None:
        self.image_processor = image_processor
        self.train = train

    def __call__(self, examples: list[dict]) -> dict:
        box_format = "xyxy" if self.train else "xywh"
        annotations = [coco_annotation(example["target"], box_format) for example in examples]
        encoded = self.image_processor(
            images=[example["image"] for example in examples], annotations=annotations, do_resize=not self.train,
            return_tensors="pt",
        )  # fmt: skip
        labels = [{"class_labels": item["class_labels"], "boxes": item["boxes"].float()} for item in encoded["labels"]]
        return {
            "pixel_values": encoded["pixel_values"],
            "pixel_mask": encoded["pixel_mask"],
            "labels": labels,
            "image_ids": torch.tensor([int(example["target"]["image_id"]) for example in examples]),
            "orig_sizes": torch.tensor([list(example["orig_size"]) for example in examples]),
        }


def build_detection_dataloaders(data: DetectionData, options, image_processor, train_transform):
    """Train and eval loaders plus the training dataset and sampler (whose epoch the loop sets)."""
    train_set = DetectionDataset(data.train, train_transform, options.seed, data.train_split)
    eval_set = DetectionDataset(data.eval, None, options.seed, data.eval_split)
    sampler = EpochPermutationSampler(len(train_set), options.seed)
    train_loader, _ = seeded_loaders(train_set, eval_set, sampler, DetectionCollator(image_processor, True), options)
    _, eval_loader = seeded_loaders(train_set, eval_set, sampler, DetectionCollator(image_processor, False), options)
    return train_loader, eval_loader, train_set, sampler
