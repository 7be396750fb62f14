#!/usr/bin/env python
"""Write the compact parity fixtures (tests/fixtures/*.safetensors) by running the official InternImage code.

    pip install timm  # the official code imports it
    git clone https://github.com/OpenGVLab/InternImage /path/to/InternImage
    python scripts/make_parity_fixtures.py --official /path/to/InternImage [--out tests/fixtures] [--only tiny_t ...]
    python scripts/make_parity_fixtures.py --official /path/to/InternImage --check ../shared/golden/*.safetensors

Runs on CPU with the official PyTorch DCNv3 core; the compiled op is not needed (its import is stubbed when it is
not installed). The official code is never copied into this repository; its commit is recorded in each fixture.
See `internimage_hf.parity_fixtures` for the file format and `--help` for every option.
"""

import sys

from internimage_hf.parity_fixtures import main

if __name__ == "__main__":
    sys.exit(main())
