"""Import a built kernel variant: through `kernels` when installed, else like its loader does."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def import_variant(variant_dir: Path):
    """Import a variant like the ``kernels`` loader does (module name = metadata id), without ``kernels``."""
    ops = json.loads((variant_dir / "metadata.json").read_text())["id"]
    if ops in sys.modules:
        return sys.modules[ops]
    spec = importlib.util.spec_from_file_location(ops, variant_dir / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[ops] = module
    spec.loader.exec_module(module)
    return module


def load_variant(variant_dir: Path):
    """Through ``kernels.get_local_kernel`` when installed (the real loader), else `import_variant`."""
    try:
        import kernels
    except ImportError:
        return import_variant(variant_dir)
    return kernels.get_local_kernel(variant_dir)
