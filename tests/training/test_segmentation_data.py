"""Segmentation data: the synthetic task, joint image/mask transforms, mask folders and `datasets` columns."""

from __future__ import annotations

import types

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import requires_accelerate

from internimage_hf.training.segmentation_data import (
    IGNORE_INDEX,
    SYNTHETIC_COLOURS,
    SYNTHETIC_LABELS,
    JointTransform,
    SegmentationDataset,
    SyntheticShapes,
    has_torchvision,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TRANSFORM_BACKENDS = [
    pytest.param(False, id="torch"),
    pytest.param(True, id="torchvision", marks=pytest.mark.skipif(not has_torchvision(), reason="needs torchvision")),
]


def test_synthetic_shapes_are_reproducible_and_labelled():
    train = SyntheticShapes(8, image_size=48, seed=3)
    image, mask = train[5]
    again_image, again_mask = SyntheticShapes(8, image_size=48, seed=3)[5]
    assert np.array_equal(np.asarray(image), np.asarray(again_image)) and np.array_equal(mask, again_mask)
    assert image.size == (48, 48) and mask.shape == (48, 48) and mask.dtype == np.int64
    other_image, _ = SyntheticShapes(8, image_size=48, seed=3, split="validation")[5]
    assert not np.array_equal(np.asarray(image), np.asarray(other_image))

    pixels = np.concatenate([np.asarray(train[i][0]).reshape(-1, 3) for i in range(8)])
    masks = np.concatenate([train[i][1].reshape(-1) for i in range(8)])
    assert set(np.unique(masks)) <= {*range(len(SYNTHETIC_LABELS)), IGNORE_INDEX}
    assert {1, 2, 3} <= set(np.unique(masks))  # every shape class occurs in a few images
    for label, colour in SYNTHETIC_COLOURS.items():  # shape pixels are near their class colour, noise is not
        assert np.abs(pixels[masks == label].mean(axis=0) - colour).max() < 30
    assert np.abs(pixels[masks == 0].mean(axis=0) - 127.5).max() < 10
    # Boundaries are ignored: every labelled pixel's 4-neighbours carry its class or the ignore index.
    inner = mask[1:-1, 1:-1]
    for shifted in (mask[:-2, 1:-1], mask[2:, 1:-1], mask[1:-1, :-2], mask[1:-1, 2:]):
        assert np.all((inner == IGNORE_INDEX) | (shifted == inner) | (shifted == IGNORE_INDEX))


def stripes(height: int, width: int) -> tuple[PIL.Image.Image, np.ndarray]:
    """Vertical bands of classes 0..3 whose red value encodes the class (60 * class); the mask says the same."""
    mask = np.repeat((np.arange(width) * 4 // width)[None, :], height, axis=0).astype(np.int64)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = 60 * mask
    return PIL.Image.fromarray(pixels), mask


@pytest.mark.parametrize("use_torchvision", TRANSFORM_BACKENDS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_joint_transform_keeps_image_and_mask_aligned(use_torchvision, train):
    transform = JointTransform(
        32, MEAN, STD, train=train, min_scale=0.5, max_scale=2.0, use_torchvision=use_torchvision
    )
    image, mask = stripes(40, 80)
    flips, pads = 0, 0
    for seed in range(12):
        torch.manual_seed(seed)
        pixel_values, labels = transform(image, mask)
        assert pixel_values.shape == (3, 32, 32) and pixel_values.dtype == torch.float32
        assert labels.shape == (32, 32) and labels.dtype == torch.int64
        red = (pixel_values[0] * STD[0] + MEAN[0]) * 255
        labelled = labels != IGNORE_INDEX
        # Bilinear blur only touches band edges: the red value names the mask's class almost everywhere.
        agreement = (torch.round(red / 60)[labelled] == labels[labelled]).float().mean()
        assert agreement > 0.9, (seed, float(agreement))
        flips += int(labels[labelled][0] > labels[labelled][-1])  # classes decrease left to right
        pads += int((~labelled).any())
        if (~labelled).any():  # the padding of a crop larger than the image: image 0, mask ignored
            assert torch.allclose(pixel_values[:, ~labelled], torch.tensor([-2.0, -2.0, -2.0])[:, None])
    if train:
        assert 0 < flips < 12 and pads > 0
    else:
        assert flips == 0 and pads == 0


def test_joint_transform_rejects_bad_scales():
    with pytest.raises(ValueError, match="min_scale"):
        JointTransform(32, MEAN, STD, train=True, min_scale=2.0, max_scale=1.0)


def test_dataset_names_masks_with_classes_outside_the_label_set():
    image, mask = stripes(16, 16)
    mask[0, 0] = 9
    dataset = SegmentationDataset([(image, mask)], JointTransform(16, MEAN, STD), num_labels=4, split="validation")
    with pytest.raises(ValueError, match=r"row 0 \(split 'validation'\).*\[9\].*--num_labels"):
        dataset[0]


def write_mask_folder(root, count: int, size: int = 24, classes: int = 3, seed: int = 0) -> None:
    """`root/images/*.jpg` and `root/masks/*.png` (mode L class indices, some 255)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(count):
        pixels = rng.integers(0, 256, size=(size, size + 8, 3), dtype=np.uint8)
        mask = rng.integers(0, classes, size=(size, size + 8)).astype(np.uint8)
        mask[0] = IGNORE_INDEX
        PIL.Image.fromarray(pixels).save(root / "images" / f"img{index}.jpg")
        PIL.Image.fromarray(mask, mode="L").save(root / "masks" / f"img{index}.png")


def data_options(dataset, **overrides):
    from internimage_hf.training.segmentation import SegmentationOptions

    return types.SimpleNamespace(**{**SegmentationOptions(dataset=str(dataset)).__dict__, **overrides})


@requires_accelerate
def test_mask_folder_is_split_and_counts_its_classes(tmp_path):
    from internimage_hf.training.segmentation_data import prepare_segmentation_data

    write_mask_folder(tmp_path / "data", count=10, classes=3)
    data = prepare_segmentation_data(data_options(tmp_path / "data", eval_fraction=0.3))
    assert (len(data.train), len(data.eval)) == (7, 3)
    assert data.label_names == ["0", "1", "2"]  # 1 + the largest index in the training masks
    image, mask = data.train[0]
    assert image.mode == "RGB" and mask.shape == (image.height, image.width) and mask[0, 0] == IGNORE_INDEX

    named = prepare_segmentation_data(data_options(tmp_path / "data", label_names="sky, road ,car,person"))
    assert named.label_names == ["sky", "road", "car", "person"]
    reduced = prepare_segmentation_data(
        data_options(tmp_path / "data", reduce_labels=True, num_labels=2, eval_fraction=0.3)
    )
    for index in range(len(data.train)):  # ADE20K's convention: 0 is unlabelled, the other classes move down
        plain = data.train[index][1]
        expected = np.where((plain == 0) | (plain == IGNORE_INDEX), IGNORE_INDEX, plain - 1)
        assert np.array_equal(reduced.train[index][1], expected)


@requires_accelerate
def test_split_folders_and_missing_masks(tmp_path):
    from internimage_hf.training.segmentation_data import prepare_segmentation_data

    write_mask_folder(tmp_path / "data" / "train", count=4)
    write_mask_folder(tmp_path / "data" / "validation", count=2, seed=1)
    data = prepare_segmentation_data(data_options(tmp_path / "data", num_labels=3))
    assert (len(data.train), len(data.eval), data.eval_split) == (4, 2, "validation")

    (tmp_path / "data" / "train" / "masks" / "img2.png").unlink()
    with pytest.raises(ValueError, match=r"1 image\(s\) have no mask.*img2\.png"):
        prepare_segmentation_data(data_options(tmp_path / "data"))


@requires_accelerate
def test_datasets_columns_are_found_or_named(tmp_path):
    from datasets import Dataset, DatasetDict, Image

    from internimage_hf.training import segmentation_data
    from internimage_hf.training.data import ColumnError

    image, mask = stripes(16, 16)
    rows = {"img": [image] * 4, "segmentation_map": [PIL.Image.fromarray(mask.astype(np.uint8))] * 4}
    raw = DatasetDict({"train": Dataset.from_dict(rows).cast_column("img", Image())})
    options = data_options(tmp_path, num_labels=4)
    original = segmentation_data.load_segmentation_dataset
    try:
        segmentation_data.load_segmentation_dataset = lambda name, config=None: raw
        with pytest.raises(ColumnError, match="no annotation column.*segmentation_map"):
            segmentation_data.prepare_segmentation_data(options)
        data = segmentation_data.prepare_segmentation_data(
            data_options(tmp_path, num_labels=4, annotation_column="segmentation_map", eval_fraction=0.5)
        )
    finally:
        segmentation_data.load_segmentation_dataset = original
    assert np.array_equal(data.train[0][1], mask)


def save_mask(path, mask: np.ndarray) -> None:
    """A class-index PNG: 8-bit where the values fit, else 16-bit."""
    PIL.Image.fromarray(mask.astype(np.uint8 if mask.max() < 256 else np.uint16)).save(path)


@requires_accelerate
def test_every_mask_is_checked_at_start_with_its_file_and_split(tmp_path):
    from internimage_hf.training.segmentation_data import MaskError, prepare_segmentation_data

    write_mask_folder(tmp_path / "data" / "train", count=4)
    write_mask_folder(tmp_path / "data" / "validation", count=3, seed=1)
    train_masks, eval_masks = tmp_path / "data" / "train" / "masks", tmp_path / "data" / "validation" / "masks"
    save_mask(eval_masks / "img1.png", np.zeros((10, 10)))  # its image is 32x24
    PIL.Image.new("RGB", (32, 24)).save(train_masks / "img2.png")  # colours, not class indices
    bad_class = np.asarray(PIL.Image.open(eval_masks / "img2.png")).copy()
    bad_class[5, 5] = 7
    save_mask(eval_masks / "img2.png", bad_class)
    with pytest.raises(MaskError) as raised:
        prepare_segmentation_data(data_options(tmp_path / "data", num_labels=3))
    message = str(raised.value)
    assert message.startswith("3 problem(s) with the masks:")
    assert f"train {train_masks / 'img2.png'}: a mask image must hold class indices" in message
    assert f"validation {eval_masks / 'img1.png'}: mask is 10x10, its image 32x24" in message
    assert "validation: masks hold class indices [7] outside [0, 3)" in message


@requires_accelerate
def test_inferred_class_count_warns_about_unused_indices(tmp_path, caplog):
    from internimage_hf.training.segmentation_data import prepare_segmentation_data

    write_mask_folder(tmp_path / "data" / "train", count=3)
    write_mask_folder(tmp_path / "data" / "validation", count=2, seed=1)
    stray = np.asarray(PIL.Image.open(tmp_path / "data" / "train" / "masks" / "img0.png")).copy()
    stray[3, 3] = 9  # one stray pixel
    save_mask(tmp_path / "data" / "train" / "masks" / "img0.png", stray)
    with caplog.at_level("WARNING"):
        data = prepare_segmentation_data(data_options(tmp_path / "data"))
    assert len(data.label_names) == 10
    assert "no training pixel has class [3, 4, 5, 6, 7, 8]" in caplog.text


@requires_accelerate
@pytest.mark.parametrize("value", [300, 254])
def test_inferred_class_count_may_not_reach_the_ignore_index(tmp_path, value):
    """Index 254 makes 255 classes (0..254, beside the ignore index); 300 would make 255 a class."""
    from internimage_hf.training.segmentation_data import MaskError, prepare_segmentation_data

    write_mask_folder(tmp_path / "data" / "train", count=3)
    write_mask_folder(tmp_path / "data" / "validation", count=2, seed=1)
    stray = np.asarray(PIL.Image.open(tmp_path / "data" / "train" / "masks" / "img0.png")).astype(np.int64)
    stray[3, 3] = value
    save_mask(tmp_path / "data" / "train" / "masks" / "img0.png", stray)
    if value < IGNORE_INDEX:
        assert len(prepare_segmentation_data(data_options(tmp_path / "data")).label_names) == 255
        return
    with pytest.raises(MaskError, match=f"class index {value}: inferring {value + 1} classes would make 255"):
        prepare_segmentation_data(data_options(tmp_path / "data"))
