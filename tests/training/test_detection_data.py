"""Detection data: synthetic shapes, COCO JSON and `datasets` inputs, annotation checks, joint box augmentation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import requires_accelerate, requires_torchvision

pytestmark = [requires_accelerate, requires_torchvision]


def write_coco(root, annotations=None, categories=None, images=None, missing_file: str | None = None):
    """`root/images/{a,b,c}.png` (40x30, 50x50, 40x30) and `root/coco.json`; image 3 has no objects."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    images = images or [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 50, "height": 50},
        {"id": 3, "file_name": "c.png", "width": 40, "height": 30},
    ]
    for image in images:
        if image["file_name"] != missing_file:
            pixels = np.random.default_rng(image["id"]).integers(0, 255, (image["height"], image["width"], 3))
            Image.fromarray(pixels.astype(np.uint8)).save(root / "images" / image["file_name"])
    categories = categories or [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}]
    annotations = annotations or [
        {"id": 11, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 12], "area": 120, "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 9, "bbox": [30, 20, 10.5, 10], "area": 105, "iscrowd": 0},
        {"id": 13, "image_id": 2, "category_id": 9, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
        {"id": 14, "image_id": 2, "category_id": 5, "bbox": [5, 5, 5, 5], "area": 25, "iscrowd": 1},
    ]
    path = root / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_synthetic_shapes_are_deterministic_and_boxes_fit_the_drawing():
    from internimage_hf.training.detection_data import SYNTHETIC_LABELS, SyntheticDetectionShapes

    shapes = SyntheticDetectionShapes(40, 64, seed=3)
    image, target = shapes[5]
    again_image, again_target = SyntheticDetectionShapes(40, 64, seed=3)[5]
    assert np.array_equal(np.asarray(image), np.asarray(again_image))
    np.testing.assert_array_equal(target["boxes"], again_target["boxes"])
    assert not np.array_equal(np.asarray(image), np.asarray(SyntheticDetectionShapes(40, 64, seed=4)[5][0]))
    counts = []
    for index in range(len(shapes)):
        image, target = shapes[index]
        boxes, labels = target["boxes"], target["class_labels"]
        counts.append(len(labels))
        assert boxes.shape == (len(labels), 4) and target["image_id"] == index
        assert (boxes[:, 2:] > 0).all() and (boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= 64).all()
        assert set(labels.tolist()) <= set(range(len(SYNTHETIC_LABELS)))
    assert 0 in counts and max(counts) >= 2  # images without objects occur


def test_coco_json_source_maps_category_ids_clips_and_keeps_empty_images(tmp_path):
    from internimage_hf.training.detection_data import CocoDetectionSource, coco_ground_truth

    source = CocoDetectionSource(write_coco(tmp_path), tmp_path / "images")
    assert source.label_names == ["cat", "dog"] and source.category_ids == [5, 9]  # sorted by id
    image, target = source[0]
    assert image.size == (40, 30) and target["image_id"] == 1
    assert target["class_labels"].tolist() == [0, 1]
    # 30 + 10.5 overhangs the 40-pixel image by half a pixel (within tolerance): clipped to the image.
    np.testing.assert_allclose(target["boxes"], [[2, 3, 10, 12], [30, 20, 10, 10]])
    assert source.target(1)["class_labels"].tolist() == [1]  # the crowd annotation is not trained on
    assert len(source.target(2)["class_labels"]) == 0 and source.target(2)["boxes"].shape == (0, 4)
    truth = coco_ground_truth(source, source.label_names)
    assert len(truth["annotations"]) == 4  # evaluation keeps crowd boxes

    without_area = [{"id": 1, "image_id": 3, "category_id": 9, "bbox": [1, 2, 3, 4]}]
    source = CocoDetectionSource(
        write_coco(tmp_path / "plain", annotations=without_area), tmp_path / "plain" / "images"
    )
    assert coco_ground_truth(source, source.label_names)["annotations"][0] == {
        **without_area[0],
        "area": 12,
        "iscrowd": 0,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": [2, 3, 0, 12]}, r"image 1 \(a.png\), annotation 11: bbox .* width or height <= 0"),
        ({"bbox": [2, 3, 10, -4]}, r"image 1 \(a.png\), annotation 11: bbox .* width or height <= 0"),
        ({"bbox": [35, 3, 10, 12]}, r"image 1 \(a.png\), annotation 11: bbox .* outside the 40x30 image"),
        ({"bbox": [-5, 3, 10, 12]}, r"image 1 \(a.png\), annotation 11: bbox .* outside"),
        ({"bbox": [2, 3, 10]}, r"annotation 11: bbox must be four finite numbers"),
        ({"category_id": 7}, r"image 1 \(a.png\), annotation 11: category 7 is not one of .*\[5, 9\]"),
        ({"image_id": 99}, r"annotation 11 refers to image_id 99"),
    ],
)
def test_bad_coco_annotations_fail_early_naming_image_and_annotation(tmp_path, change, message):
    from internimage_hf.training.detection_data import CocoDetectionSource

    annotations = [{"id": 11, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 12], "iscrowd": 0, **change}]
    with pytest.raises(ValueError, match=message):
        CocoDetectionSource(write_coco(tmp_path, annotations=annotations), tmp_path / "images")


def test_missing_image_file_fails_early(tmp_path):
    from internimage_hf.training.detection_data import CocoDetectionSource

    with pytest.raises(ValueError, match=r"image 2 \(b.png\): file .*b.png not found"):
        CocoDetectionSource(write_coco(tmp_path, missing_file="b.png"), tmp_path / "images")


