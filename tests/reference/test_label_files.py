"""The shipped segmentation label names are mmsegmentation's dataset metadata (`METAINFO["classes"]`)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

pytest.importorskip("mmengine", reason="reference implementations not installed: bash scripts/make_reference_env.sh")

from mmseg.datasets import ADE20KDataset, CityscapesDataset, COCOStuffDataset  # noqa: E402

from internimage_hf.data.labels import (  # noqa: E402
    DETECTION_LABEL_FILES,
    SEGMENTATION_LABEL_FILES,
    detection_id2label,
    segmentation_id2label,
)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_label_files.py"
DATA_DIR = Path(__file__).resolve().parents[2] / "src" / "internimage_hf" / "data"
DATASET_CLASSES = {"ade20k": ADE20KDataset, "cityscapes": CityscapesDataset, "coco_stuff": COCOStuffDataset}


@pytest.mark.parametrize("dataset", sorted(DATASET_CLASSES))
def test_shipped_names_are_mmseg_metainfo(dataset):
    classes = DATASET_CLASSES[dataset].METAINFO["classes"]
    # Only surrounding whitespace is dropped (mmseg spells ADE20K class 7 "bed ").
    assert segmentation_id2label(dataset) == {i: name.strip() for i, name in enumerate(classes)}


def test_script_regenerates_the_shipped_files_from_the_installed_mmseg(tmp_path):
    runpy.run_path(str(SCRIPT))["main"](["--segmentation", "--output-dir", str(tmp_path)])
    for file_name in SEGMENTATION_LABEL_FILES.values():
        assert (tmp_path / file_name).read_bytes() == (DATA_DIR / file_name).read_bytes()


def test_shipped_coco_names_are_mmdet_metainfo(tmp_path):
    from mmdet.datasets import CocoDataset

    assert detection_id2label("coco") == dict(enumerate(CocoDataset.METAINFO["classes"]))
    runpy.run_path(str(SCRIPT))["main"](["--detection", "--output-dir", str(tmp_path)])
    for file_name in DETECTION_LABEL_FILES.values():
        assert (tmp_path / file_name).read_bytes() == (DATA_DIR / file_name).read_bytes()
