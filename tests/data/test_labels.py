"""Segmentation label names shipped in `internimage_hf/data/` and the script that writes them.

That the files equal mmsegmentation's `METAINFO` is checked in the reference environment
(`tests/reference/test_label_files.py`).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from internimage_hf.data.labels import SEGMENTATION_LABEL_FILES, detection_id2label, segmentation_id2label

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_label_files.py"

# (dataset, number of classes, a few index -> name pairs of mmseg's class order)
KNOWN = [
    ("ade20k", 150, {0: "wall", 2: "sky", 7: "bed", 12: "person", 149: "flag"}),
    ("cityscapes", 19, {0: "road", 1: "sidewalk", 11: "person", 13: "car", 18: "bicycle"}),
    ("coco_stuff", 171, {0: "person", 79: "toothbrush", 80: "banner", 170: "wood"}),
]


@pytest.mark.parametrize(("dataset", "count", "names"), KNOWN)
def test_segmentation_labels(dataset, count, names):
    id2label = segmentation_id2label(dataset)
    assert list(id2label) == list(range(count))
    assert len(set(id2label.values())) == count
    assert all(name == name.strip() and name for name in id2label.values())
    assert {i: id2label[i] for i in names} == names


def test_unknown_segmentation_dataset_is_refused():
    assert set(SEGMENTATION_LABEL_FILES) == {"ade20k", "cityscapes", "coco_stuff"}
    with pytest.raises(ValueError, match=r"`dataset` must be one of \['ade20k', 'cityscapes', 'coco_stuff'\].*'ade'"):
        segmentation_id2label("ade")


def fake_mmseg_package(root: Path, counts: dict[str, int]) -> Path:
    """An `mmseg` directory whose dataset modules define METAINFO like mmseg's (names ``<dataset>-<i>`` + a space)."""
    script = runpy.run_path(str(SCRIPT))
    for dataset, (module, class_name, _) in script["MMSEG_DATASETS"].items():
        classes = ", ".join(f"'{dataset}-{i} '" for i in range(counts[dataset]))
        path = root / module
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"from .base import Base\n\n\nclass Other(Base):\n    METAINFO = dict(classes=('x',))\n\n\n"
            f"class {class_name}(Base):\n    '''Doc.'''\n    METAINFO = dict(\n        classes=({classes},),\n"
            f"        palette=[[0, 0, 0]])\n\n    def __init__(self):\n        pass\n"
        )
    return root


def test_script_writes_segmentation_files_from_mmseg_metainfo(tmp_path, capsys):
    counts = {"ade20k": 150, "cityscapes": 19, "coco_stuff": 171}
    source = fake_mmseg_package(tmp_path / "mmseg", counts)
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["--segmentation", "--mmseg-source", str(source), "--output-dir", str(tmp_path / "out")])
    for dataset, count in counts.items():
        written = (tmp_path / "out" / SEGMENTATION_LABEL_FILES[dataset]).read_text(encoding="utf-8")
        assert f'"0": "{dataset}-0",\n' in written and f'"{count - 1}": "{dataset}-{count - 1}"\n' in written
    assert "wrote" in capsys.readouterr().out


def test_script_refuses_a_wrong_class_count(tmp_path):
    source = fake_mmseg_package(tmp_path / "mmseg", {"ade20k": 150, "cityscapes": 18, "coco_stuff": 171})
    main = runpy.run_path(str(SCRIPT))["main"]
    with pytest.raises(SystemExit, match="CityscapesDataset: expected 19 distinct classes, found 18"):
        main(["--segmentation", "--mmseg-source", str(source), "--output-dir", str(tmp_path / "out")])


def test_coco_detection_labels():
    id2label = detection_id2label("coco")
    assert list(id2label) == list(range(80))
    assert len(set(id2label.values())) == 80
    assert {i: id2label[i] for i in (0, 2, 56, 79)} == {0: "person", 2: "car", 56: "chair", 79: "toothbrush"}
    # COCO-Stuff's first 80 classes are the same things in the same order
    assert [id2label[i] for i in range(80)] == [segmentation_id2label("coco_stuff")[i] for i in range(80)]


def test_unknown_detection_dataset_is_refused():
    with pytest.raises(ValueError, match=r"`dataset` must be one of \['coco'\].*'lvis'"):
        detection_id2label("lvis")
