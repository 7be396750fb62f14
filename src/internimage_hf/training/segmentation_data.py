"""Data for semantic segmentation: a built-in synthetic task, image/mask folders, `datasets` datasets, joint transforms.

Every source is a sequence of `(image, mask)` pairs: an RGB `PIL.Image` and an `(H, W)` int64 array of class
indices in which `ignore_index` (255) marks unlabelled pixels. Geometric augmentations (random scale, crop, flip)
act on both alike; the image is resized bilinearly and the mask by nearest neighbour. As in the classification data,
every training sample is augmented under its own seed `(seed, epoch, index)`, so `--resume` continues exactly.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .data import (
    ColumnError,
    EpochPermutationSampler,
    LabelMaps,
    SeededAugmentationDataset,
    find_column,
    has_torchvision,
    seeded_loaders,
    select_named_splits,
)

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
SYNTHETIC_LABELS = ("background", "square", "disc", "triangle")
# Base colour of each shape class; every shape gets its own jitter around it, the background is uniform noise.
SYNTHETIC_COLOURS = {1: (200, 60, 60), 2: (60, 190, 70), 3: (70, 80, 210)}
ANNOTATION_COLUMN_CANDIDATES = ("annotation", "label", "segmentation", "mask", "semantic_segmentation")
IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FOLDER_IMAGES, FOLDER_MASKS = "images", "masks"


@dataclass
class SegmentationData(LabelMaps):
    """Training and evaluation pairs and the class names they share."""

    train: Any  # a sequence of (PIL image, int64 mask) pairs
    eval: Any
    label_names: list[str]
    train_split: str = "train"
    eval_split: str = "validation"

    @property
    def num_train_samples(self) -> int:
        return len(self.train)


# ----------------------------------------------------------------------------------------------------------
# Built-in synthetic task


class SyntheticShapes:
    """Coloured squares, discs and triangles on noise, drawn on the fly: `pairs[i]` is the same image every time.

    Each image holds one to three shapes of random size and position (later ones on top); the classes are
    `SYNTHETIC_LABELS`. A one-pixel band on each side of every shape edge is `IGNORE_INDEX`, as object boundaries
    are in VOC-style annotations. `seed` and `split` pick disjoint image sets.
    """

    def __init__(self, num_samples: int, image_size: int = 64, seed: int = 0, split: str = "train") -> None:
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.split_id = {"train": 0, "validation": 1}.get(split, 2)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[PIL.Image.Image, np.ndarray]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, self.split_id, index))
        size = self.image_size
        image = rng.integers(0, 256, size=(size, size, 3)).astype(np.float64)
        mask = np.zeros((size, size), dtype=np.int64)
        rows, cols = np.mgrid[0:size, 0:size]
        for _ in range(int(rng.integers(1, 4))):
            label = int(rng.integers(1, len(SYNTHETIC_LABELS)))
            inside = self._shape(label, rows, cols, rng)
            colour = np.asarray(SYNTHETIC_COLOURS[label]) + rng.normal(0, 25, size=3)
            image[inside] = colour + rng.normal(0, 20, size=(int(inside.sum()), 3))
            mask[inside] = label
        mask[_boundary(mask)] = IGNORE_INDEX
        return PIL.Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)), mask

    def _shape(self, label: int, rows: np.ndarray, cols: np.ndarray, rng) -> np.ndarray:
        """Boolean `(size, size)` mask of one shape of class `label` with a random centre and radius."""
        size = self.image_size
        radius = rng.uniform(0.12, 0.25) * size
        centre_row, centre_col = rng.uniform(radius, size - radius, size=2)
        dy, dx = rows - centre_row, cols - centre_col
        if label == 1:
            return (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
        if label == 2:
            return dy**2 + dx**2 <= radius**2
        # Upward triangle: below the apex, above the base, inside the two slanted sides.
        return (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another class."""
    edge = np.zeros(mask.shape, dtype=bool)
    vertical = mask[1:, :] != mask[:-1, :]
    horizontal = mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


# ----------------------------------------------------------------------------------------------------------
# Folders and `datasets`


