#!/usr/bin/env python
"""Build the DCNv3 hub kernel (kernel_src/) for the installed torch.

Usage: python scripts/build_kernel.py [--backend cpu|cuda] [--cuda-archs "8.0;9.0+PTX"|native] --out DIR

Writes DIR/build/<variant>/ (e.g. torch214-cxx11-cu130-x86_64-linux), loadable with
``kernels.get_local_kernel(DIR)`` or ``internimage_hf.kernelize(model, local_path=DIR)``.
The logic lives in `internimage_hf.kernel_build`.
"""

import importlib.util
import sys
from pathlib import Path

# Load the module by path: it needs only the standard library (and torch, lazily), so the CLI does not pay
# for importing the whole package (transformers) and works before `pip install -e .`.
_PATH = Path(__file__).resolve().parents[1] / "src" / "internimage_hf" / "kernel_build.py"
_SPEC = importlib.util.spec_from_file_location("internimage_hf_kernel_build", _PATH)
kernel_build = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = kernel_build  # dataclasses look their module up in sys.modules
_SPEC.loader.exec_module(kernel_build)

if __name__ == "__main__":
    sys.exit(kernel_build.main())