def detection_options(**overrides):
    from internimage_hf.training.detection import parse_detection_options

    options = parse_detection_options(["--output_dir", "unused", "--dataset", "unused"])
    return SimpleNamespace(**{**vars(options), **overrides})


def write_objects_dataset(path, bad_row: int | None = None):
    """A saved `datasets` DatasetDict (train 4 rows, validation 2) in the Hub's object-detection layout."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    features = Features(
        {
            "image": Image(),
            "objects": {
                "bbox": Sequence(Sequence(Value("float32"), length=4)),
                "category": Sequence(ClassLabel(names=["a", "b"])),
            },
        }
    )

    def rows(count, offset):
        images, objects = [], []
        for index in range(count):
            images.append(PILImage.fromarray(np.full((32, 48, 3), 40 * index, dtype=np.uint8)))
            boxes = [[4.0, 4.0, 10.0, 8.0]] if index % 2 == 0 else []
            if bad_row == offset + index:
                boxes = [[40.0, 4.0, 20.0, 8.0]]  # past the 48-pixel width
            objects.append({"bbox": boxes, "category": [index % 2] * len(boxes)})
        return Dataset.from_dict({"image": images, "objects": objects}, features=features)

    DatasetDict({"train": rows(4, 0), "validation": rows(2, 100)}).save_to_disk(str(path))
    return path


def test_datasets_objects_input(tmp_path):
    from internimage_hf.training.detection_data import coco_ground_truth, prepare_detection_data

    data = prepare_detection_data(detection_options(dataset=str(write_objects_dataset(tmp_path / "ds"))))
    assert data.label_names == ["a", "b"] and len(data.train) == 4 and len(data.eval) == 2
    image, target = data.train[0]
    assert image.size == (48, 32)
    np.testing.assert_allclose(target["boxes"], [[4, 4, 10, 8]])
    assert target["class_labels"].tolist() == [0] and len(data.train.target(1)["class_labels"]) == 0
    truth = coco_ground_truth(data.eval, data.label_names)
    assert [image["width"] for image in truth["images"]] == [48, 48] and len(truth["annotations"]) == 1

    with pytest.raises(ValueError, match=r"split 'train', row 2 \(image_id 2\), object 0: bbox .* outside the 48x32"):
        prepare_detection_data(detection_options(dataset=str(write_objects_dataset(tmp_path / "bad", bad_row=2))))


def test_augmentation_clips_boxes_and_drops_those_cropped_away():
    import PIL.Image

    from internimage_hf.training.data import seeded_call
    from internimage_hf.training.detection_data import DetectionTransform

    image = PIL.Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8))
    # Two squares: one in the top-left corner, one near the bottom-right.
    target = {"image_id": 0, "boxes": np.array([[0.0, 0.0, 12.0, 12.0], [40.0, 40.0, 20.0, 20.0]]),
              "class_labels": np.array([0, 1])}  # fmt: skip
    transform = DetectionTransform(scales=(48, 64, 80), max_size=120, crop_probability=1.0, min_crop=0.5)
    dropped = clipped = 0
    for seed in range(60):
        pixels, out = seeded_call(transform, seed, image, target)
        height, width = pixels.shape[-2:]
        boxes = out["boxes"]
        assert pixels.dtype == torch.uint8 and max(height, width) <= 120 and min(height, width) <= 80
        assert len(boxes) == len(out["class_labels"]) and boxes.shape[-1] == 4
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()  # degenerate boxes are gone
        dropped += len(boxes) < 2
        sides = boxes[:, 2:] - boxes[:, :2]
        clipped += bool(((sides[:, 0] / sides[:, 1] - 1).abs() > 0.2).any())  # a square cut by the crop
    assert dropped > 0 and clipped > 0
    # Without a crop nothing is dropped and the squares stay square.
    pixels, out = seeded_call(DetectionTransform((64,), 64, crop_probability=0.0), 0, image, target)
    np.testing.assert_allclose(sorted(out["boxes"][:, 2] - out["boxes"][:, 0]), [12, 20])


def test_collator_pads_normalises_and_accepts_images_without_objects():
    from internimage_hf.training.detection import build_detection_processor
    from internimage_hf.training.detection_data import DetectionCollator

    processor = build_detection_processor(64, 107)
    box = torch.tensor([[10.0, 0.0, 30.0, 20.0]])
    examples = [
        {"image": torch.zeros(3, 40, 70, dtype=torch.uint8), "orig_size": (40, 70),
         "target": {"image_id": 7, "boxes": box, "class_labels": torch.tensor([2])}},
        {"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "orig_size": (64, 64),
         "target": {"image_id": 8, "boxes": torch.zeros(0, 4), "class_labels": torch.zeros(0, dtype=torch.long)}},
    ]  # fmt: skip
    batch = DetectionCollator(processor, train=True)(examples)
    assert batch["pixel_values"].shape == (2, 3, 64, 96)  # padded to multiples of 32
    assert batch["pixel_mask"][0, :40, :70].all() and not batch["pixel_mask"][0, 40:].any()
    # (cx, cy, w, h) relative to the unpadded 70x40 image.
    torch.testing.assert_close(batch["labels"][0]["boxes"], torch.tensor([[20 / 70, 10 / 40, 20 / 70, 20 / 40]]))
    assert batch["labels"][0]["class_labels"].tolist() == [2]
    assert batch["labels"][1]["boxes"].shape == (0, 4) and batch["labels"][1]["class_labels"].numel() == 0
    assert batch["image_ids"].tolist() == [7, 8] and batch["orig_sizes"].tolist() == [[40, 70], [64, 64]]