class DatasetPairs:
    """`(image, mask)` pairs from a `datasets.Dataset` with an image column and an annotation (mask image) column.

    `reduce_labels` (ADE20K's convention) maps label 0 ("other") to `IGNORE_INDEX` and shifts the rest down by one.
    """

    def __init__(self, dataset, image_column: str, annotation_column: str, reduce_labels: bool = False) -> None:
        self.dataset = dataset
        self.image_column = image_column
        self.annotation_column = annotation_column
        self.reduce_labels = reduce_labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[PIL.Image.Image, np.ndarray]:
        row = self.dataset[int(index)]
        image = _as_pil(row[self.image_column]).convert("RGB")
        mask = self._labels(row)
        if mask.shape != (image.height, image.width):
            raise MaskError(
                f"row {index}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.width}x{image.height}"
            )
        return image, mask

    def mask_and_image_size(self, index: int) -> tuple[np.ndarray, tuple[int, int], str]:
        """The row's class-index mask, its image's (height, width) read without decoding the pixels, and a name
        for messages (the mask's file where the dataset has one, else the row)."""
        row = self.dataset[int(index)]
        image = _as_pil(row[self.image_column])
        annotation = row[self.annotation_column]
        name = getattr(annotation, "filename", "") or getattr(image, "filename", "") or f"row {index}"
        try:
            return self._labels(row), (image.height, image.width), name
        except ValueError as error:
            raise MaskError(f"{name}: {error}") from error

    def _labels(self, row: dict) -> np.ndarray:
        mask = mask_array(row[self.annotation_column])
        if self.reduce_labels:
            mask = np.where((mask == 0) | (mask == IGNORE_INDEX), IGNORE_INDEX, mask - 1)
        return mask


def _as_pil(value) -> PIL.Image.Image:
    return value if isinstance(value, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(value))


def mask_array(value) -> np.ndarray:
    """An `(H, W)` int64 array of class indices from a mask image (mode L/P/I) or array."""
    if isinstance(value, PIL.Image.Image):
        if value.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"a mask image must hold class indices (PIL mode L, P or I), got mode {value.mode!r}")
        value = np.asarray(value)
    array = np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W) class indices, got shape {array.shape}")
    return array.astype(np.int64)


