"""Command-line options of `scripts/train.py`, as one dataclass parsed by `transformers.HfArgumentParser`.

Hyper-parameters left at `None` take a data-dependent default (`resolve_defaults`): the official InternImage
ImageNet recipe for user data, and a small-data recipe for the built-in digits run (so that a bare
`python scripts/train.py` trains to >95% held-out accuracy in a couple of minutes on a laptop CPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

# Official InternImage recipe (classification/config.py and configs/*.yaml of OpenGVLab/InternImage).
OFFICIAL_RECIPE = {
    "learning_rate": 5e-4,
    "weight_decay": 0.05,
    "num_train_epochs": 300.0,
    "warmup_epochs": 20.0,
    "max_grad_norm": 5.0,
    "label_smoothing": 0.1,
    "train_crop": "random_resized",
    "per_device_train_batch_size": 128,
}

# Small-data recipe for the built-in digits data (1,437 training images of 32x32 pixels).
DIGITS_RECIPE = {
    "learning_rate": 2e-3,
    "weight_decay": 0.05,
    "num_train_epochs": 12.0,
    "warmup_epochs": 1.0,
    "max_grad_norm": 5.0,
    "label_smoothing": 0.1,
    "train_crop": "resize",
    "per_device_train_batch_size": 32,
}

OFFICIAL_AUGMENTATION = "--mixup 0.8 --cutmix 1.0 --randaugment --random_erasing 0.25 --ema_decay 0.9999"


def _help(text: str, **kwargs):
    """A dataclass field whose help text `HfArgumentParser` shows in `--help`."""
    return field(metadata={"help": text}, **kwargs)


@dataclass
class CommonTrainingOptions:
    """The options every training script shares (model, data, optimisation, output); subclasses add the task's."""

    # --- model ---
    model: str | None = _help("Preset (random init), a local directory or a hub id (pretrained).", default=None)
    drop_path_rate: float | None = _help("Stochastic-depth rate (overrides the model config).", default=None)
    layer_scale: float | None = _help("Layer-scale init value for presets (overrides the preset).", default=None)
    image_size: int | None = _help("Training/eval resolution. Default: the model config's `image_size`.", default=None)
    gradient_checkpointing: bool = _help("Recompute activations in backward to save memory.", default=False)
    torch_compile: bool = _help("Compile the model with torch.compile (inductor) via Accelerate.", default=False)
    use_kernel: bool = _help("Swap the DCNv3 core for the hub kernel (`internimage_hf.kernelize`).", default=False)

    # --- data ---
    dataset: str | None = _help("A `datasets` hub name or a local directory.", default=None)
    dataset_config: str | None = _help("Hub dataset configuration name.", default=None)
    train_split: str = _help("Training split.", default="train")
    eval_split: str | None = _help(
        "Evaluation split. Default: the first of validation/valid/val/test, else a held-out part of train.",
        default=None,
    )
    eval_fraction: float = _help("Held-out fraction of train when there is no eval split.", default=0.2)
    image_column: str | None = _help("Image column. Default: `image` or `img`.", default=None)
    max_train_samples: int | None = _help("Truncate the training set (debugging).", default=None)
    max_eval_samples: int | None = _help("Truncate the evaluation set (debugging).", default=None)
    dataloader_num_workers: int = _help("DataLoader worker processes.", default=0)

    # --- optimisation ---
    learning_rate: float | None = _help("Peak AdamW learning rate (official: 5e-4).", default=None)
    weight_decay: float | None = _help("AdamW weight decay; never on norms, biases, layer scales.", default=None)
    adam_beta1: float = _help("AdamW beta1.", default=0.9)
    adam_beta2: float = _help("AdamW beta2.", default=0.999)
    adam_epsilon: float = _help("AdamW epsilon.", default=1e-8)
    layer_decay: float = _help("Layer-wise lr decay (official fine-tuning: 0.875); 1.0 disables.", default=1.0)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = _help(
        "Schedule after the linear warmup.", default="cosine"
    )
    warmup_epochs: float | None = _help("Linear warmup length in epochs (official: 20).", default=None)
    warmup_steps: int | None = _help("Warmup in optimizer steps (overrides --warmup_epochs).", default=None)
    num_train_epochs: float | None = _help("Epochs (official: 300).", default=None)
    max_steps: int | None = _help("Stop after this many optimizer steps (overrides epochs).", default=None)
    per_device_train_batch_size: int | None = _help("Batch size per process.", default=None)
    per_device_eval_batch_size: int = _help("Eval batch size per process.", default=128)
    gradient_accumulation_steps: int = _help("Micro-batches per optimizer step.", default=1)
    max_grad_norm: float | None = _help("Gradient-norm clip (official: 5.0); 0 disables.", default=None)
    ema_decay: float = _help("EMA of weights, e.g. 0.9999 (official); 0 disables.", default=0.0)
    mixed_precision: Literal["no", "fp16", "bf16"] | None = _help(
        "Autocast precision. Default: Accelerate's config/launcher setting.", default=None
    )
    seed: int = _help("Seed for init, data order and augmentation.", default=42)
    use_cpu: bool = _help(
        "Train on CPU even when a GPU exists; with `accelerate launch --multi_gpu` on a CPU-only machine this "
        "gives multi-process CPU data parallelism (gloo).",
        default=False,
    )
    cpu_threads: int = _help(
        "Intra-op threads when training on CPU; 0 = automatic: one thread when a micro-batch holds fewer pixels "
        "than one 224x224 image (such steps gain little from threads and stall badly when another process takes a "
        "core), else torch's default. An OMP_NUM_THREADS in the environment is respected.",
        default=0,
    )

    # --- output, logging, checkpoints ---
    output_dir: str | None = _help("Where everything goes.", default=None)
    overwrite_output_dir: bool = _help(
        "Start a new run in an output_dir that holds another run's checkpoints or finished model, deleting them "
        "(only those files). Without it such a directory is refused.",
        default=False,
    )
    logging_steps: int = _help("Log loss/lr every N optimizer steps.", default=10)
    eval_every_epochs: int = _help("Evaluate every N epochs (and always at the end).", default=1)
    save_steps: int = _help("Write a resumable checkpoint every N optimizer steps; 0 disables.", default=0)
    save_total_limit: int | None = _help("Keep only this run's newest N checkpoints (0: keep all).", default=2)
    resume: str | None = field(
        default=None,
        metadata={
            "help": "Resume from a checkpoint directory, or `latest` (the newest checkpoint of the run that owns "
            "output_dir). Also spelled --resume_from_checkpoint (Trainer's name).",
            "aliases": ["--resume_from_checkpoint"],
        },
    )
    report_to: str = _help("Accelerate trackers: none, all, tensorboard, wandb, ... (comma-separated).", default="none")
    project_name: str = _help("Tracker project/run name.", default="internimage")
    write_replica_checksums: bool = _help(
        "Each process writes a checksum of its final weights to output_dir (checks that DDP replicas agree).",
        default=False,
    )


