"""Datasets, transforms and data loaders for image classification.

Data order and augmentation are reproducible, so that `--resume` continues exactly: the sampler draws a
permutation from `(seed, epoch)` and every training sample is augmented under its own seed
`(seed, epoch, index)`. Nothing here draws from the global RNG, which only the training step uses.

An image that cannot be decoded raises `UnreadableImageError` naming the file and the split. With
`--skip_bad_images` every image is decoded once at start and the unreadable ones are left out: evaluation images are
dropped, training images are passed over by the sampler, which still draws its permutation over all rows. A run
that stopped on an unreadable image therefore resumes with `--skip_bad_images` exactly as if it had been given from
the start (the rows it had already consumed held no unreadable image).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger(__name__)

DIGITS_IMAGE_SIZE = 32
DIGITS_MAX_VALUE = 16  # load_digits pixels are integers 0..16
DEFAULT_EVAL_SPLITS = ("validation", "valid", "val", "test")
IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values_raw")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "class")
HELD_OUT_SPLIT_NAME = "held-out part of {split}"
SHOWN_BAD_IMAGES = 5  # unreadable images named in the log when --skip_bad_images leaves them out


class ColumnError(ValueError):
    """The dataset lacks the image or label column the training needs."""


class UnreadableImageError(OSError):
    """An image of the dataset cannot be decoded (truncated, corrupt or not an image)."""


class LabelMaps:
    """`id2label` and `label2id` (the model config's) from the `label_names` of a data class."""

    label_names: list[str]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.label_names)}


@dataclass
class ClassificationData(LabelMaps):
    """A training split, an evaluation split and the column names and label names they share."""

    train: Any  # datasets.Dataset
    eval: Any  # datasets.Dataset
    image_column: str
    label_column: str
    label_names: list[str]
    train_split: str = "train"
    eval_split: str = "validation"
    skipped_train_rows: tuple[int, ...] = ()  # unreadable training images the sampler passes over

    @property
    def num_train_samples(self) -> int:
        """Training images a run uses (all rows but the skipped ones)."""
        return len(self.train) - len(self.skipped_train_rows)


# ----------------------------------------------------------------------------------------------------------
# Loading


