#!/usr/bin/env python
"""Write the compact parity fixtures (tests/fixtures/*.safetensors) by running the official code.

InternImage (tiny_*.safetensors; the official OpenGVLab/InternImage code):

    pip install timm  # the official code imports it
    git clone https://github.com/OpenGVLab/InternImage /path/to/InternImage
    python scripts/make_parity_fixtures.py --official /path/to/InternImage [--out tests/fixtures] [--only tiny_t ...]
    python scripts/make_parity_fixtures.py --official /path/to/InternImage --check ../shared/golden/*.safetensors

FlashInternImage (flash_tiny_*.safetensors; the official OpenGVLab/DCNv4 code, its DCNv4 sampling run by
`tools/dcnv4_official.py` when that is importable, see `tools/flash_parity_fixtures.py`):

    git clone https://github.com/OpenGVLab/DCNv4 /path/to/DCNv4
    python scripts/make_parity_fixtures.py --family flash_internimage --official /path/to/DCNv4

Runs on CPU; the compiled ops are not needed (their imports are stubbed when they are not installed). The official
code is never copied into this repository; its commit is recorded in each fixture. `--help` lists every option of
a family (`--family flash_internimage --help`).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

FAMILIES = ("internimage", "flash_internimage")

if __name__ == "__main__":
    family_parser = argparse.ArgumentParser(add_help=False)
    family_parser.add_argument("--family", choices=FAMILIES, default="internimage")
    family, rest = family_parser.parse_known_args()
    if family.family == "flash_internimage":
        from flash_parity_fixtures import main
    else:
        from parity_fixtures import main
    sys.exit(main(rest))
