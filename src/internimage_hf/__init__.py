"""InternImage as native Hugging Face Transformers classes, with a DCNv3 hub kernel.

One folder per concern, imports only going down this list (`tests/test_import_layers.py`):

- `data`: class names shipped with the package (`data.labels` and its JSON files);
- `ops`: the portable DCNv3 and DCNv4 operators (`ops.dcnv3`, `ops.dcnv4`);
- `hub_kernels`: the compiled DCNv3 kernel in place of the PyTorch modules (`kernelize`);
- `models.internimage`: configuration, modeling and image processors, named as in ``transformers.models``;
- `models.flash_internimage`: FlashInternImage (DCNv4), reusing InternImage's modules;
- `models.dino_detr`: the DINO detector (InternImage backbone by default);
- `hub`: sharing checkpoints: remote code (`hub.remote_code`), model cards, ``torch.export`` / ONNX (`hub.export`);
- `conversion`: official checkpoints -> this package's format (behind ``scripts/convert_checkpoint.py``);
- `training`: the training loops behind ``scripts/train.py`` and ``scripts/train_segmentation.py``.

This module exports the public classes and registers them with the Auto classes.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForObjectDetection,
)

# The top-level name is a placeholder without torchvision in transformers < 5.5; the module is always real.
from transformers.models.auto.image_processing_auto import AutoImageProcessor
from transformers.utils import is_torchvision_available

from .conversion import convert_official_state_dict
from .hub_kernels import (
    KernelPinError,
    dcnv3_backend,
    kernelize,
    register_dcnv3_kernel_mapping,
    register_layer_names,
)
from .models.dino_detr.configuration_dino_detr import DinoDetrConfig
from .models.dino_detr.modeling_dino_detr import (
    DinoDetrForObjectDetection,
    DinoDetrModel,
    DinoDetrObjectDetectionOutput,
    DinoDetrPreTrainedModel,
)
from .models.flash_internimage.configuration_flash_internimage import FLASH_PRESETS, FlashInternImageConfig
from .models.flash_internimage.modeling_flash_internimage import (
    FlashInternImageBackbone,
    FlashInternImageForImageClassification,
    FlashInternImageModel,
    FlashInternImagePreTrainedModel,
)
from .models.internimage.configuration_internimage import PRESETS, InternImageConfig
from .models.internimage.image_processing_internimage import InternImageImageProcessor
from .models.internimage.image_processing_pil_internimage import InternImageImageProcessorPil
from .models.internimage.modeling_internimage import (
    InternImageBackbone,
    InternImageForImageClassification,
    InternImageImageClassifierOutput,
    InternImageModel,
    InternImagePreTrainedModel,
)
from .ops.dcnv3 import DCNv3Core, InternImageDCNv3, dcnv3_core
from .ops.dcnv4 import DCNv4Core, FlashInternImageDCNv4, dcnv4_core

AutoConfig.register("internimage", InternImageConfig, exist_ok=True)
AutoModel.register(InternImageConfig, InternImageModel, exist_ok=True)
AutoModelForImageClassification.register(InternImageConfig, InternImageForImageClassification, exist_ok=True)
AutoBackbone.register(InternImageConfig, InternImageBackbone, exist_ok=True)
AutoConfig.register("flash_internimage", FlashInternImageConfig, exist_ok=True)
AutoModel.register(FlashInternImageConfig, FlashInternImageModel, exist_ok=True)
AutoModelForImageClassification.register(FlashInternImageConfig, FlashInternImageForImageClassification, exist_ok=True)
AutoBackbone.register(FlashInternImageConfig, FlashInternImageBackbone, exist_ok=True)
AutoConfig.register("dino_detr", DinoDetrConfig, exist_ok=True)
AutoModel.register(DinoDetrConfig, DinoDetrModel, exist_ok=True)
AutoModelForObjectDetection.register(DinoDetrConfig, DinoDetrForObjectDetection, exist_ok=True)
if is_torchvision_available():  # Deformable DETR's processor, which DINO's extends, needs torchvision
    from .models.dino_detr.image_processing_dino_detr import DinoDetrImageProcessor

    AutoImageProcessor.register(
        DinoDetrConfig, image_processor_classes={"torchvision": DinoDetrImageProcessor}, exist_ok=True
    )
for _config_class in (InternImageConfig, FlashInternImageConfig):  # FlashInternImage preprocesses as InternImage
    AutoImageProcessor.register(
        _config_class,
        image_processor_classes={"torchvision": InternImageImageProcessor, "pil": InternImageImageProcessorPil},
        exist_ok=True,
    )

try:  # known to `kernels` but mapped to no device: Transformers' default kernelize stays quiet and offline
    register_layer_names()
except ImportError:
    pass  # `kernels` is not installed: the portable PyTorch modules run

__version__ = "0.1.0"

__all__ = [
    "FLASH_PRESETS",
    "PRESETS",
    "DCNv3Core",
    "DCNv4Core",
    "DinoDetrConfig",
    "DinoDetrForObjectDetection",
    "DinoDetrModel",
    "DinoDetrObjectDetectionOutput",
    "DinoDetrPreTrainedModel",
    "FlashInternImageBackbone",
    "FlashInternImageConfig",
    "FlashInternImageDCNv4",
    "FlashInternImageForImageClassification",
    "FlashInternImageModel",
    "FlashInternImagePreTrainedModel",
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
    "dcnv4_core",
    "kernelize",
    "register_dcnv3_kernel_mapping",
]