def digits_dataset(seed: int = 42, eval_fraction: float = 0.2):
    """scikit-learn's bundled 8x8 digits as a `datasets.DatasetDict` ("train", "validation").

    Images are 8-bit grayscale PIL images (the 0..16 values scaled to 0..255); the split is stratified with a
    fixed seed, so every run holds out the same images. Labels are a `ClassLabel` named "0".."9".
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / DIGITS_MAX_VALUE)).astype(np.uint8)
    indices = np.arange(len(pixels))
    train_idx, eval_idx = train_test_split(indices, test_size=eval_fraction, stratify=digits.target, random_state=seed)
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})

    def split(idx: np.ndarray):
        images = [PILImage.fromarray(pixels[i], mode="L") for i in idx]
        return Dataset.from_dict({"image": images, "label": digits.target[idx].tolist()}, features=features)

    return DatasetDict({"train": split(train_idx), "validation": split(eval_idx)})


def load_raw_dataset(name: str, config: str | None = None):
    """A `DatasetDict` from a hub dataset name or a local `imagefolder` directory."""
    from datasets import load_dataset

    if os.path.isdir(name):
        return load_dataset("imagefolder", data_dir=name)
    return load_dataset(name, config)


def find_column(dataset, requested: str | None, candidates: tuple[str, ...], kind: str, flag: str) -> str:
    """The column to use for `kind` ("image"/"label"); raises `ColumnError` naming the columns that exist."""
    columns = list(dataset.column_names)
    if requested is not None:
        if requested not in columns:
            raise ColumnError(f"{flag} {requested!r} is not a column of the dataset; its columns are {columns}")
        return requested
    for name in candidates:
        if name in columns:
            return name
    raise ColumnError(
        f"the dataset has no {kind} column (looked for {list(candidates)}); its columns are {columns}. "
        f"Pass {flag} <name>."
    )


def select_splits(raw, train_split: str, eval_split: str | None, eval_fraction: float, seed: int, label_column=None):
    """(train, eval) datasets: the named splits, or a seeded held-out part of train when there is no eval split."""
    train, evaluation, _ = select_named_splits(raw, train_split, eval_split, eval_fraction, seed, label_column)
    return train, evaluation


def select_named_splits(raw, train_split, eval_split, eval_fraction: float, seed: int, label_column=None):
    """`select_splits` plus the name of the evaluation split (for messages)."""
    if train_split not in raw:
        raise ValueError(f"split {train_split!r} not found; the dataset has {list(raw)}")
    if eval_split is not None:
        if eval_split not in raw:
            raise ValueError(f"split {eval_split!r} not found; the dataset has {list(raw)}")
        return raw[train_split], raw[eval_split], eval_split
    for name in DEFAULT_EVAL_SPLITS:
        if name in raw and name != train_split:
            return raw[train_split], raw[name], name
    stratify = label_column if _is_class_label(raw[train_split], label_column) else None
    parts = raw[train_split].train_test_split(test_size=eval_fraction, seed=seed, stratify_by_column=stratify)
    return parts["train"], parts["test"], HELD_OUT_SPLIT_NAME.format(split=train_split)


def _is_class_label(dataset, column: str | None) -> bool:
    from datasets import ClassLabel

    return column is not None and isinstance(dataset.features.get(column), ClassLabel)


def label_names_of(train, label_column: str) -> list[str]:
    """Class names from a `ClassLabel` column (else the caller encodes the column first)."""
    return [str(name) for name in train.features[label_column].names]


def prepare_classification_data(options) -> ClassificationData:
    """Load, split and validate the data `options` describe (the built-in digits when `options.dataset` is None)."""
    if options.dataset is None:
        raw = digits_dataset(seed=options.seed)
    else:
        raw = load_raw_dataset(options.dataset, options.dataset_config)
    first = raw[options.train_split] if options.train_split in raw else next(iter(raw.values()))
    image_column = find_column(first, options.image_column, IMAGE_COLUMN_CANDIDATES, "image", "--image_column")
    label_column = find_column(first, options.label_column, LABEL_COLUMN_CANDIDATES, "label", "--label_column")
    if not _is_class_label(first, label_column):
        # Strings or raw integers: make a ClassLabel so both splits share one sorted label set.
        raw = raw.class_encode_column(label_column)
    train, evaluation, eval_split = select_named_splits(
        raw, options.train_split, options.eval_split, options.eval_fraction, options.seed, label_column
    )
    if options.max_train_samples is not None:
        train = train.select(range(min(options.max_train_samples, len(train))))
    if options.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(options.max_eval_samples, len(evaluation))))
    skipped: tuple[int, ...] = ()
    if options.skip_bad_images:
        skipped = tuple(row for row, _, _ in report_unreadable_images(train, image_column, options.train_split))
        if len(skipped) == len(train):
            raise UnreadableImageError(f"none of the {len(train)} images of split {options.train_split!r} can be read")
        unreadable_eval = {row for row, _, _ in report_unreadable_images(evaluation, image_column, eval_split)}
        evaluation = evaluation.select([row for row in range(len(evaluation)) if row not in unreadable_eval])
    names = label_names_of(train, label_column)
    return ClassificationData(
        train, evaluation, image_column, label_column, names, options.train_split, eval_split, skipped
    )


# ----------------------------------------------------------------------------------------------------------
# Unreadable images

# What PIL raises for truncated, corrupt, oversized or non-image files (SyntaxError comes from some format plugins).
IMAGE_DECODE_ERRORS = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)


def image_source(dataset, image_column: str, index: int) -> str:
    """The file an image was read from (`datasets` keeps the path of local files), else its row number."""
    from datasets import Image

    feature = dataset.features.get(image_column)
    if isinstance(feature, Image):
        raw = dataset.cast_column(image_column, Image(decode=False))[int(index)][image_column]
        if isinstance(raw, dict) and raw.get("path"):
            return str(raw["path"])
    return f"row {index}"


def unreadable_image_error(dataset, image_column: str, index: int, split: str, error: BaseException):
    """An `UnreadableImageError` naming the file, the split and the way to go on without it."""
    return UnreadableImageError(
        f"cannot read image {image_source(dataset, image_column, index)} (split {split!r}, row {index}): "
        f"{type(error).__name__}: {error}. Fix or remove the file, or pass --skip_bad_images to leave out every "
        "unreadable image."
    )


def _decode(raw) -> None:
    """Decode one undecoded `datasets` image (`{"bytes", "path"}`) fully; raises what PIL raises."""
    if not raw or not (raw.get("bytes") or raw.get("path")):
        raise ValueError("the image cell is empty")
    source = io.BytesIO(raw["bytes"]) if raw.get("bytes") else raw["path"]
    with PIL.Image.open(source) as image:
        image.load()


def find_unreadable_images(dataset, image_column: str) -> list[tuple[int, str, str]]:
    """(row, source, reason) of every image that cannot be decoded (one full decoding pass)."""
    from datasets import Image

    if not isinstance(dataset.features.get(image_column), Image):
        return []
    raw_view = dataset.select_columns([image_column]).cast_column(image_column, Image(decode=False))
    bad = []
    for index, row in enumerate(raw_view):
        raw = row[image_column]
        try:
            _decode(raw)
        except IMAGE_DECODE_ERRORS as error:
            bad.append((index, (raw or {}).get("path") or f"row {index}", f"{type(error).__name__}: {error}"))
    return bad


def report_unreadable_images(dataset, image_column: str, split: str) -> list[tuple[int, str, str]]:
    """`find_unreadable_images`, logging how many there are and the first names (`--skip_bad_images`)."""
    bad = find_unreadable_images(dataset, image_column)
    if not bad:
        return bad
    shown = "; ".join(f"{source} ({reason})" for _, source, reason in bad[:SHOWN_BAD_IMAGES])
    more = f"; and {len(bad) - SHOWN_BAD_IMAGES} more" if len(bad) > SHOWN_BAD_IMAGES else ""
    logger.warning(
        "--skip_bad_images: leaving out %d unreadable image(s) of %d in split %r: %s%s",
        len(bad), len(dataset), split, shown, more,
    )  # fmt: skip
    return bad


# ----------------------------------------------------------------------------------------------------------
# Transforms


def torchvision_requirements(options) -> list[str]:
    """The requested features that need torchvision (empty when the PIL-only path suffices)."""
    needs = []
    if options.train_crop == "random_resized":
        needs.append("--train_crop random_resized")
    if options.randaugment:
        needs.append("--randaugment")
    if options.random_erasing > 0:
        needs.append("--random_erasing")
    if options.mixup > 0 or options.cutmix > 0:
        needs.append("--mixup/--cutmix")
    return needs


def has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def check_torchvision(options) -> None:
    """Fail early, naming the options, when augmentations need torchvision and it is not installed."""
    needs = torchvision_requirements(options)
    if needs and not has_torchvision():
        raise ImportError(
            f"{', '.join(needs)} need torchvision, which is not installed. Install it "
            "(`pip install 'internimage_hf[train]'`) or use `--train_crop resize` without these augmentations."
        )


def build_image_processor(image_size: int):
    """The evaluation transform as an image processor (torchvision backend when available, else PIL)."""
    from ..models.internimage.image_processing_internimage import InternImageImageProcessor
    from ..models.internimage.image_processing_pil_internimage import InternImageImageProcessorPil

    cls = InternImageImageProcessor if has_torchvision() else InternImageImageProcessorPil
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def build_train_transform(options, image_processor, image_size: int):
    """Per-image torchvision transform for training, or None when the eval transform (processor) suffices."""
    if options.train_crop == "resize" and not options.randaugment and options.random_erasing == 0:
        return None  # MixUp/CutMix work on batches; per image the processor's resize is all that is needed
    from torchvision.transforms import v2

    bicubic = v2.InterpolationMode.BICUBIC
    if options.train_crop == "random_resized":
        geometry = [v2.RandomResizedCrop(image_size, interpolation=bicubic, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(image_size, interpolation=bicubic, antialias=True), v2.CenterCrop(image_size)]
    steps = [v2.ToImage(), *geometry]
    if options.randaugment:
        steps.append(v2.RandAugment(num_ops=2, magnitude=options.randaugment_magnitude))
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(image_processor.image_mean), std=list(image_processor.image_std)),
    ]
    if options.random_erasing > 0:
        # After normalisation, as in the official (timm) pipeline.
        steps.append(v2.RandomErasing(p=options.random_erasing))
    return v2.Compose(steps)


def build_batch_mix(options, num_labels: int):
    """MixUp/CutMix on a batch (one of them chosen per batch), or None. Returns soft targets."""
    if options.mixup <= 0 and options.cutmix <= 0:
        return None
    from torchvision.transforms import v2

    choices = []
    if options.mixup > 0:
        choices.append(v2.MixUp(alpha=options.mixup, num_classes=num_labels))
    if options.cutmix > 0:
        choices.append(v2.CutMix(alpha=options.cutmix, num_classes=num_labels))
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


# ----------------------------------------------------------------------------------------------------------
# Datasets and loaders


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct, reproducible seed for one sample in one epoch."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


def seeded_call(transform, seed: int, *inputs):
    """`transform(*inputs)` with torch's global generator seeded by `seed`, then restored (the step's draws stay)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(*inputs)


