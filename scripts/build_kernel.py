#!/usr/bin/env python
"""Build the DCNv3 hub kernel (kernel_src/) for the installed torch.

Usage: python scripts/build_kernel.py [--backend cpu|cuda] [--cuda-archs "8.0;9.0+PTX"|native] --out DIR

Writes DIR/build/<variant>/ (e.g. torch214-cxx11-cu130-x86_64-linux), loadable with
``kernels.get_local_kernel(DIR)`` or ``internimage_hf.kernelize(model, local_path=DIR)``.
The logic lives in `tools/kernel_build.py` (build tooling, not part of the package: it needs only the standard
library and torch, and works before `pip install -e .`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import kernel_build  # noqa: E402

if __name__ == "__main__":
    sys.exit(kernel_build.main())
