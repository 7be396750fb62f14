"""The output directory of a training run: which run owns it, one writer at a time, and what a resume must keep.

- `run.json` names the run that owns `output_dir` (a random run id) and the settings a resume must keep; every
  checkpoint carries a copy, so pruning and `--resume latest` never pick up another run's checkpoints.
- A new run refuses an `output_dir` that holds another run's checkpoints or finished model unless
  `--overwrite_output_dir` is given (Trainer's name), and then removes only those files.
- `train.lock` (the `filelock` package) lets one training process write `output_dir` at a time; the holder's pid
  is written next to it so that a second run can say who holds it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import uuid
from pathlib import Path

from .checkpointing import CheckpointError, RunRecord, checkpoint_root, is_checkpoint_name

logger = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
LOCK_OWNER_FILE = "train.lock.pid"
ONLINE_MODEL_DIR = "online_model"
RESULTS_FILE = "all_results.json"
# What a finished run leaves in output_dir (`save_pretrained` of model and processor, metrics, DDP checksums).
FINISHED_MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
    RESULTS_FILE,
)
FINISHED_MODEL_PATTERNS = ("model-*-of-*.safetensors", "replica_checksum_*.txt")

# Options a resumed run must share with the checkpoint: they fix the data order, the position in an epoch, the
# model, the EMA and the optimizer state (AdamW's hyper-parameters come back from the checkpoint, so a changed
# value would be silently ignored). Length (`--num_train_epochs`, `--max_steps`), logging, saving and evaluation
# may change: a longer run continues the same one. So may `--skip_bad_images`: the sampler passes over skipped rows
# without changing the order of the others, so a run that stopped on an unreadable image continues exactly.
RESUME_OPTIONS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "dataset",
    "dataset_config",
    "train_split",
    "eval_fraction",
    "max_train_samples",
    "image_column",
    "label_column",
    "model",
    "image_size",
    "drop_path_rate",
    "layer_scale",
    "ema_decay",
    "learning_rate",
    "weight_decay",
    "layer_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
)
# Settings that are not options, with what a change means.
DERIVED_SETTINGS = {
    "num_processes": "number of processes (accelerate launch --num_processes)",
    "train_samples": "number of training images (the dataset or --max_train_samples changed)",
    "label_names": "class names of the dataset",
}


class OutputDirError(ValueError):
    """`output_dir` belongs to another run, or another training process is writing it."""


def results_json(results: dict) -> str:
    """`results` as standard JSON (`all_results.json`): a metric without a value (NaN, such as the IoU of a class
    absent from the evaluation set) or an infinite one is written as null."""
    return json.dumps(_finite_or_null(results), indent=2, allow_nan=False)


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    return value


def new_run_id() -> str:
    return uuid.uuid4().hex


# ----------------------------------------------------------------------------------------------------------
# Settings a resume must keep


def resume_settings(
    options, num_processes: int, train_samples: int, label_names: list[str], names: tuple[str, ...] = RESUME_OPTIONS
) -> dict:
    """The values `check_resume_settings` compares, as JSON types (`names`: the options a resume must keep)."""
    settings = {name: getattr(options, name) for name in names}
    if options.dataset is not None and os.path.isdir(options.dataset):
        settings["dataset"] = os.path.realpath(options.dataset)  # `data/` from elsewhere names the same folder
    settings.update(num_processes=num_processes, train_samples=train_samples, label_names=list(label_names))
    return settings


def _describe_setting(name: str) -> str:
    return DERIVED_SETTINGS.get(name, f"--{name}")


def check_resume_settings(recorded: dict, current: dict, checkpoint: Path) -> None:
    """Raise `CheckpointError` naming every setting that differs from the one the checkpoint was written with."""
    changed = [name for name, value in current.items() if name in recorded and recorded[name] != value]
    if not changed:
        return
    lines = "; ".join(f"{_describe_setting(name)}: {recorded[name]!r} then, {current[name]!r} now" for name in changed)
    raise CheckpointError(
        f"cannot resume from {checkpoint}: it was written with other settings ({lines}). A resumed run continues "
        "the same data order, model and optimizer, so these must match; rerun with the checkpoint's values, or "
        "start a new run without --resume (another --output_dir, or --overwrite_output_dir)."
    )


# ----------------------------------------------------------------------------------------------------------
# Ownership of output_dir


def finished_model_files(output_dir: str | os.PathLike) -> list[Path]:
    """The files and folders a finished run left in `output_dir` (model, processor, metrics, online model)."""
    root = Path(output_dir)
    found = [root / name for name in FINISHED_MODEL_FILES if (root / name).is_file()]
    for pattern in FINISHED_MODEL_PATTERNS:
        found.extend(sorted(root.glob(pattern)))
    if (root / ONLINE_MODEL_DIR).is_dir():
        found.append(root / ONLINE_MODEL_DIR)
    return found


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint folder, complete or still staging, of any run."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir() if path.is_dir() and is_checkpoint_name(path.name))


def outputs_of_other_runs(
    output_dir: str | os.PathLike, run_id: str, resume_from: Path | None = None
) -> tuple[RunRecord | None, list[Path]]:
    """(record of the directory's owner, outputs of a run other than `run_id`); the resumed checkpoint excluded."""
    owner = RunRecord.read(output_dir)
    if owner is not None and owner.run_id == run_id:
        return owner, []
    outputs = checkpoint_dirs(output_dir) + finished_model_files(output_dir)
    if resume_from is not None:
        outputs = [path for path in outputs if path.resolve() != resume_from.resolve()]
    return owner, outputs


def describe_outputs(paths: list[Path]) -> str:
    checkpoints = sum(1 for path in paths if is_checkpoint_name(path.name))
    parts = [f"{checkpoints} checkpoint{'s' if checkpoints != 1 else ''}"] if checkpoints else []
    if len(paths) > checkpoints:
        parts.append("a finished model")
    return " and ".join(parts)


def claim_output_dir(output_dir: str | os.PathLike, run_id: str, resume_from: Path | None, overwrite: bool):
    """Check that `output_dir` may be written by run `run_id`; returns the other run's outputs to remove.

    Raises `OutputDirError` when another run's checkpoints or finished model are there and `overwrite` is off.
    """
    owner, outputs = outputs_of_other_runs(output_dir, run_id, resume_from)
    if not outputs:
        return []
    if not overwrite:
        other = f" (run {owner.run_id})" if owner is not None else ""
        resume = "--resume latest to continue that run, " if any(is_checkpoint_name(p.name) for p in outputs) else ""
        raise OutputDirError(
            f"--output_dir {output_dir} holds {describe_outputs(outputs)} of another training run{other}; a new run "
            f"there would mix its checkpoints and results with that run's. Pass {resume}--overwrite_output_dir to "
            "delete them and start a new run, or choose another --output_dir."
        )
    return outputs


def check_inputs_are_kept(outputs_to_remove: list[Path], inputs: dict[str, str | None]) -> None:
    """Raise `OutputDirError` when `--overwrite_output_dir` would delete what the run reads before it reads it.

    Args:
        outputs_to_remove: the earlier run's outputs (`claim_output_dir`).
        inputs: option name -> local path the run loads (`{"--model": ...}`); hub ids and None are skipped.
    """
    for option, value in inputs.items():
        if value is None or not os.path.exists(value):
            continue
        source = Path(value).resolve()
        for path in outputs_to_remove:
            removed = path.resolve()
            # the model folder itself, a folder above it, or a file in it (what `from_pretrained` reads)
            if removed == source or removed in source.parents or removed.parent == source:
                raise OutputDirError(
                    f"{option} {value} is an earlier output in --output_dir that --overwrite_output_dir would delete "
                    "before training reads it; write the new model to another --output_dir"
                )


def remove_outputs(paths: list[Path]) -> None:
    """Delete an earlier run's outputs (`--overwrite_output_dir`); only paths from `claim_output_dir`."""
    if paths:
        logger.warning("--overwrite_output_dir: removing %s of an earlier run", describe_outputs(paths))
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------
# One writer at a time


class OutputDirLock:
    """An exclusive, non-blocking lock on `output_dir` held for a whole run (released when the process dies)."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        from filelock import FileLock

        self.output_dir = Path(output_dir)
        self._owner_file = self.output_dir / LOCK_OWNER_FILE
        self._lock = FileLock(str(self.output_dir / LOCK_FILE), timeout=0)

    def acquire(self) -> None:
        """Take the lock or raise `OutputDirError` naming the process that holds it."""
        from filelock import Timeout

        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise OutputDirError(
                f"--output_dir {self.output_dir} is in use by another training run ({self._holder()}); two runs "
                "writing one directory overwrite each other's checkpoints. Wait for it to finish, stop it, or "
                "choose another --output_dir."
            ) from None
        self._owner_file.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))

    def _holder(self) -> str:
        try:
            owner = json.loads(self._owner_file.read_text())
            return f"pid {owner['pid']} on {owner['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "pid unknown"

    def release(self) -> None:
        if self._lock.is_locked:
            self._owner_file.unlink(missing_ok=True)
            self._lock.release()
