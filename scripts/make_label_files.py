#!/usr/bin/env python
"""Write the label files shipped in `internimage_hf/data/`: ImageNet (classification) and segmentation datasets.

ImageNet-1k and ImageNet-22k names come from the synset lists that the `timm` wheel ships (no network access
beyond PyPI is needed)::

    pip download --no-deps timm -d /tmp/timm_wheel
    python scripts/make_label_files.py /tmp/timm_wheel/timm-*.whl
    # or, with the wheel already unpacked:
    python scripts/make_label_files.py /path/to/timm/data/_info

ADE20K (150), Cityscapes (19) and COCO-Stuff 164k (171) names come from the dataset metadata (`METAINFO`) of
mmsegmentation, the reference implementation of the official InternImage segmentation models::

    .venv-ref/bin/python scripts/make_label_files.py --segmentation     # the installed mmseg (make_reference_env.sh)
    python scripts/make_label_files.py --segmentation --mmseg-source mmsegmentation-1.2.2-py3-none-any.whl

COCO (80 detection classes) comes from the dataset metadata of mmdetection (3.3.0), the reference implementation of
the official InternImage DINO detectors::

    pip download --no-deps mmdet==3.3.0 -d /tmp/mmdet_wheel
    python scripts/make_label_files.py --detection --mmdet-source /tmp/mmdet_wheel/mmdet-3.3.0-py3-none-any.whl

The class tuples are read from the package's source (`mmseg/datasets/{ade,cityscapes,coco_stuff}.py`) as Python
literals, without importing mmseg (its import needs mmcv's compiled ops). Names are stripped of surrounding
whitespace: mmseg spells ADE20K class 7 ``"bed "``. Class indices are the model output channels: ADE20K index 0 is
"wall" (mmseg drops the annotation's "other" 0 with ``reduce_zero_label``), Cityscapes uses the 19 train ids.

Inputs read from `timm/data/_info/`:

- `imagenet_synsets.txt`: the 1,000 ImageNet-1k (ILSVRC-2012) synsets in the standard class-index order;
- `imagenet22k_synsets.txt`: the 21,841 ImageNet-22k (fall11) synsets, sorted by WordNet id;
- `imagenet_synset_to_lemma.txt`: ``synset<TAB>lemmas`` (e.g. ``n01440764	tench, Tinca tinca``).

Outputs: `imagenet1k_labels.json` and `imagenet22k_labels.json`, each ``{"<class index>": "<lemmas>"}``, the
format of `config.id2label`.

Class order of the 22k head. The official 22k training code (`classification/dataset/cached_image_folder.py`
of OpenGVLab/InternImage) reads its class indices from `classification/meta_data/22k_class_to_idx.json`; that
file maps the 21,841 synsets to 0..21840 in sorted-synset order, identical to `imagenet22k_synsets.txt`.
Pass that file with `--check-class-to-idx` to re-check it. Its `map22kto1k.txt` (22k index for each 1k class)
agrees with this order for 999 of the 1,000 classes; the exception is 1k class 850 (n04399382, "teddy bear"),
which is not part of the fall11 release; the official file maps it to index 11136 (n04398044, "teapot").
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

INFO_DIR = "timm/data/_info"
FILES = ("imagenet_synsets.txt", "imagenet22k_synsets.txt", "imagenet_synset_to_lemma.txt")
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "src" / "internimage_hf" / "data"
EXPECTED_COUNTS = {"imagenet1k": 1000, "imagenet22k": 21841}
# dataset -> (module of the mmseg package, dataset class, number of classes)
MMSEG_DATASETS = {
    "ade20k": ("datasets/ade.py", "ADE20KDataset", 150),
    "cityscapes": ("datasets/cityscapes.py", "CityscapesDataset", 19),
    "coco_stuff": ("datasets/coco_stuff.py", "COCOStuffDataset", 171),
}
# dataset -> (module of the mmdet package, dataset class, number of classes)
MMDET_DATASETS = {"coco": ("datasets/coco.py", "CocoDataset", 80)}


def read_timm_info(source: Path) -> dict[str, str]:
    """The text of the three synset files, from a timm wheel or from an unpacked `_info` directory."""
    if source.is_file():
        with zipfile.ZipFile(source) as wheel:
            return {name: wheel.read(f"{INFO_DIR}/{name}").decode("utf-8") for name in FILES}
    return {name: (source / name).read_text(encoding="utf-8") for name in FILES}


def parse_lemmas(text: str) -> dict[str, str]:
    """``synset<TAB>lemmas`` lines -> {synset: lemmas}."""
    lemmas = {}
    for line in text.splitlines():
        if line.strip():
            synset, names = line.split("\t", 1)
            lemmas[synset] = names.strip()
    return lemmas


def id2label(synsets: list[str], lemmas: dict[str, str]) -> dict[str, str]:
    """{"0": lemmas of the first synset, ...}; every synset must have a lemma."""
    missing = [s for s in synsets if s not in lemmas]
    if missing:
        raise SystemExit(f"{len(missing)} synsets have no lemma, e.g. {missing[:5]}")
    return {str(i): lemmas[s] for i, s in enumerate(synsets)}


def check_class_to_idx(path: Path, synsets_22k: list[str]) -> None:
    """Fail unless the official `22k_class_to_idx.json` gives exactly the order of `synsets_22k`."""
    class_to_idx = json.loads(path.read_text())
    official = [synset for synset, _ in sorted(class_to_idx.items(), key=lambda item: item[1])]
    if official != synsets_22k:
        raise SystemExit(f"{path} disagrees with timm's imagenet22k_synsets.txt order")
    print(f"{path}: same 21,841-class order as imagenet22k_synsets.txt")


def installed_package_dir(package: str) -> Path:
    """The directory of the installed `package` (mmseg, mmdet), found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"{package} is not installed; run `bash scripts/make_reference_env.sh` or pass --{package}-source"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def read_package_module(source: Path, package: str, module: str) -> str:
    """The text of `<package>/<module>` from the package's wheel or from its package directory."""
    if source.is_file():
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(f"{package}/{module}").decode("utf-8")
    return (source / module).read_text(encoding="utf-8")