@dataclass
class TrainingOptions(CommonTrainingOptions):
    """Everything `scripts/train.py` accepts; see `--help` or README "## Training"."""

    model: str | None = _help(
        "Preset (`tiny`, `t`, `s`, `b`, `l`, `xl`, `h`, `g`: random init), a local directory or a hub id "
        "(pretrained; the classifier is replaced when the label set differs). Default: `tiny` on digits, else `t`.",
        default=None,
    )
    dataset: str | None = _help(
        "A `datasets` hub name or a local `imagefolder` directory (train/<class>/*.png, optional "
        "validation/ or test/). Default: scikit-learn's bundled digits, resized to 32x32.",
        default=None,
    )
    label_column: str | None = _help("Label column. Default: `label`, `labels` or `fine_label`.", default=None)
    skip_bad_images: bool = _help(
        "Decode every image once at start and leave out those that cannot be read (logged with their count and "
        "first names). Without it, an unreadable image stops the run with an error naming the file and split.",
        default=False,
    )

    # --- augmentation (torchvision.transforms.v2) ---
    train_crop: Literal["random_resized", "resize"] | None = _help(
        "`random_resized` (RandomResizedCrop + horizontal flip, needs torchvision) or `resize` (the eval "
        "transform). Default: random_resized, or resize on digits.",
        default=None,
    )
    randaugment: bool = _help("RandAugment (2 ops, magnitude `--randaugment_magnitude`).", default=False)
    randaugment_magnitude: int = _help("RandAugment magnitude (official: 9).", default=9)
    random_erasing: float = _help("Random-erasing probability (official: 0.25).", default=0.0)
    mixup: float = _help("MixUp alpha; 0 disables (official: 0.8).", default=0.0)
    cutmix: float = _help("CutMix alpha; 0 disables (official: 1.0).", default=0.0)
    label_smoothing: float | None = _help("Label smoothing (official: 0.1).", default=None)

    # --- output ---
    output_dir: str | None = _help("Where everything goes. Default: outputs/digits on the built-in data.", default=None)
    push_to_hub: bool = _help("Upload the final model, processor and model card.", default=False)
    hub_model_id: str | None = _help("Repository id for --push_to_hub. Default: the output_dir name.", default=None)
    hub_remote_code: bool = _help(
        "With --push_to_hub, also upload the modeling code and auto_map so the model loads with "
        "trust_remote_code=True where internimage_hf is not installed (--no_hub_remote_code: without it).",
        default=True,
    )
    num_predictions: int = _help(
        "After training on the built-in digits: print pipeline() predictions for this many held-out images.", default=8
    )


def uses_builtin_digits(options: TrainingOptions) -> bool:
    """True when no dataset was given: the built-in scikit-learn digits data is used."""
    return options.dataset is None


def resolve_defaults(options: TrainingOptions) -> TrainingOptions:
    """Fill every `None` hyper-parameter from the recipe that fits the data (returns a new object)."""
    digits = uses_builtin_digits(options)
    recipe = DIGITS_RECIPE if digits else OFFICIAL_RECIPE
    updates = {name: value for name, value in recipe.items() if getattr(options, name) is None}
    if options.model is None:
        updates["model"] = "tiny" if digits else "t"
    if options.output_dir is None:
        if not digits:
            raise ValueError("--output_dir is required when training on your own --dataset")
        updates["output_dir"] = "outputs/digits"
    return dataclasses.replace(options, **updates)


def parse_options(argv: list[str] | None = None) -> TrainingOptions:
    """Parse command-line arguments (`argv`, default `sys.argv[1:]`) into resolved `TrainingOptions`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(TrainingOptions, description="Train or fine-tune InternImage with Accelerate.")
    (options,) = parser.parse_args_into_dataclasses(args=argv)
    return resolve_defaults(options)
