"""Swap the PyTorch DCNv3 core for the compiled hub kernel (``internimage-hf/dcnv3``) with ``kernels``.

The model's `internimage_hf.dcnv3.DCNv3Core` modules are tagged for the ``kernels`` library
(``use_kernel_forward_from_hub("DCNv3Core")``), and so are its MLPs (``"InternImageMLP"``). `kernelize`
replaces their forward with the kernel's ``layers.DCNv3Core`` (cuda and cpu) and ``layers.InternImageMLP``
(cpu only: oneDNN linears with fused bias and activation for float32 inference) when the kernel can be
loaded, and otherwise keeps the portable PyTorch path:

- importing this module imports neither ``kernels`` nor anything that touches the network;
- the network is only contacted by `kernelize` (or by `from_pretrained(..., use_kernels=True)` after
  `register_dcnv3_kernel_mapping`), never at import or model construction;
- failures (``kernels`` missing, offline without a cached kernel, unsupported device, no matching build
  variant) leave the model on the PyTorch path and are logged once.

Kernel selection, highest priority first: the ``local_path`` / ``repo_id`` arguments, the environment
variable ``INTERNIMAGE_DCNV3_KERNEL`` (a hub repo id, or a path to a local kernel repo / build dir), the
pinned default `DCNV3_KERNEL_REPO_ID` at version `DCNV3_KERNEL_VERSION`. ``INTERNIMAGE_DCNV3_KERNEL_REVISION``
pins a hub revision (branch, tag or commit) instead of the version.

transformers integration: ``from_pretrained(..., use_kernels=True)`` kernelizes with the global ``kernels``
mapping, so call `register_dcnv3_kernel_mapping()` first. That path needs a transformers release whose
kernels pin accepts the installed ``kernels`` (5.20-5.22 with kernels 0.17.2). transformers >= 5.23 requires
kernels >= 0.18.2 and otherwise raises ``ValueError: Kernels are not available``; `kernelize` here works
with any transformers version because it calls ``kernels.kernelize`` directly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from torch import nn

logger = logging.getLogger(__name__)

DCNV3_KERNEL_REPO_ID = "internimage-hf/dcnv3"
DCNV3_KERNEL_VERSION = 1
DCNV3_LAYER_NAME = "DCNv3Core"
MLP_LAYER_NAME = "InternImageMLP"
# Devices each kernel layer is mapped for: the MLP layer only pays off where oneDNN runs the linears.
LAYER_DEVICES = {DCNV3_LAYER_NAME: ("cuda", "cpu"), MLP_LAYER_NAME: ("cpu",)}
KERNEL_ENV = "INTERNIMAGE_DCNV3_KERNEL"
REVISION_ENV = "INTERNIMAGE_DCNV3_KERNEL_REVISION"
SUPPORTED_DEVICES = ("cuda", "cpu")
PYTORCH_BACKEND = "pytorch"

# Name of the instance attribute recording which kernel a kernelized module runs.
_SOURCE_ATTR = "_dcnv3_kernel_source"
_logged: set[str] = set()


@dataclasses.dataclass(frozen=True)
class KernelSource:
    """Where the DCNv3 kernel comes from: a hub repo (``revision`` or ``version``) or a local directory."""

    repo_id: str | None = None
    revision: str | None = None
    version: int | None = None
    local_path: Path | None = None

    def describe(self) -> str:
        """``"local:<path>"``, ``"hub:<repo>@v<version>"`` or ``"hub:<repo>@<revision>"``."""
        if self.local_path is not None:
            return f"local:{self.local_path}"
        pin = f"v{self.version}" if self.version is not None else self.revision
        return f"hub:{self.repo_id}@{pin}"


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.log(level, message)


def resolve_kernel_source(
    repo_id: str | None = None,
    revision: str | None = None,
    version: int | None = None,
    local_path: str | os.PathLike | None = None,
) -> KernelSource:
    """Apply the selection rules (arguments, then environment, then the pinned default); no I/O."""
    if revision is not None and version is not None:
        raise ValueError("pass either `revision` or `version` for the DCNv3 kernel, not both")
    if local_path is not None:
        return KernelSource(local_path=Path(local_path).expanduser())
    if repo_id is None:
        env = os.environ.get(KERNEL_ENV, "").strip()
        if env and (Path(env).expanduser().exists() or env.startswith((".", "/", "~"))):
            return KernelSource(local_path=Path(env).expanduser())
        repo_id = env or DCNV3_KERNEL_REPO_ID
    if revision is None and version is None:
        revision = os.environ.get(REVISION_ENV, "").strip() or None
    if revision is None and version is None:
        version = DCNV3_KERNEL_VERSION
    return KernelSource(repo_id=repo_id, revision=revision, version=version)


def _repository(source: KernelSource, layer_name: str):
    """The ``kernels`` mapping target of ``layer_name`` for ``source`` (imports ``kernels``)."""
    import kernels

    if source.local_path is not None:
        return kernels.LocalLayerRepository(source.local_path, layer_name=layer_name)
    # Our own org is not a "trusted kernel publisher" on the Hub; the repo is chosen explicitly here.
    return kernels.LayerRepository(
        source.repo_id,
        layer_name=layer_name,
        revision=source.revision,
        version=source.version,
        trust_remote_code=True,
    )


def _kernel_mapping(source: KernelSource, devices) -> dict:
    """``{layer name: {device: repository}}`` for the given devices (a layer without them maps to ``{}``)."""
    return {
        layer_name: {device: _repository(source, layer_name) for device in devices if device in layer_devices}
        for layer_name, layer_devices in LAYER_DEVICES.items()
    }


def register_dcnv3_kernel_mapping(
    repo_id: str | None = None,
    revision: str | None = None,
    version: int | None = None,
    local_path: str | os.PathLike | None = None,
) -> KernelSource:
    """Register the global ``kernels`` mapping of the kernel layers (`LAYER_DEVICES`).

    Needed before ``from_pretrained(..., use_kernels=True)``; `kernelize` does not need it. Nothing is
    downloaded here (``kernels`` resolves lazily on the first kernelize).

    Raises:
        ImportError: ``kernels`` is not installed.
    """
    try:
        import kernels
    except ImportError as err:
        raise ImportError("register_dcnv3_kernel_mapping needs the `kernels` package: pip install kernels") from err
    source = resolve_kernel_source(repo_id, revision, version, local_path)
    kernels.register_kernel_mapping(_kernel_mapping(source, SUPPORTED_DEVICES))
    return source


def _tagged_modules(model: nn.Module, layer_names) -> list[nn.Module]:
    return [m for m in model.modules() if getattr(type(m), "kernel_layer_name", None) in layer_names]


def _dcnv3_modules(model: nn.Module) -> list[nn.Module]:
    return _tagged_modules(model, (DCNV3_LAYER_NAME,))


def _runs_kernel(module: nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return forward is not None and getattr(forward, "__func__", None) is not type(module).forward


def _restore_pytorch(modules: list[nn.Module]) -> None:
    for module in modules:
        module.__dict__.pop("forward", None)
        module.__dict__.pop(_SOURCE_ATTR, None)


def _infer_device(model: nn.Module) -> str:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device.type
    return "cpu"


def _to_mode(mode, kernels_module, training: bool):
    if mode is None:
        return kernels_module.Mode.TRAINING if training else kernels_module.Mode.INFERENCE
    if isinstance(mode, str):
        names = {"inference": "INFERENCE", "training": "TRAINING"}
        if mode.lower() not in names:
            raise ValueError(f"unknown kernelize mode {mode!r}; expected 'inference', 'training' or a kernels.Mode")
        return getattr(kernels_module.Mode, names[mode.lower()])
    return mode


def kernelize(
    model: nn.Module,
    *,
    mode=None,
    device: str | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    version: int | None = None,
    local_path: str | os.PathLike | None = None,
) -> nn.Module:
    """Run the model's DCNv3 cores (and, on CPU, its MLPs) on the hub (or local) kernel when possible.

    Modules the kernel cannot serve keep their PyTorch forward.

    Args:
        model: any module containing `internimage_hf.dcnv3.DCNv3Core` submodules; modified in place.
        mode: a ``kernels.Mode`` (or ``"inference"`` / ``"training"``); default from ``model.training``.
            Add ``kernels.Mode.TORCH_COMPILE`` when the model will be compiled.
        device: ``"cuda"`` or ``"cpu"``; default: the device of the model's parameters.
        repo_id, revision, version, local_path: kernel selection (see the module docstring).

    Returns:
        ``model``. `dcnv3_backend` tells which implementation runs.
    """
    if not _dcnv3_modules(model):
        return model
    modules = _tagged_modules(model, tuple(LAYER_DEVICES))
    try:
        import kernels
    except ImportError:
        _log_once(logging.WARNING, "DCNv3: `kernels` is not installed; running the PyTorch implementation")
        return model
    device = device or _infer_device(model)
    if device not in SUPPORTED_DEVICES:
        _log_once(logging.WARNING, f"DCNv3: no kernel for device {device!r}; running the PyTorch implementation")
        return model
    source = resolve_kernel_source(repo_id, revision, version, local_path)
    kernel_mode = _to_mode(mode, kernels, model.training)
    try:
        mapping = _kernel_mapping(source, (device,))
        with kernels.use_kernel_mapping(mapping, inherit_mapping=False):
            kernels.kernelize(model, mode=kernel_mode, device=device, use_fallback=True)
    except Exception as err:  # network, cache, resolver, import and layer-contract errors: keep PyTorch
        return _fall_back(model, modules, source, err)
    kernelized = [m for m in modules if _runs_kernel(m)]
    for module in kernelized:
        module.__dict__[_SOURCE_ATTR] = source.describe()
    _log_once(logging.INFO, f"DCNv3: running {dcnv3_backend(model)} on {device}")
    return model


def _fall_back(model: nn.Module, modules: list[nn.Module], source: KernelSource, err: Exception) -> nn.Module:
    _restore_pytorch(modules)
    _log_once(
        logging.WARNING,
        f"DCNv3: could not load the kernel {source.describe()} ({type(err).__name__}: {err}); "
        "running the PyTorch implementation",
    )
    return model


def _describe_forward(module: nn.Module) -> str:
    """Best-effort description of a kernel forward installed by someone else (e.g. transformers)."""
    kernel_id = getattr(module.forward.__func__, "__module__", "").split(".")[0]
    try:
        import kernels

        for loaded in kernels.get_loaded_kernels():
            if loaded.metadata.id == kernel_id and loaded.repo_info is not None:
                return f"hub:{loaded.repo_info.repo_id}@{loaded.repo_info.revision}"
    except Exception:  # introspection only
        pass
    return f"kernel:{kernel_id}"


def dcnv3_backend(model: nn.Module) -> str:
    """Which DCNv3 implementation ``model`` runs.

    Returns:
        ``"pytorch"``, ``"hub:<repo>@v<version>"`` / ``"hub:<repo>@<revision>"``, ``"local:<path>"``, or
        ``"kernel:<id>"`` for a kernel installed by other means. Mixed models report the first kernel found.
    """
    for module in _dcnv3_modules(model):
        if _runs_kernel(module):
            return module.__dict__.get(_SOURCE_ATTR) or _describe_forward(module)
    return PYTORCH_BACKEND


__all__ = [
    "DCNV3_KERNEL_REPO_ID",
    "DCNV3_KERNEL_VERSION",
    "DCNV3_LAYER_NAME",
    "LAYER_DEVICES",
    "MLP_LAYER_NAME",
    "KernelSource",
    "dcnv3_backend",
    "kernelize",
    "register_dcnv3_kernel_mapping",
    "resolve_kernel_source",
]
