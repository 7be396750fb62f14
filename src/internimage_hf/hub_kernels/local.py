"""Load the build variant of a local DCNv3 kernel that fits the running torch and device (needs ``kernels``).

A local kernel is a kernel repo root, its ``build/`` dir, or one variant dir (``torch214-cxx11-cpu-x86_64-linux``,
holding ``metadata.json``). Roots and ``build/`` dirs are resolved by ``kernels.get_local_kernel`` itself, the
public loader whose signature ``kernels`` 0.17 to 0.19 share, so the variant naming and selection rules are always
those of the installed ``kernels``. Two differences from calling it directly:

- the backend follows the model's device, not only the torch build: a model on CPU gets the ``cpu`` variant on a
  CUDA build of torch (``kernels`` would only accept the CUDA one there), and the build's own backend otherwise
  (our CUDA variants also serve CPU tensors);
- a variant dir passed directly is checked first (``kernels`` imports it whatever torch it was built for, and a
  compiled extension for another torch can crash the process): its name is judged by the ``kernels`` variant
  resolver and the dir is refused with the resolver's reason. ``kernels`` exports no function for that check, so
  the resolver module is looked up where each release keeps it; a release that keeps it elsewhere gets a clear
  error asking for the build root instead.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from types import ModuleType

# Where ``kernels`` releases keep the variant resolver: 0.19 moved it under ``_internals``.
_RESOLVER_MODULES = ("kernels._internals.variants", "kernels.variants")


class KernelVariantError(FileNotFoundError):
    """No variant of a local kernel fits this torch and device (a ``FileNotFoundError``, like ``kernels``' own)."""


def _backends(device: str) -> tuple[str | None, ...]:
    """``kernels`` backends to try for ``device``, preferred first (``None``: the torch build's backend)."""
    return ("cpu", None) if device == "cpu" else (None,)


def _variant_resolver() -> ModuleType | None:
    """The installed ``kernels``' module with ``parse_variant`` and ``resolve_variants``, if it has one."""
    for name in _RESOLVER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "parse_variant") and hasattr(module, "resolve_variants"):
            return module
    return None


def _rejections(trace) -> str:
    reasons = [f"{d.variant.variant_str}: {d.reason}" for d in trace if hasattr(d, "reason")]
    return "; ".join(reasons) or "it holds no build variants"


def check_variant_dir(path: Path, device: str) -> None:
    """Refuse a variant dir whose name says it was built for another torch, CPU, OS or backend.

    Raises:
        KernelVariantError: the name does not fit this system, cannot be parsed, or cannot be checked.
    """
    resolver = _variant_resolver()
    if resolver is None:
        raise KernelVariantError(
            f"cannot check the kernel variant {path} with this `kernels` release; pass its build root instead"
        )
    try:
        variant = resolver.parse_variant(path.name)
    except ValueError:
        raise KernelVariantError(
            f"cannot tell which torch the kernel variant {path} was built for: a variant directory must keep its "
            "kernels name (e.g. torch214-cxx11-cpu-x86_64-linux); pass its parent build directory instead"
        ) from None
    first_trace = None
    for backend in _backends(device):
        accepted, trace = resolver.resolve_variants([variant], backend)
        if accepted:
            return
        first_trace = first_trace or trace
    raise KernelVariantError(f"the kernel variant {path} does not fit this system: {_rejections(first_trace)}")


def _metadata_id(folder: Path) -> str | None:
    try:
        return json.loads((folder / "metadata.json").read_text()).get("id")
    except (OSError, ValueError, AttributeError):
        return None


def _variant_dir_of(module: ModuleType, path: Path) -> Path:
    """The variant dir of the local kernel ``path`` that ``module`` was loaded from.

    ``kernels`` imports a variant under its metadata id and returns the module already imported under that id, so
    the dir is found by id (``module.__file__`` may name an earlier copy of the same build).
    """
    folders = [path] + [d for base in (path, path / "build") if base.is_dir() for d in sorted(base.iterdir())]
    for folder in folders:
        if (folder / "metadata.json").is_file() and _metadata_id(folder) == module.__name__:
            return folder
    return Path(module.__file__).parent


def load_local_kernel(path: str | Path, device: str) -> tuple[ModuleType, Path]:
    """Import the variant of the local kernel ``path`` that serves a model on ``device`` (``"cpu"``, ``"cuda"``).

    Returns:
        The kernel module and the variant dir it was loaded from (inside ``path`` as given, links unresolved).

    Raises:
        KernelVariantError: ``path`` is missing, has no fitting variant, or is a variant dir that does not fit
            (the reason given is the resolver's, e.g. ``Torch version (2.13) does not match environment Torch
            version (2.14)``).
    """
    import kernels

    path = Path(path)
    if (path / "metadata.json").is_file():
        check_variant_dir(path, device)
    elif not path.is_dir():
        raise KernelVariantError(f"no local kernel directory {path}")
    first_error = None
    for backend in _backends(device):
        try:
            module = kernels.get_local_kernel(path, backend=backend)
        except FileNotFoundError as err:
            first_error = first_error or err
            continue
        return module, _variant_dir_of(module, path)
    reason = " ".join(str(first_error).split())
    raise KernelVariantError(f"no variant of the kernel in {path} fits this system: {reason}")


@dataclasses.dataclass(frozen=True)
class LocalKernelRepository:
    """A ``kernels`` mapping target for a local kernel: loads the variant for ``device`` (`load_local_kernel`).

    Like ``kernels.LocalLayerRepository``, which loads the variant of the torch build whatever the device.
    Hashable, since ``kernels`` caches loaded layers per repository.
    """

    path: Path
    layer_name: str
    device: str

    def load(self):
        module, _ = load_local_kernel(self.path, self.device)
        layer = getattr(getattr(module, "layers", None), self.layer_name, None)
        if layer is None:
            raise ValueError(f"the kernel in {self.path} has no layer `{self.layer_name}` in its `layers` module")
        return layer

    def __str__(self) -> str:
        return f"`{self.path}` ({self.device} variant, layer `{self.layer_name}`)"


__all__ = ["KernelVariantError", "LocalKernelRepository", "check_variant_dir", "load_local_kernel"]
