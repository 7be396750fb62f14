"""Swap the PyTorch DCNv3 core for the compiled hub kernel (``internimage-hf/dcnv3``) with ``kernels``.

The model's `internimage_hf.ops.dcnv3.DCNv3Core` modules are tagged for the ``kernels`` library
(``use_kernel_forward_from_hub("DCNv3Core")``), and so are its MLPs (``"InternImageMLP"``) and DCNv3 operators
(``"InternImageDCNv3"``), and FlashInternImage's `internimage_hf.ops.dcnv4.DCNv4Core` (``"DCNv4Core"``) and DCNv4
operators (``"FlashInternImageDCNv4"``). `kernelize` replaces their forward with the kernel's ``layers.DCNv3Core``
and ``layers.DCNv4Core`` (cuda and cpu), ``layers.InternImageMLP``, ``layers.InternImageDCNv3`` and
``layers.FlashInternImageDCNv4`` (cpu only: oneDNN linears with the bias (and the
MLP's activation) fused, for float32 inference) when the kernel can be loaded, and otherwise keeps the portable
PyTorch path. It also maps Transformers' Deformable DETR ``MultiScaleDeformableAttention`` (tagged by Transformers;
the DINO detector's encoder and decoder attention) to the kernel's ``layers.MultiScaleDeformableAttention`` (cuda
and cpu), in a DINO detector or in any Transformers model holding it:

- importing this module imports neither ``kernels`` nor anything that touches the network;
- the network is only contacted by `kernelize` (or by `from_pretrained(..., use_kernels=True)` after
  `register_dcnv3_kernel_mapping`), never at import or model construction;
- failures (``kernels`` missing, no commit pinned for the default kernel, offline without a cached kernel,
  unsupported device, no build variant for this torch) leave the model on the PyTorch path and are logged once.

Which kernel is loaded, and when its code is trusted, is decided by `internimage_hf.hub_kernels.source`: the
``local_path`` / ``repo_id`` arguments, the environment variable ``INTERNIMAGE_DCNV3_KERNEL``, else the commit
pinned in the package (`internimage_hf.hub_kernels.pin`). Local kernels load the build variant that fits the torch
and the model's device (`internimage_hf.hub_kernels.local`).

transformers integration: InternImage models route Transformers' switch (``from_pretrained(..., use_kernels=True)``,
``kernel_config=``, ``model.use_kernels``) to `kernelize` through `set_model_kernels`, with any ``kernels`` release.
``import internimage_hf`` registers the layer names mapped to no device (`register_layer_names`), so Transformers'
default kernelize (on in 5.25) leaves them alone quietly; a Transformers model wrapping the backbone kernelizes it
after `register_dcnv3_kernel_mapping`.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from torch import nn

from .local import LocalKernelRepository, load_local_kernel
from .pin import KernelPinError
from .source import KernelSource, resolve_kernel_source

logger = logging.getLogger(__name__)

DCNV3_LAYER_NAME = "DCNv3Core"
DCNV4_LAYER_NAME = "DCNv4Core"
MLP_LAYER_NAME = "InternImageMLP"
OPERATOR_LAYER_NAME = "InternImageDCNv3"
FLASH_OPERATOR_LAYER_NAME = "FlashInternImageDCNv4"
# Transformers' name for Deformable DETR's sampling core (its `use_kernel_forward_from_hub` tag).
MSDA_LAYER_NAME = "MultiScaleDeformableAttention"
# Devices each kernel layer is mapped for: the MLP and operator layers only pay off where oneDNN runs the linears.
LAYER_DEVICES = {
    DCNV3_LAYER_NAME: ("cuda", "cpu"),
    DCNV4_LAYER_NAME: ("cuda", "cpu"),
    MLP_LAYER_NAME: ("cpu",),
    OPERATOR_LAYER_NAME: ("cpu",),
    FLASH_OPERATOR_LAYER_NAME: ("cpu",),
    MSDA_LAYER_NAME: ("cuda", "cpu"),
}
# Layers of this package's own modules. Only these enter the global ``kernels`` mapping (`register_layer_names`,
# `register_dcnv3_kernel_mapping`): Transformers maps MultiScaleDeformableAttention globally to its own hub kernel
# on CUDA, and registering it here would silently take that over for every Deformable DETR in the process.
OWN_LAYER_NAMES = (
    DCNV3_LAYER_NAME,
    DCNV4_LAYER_NAME,
    MLP_LAYER_NAME,
    OPERATOR_LAYER_NAME,
    FLASH_OPERATOR_LAYER_NAME,
)
# The sampling cores, whose implementation `dcnv3_backend` reports.
CORE_LAYER_NAMES = (DCNV3_LAYER_NAME, DCNV4_LAYER_NAME)
SUPPORTED_DEVICES = ("cuda", "cpu")
PYTORCH_BACKEND = "pytorch"

# Name of the instance attribute recording which kernel a kernelized module runs.
_SOURCE_ATTR = "_dcnv3_kernel_source"
_logged: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.log(level, message)


def _repository(source: KernelSource, layer_name: str, device: str):
    """The ``kernels`` mapping target of ``layer_name`` on ``device`` for ``source`` (imports ``kernels``)."""
    import kernels

    if source.local_path is not None:
        return LocalKernelRepository(source.local_path, layer_name=layer_name, device=device)
    return kernels.LayerRepository(
        source.repo_id,
        layer_name=layer_name,
        revision=source.revision,
        version=source.version,
        trust_remote_code=source.trust_remote_code,
    )


def _kernel_mapping(source: KernelSource, devices, layer_names=tuple(LAYER_DEVICES)) -> dict:
    """``{layer name: {device: repository}}`` for the given devices (a layer without them maps to ``{}``)."""
    return {
        layer_name: {
            device: _repository(source, layer_name, device) for device in devices if device in LAYER_DEVICES[layer_name]
        }
        for layer_name in layer_names
    }


def register_dcnv3_kernel_mapping(
    repo_id: str | None = None,
    revision: str | None = None,
    version: int | None = None,
    local_path: str | os.PathLike | None = None,
    trust_remote_code: bool | list[str] = False,
) -> KernelSource:
    """Register the global ``kernels`` mapping of InternImage's kernel layers (`OWN_LAYER_NAMES`; Transformers'
    MultiScaleDeformableAttention keeps Transformers' mapping: `kernelize` maps it per call).

    Needed before ``from_pretrained(..., use_kernels=True)``; `kernelize` does not need it. Nothing is
    downloaded here (``kernels`` resolves lazily on the first kernelize).

    Args:
        repo_id: hub kernel repo ``org/name``; default: ``INTERNIMAGE_DCNV3_KERNEL`` (a hub id or a local path),
            else ``internimage-hf/dcnv3``.
        revision: hub branch, tag or 40-hex commit; default: ``INTERNIMAGE_DCNV3_KERNEL_REVISION``, else the commit
            pinned in the package for the default repo. Not together with `version`.
        version: kernel major version (follows the movable ``v<version>`` branch); not together with `revision`.
        local_path: a local build root, its ``build/`` or one variant directory (takes precedence over the hub).
        trust_remote_code: let ``kernels`` run hub code from a publisher the Hub does not flag as trusted (``True``
            or a list of repo ids). Only the pinned default commit is trusted without it.

    Returns:
        The resolved `KernelSource` (repo and revision, or local path).

    Raises:
        ImportError: ``kernels`` is not installed.
        KernelPinError: the default hub kernel is selected but this release pins no commit.
    """
    try:
        import kernels
    except ImportError as err:
        raise ImportError("register_dcnv3_kernel_mapping needs the `kernels` package: pip install kernels") from err
    source = resolve_kernel_source(repo_id, revision, version, local_path, trust_remote_code)
    kernels.register_kernel_mapping(_kernel_mapping(source, SUPPORTED_DEVICES, OWN_LAYER_NAMES))
    return source


def _tagged_modules(model: nn.Module, layer_names) -> list[nn.Module]:
    return [m for m in model.modules() if getattr(type(m), "kernel_layer_name", None) in layer_names]


def _core_modules(model: nn.Module) -> list[nn.Module]:
    return _tagged_modules(model, CORE_LAYER_NAMES)


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
    trust_remote_code: bool | list[str] = False,
) -> nn.Module:
    """Run the model's DCNv3 and DCNv4 cores (and, on CPU, its MLPs) and Transformers' multi-scale deformable
    attention cores on the hub (or local) kernel when possible.

    Modules the kernel cannot serve keep their PyTorch forward.

    Args:
        model: any module containing `internimage_hf.ops.dcnv3.DCNv3Core`, `internimage_hf.ops.dcnv4.DCNv4Core` or
            Transformers' ``MultiScaleDeformableAttention`` submodules (an InternImage or FlashInternImage model, a DINO
            detector, a Deformable DETR); modified in place.
        mode: a ``kernels.Mode`` (or ``"inference"`` / ``"training"``); default from ``model.training``.
            Add ``kernels.Mode.TORCH_COMPILE`` when the model will be compiled.
        device: ``"cuda"`` or ``"cpu"``; default: the device of the model's parameters.
        repo_id: hub kernel repo ``org/name``; default: ``INTERNIMAGE_DCNV3_KERNEL`` (a hub id or a local path),
            else ``internimage-hf/dcnv3``.
        revision: hub branch, tag or 40-hex commit; default: ``INTERNIMAGE_DCNV3_KERNEL_REVISION``, else the commit
            pinned in the package for the default repo. Not together with `version`.
        version: kernel major version (follows the movable ``v<version>`` branch); not together with `revision`.
        local_path: a local build root, its ``build/`` or one variant directory (takes precedence over the hub).
        trust_remote_code: let ``kernels`` run hub code from a publisher the Hub does not flag as trusted (``True``
            or a list of repo ids). Only the pinned default commit is trusted without it.

    Returns:
        ``model``. `dcnv3_backend` tells which implementation runs.

    Raises:
        ValueError: conflicting or malformed selection arguments (or ``INTERNIMAGE_DCNV3_KERNEL``), unknown mode.
    """
    modules = _tagged_modules(model, tuple(LAYER_DEVICES))
    if not modules:
        return model
    try:
        import kernels
    except ImportError:
        _log_once(logging.WARNING, "DCNv3: `kernels` is not installed; running the PyTorch implementation")
        return model
    device = device or _infer_device(model)
    if device not in SUPPORTED_DEVICES:
        _log_once(logging.WARNING, f"DCNv3: no kernel for device {device!r}; running the PyTorch implementation")
        return model
    kernel_mode = _to_mode(mode, kernels, model.training)
    try:
        source = resolve_kernel_source(repo_id, revision, version, local_path, trust_remote_code)
    except KernelPinError as err:
        _log_once(logging.WARNING, f"DCNv3: {err}; running the PyTorch implementation")
        return model
    try:
        if source.local_path is not None:  # report (and load) the variant picked for this torch and device
            _, variant_dir = load_local_kernel(source.local_path, device)
            source = dataclasses.replace(source, local_path=variant_dir)
        mapping = _kernel_mapping(source, (device,))
        mapping |= {name: {} for name in _other_kernel_layers(model) if name not in mapping}
        with kernels.use_kernel_mapping(mapping, inherit_mapping=False):
            kernels.kernelize(model, mode=kernel_mode, device=device, use_fallback=True)
    except Exception as err:  # network, cache, resolver, import and layer-contract errors: keep PyTorch
        return _fall_back(model, modules, source, err)
    kernelized = [m for m in modules if _runs_kernel(m)]
    for module in kernelized:
        module.__dict__[_SOURCE_ATTR] = source.describe()
    _log_once(logging.INFO, f"DCNv3: running {dcnv3_backend(model)} on {device}")
    return model


def _other_kernel_layers(model: nn.Module) -> set[str]:
    """Kernel layer names of other libraries' modules in `model` that this kernel does not serve: mapped to no
    device, they keep their PyTorch forward without a "No kernel mapping" warning."""
    return {name for module in model.modules() if (name := getattr(type(module), "kernel_layer_name", None))}


def _fall_back(model: nn.Module, modules: list[nn.Module], source: KernelSource, err: Exception) -> nn.Module:
    _restore_pytorch(modules)
    _log_once(
        logging.WARNING,
        f"DCNv3: could not load the kernel {source.describe()} ({type(err).__name__}: {err}); "
        "running the PyTorch implementation",
    )
    return model


def register_layer_names() -> None:
    """Make InternImage's kernel layers (`OWN_LAYER_NAMES`) known to the global ``kernels`` mapping, mapped to no
    device.

    Transformers >= 5.25 kernelizes on every ``from_pretrained`` by default (a UperNet with an InternImage backbone,
    say); a tagged layer missing from the mapping then logs "No kernel mapping found" once per instance. Mapped to
    no device, the layers keep their PyTorch forward silently (``kernels``' no-device fallback) and nothing is
    downloaded. An existing mapping (`register_dcnv3_kernel_mapping`) is kept.

    Raises:
        ImportError: ``kernels`` is not installed.
    """
    import kernels

    kernels.register_kernel_mapping({layer_name: {} for layer_name in OWN_LAYER_NAMES})


def hub_kernels_enabled() -> bool:
    """Transformers' switch ``USE_HUB_KERNELS`` (default on; 1, ON, YES or TRUE in any case keep it on)."""
    return os.environ.get("USE_HUB_KERNELS", "YES").upper() in {"1", "ON", "YES", "TRUE"}


def _config_entry(layer_name: str, entry) -> tuple[str, dict]:
    """``(location, metadata)`` of one `KernelConfig` entry ``"place:Layer"`` or ``("place:Layer", {...})``."""
    location, metadata = entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, {})
    if not isinstance(location, str) or ":" not in location or not isinstance(metadata, dict):
        raise ValueError(
            f"kernel_config entry for `{layer_name}` must be 'org/name:{layer_name}' (or '/path/to/build:{layer_name}' "
            f"with use_local_kernel=True), optionally in a tuple with a dict of revision/version/trust_remote_code; "
            f"got {entry!r}"
        )
    location, _, repo_layer = location.rpartition(":")
    unknown = set(metadata) - {"revision", "version", "trust_remote_code"}
    if repo_layer not in LAYER_DEVICES or unknown or not location:
        raise ValueError(
            f"kernel_config entry for `{layer_name}`: {entry!r} must name one of the kernel's layers "
            f"{sorted(LAYER_DEVICES)} and only revision/version/trust_remote_code"
        )
    return location, metadata