class SeededAugmentationDataset(Dataset):
    """Base of the training datasets: `rows[i]` augmented by `transform` under the seed `(seed, epoch, i)`.

    The training loop calls `set_epoch`, so every epoch draws new augmentations and a resumed run the same ones.
    """

    def __init__(self, rows, transform=None, seed: int = 0, split: str = "train") -> None:
        self.rows = rows
        self.transform = transform
        self.seed = seed
        self.split = split
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def augment(self, index: int, *inputs):
        """`transform(*inputs)` under this sample's seed for the current epoch."""
        return seeded_call(self.transform, sample_seed(self.seed, self.epoch, int(index)), *inputs)


class ImageClassificationDataset(SeededAugmentationDataset):
    """Yields `{"image": PIL RGB or pixel tensor, "labels": int}`; the transform runs under a per-sample seed."""

    def __init__(
        self, dataset, image_column: str, label_column: str, transform=None, seed: int = 0, split: str = "train"
    ) -> None:
        super().__init__(dataset, transform, seed, split)
        self.dataset = dataset
        self.image_column = image_column
        self.label_column = label_column

    def __getitem__(self, index: int) -> dict:
        try:
            example = self.dataset[int(index)]  # `datasets` decodes the image here
            image = example[self.image_column].convert("RGB")
        except IMAGE_DECODE_ERRORS as error:
            raise unreadable_image_error(self.dataset, self.image_column, index, self.split, error) from error
        if self.transform is not None:
            image = self.augment(index, image)
        return {"image": image, "labels": int(example[self.label_column])}


