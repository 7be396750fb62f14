"""InternImage as native Hugging Face Transformers classes, with a DCNv3 hub kernel."""

from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification

# The top-level name is a placeholder without torchvision in transformers < 5.5; the module is always real.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from .configuration_internimage import PRESETS, InternImageConfig
from .conversion import convert_official_state_dict
from .dcnv3 import DCNv3Core, InternImageDCNv3, dcnv3_core
from .hub_kernels import dcnv3_backend, kernelize, register_dcnv3_kernel_mapping, register_layer_names
from .image_processing_internimage import InternImageImageProcessor
from .image_processing_pil_internimage import InternImageImageProcessorPil
from .kernel_pin import KernelPinError
from .modeling_internimage import (
    InternImageBackbone,
    InternImageForImageClassification,
    InternImageImageClassifierOutput,
    InternImageModel,
    InternImagePreTrainedModel,
)

AutoConfig.register("internimage", InternImageConfig, exist_ok=True)
AutoModel.register(InternImageConfig, InternImageModel, exist_ok=True)
AutoModelForImageClassification.register(InternImageConfig, InternImageForImageClassification, exist_ok=True)
AutoBackbone.register(InternImageConfig, InternImageBackbone, exist_ok=True)
AutoImageProcessor.register(
    InternImageConfig,
    image_processor_classes={"torchvision": InternImageImageProcessor, "pil": InternImageImageProcessorPil},
    exist_ok=True,
)

try:  # known to `kernels` but mapped to no device: Transformers' default kernelize stays quiet and offline
    register_layer_names()
except ImportError:
    pass  # `kernels` is not installed: the portable PyTorch modules run

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "DCNv3Core",
    "InternImageBackbone",
    "InternImageConfig",
    "InternImageDCNv3",
    "InternImageForImageClassification",
    "InternImageImageClassifierOutput",
    "InternImageImageProcessor",
    "InternImageImageProcessorPil",
    "InternImageModel",
    "InternImagePreTrainedModel",
    "KernelPinError",
    "convert_official_state_dict",
    "dcnv3_backend",
    "dcnv3_core",
    "kernelize",
    "register_dcnv3_kernel_mapping",
]
