"""Training InternImage with Accelerate (`scripts/train.py`) and the pieces it is built from.

- `arguments`: `TrainingOptions` (every CLI flag) and the official / digits recipes;
- `data`: built-in digits data, hub/imagefolder loading, torchvision augmentations, reproducible loaders;
- `optimization`: layer-wise lr decay parameter groups, AdamW, warmup + cosine schedule;
- `ema`: `ModelEMA`; `checkpointing`: atomic, resumable, pickle-free checkpoints (`rng_state`: generator states
  as safetensors); `run_dir`: output_dir ownership (run id), its lock and the settings a resume must keep;
- `metrics`: top-k accuracy, losses;
- `loop`: the `Trainer` (one run) and `train()`; `predict`: reload + `pipeline()` check; `hub`: model card;
- `segmentation` (`scripts/train_segmentation.py`): UperNet / Mask2Former with an InternImage backbone, the same
  `Trainer` with the segmentation task hooks; `segmentation_data`: the synthetic task, mask folders, `datasets`,
  joint image/mask transforms; `segmentation_metrics`: mIoU, per-class IoU and pixel accuracy.
"""

from .arguments import DIGITS_RECIPE, OFFICIAL_RECIPE, TrainingOptions, parse_options, resolve_defaults
from .checkpointing import CheckpointError, TrainingState
from .data import ColumnError, UnreadableImageError, digits_dataset, prepare_classification_data
from .ema import ModelEMA
from .models import TINY_PRESET, build_model, preset_config
from .optimization import build_optimizer, layer_id_for, parameter_groups, skips_weight_decay
from .run_dir import OutputDirError

__all__ = [
    "DIGITS_RECIPE",
    "OFFICIAL_RECIPE",
    "TINY_PRESET",
    "CheckpointError",
    "ColumnError",
    "ModelEMA",
    "OutputDirError",
    "TrainingOptions",
    "TrainingState",
    "UnreadableImageError",
    "build_model",
    "build_optimizer",
    "digits_dataset",
    "layer_id_for",
    "parameter_groups",
    "parse_options",
    "prepare_classification_data",
    "preset_config",
    "resolve_defaults",
    "skips_weight_decay",
    "train",
]


def train(options):
    """Run one training (see `loop.train`); imported lazily so `import internimage_hf.training` stays light."""
    from .loop import train as _train

    return _train(options)


def main(argv=None) -> int:
    """CLI entry point (see `cli.main`)."""
    from .cli import main as _main

    return _main(argv)