class EpochPermutationSampler(Sampler):
    """Shuffles with a generator seeded by `(seed, epoch)`: the order of any epoch is known in advance.

    `skipped` rows are passed over; the permutation is still drawn over all `num_samples` rows, so the order of the
    other rows does not depend on which rows are skipped.
    """

    def __init__(self, num_samples: int, seed: int, skipped: tuple[int, ...] = ()) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.skipped = frozenset(skipped)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples - len(self.skipped)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        return iter([row for row in order if row not in self.skipped])


class ImageCollator:
    """Stacks transformed tensors, or runs the image processor on a batch of PIL images (one call per batch)."""

    def __init__(self, image_processor) -> None:
        self.image_processor = image_processor

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        images = [example["image"] for example in examples]
        if isinstance(images[0], torch.Tensor):
            pixel_values = torch.stack([torch.as_tensor(image) for image in images])
        else:
            pixel_values = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        labels = torch.tensor([example["labels"] for example in examples], dtype=torch.long)
        return {"pixel_values": pixel_values, "labels": labels}


def build_dataloaders(data: ClassificationData, options, image_processor, train_transform):
    """Train and eval loaders plus the training dataset and sampler (whose epoch the loop sets)."""
    train_set = ImageClassificationDataset(
        data.train, data.image_column, data.label_column, train_transform, seed=options.seed, split=data.train_split
    )
    eval_set = ImageClassificationDataset(data.eval, data.image_column, data.label_column, split=data.eval_split)
    sampler = EpochPermutationSampler(len(train_set), options.seed, data.skipped_train_rows)
    train_loader, eval_loader = seeded_loaders(train_set, eval_set, sampler, ImageCollator(image_processor), options)
    return train_loader, eval_loader, train_set, sampler


def seeded_loaders(
    train_set, eval_set, sampler, collate_fn, options, drop_last: bool = False
) -> tuple[DataLoader, DataLoader]:
    """Train loader (order from `sampler`) and eval loader (in order), batch sizes and workers from `options`;
    `drop_last` drops an epoch's incomplete last training batch."""
    common = {"collate_fn": collate_fn, "num_workers": options.dataloader_num_workers}
    # Own generators: creating a loader iterator must not draw from the global RNG (exact resume).
    train_loader = DataLoader(
        train_set, batch_size=options.per_device_train_batch_size, sampler=sampler, drop_last=drop_last,
        generator=torch.Generator().manual_seed(options.seed), **common,
    )  # fmt: skip
    eval_loader = DataLoader(
        eval_set, batch_size=options.per_device_eval_batch_size, shuffle=False,
        generator=torch.Generator().manual_seed(options.seed), **common,
    )  # fmt: skip
    return train_loader, eval_loader
