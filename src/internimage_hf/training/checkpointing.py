"""Resumable checkpoints: `accelerator.save_state` plus our own `training_state.json` and EMA weights.

A checkpoint is written into `<output_dir>/checkpoints/step_XXXXXXXX.tmp` and renamed to
`step_XXXXXXXX` only when complete (`os.replace` of a directory is atomic on POSIX), so a crash never
leaves a half-written checkpoint under a final name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "training_state.json"
EMA_FILE = "ema.safetensors"
CHECKPOINTS_DIR = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint given to `--resume` is missing, incomplete or unreadable."""


@dataclass
class TrainingState:
    """Where the run stands: optimizer steps done, current epoch and micro-batches consumed in it."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    ema_num_updates: int = 0
    ema_decay: float = 0.0


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `output_dir/checkpoints`, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := _CHECKPOINT_NAME.match(path.name)) and (path / STATE_FILE).is_file()
    ]
    return [path for _, path in sorted(found)]


def resolve_resume_path(resume: str, output_dir: str | os.PathLike) -> Path:
    """The checkpoint directory `--resume` names (`latest` = newest in output_dir); raises `CheckpointError`."""
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise CheckpointError(f"--resume latest: no checkpoint found in {checkpoint_root(output_dir)}")
        return checkpoints[-1]
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: checkpoint directory does not exist")
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"--resume {resume}: not a complete checkpoint ({STATE_FILE} is missing)")
    return path


def read_training_state(path: Path) -> TrainingState:
    """Parse `training_state.json`; a corrupt or foreign file raises `CheckpointError`."""
    try:
        payload = json.loads((path / STATE_FILE).read_text())
        return TrainingState(**payload)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path}: unreadable {STATE_FILE} ({error})") from error


def save_checkpoint(accelerator, output_dir, state: TrainingState, ema=None, total_limit: int | None = None) -> Path:
    """Write a complete checkpoint atomically (all processes must call this); returns its final path."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{state.global_step:08d}"
    staging = root / f"step_{state.global_step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        if ema is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, staging / EMA_FILE)
        (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        _prune(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def _prune(output_dir, total_limit: int | None) -> None:
    """Delete the oldest checkpoints beyond `total_limit`."""
    if not total_limit:
        return
    for old in list_checkpoints(output_dir)[:-total_limit]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(accelerator, path: Path, ema=None) -> TrainingState:
    """Restore model, optimizer, scheduler, RNG (Accelerate) and EMA; returns the saved `TrainingState`."""
    state = read_training_state(path)
    try:
        accelerator.load_state(str(path))
    except Exception as error:  # accelerate/torch/safetensors raise many types for damaged files
        raise CheckpointError(f"checkpoint {path} could not be loaded: {type(error).__name__}: {error}") from error
    if ema is not None:
        ema_path = path / EMA_FILE
        if not ema_path.is_file():
            raise CheckpointError(f"checkpoint {path} has no {EMA_FILE}, but --ema_decay is set")
        from safetensors.torch import load_file

        try:
            ema.load_state_dict(load_file(str(ema_path), device=str(next(ema.module.parameters()).device)))
        except Exception as error:
            raise CheckpointError(f"checkpoint {path}: EMA weights could not be loaded ({error})") from error
        ema.num_updates = state.ema_num_updates
    return state