def folder_pairs(directory: str | os.PathLike):
    """A `datasets.Dataset` of (image path, mask path) for `directory/images/*` and `directory/masks/<stem>.png`."""
    from datasets import Dataset, Image

    root = Path(directory)
    images = sorted(path for path in (root / FOLDER_IMAGES).iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"--dataset {directory}: {root / FOLDER_IMAGES} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    masks = [root / FOLDER_MASKS / f"{path.stem}.png" for path in images]
    missing = [str(path) for path in masks if not path.is_file()]
    if missing:
        raise ValueError(
            f"--dataset {directory}: {len(missing)} image(s) have no mask of the same name in "
            f"{root / FOLDER_MASKS} (first: {missing[0]})"
        )
    columns = {"image": [str(path) for path in images], "annotation": [str(path) for path in masks]}
    return Dataset.from_dict(columns).cast_column("image", Image()).cast_column("annotation", Image())


def is_mask_folder(directory: str | os.PathLike) -> bool:
    return (Path(directory) / FOLDER_IMAGES).is_dir() and (Path(directory) / FOLDER_MASKS).is_dir()


def load_segmentation_dataset(name: str, config: str | None = None):
    """A `DatasetDict` from a mask folder (`images/`+`masks/`, or one such folder per split) or a hub dataset."""
    from datasets import DatasetDict, load_dataset

    if os.path.isdir(name):
        if is_mask_folder(name):
            return DatasetDict({"train": folder_pairs(name)})
        splits = {path.name: folder_pairs(path) for path in sorted(Path(name).iterdir()) if is_mask_folder(path)}
        if not splits:
            raise ValueError(
                f"--dataset {name}: expected {FOLDER_IMAGES}/ and {FOLDER_MASKS}/ in it, or split folders "
                f"(train/, validation/) that hold them"
            )
        return DatasetDict(splits)
    return load_dataset(name, config)


class MaskError(ValueError):
    """A mask of the dataset does not fit its image or the classes (named with its file and split)."""


@dataclass
class MaskSurvey:
    """One pass over the masks of a split: pixels per class index (the ignore index left out) and the problems."""

    split: str
    pixels_per_class: np.ndarray
    problems: list[str]


def survey_masks(pairs: DatasetPairs, split: str) -> MaskSurvey:
    """Read every mask of `pairs` once: its mode and dimensions, its size against its image's, its class indices.

    Each problem names the mask's file (or row) and the split, so a bad mask is found before training rather than
    mid-epoch or at the first evaluation.
    """
    counts = np.zeros(0, dtype=np.int64)
    problems = []
    for index in range(len(pairs)):
        try:
            mask, (height, width), name = pairs.mask_and_image_size(index)
        except MaskError as error:
            problems.append(f"{split} {error}")
            continue
        if mask.shape != (height, width):
            problems.append(f"{split} {name}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {width}x{height}")
            continue
        valid = mask[mask != IGNORE_INDEX]
        if valid.size and valid.min() < 0:
            problems.append(f"{split} {name}: negative class index {int(valid.min())}")
            continue
        found = np.bincount(valid, minlength=len(counts))
        found[: len(counts)] += counts
        counts = found
    return MaskSurvey(split, counts, problems)


def check_mask_classes(survey: MaskSurvey, num_labels: int, hint: str) -> list[str]:
    """Problems for class indices of `survey` outside [0, num_labels) (the ignore index aside)."""
    outside = np.flatnonzero(survey.pixels_per_class[num_labels:]) + num_labels
    if not len(outside):
        return []
    return [
        f"{survey.split}: masks hold class indices {outside[:5].tolist()} outside [0, {num_labels}) that are not the "
        f"ignore index {IGNORE_INDEX}; {hint}"
    ]


def infer_num_labels(survey: MaskSurvey) -> int:
    """1 + the largest class index of the training masks; refuses counts that reach the ignore index and warns
    about indices below the largest that no pixel uses (one stray pixel makes every index below it a class)."""
    used = np.flatnonzero(survey.pixels_per_class)
    if not len(used):
        raise MaskError("every mask pixel is the ignore index (255): there is nothing to learn")
    num_labels = int(used[-1]) + 1
    if num_labels > IGNORE_INDEX:
        raise MaskError(
            f"the training masks hold class index {num_labels - 1}: inferring {num_labels} classes would make "
            f"{IGNORE_INDEX}, the ignore index, a class; fix the masks or pass --num_labels / --label_names"
        )
    unused = sorted(set(range(num_labels)) - set(used.tolist()))
    if unused:
        logger.warning(
            "inferred %d classes from the largest mask value %d, but no training pixel has class %s%s; pass "
            "--num_labels or --label_names if that is not intended",
            num_labels,
            num_labels - 1,
            unused[:10],
            " ..." if len(unused) > 10 else "",
        )
    return num_labels


def check_segmentation_masks(train: DatasetPairs, evaluation: DatasetPairs, splits: tuple[str, str], options):
    """Survey both splits' masks at start; returns the class names (`label_names_for`). Raises `MaskError` listing
    every problem found (bad masks, sizes, classes outside the label set)."""
    surveys = [survey_masks(pairs, split) for pairs, split in zip((train, evaluation), splits, strict=True)]
    problems = [problem for survey in surveys for problem in survey.problems]
    try:
        names = label_names_for(options, surveys[0])
    except MaskError as error:
        names = []
        problems.append(str(error))
    hint = "pass --num_labels, --label_names or --reduce_labels to match the masks"
    for survey in surveys:
        if names:
            problems += check_mask_classes(survey, len(names), hint)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise MaskError(f"{len(problems)} problem(s) with the masks:\n  {shown}{more}")
    return names


def prepare_segmentation_data(options) -> SegmentationData:
    """Load, split and describe the data `options` give (the synthetic task when `options.dataset` is None)."""
    if options.dataset is None:
        size = options.image_size
        train = SyntheticShapes(options.synthetic_train_samples, size, options.seed, "train")
        evaluation = SyntheticShapes(options.synthetic_eval_samples, size, options.seed, "validation")
        return SegmentationData(train, evaluation, list(SYNTHETIC_LABELS))
    raw = load_segmentation_dataset(options.dataset, options.dataset_config)
    train_set, eval_set, eval_split = select_named_splits(
        raw, options.train_split, options.eval_split, options.eval_fraction, options.seed
    )
    image_column = find_column(train_set, options.image_column, IMAGE_COLUMN_CANDIDATES, "image", "--image_column")
    annotation_column = find_column(
        train_set, options.annotation_column, ANNOTATION_COLUMN_CANDIDATES, "annotation", "--annotation_column"
    )
    if annotation_column == image_column:
        raise ColumnError(f"--annotation_column and --image_column both name {image_column!r}")
    if options.max_train_samples is not None:
        train_set = train_set.select(range(min(options.max_train_samples, len(train_set))))
    if options.max_eval_samples is not None:
        eval_set = eval_set.select(range(min(options.max_eval_samples, len(eval_set))))
    train = DatasetPairs(train_set, image_column, annotation_column, options.reduce_labels)
    evaluation = DatasetPairs(eval_set, image_column, annotation_column, options.reduce_labels)
    names = check_segmentation_masks(train, evaluation, (options.train_split, eval_split), options)
    return SegmentationData(train, evaluation, names, options.train_split, eval_split)


def label_names_for(options, train_survey: MaskSurvey) -> list[str]:
    """`--label_names`, else `--num_labels` indices as names, else as many indices as the training masks use."""
    if options.label_names:
        names = [name.strip() for name in options.label_names.split(",")]
        if options.num_labels is not None and options.num_labels != len(names):
            raise ValueError(f"--num_labels {options.num_labels} but --label_names names {len(names)} classes")
    elif options.num_labels is not None:
        names = [str(index) for index in range(options.num_labels)]
    else:
        return [str(index) for index in range(infer_num_labels(train_survey))]
    if len(names) > IGNORE_INDEX:
        raise MaskError(f"{len(names)} classes would make {IGNORE_INDEX}, the ignore index, a class; at most 255")
    return names


# ----------------------------------------------------------------------------------------------------------
# Joint transforms


@dataclass
class JointTransform:
    """Image and mask to `(3, S, S)` normalised float and `(S, S)` int64 tensors, `S = size`.

    Training (`train=True`): the shorter side is resized to `S * U(min_scale, max_scale)`, then a random `S x S`
    crop (padded with 0 / `IGNORE_INDEX` where the image is smaller) and a horizontal flip with probability 0.5.
    Evaluation: both are resized to `S x S`. Random draws come from torch's global generator (seeded per sample by
    the caller). torchvision.transforms.v2 does the work where installed; the torch fallback has the same steps.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train: bool = False
    min_scale: float = 0.5
    max_scale: float = 2.0
    use_torchvision: bool | None = None

    def __post_init__(self) -> None:
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"need 0 < --min_scale <= --max_scale, got {self.min_scale} and {self.max_scale}")
        if self.use_torchvision is None:
            self.use_torchvision = has_torchvision()
        self._v2 = self._torchvision_pipeline() if self.use_torchvision else None

    def _scaled_sizes(self) -> tuple[int, int]:
        """Range of the shorter side after the random scale (inclusive)."""
        return max(1, round(self.size * self.min_scale)), max(1, round(self.size * self.max_scale))

    def _torchvision_pipeline(self):
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        if self.train:
            low, high = self._scaled_sizes()
            fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
            geometry = [
                v2.RandomResize(low, high + 1, antialias=True),
                v2.RandomCrop(self.size, pad_if_needed=True, fill=fill),
                v2.RandomHorizontalFlip(),
            ]
        else:
            geometry = [v2.Resize((self.size, self.size), antialias=True)]
        return v2.Compose(geometry)

    def __call__(self, image: PIL.Image.Image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
        labels = torch.from_numpy(np.asarray(mask, dtype=np.int64))
        if self._v2 is not None:
            from torchvision import tv_tensors

            pixels, labels = self._v2(tv_tensors.Image(pixels), tv_tensors.Mask(labels))
            pixels, labels = pixels.as_subclass(torch.Tensor), labels.as_subclass(torch.Tensor)
        elif self.train:
            pixels, labels = self._random_geometry(pixels, labels)
        else:
            pixels, labels = _resize(pixels, labels, (self.size, self.size))
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std, labels.long()

    def _random_geometry(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Torch fallback of the training geometry (random scale, padded random crop, flip)."""
        low, high = self._scaled_sizes()
        shorter = int(torch.randint(low, high + 1, ()))
        height, width = pixels.shape[-2:]
        scale = shorter / min(height, width)
        pixels, labels = _resize(pixels, labels, (max(1, round(height * scale)), max(1, round(width * scale))))
        pad_h, pad_w = max(self.size - pixels.shape[-2], 0), max(self.size - pixels.shape[-1], 0)
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h), value=0)
            labels = F.pad(labels, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        top = int(torch.randint(0, pixels.shape[-2] - self.size + 1, ()))
        left = int(torch.randint(0, pixels.shape[-1] - self.size + 1, ()))
        pixels = pixels[:, top : top + self.size, left : left + self.size]
        labels = labels[top : top + self.size, left : left + self.size]
        if torch.rand(()) < 0.5:
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        return pixels, labels


def _resize(pixels: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 `(3, H, W)` bilinearly (antialiased), int64 `(H, W)` by nearest neighbour, to `size`."""
    if tuple(pixels.shape[-2:]) == size:
        return pixels, labels
    resized = F.interpolate(pixels[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    nearest = F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")
    return resized[0].round().clamp(0, 255).to(torch.uint8), nearest[0, 0].long()


# ----------------------------------------------------------------------------------------------------------
# Datasets and loaders


class SegmentationDataset(SeededAugmentationDataset):
    """Yields `{"pixel_values": (3, S, S), "labels": (S, S)}`; the transform runs under a per-sample seed."""

    def __init__(self, pairs, transform: JointTransform, num_labels: int, seed: int = 0, split: str = "train") -> None:
        super().__init__(pairs, transform, seed, split)
        self.num_labels = num_labels

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self.rows[int(index)]
        bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= self.num_labels))
        if bad.any():
            raise ValueError(
                f"mask of row {index} (split {self.split!r}) holds class indices {sorted(set(mask[bad].tolist()))[:5]} "
                f"outside [0, {self.num_labels}) that are not the ignore index {IGNORE_INDEX}; pass --num_labels, "
                "--label_names or --reduce_labels to match the masks"
            )
        pixel_values, labels = self.augment(index, image, mask)
        return {"pixel_values": pixel_values, "labels": labels}


def collate_segmentation(examples: list[dict]) -> dict[str, torch.Tensor]:
    """`pixel_values (N, 3, S, S)` float and `labels (N, S, S)` int64."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.stack([example["labels"] for example in examples]),
    }


def build_segmentation_dataloaders(data: SegmentationData, options, train_transform, eval_transform):
    """Train and eval loaders plus the training dataset and sampler (whose epoch the loop sets)."""
    num_labels = len(data.label_names)
    train_set = SegmentationDataset(data.train, train_transform, num_labels, options.seed, data.train_split)
    eval_set = SegmentationDataset(data.eval, eval_transform, num_labels, options.seed, data.eval_split)
    sampler = EpochPermutationSampler(len(train_set), options.seed)
    # UperNet's pooling branch batch-normalises 1x1 maps: a last batch of one image cannot train.
    drop_last = options.architecture == "upernet"
    train_loader, eval_loader = seeded_loaders(
        train_set, eval_set, sampler, collate_segmentation, options, drop_last=drop_last
    )
    return train_loader, eval_loader, train_set, sampler
