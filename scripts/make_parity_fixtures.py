#!/usr/bin/env python
"""Write the compact parity fixtures (tests/fixtures/*.safetensors) by running the official InternImage code.

    pip install timm  # the official code imports it
    git clone https://github.com/OpenGVLab/InternImage /path/to/InternImage
    python scripts/make_parity_fixtures.py --official /path/to/InternImage [--out tests/fixtures] [--only tiny_t ...]
    python scripts/make_parity_fixtures.py --official /path/to/InternImage --check ../shared/golden/*.safetensors

Runs on CPU with the official PyTorch DCNv3 core; the compiled op is not needed (its import is stubbed when it is
not installed). The official code is never copied into this repository; its commit is recorded in each fixture.
See `tools/parity_fixtures.py` for the file format and `--help` for every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from parity_fixtures import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