def kernel_config_source(kernel_config, device: str) -> dict | None:
    """`kernelize` arguments for a Transformers ``KernelConfig`` (``None``: the default kernel, ``{}``).

    Its ``kernel_mapping`` may name any of the kernel layers (`LAYER_DEVICES`), each as ``"org/name:Layer"`` or
    ``("org/name:Layer", {"revision" or "version": ..., "trust_remote_code": ...})`` (with ``use_local_kernel=True``
    ``"/path/to/build:Layer"``), or as a dict of such per device. One kernel serves every layer, so the entries for
    ``device`` must all name the same kernel.

    Returns:
        The keyword arguments of `kernelize`, or ``None`` when the config names no kernel for ``device``.

    Raises:
        ValueError: a layer this model does not have, a malformed entry, or entries naming different kernels.
    """
    if kernel_config is None:
        return {}
    mapping = getattr(kernel_config, "kernel_mapping", None)
    if not isinstance(mapping, dict):
        raise ValueError(f"kernel_config.kernel_mapping must be a dict, got {type(mapping).__name__}")
    places = {}
    for layer_name, entry in mapping.items():
        if layer_name not in LAYER_DEVICES:
            raise ValueError(
                f"kernel_config maps `{layer_name}`, which InternImage does not have; its kernel layers are "
                f"{sorted(LAYER_DEVICES)}"
            )
        if isinstance(entry, dict):  # per device: none for this device keeps PyTorch, as in Transformers
            if device not in entry:
                continue
            entry = entry[device]
        location, metadata = _config_entry(layer_name, entry)
        places[(location, repr(sorted(metadata.items())))] = (location, metadata)
    if len(places) > 1:
        raise ValueError(
            "one DCNv3 kernel serves all of InternImage's kernel layers, but kernel_config names several: "
            + ", ".join(sorted(location for location, _ in places.values()))
        )
    if not places:
        return None
    location, metadata = next(iter(places.values()))
    if getattr(kernel_config, "use_local_kernel", False):
        return {"local_path": location}
    return {"repo_id": location, **metadata}


