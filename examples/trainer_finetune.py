"""Fine-tune InternImage with `transformers.Trainer` on a `datasets` dataset.

    python examples/trainer_finetune.py                                   # built-in digits, offline, ~1 min on CPU
    python examples/trainer_finetune.py --dataset beans --model OpenGVLab/internimage_t_1k_224 --image_size 224

Follows the Transformers image-classification recipe: torchvision transforms applied on the fly with
`set_transform`, `remove_unused_columns=False` (otherwise Trainer drops the image column before the transform
sees it), a collate function, and the image processor as `processing_class` (saved into every checkpoint).

Trainer prunes (`save_total_limit`) and resumes (`resume_from_checkpoint=True`) over every `checkpoint-N` in
output_dir, so an output_dir holding an earlier run is refused unless `--resume_from_checkpoint` continues it or
`--overwrite_output_dir` deletes its checkpoints first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=None, help="hub dataset or imagefolder dir (default: built-in digits)")
    parser.add_argument("--model", default="tiny", help="preset (tiny, t, s, ...), local dir or hub id")
    parser.add_argument("--image_size", type=int, default=None, help="default: the model config's image_size")
    parser.add_argument("--output_dir", default="outputs/trainer_digits")
    parser.add_argument("--num_train_epochs", type=float, default=5.0)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--save_steps", type=int, default=500)
    parser.add_argument("--use_cpu", action="store_true")
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint-N directory, or `latest`")
    parser.add_argument(
        "--overwrite_output_dir", action="store_true", help="delete an earlier run's checkpoints in output_dir first"
    )
    return parser.parse_args(argv)


def prepare_output_dir(args) -> str | bool | None:
    """The `resume_from_checkpoint` for `Trainer.train`; refuses (or, when asked, clears) an earlier run's output."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from internimage_hf.training import OutputDirError

    if args.resume_from_checkpoint:
        return True if args.resume_from_checkpoint == "latest" else args.resume_from_checkpoint
    root = Path(args.output_dir)
    checkpoints = sorted(path for path in root.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.is_dir())
    finished = [root / name for name in ("config.json", "model.safetensors") if (root / name).is_file()]
    if not checkpoints and not finished:
        return None
    if not args.overwrite_output_dir:
        found = ", ".join(path.name for path in checkpoints + finished)
        raise OutputDirError(
            f"--output_dir {root} holds an earlier run ({found}); Trainer would prune and resume across both runs' "
            "checkpoints. Pass --resume_from_checkpoint latest to continue it, --overwrite_output_dir to delete its "
            "checkpoints and start over, or choose another --output_dir."
        )
    for path in checkpoints:
        shutil.rmtree(path)
    return None


def load_data(args):
    """(train, eval, label names) as `datasets.Dataset`s with `image` and `label` columns."""
    from internimage_hf.training.data import digits_dataset, load_raw_dataset, select_splits

    raw = digits_dataset() if args.dataset is None else load_raw_dataset(args.dataset)
    train, evaluation = select_splits(raw, "train", None, 0.2, seed=42, label_column="label")
    return train, evaluation, train.features["label"].names


def make_transforms(image_processor, image_size: int):
    """Train (random crop) and eval (resize + center crop) transforms from torchvision v2."""
    from torchvision.transforms import v2

    normalize = v2.Normalize(mean=list(image_processor.image_mean), std=list(image_processor.image_std))
    tail = [v2.ToDtype(torch.float32, scale=True), normalize]
    bicubic = v2.InterpolationMode.BICUBIC
    train = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(image_size, scale=(0.7, 1.0), interpolation=bicubic), *tail])
    evaluation = v2.Compose(
        [v2.ToImage(), v2.Resize(image_size, interpolation=bicubic), v2.CenterCrop(image_size), *tail]
    )
    return train, evaluation


def with_pixel_values(transform):
    """A `set_transform` function writing `pixel_values` from the `image` column."""

    def apply(batch):
        batch["pixel_values"] = [transform(image.convert("RGB")) for image in batch["image"]]
        return batch

    return apply


def collate_fn(examples):
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["label"] for example in examples]),
    }


def compute_metrics(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def main(argv: list[str] | None = None):
    """Build model, data and Trainer; train, evaluate, save. Returns the Trainer."""
    from transformers import Trainer, TrainingArguments

    from internimage_hf.training.data import build_image_processor
    from internimage_hf.training.models import build_model

    args = parse_args(argv)
    resume_from_checkpoint = prepare_output_dir(args)
    train, evaluation, names = load_data(args)
    id2label = dict(enumerate(names))
    model_options = argparse.Namespace(
        model=args.model, drop_path_rate=None, layer_scale=None, image_size=args.image_size
    )
    model = build_model(model_options, id2label, {v: k for k, v in id2label.items()})
    image_size = args.image_size or model.config.image_size
    image_processor = build_image_processor(image_size)
    train_transform, eval_transform = make_transforms(image_processor, image_size)
    train.set_transform(with_pixel_values(train_transform))
    evaluation.set_transform(with_pixel_values(eval_transform))

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        remove_unused_columns=False,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=0.05,
        warmup_steps=0.1,  # a float < 1 is a fraction of the run in Transformers 5
        lr_scheduler_type="cosine",
        label_smoothing_factor=0.1,
        max_grad_norm=5.0,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        eval_strategy="steps" if args.max_steps > 0 else "epoch",
        eval_steps=args.max_steps if args.max_steps > 0 else None,
        save_strategy="steps",
        save_steps=args.save_steps,
        logging_steps=10,
        use_cpu=args.use_cpu,
        report_to="none",
        seed=42,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collate_fn,
        processing_class=image_processor,
        compute_metrics=compute_metrics,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_model()
    trainer.save_metrics("eval", metrics)
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
