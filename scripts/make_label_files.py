#!/usr/bin/env python
"""Write the ImageNet-1k and ImageNet-22k label files shipped in `internimage_hf/data/`.

The label names come from the synset lists that the `timm` wheel ships (no network access beyond PyPI is
needed)::

    pip download --no-deps timm -d /tmp/timm_wheel
    python scripts/make_label_files.py /tmp/timm_wheel/timm-*.whl
    # or, with the wheel already unpacked:
    python scripts/make_label_files.py /path/to/timm/data/_info

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
import json
import sys
import zipfile
from pathlib import Path

INFO_DIR = "timm/data/_info"
FILES = ("imagenet_synsets.txt", "imagenet22k_synsets.txt", "imagenet_synset_to_lemma.txt")
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "src" / "internimage_hf" / "data"
EXPECTED_COUNTS = {"imagenet1k": 1000, "imagenet22k": 21841}


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timm_source", type=Path, help="a timm wheel (.whl) or its unpacked timm/data/_info dir")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check-class-to-idx", type=Path, help="official meta_data/22k_class_to_idx.json")
    args = parser.parse_args(argv)

    texts = read_timm_info(args.timm_source)
    lemmas = parse_lemmas(texts["imagenet_synset_to_lemma.txt"])
    synsets = {
        "imagenet1k": texts["imagenet_synsets.txt"].split(),
        "imagenet22k": texts["imagenet22k_synsets.txt"].split(),
    }
    for name, expected in EXPECTED_COUNTS.items():
        if len(synsets[name]) != expected:
            raise SystemExit(f"{name}: expected {expected} synsets, found {len(synsets[name])}")
    if args.check_class_to_idx:
        check_class_to_idx(args.check_class_to_idx, synsets["imagenet22k"])

    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, names in synsets.items():
        path = args.output_dir / f"{name}_labels.json"
        # One entry per line keeps diffs readable; ensure_ascii=False keeps names like "café" legible.
        path.write_text(json.dumps(id2label(names, lemmas), indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path} ({len(names)} classes)")


if __name__ == "__main__":
    sys.exit(main())