def set_model_kernels(model: nn.Module, use_kernels: bool, kernel_config=None, mode=None) -> None:
    """Transformers' kernel switch for InternImage models (``use_kernels=True``, ``kernel_config=``,
    ``model.use_kernels``), served by `kernelize`: the same kernel, variant, device and trust rules.

    ``USE_HUB_KERNELS`` switched off keeps PyTorch, as Transformers does.
    """
    if use_kernels and not hub_kernels_enabled():
        _log_once(logging.WARNING, "DCNv3: use_kernels=True, but USE_HUB_KERNELS disables hub kernels; running PyTorch")
        use_kernels = False
    kernel_mode = None
    if use_kernels:
        device = _infer_device(model)
        arguments = kernel_config_source(kernel_config, device)
        if arguments is None:
            _log_once(logging.INFO, f"DCNv3: kernel_config names no kernel for {device}; running PyTorch")
        else:
            kernelize(model, mode=mode, **arguments)
        try:
            import kernels

            kernel_mode = _to_mode(mode, kernels, model.training)
        except ImportError:
            pass
    else:
        _restore_pytorch(_tagged_modules(model, tuple(LAYER_DEVICES)))
    # Transformers' own record behind `model.use_kernels` and `model.kernels_mode` (5.4 to 5.25 keep it here);
    # the mode stops `train()`/`eval()` from kernelizing again for a mode already served.
    model._use_kernels = bool(use_kernels)
    model._kernels_mode = kernel_mode