def metainfo_classes(module_text: str, class_name: str) -> tuple[str, ...]:
    """``METAINFO["classes"]`` of `class_name`, evaluated as a literal from the module's source."""
    for node in ast.parse(module_text).body:
        if not (isinstance(node, ast.ClassDef) and node.name == class_name):
            continue
        for statement in node.body:
            targets = statement.targets if isinstance(statement, ast.Assign) else []
            if [getattr(t, "id", None) for t in targets] != ["METAINFO"]:
                continue
            fields = _dict_fields(statement.value)
            if "classes" in fields:
                return tuple(ast.literal_eval(fields["classes"]))
    raise SystemExit(f"no METAINFO = dict(classes=...) or {{'classes': ...}} in class {class_name}")


def _dict_fields(node: ast.expr) -> dict[str, ast.expr]:
    """The fields of a ``dict(key=...)`` call (mmseg) or a ``{'key': ...}`` literal (mmdet)."""
    if isinstance(node, ast.Call):
        return {keyword.arg: keyword.value for keyword in node.keywords}
    if isinstance(node, ast.Dict):
        return {
            key.value: value for key, value in zip(node.keys, node.values, strict=True) if isinstance(key, ast.Constant)
        }
    return {}


def dataset_labels(source: Path, package: str, datasets: dict[str, tuple[str, str, int]]) -> dict[str, dict[str, str]]:
    """{dataset: {"<class index>": name}} for every dataset of `datasets` (`MMSEG_DATASETS`, `MMDET_DATASETS`),
    read from `package`'s source at `source`, counts checked."""
    labels = {}
    for dataset, (module, class_name, expected) in datasets.items():
        names = [name.strip() for name in metainfo_classes(read_package_module(source, package, module), class_name)]
        if len(names) != expected or len(set(names)) != expected:
            raise SystemExit(f"{class_name}: expected {expected} distinct classes, found {len(set(names))}")
        labels[dataset] = {str(i): name for i, name in enumerate(names)}
    return labels


def write_labels(path: Path, id2label: dict[str, str]) -> None:
    # One entry per line keeps diffs readable; ensure_ascii=False keeps names like "café" legible.
    path.write_text(json.dumps(id2label, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path} ({len(id2label)} classes)")


def write_imagenet_labels(timm_source: Path, output_dir: Path, class_to_idx: Path | None) -> None:
    texts = read_timm_info(timm_source)
    lemmas = parse_lemmas(texts["imagenet_synset_to_lemma.txt"])
    synsets = {
        "imagenet1k": texts["imagenet_synsets.txt"].split(),
        "imagenet22k": texts["imagenet22k_synsets.txt"].split(),
    }
    for name, expected in EXPECTED_COUNTS.items():
        if len(synsets[name]) != expected:
            raise SystemExit(f"{name}: expected {expected} synsets, found {len(synsets[name])}")
    if class_to_idx:
        check_class_to_idx(class_to_idx, synsets["imagenet22k"])
    for name, names in synsets.items():
        write_labels(output_dir / f"{name}_labels.json", id2label(names, lemmas))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "timm_source", type=Path, nargs="?", help="a timm wheel (.whl) or its unpacked timm/data/_info dir"
    )
    parser.add_argument("--segmentation", action="store_true", help="write the ADE20K/Cityscapes/COCO-Stuff files")
    parser.add_argument(
        "--mmseg-source", type=Path, help="an mmsegmentation wheel or mmseg package dir (default: the installed one)"
    )
    parser.add_argument("--detection", action="store_true", help="write the COCO detection file")
    parser.add_argument(
        "--mmdet-source", type=Path, help="an mmdetection wheel or mmdet package dir (default: the installed one)"
    )
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check-class-to-idx", type=Path, help="official meta_data/22k_class_to_idx.json")
    args = parser.parse_args(argv)
    if args.timm_source is None and not (args.segmentation or args.detection):
        parser.error("pass a timm source (ImageNet files), --segmentation, --detection, or several")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.segmentation:
        source = args.mmseg_source or installed_package_dir("mmseg")
        for dataset, id2label_map in dataset_labels(source, "mmseg", MMSEG_DATASETS).items():
            write_labels(args.output_dir / f"{dataset}_labels.json", id2label_map)
    if args.detection:
        source = args.mmdet_source or installed_package_dir("mmdet")
        for dataset, id2label_map in dataset_labels(source, "mmdet", MMDET_DATASETS).items():
            write_labels(args.output_dir / f"{dataset}_labels.json", id2label_map)
    if args.timm_source is not None:
        write_imagenet_labels(args.timm_source, args.output_dir, args.check_class_to_idx)


if __name__ == "__main__":
    sys.exit(main())
