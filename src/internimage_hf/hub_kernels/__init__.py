"""The compiled DCNv3 kernel (``internimage-hf/dcnv3`` on the kernel hub, or a local build) in place of the PyTorch
modules (InternImage's, and Transformers' multi-scale deformable attention), through the ``kernels`` library:

- `kernelizing`: `kernelize`, `dcnv3_backend`, the ``kernels`` layer mappings (`register_dcnv3_kernel_mapping`,
  `register_layer_names`) and Transformers' kernel switch (`set_model_kernels`, `kernel_config_source`);
- `source`: which kernel is loaded and whether its code is trusted (`resolve_kernel_source`);
- `pin`: the hub commit of the kernel this release trusts (``dcnv3_kernel_pin.json``);
- `local`: the build variant of a local kernel that fits the running torch and device.

Importing it imports neither ``kernels`` nor anything that touches the network. The names below are the public
API (``internimage_hf.hub_kernels.kernelize`` ...); `internimage_hf.kernelize` is the same function.
"""

from .kernelizing import (
    CORE_LAYER_NAMES,
    DCNV3_LAYER_NAME,
    DCNV4_LAYER_NAME,
    FLASH_OPERATOR_LAYER_NAME,
    LAYER_DEVICES,
    MLP_LAYER_NAME,
    MSDA_LAYER_NAME,
    OPERATOR_LAYER_NAME,
    OWN_LAYER_NAMES,
    PYTORCH_BACKEND,
    SUPPORTED_DEVICES,
    dcnv3_backend,
    hub_kernels_enabled,
    kernel_config_source,
    kernelize,
    load_with_kernel_switch,
    register_dcnv3_kernel_mapping,
    register_layer_names,
    set_model_kernels,
)
from .pin import KernelPinError
from .source import (
    DCNV3_KERNEL_REPO_ID,
    DCNV3_KERNEL_VERSION,
    KERNEL_ENV,
    REVISION_ENV,
    KernelSource,
    resolve_kernel_source,
)

__all__ = [
    "DCNV3_KERNEL_REPO_ID",
    "DCNV3_KERNEL_VERSION",
    "CORE_LAYER_NAMES",
    "DCNV3_LAYER_NAME",
    "DCNV4_LAYER_NAME",
    "FLASH_OPERATOR_LAYER_NAME",
    "KERNEL_ENV",
    "LAYER_DEVICES",
    "MLP_LAYER_NAME",
    "MSDA_LAYER_NAME",
    "OPERATOR_LAYER_NAME",
    "OWN_LAYER_NAMES",
    "PYTORCH_BACKEND",
    "REVISION_ENV",
    "SUPPORTED_DEVICES",
    "KernelPinError",
    "KernelSource",
    "dcnv3_backend",
    "hub_kernels_enabled",
    "kernel_config_source",
    "kernelize",
    "register_dcnv3_kernel_mapping",
    "register_layer_names",
    "resolve_kernel_source",
    "load_with_kernel_switch",
    "set_model_kernels",
]
