"""Pick the build variant of a local DCNv3 kernel that fits the running torch and device (needs ``kernels``).

A local kernel is a kernel repo root, its ``build/`` dir, or one variant dir (``torch214-cxx11-cpu-x86_64-linux``,
holding ``metadata.json``). The variant is chosen by the ``kernels`` resolver's own rules (torch major.minor,
C++ ABI, CPU, OS, backend), with two differences from ``kernels.get_local_kernel``:

- the backend follows the model's device, not only the torch build: a model on CPU gets the ``cpu`` variant on a
  CUDA build of torch (``kernels`` would only accept the CUDA one there), and the build's own backend otherwise
  (our CUDA variants also serve CPU tensors);
- a variant dir passed directly is checked as well (``kernels`` imports it whatever torch it was built for, and a
  compiled extension for another torch can crash the process): it is refused with the resolver's reason.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


class KernelVariantError(FileNotFoundError):
    """No variant of a local kernel fits this torch and device (a ``FileNotFoundError``, like ``kernels``' own)."""


def _backends(device: str) -> tuple[str | None, ...]:
    """``kernels`` backends to try for ``device``, preferred first (``None``: the torch build's backend)."""
    return ("cpu", None) if device == "cpu" else (None,)


def _rejections(trace) -> str:
    from kernels import VariantRejected

    reasons = [f"{d.variant.variant_str}: {d.reason}" for d in trace if isinstance(d, VariantRejected)]
    return "; ".join(reasons) or "it holds no build variants"


def _check_variant_dir(path: Path, device: str) -> Path:
    from kernels.variants import parse_variant, resolve_variants

    try:
        variant = parse_variant(path.name)
    except ValueError:
        raise KernelVariantError(
            f"cannot tell which torch the kernel variant {path} was built for: a variant directory must keep its "
            "kernels name (e.g. torch214-cxx11-cpu-x86_64-linux); pass its parent build directory instead"
        ) from None
    first_trace = None
    for backend in _backends(device):
        accepted, trace = resolve_variants([variant], backend)
        if accepted:
            return path
        first_trace = first_trace or trace
    raise KernelVariantError(f"the kernel variant {path} does not fit this system: {_rejections(first_trace)}")


def select_local_variant(path: str | Path, device: str) -> Path:
    """The variant dir of the local kernel ``path`` to load for a model on ``device`` (``"cpu"``, ``"cuda"``).

    Raises:
        KernelVariantError: ``path`` has no fitting variant, or is a variant dir that does not fit (the reason
            given is the resolver's, e.g. ``Torch version (2.13) does not match environment Torch version (2.14)``).
    """
    from kernels.variants import get_variants_local, resolve_variants

    path = Path(path)
    if (path / "metadata.json").is_file():
        return _check_variant_dir(path, device)
    bases = [base for base in (path, path / "build") if base.is_dir()]
    first_trace = []
    for backend in _backends(device):
        for base in bases:
            accepted, trace = resolve_variants(get_variants_local(base), backend)
            if accepted:
                return base / accepted[0].variant_str
            first_trace = first_trace or trace
    if not bases:
        raise KernelVariantError(f"no local kernel directory {path}")
    raise KernelVariantError(f"no variant of the kernel in {path} fits this system: {_rejections(first_trace)}")


@dataclasses.dataclass(frozen=True)
class LocalKernelRepository:
    """A ``kernels`` mapping target for a local kernel: picks the variant for ``device`` when loaded.

    Like ``kernels.LocalLayerRepository`` (which loads the variant it is given), plus `select_local_variant`.
    Hashable, since ``kernels`` caches loaded layers per repository.
    """

    path: Path
    layer_name: str
    device: str

    def load(self):
        import kernels

        variant = select_local_variant(self.path, self.device)
        return kernels.LocalLayerRepository(variant, layer_name=self.layer_name).load()

    def __str__(self) -> str:
        return f"`{self.path}` ({self.device} variant, layer `{self.layer_name}`)"


__all__ = ["KernelVariantError", "LocalKernelRepository", "select_local_variant"]
