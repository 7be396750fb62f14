"""Stand-in for `mmcv._ext`, the compiled extension that `mmcv-lite` does not ship.

`mmcv.ops` (imported by mmdet and parts of mmseg) loads its C++/CUDA functions from `mmcv._ext` at import time.
The reference implementations we compare against never call them on CPU — e.g. mmcv's
`MultiScaleDeformableAttention` runs its pure-PyTorch path for CPU tensors — so an extension whose every
function raises is enough to import them, and any accidental call fails loudly instead of computing something
else.
"""

from __future__ import annotations

import sys
import types


class _MissingCompiledOps(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise RuntimeError(f"mmcv compiled op `{name}` is not available (mmcv-lite has no mmcv._ext)")

        missing.__name__ = name
        return missing


def install() -> None:
    """Register the stand-in as `mmcv._ext` unless a real compiled extension is importable."""
    if "mmcv._ext" in sys.modules:
        return
    try:
        import mmcv._ext  # noqa: F401
    except ImportError:
        sys.modules["mmcv._ext"] = _MissingCompiledOps("mmcv._ext")