def load_with_kernel_switch(load, *args, **kwargs):
    """Call `load` (a bound ``from_pretrained``) with Transformers' kernel switch taken out of ``kwargs``, then serve
    the switch with the model's ``set_use_kernels`` (so `kernelize`'s kernel and rules apply).

    ``use_kernels`` defaults to False, though Transformers >= 5.25 defaults it to True: loading stays offline and quiet
    with any ``kernels`` release. Returns what `load` returns (a model, or ``(model, info)``).
    """
    use_kernels = kwargs.pop("use_kernels", False)
    kernel_config = kwargs.pop("kernel_config", None)
    kernels_mode = kwargs.pop("kernels_mode", None)
    loaded = load(*args, use_kernels=False, **kwargs)
    model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info=True
    if use_kernels or kernel_config is not None:
        model.set_use_kernels(True, kernel_config, kernels_mode)
    return loaded


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

    Args:
        model: any module; its `internimage_hf.ops.dcnv3.DCNv3Core` and `internimage_hf.ops.dcnv4.DCNv4Core`
            submodules are inspected (none: ``"pytorch"``).

    Returns:
        ``"pytorch"``, ``"hub:<repo>@v<version>"`` / ``"hub:<repo>@<revision>"``, ``"local:<path>"``, or
        ``"kernel:<id>"`` for a kernel installed by other means. Mixed models report the first kernel found.
    """
    for module in _core_modules(model):
        if _runs_kernel(module):
            return module.__dict__.get(_SOURCE_ATTR) or _describe_forward(module)
    return PYTORCH_BACKEND


__all__ = [
    "CORE_LAYER_NAMES",
    "DCNV3_LAYER_NAME",
    "DCNV4_LAYER_NAME",
    "FLASH_OPERATOR_LAYER_NAME",
    "LAYER_DEVICES",
    "MLP_LAYER_NAME",
    "MSDA_LAYER_NAME",
    "OPERATOR_LAYER_NAME",
    "OWN_LAYER_NAMES",
    "PYTORCH_BACKEND",
    "SUPPORTED_DEVICES",
    "dcnv3_backend",
    "hub_kernels_enabled",
    "kernel_config_source",
    "kernelize",
    "register_dcnv3_kernel_mapping",
    "register_layer_names",
    "set_model_kernels",
]
