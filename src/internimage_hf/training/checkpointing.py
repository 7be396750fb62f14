"""Resumable checkpoints that load no pickle: Accelerate's model and optimizer state plus our own JSON and safetensors.

A checkpoint is written into `<output_dir>/checkpoints/step_XXXXXXXX.tmp` and renamed to `step_XXXXXXXX` only when
complete (`os.replace` of a directory is atomic on POSIX), so a crash never leaves a half-written checkpoint under a
final name. It holds:

- `model.safetensors`, `optimizer.bin` (read back with `weights_only=True`): `accelerator.save_state`;
- `rng_state_<rank>.safetensors` (replaces Accelerate's pickled `random_states_<rank>.pkl`), `scheduler.json`,
  `ema.safetensors`, `training_state.json` (step, epoch, position in the epoch) and `run.json` (the run id and the
  settings a resume must keep).

Loading a pickle can run code its author chose, so a checkpoint holding any `.pkl` file (such as Accelerate's
`custom_checkpoint_<n>.pkl` for objects registered with `register_for_checkpointing`) is refused. Under FSDP with
SHARDED_STATE_DICT the model and optimizer are `pytorch_model_fsdp_0/` and `optimizer_0/` in the format of
torch.distributed.checkpoint (one `__<rank>_0.distcp` per process and a pickled `.metadata`); each `.metadata` is
first read with an unpickler that resolves only metadata classes, and refused otherwise. DeepSpeed reads its own
pickled files; that case is logged as a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .rng_state import load_rng_state, rng_state_file, save_rng_state

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.json"
EMA_FILE = "ema.safetensors"
SCHEDULER_FILE = "scheduler.json"
RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"
STAGING_SUFFIX = ".tmp"
PICKLE_SUFFIXES = (".pkl", ".pickle")
_CHECKPOINT_NAME = re.compile(r"^step_(\d+)(\.tmp)?$")
# Distributed types whose engines (DeepSpeed, Megatron) write and read their own, pickled, files. FSDP's
# torch.distributed.checkpoint is not among them: its `.metadata` pickles are checked by `check_engine_metadata`
# and its shards are read with `torch.load(weights_only=True)`.
SHARDING_ENGINES = ("DEEPSPEED", "MEGATRON_LM")


class CheckpointError(RuntimeError):
    """A checkpoint given to `--resume` is missing, incomplete, unreadable, unsafe or written with other settings."""


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


@dataclass
class RunRecord:
    """The run that wrote a directory: its id and the settings a resume must keep (`run.json`)."""

    run_id: str
    settings: dict = field(default_factory=dict)

    @classmethod
    def read(cls, directory: str | os.PathLike) -> RunRecord | None:
        """The record in `directory`, None when there is none; an unreadable one raises `CheckpointError`."""
        path = Path(directory) / RUN_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise CheckpointError(f"{path}: unreadable {RUN_FILE} ({error})") from error

    def write(self, directory: str | os.PathLike) -> None:
        Path(directory, RUN_FILE).write_text(json.dumps(asdict(self), indent=2))


def run_id_of(checkpoint: Path) -> str | None:
    """The run id a checkpoint carries (None without a readable `run.json`, e.g. from an older version)."""
    try:
        record = RunRecord.read(checkpoint)
    except CheckpointError:
        return None
    return record.run_id if record is not None else None


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def is_checkpoint_name(name: str) -> bool:
    """True for `step_XXXXXXXX` and its staging name `step_XXXXXXXX.tmp`."""
    return _CHECKPOINT_NAME.match(name) is not None


def list_checkpoints(output_dir: str | os.PathLike, run_id: str | None = None) -> list[Path]:
    """Complete checkpoints under `output_dir/checkpoints` (only run `run_id`'s when given), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := _CHECKPOINT_NAME.match(path.name)) and not match.group(2) and (path / STATE_FILE).is_file()
    ]
    paths = [path for _, path in sorted(found)]
    return paths if run_id is None else [path for path in paths if run_id_of(path) == run_id]


def resolve_resume_path(resume: str, output_dir: str | os.PathLike) -> Path:
    """The checkpoint `--resume` names: a directory, or `latest` = the newest of the run that owns output_dir."""
    if resume == "latest":
        return _latest_checkpoint(output_dir)
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: checkpoint directory does not exist")
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"--resume {resume}: not a complete checkpoint ({STATE_FILE} is missing)")
    return path


def _latest_checkpoint(output_dir: str | os.PathLike) -> Path:
    every = list_checkpoints(output_dir)
    if not every:
        raise CheckpointError(f"--resume latest: no checkpoint found in {checkpoint_root(output_dir)}")
    owner = RunRecord.read(output_dir)
    if owner is None:
        raise CheckpointError(
            f"--resume latest: {output_dir} has no {RUN_FILE} naming the run it belongs to, so its checkpoints cannot "
            f"be told apart from other runs'; pass one explicitly, e.g. --resume {every[-1]}"
        )
    own = [path for path in every if run_id_of(path) == owner.run_id]
    if not own:
        raise CheckpointError(
            f"--resume latest: none of the {len(every)} checkpoints in {checkpoint_root(output_dir)} belongs to run "
            f"{owner.run_id}, which owns {output_dir}"
        )
    if len(own) < len(every):
        logger.warning("--resume latest: ignoring %d checkpoints of other runs", len(every) - len(own))
    return own[-1]


def read_training_state(path: Path) -> TrainingState:
    """Parse `training_state.json`; a corrupt or foreign file raises `CheckpointError`."""
    try:
        payload = json.loads((path / STATE_FILE).read_text())
        return TrainingState(**payload)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path}: unreadable {STATE_FILE} ({error})") from error


# ----------------------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    accelerator, output_dir, state: TrainingState, run: RunRecord, scheduler, ema=None, total_limit: int | None = None
) -> Path:
    """Write a complete checkpoint of run `run` atomically (all processes must call this); returns its path."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{state.global_step:08d}"
    staging = final.with_name(final.name + STAGING_SUFFIX)
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    # Accelerate pickles the generator states; every process replaces its own file by safetensors.
    (staging / f"random_states_{accelerator.process_index}.pkl").unlink(missing_ok=True)
    save_rng_state(staging, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_own_state(staging, state, run, scheduler, ema)
        if final.exists():
            if run_id_of(final) != run.run_id:
                raise CheckpointError(f"{final} holds a checkpoint of another run; not overwriting it")
            shutil.rmtree(final)
        os.replace(staging, final)
        _prune(output_dir, total_limit, run.run_id)
    accelerator.wait_for_everyone()
    return final


def _write_own_state(directory: Path, state: TrainingState, run: RunRecord, scheduler, ema) -> None:
    """Scheduler, EMA and run record, then `training_state.json` last (its presence marks a complete checkpoint)."""
    (directory / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict(), indent=2))
    if ema is not None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, directory / EMA_FILE)
    run.write(directory)
    (directory / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))


def _prune(output_dir, total_limit: int | None, run_id: str) -> None:
    """Delete run `run_id`'s oldest checkpoints beyond `total_limit` (other runs' are never touched)."""
    if not total_limit:
        return
    for old in list_checkpoints(output_dir, run_id)[:-total_limit]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# Loading


def refuse_pickles(path: Path) -> None:
    """Raise `CheckpointError` when the checkpoint holds a pickle file (which could run code when loaded)."""
    pickles = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"checkpoint {path} contains pickle files ({', '.join(pickles)}), which can run arbitrary code when "
            "loaded; internimage_hf's checkpoints hold none (safetensors, JSON and an optimizer state read with "
            "weights_only=True), so this one was written by an older version or altered. It is not loaded."
        )


def check_engine_metadata(path: Path) -> None:
    """Raise `CheckpointError` unless torch.distributed.checkpoint's pickled `.metadata` files (FSDP sharded state)
    hold nothing but metadata types (see `fsdp.check_dcp_metadata`)."""
    from .fsdp import check_dcp_metadata

    try:
        check_dcp_metadata(path)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path}: a torch.distributed.checkpoint .metadata file holds more than checkpoint metadata "
            f"({type(error).__name__}: {error}); such a pickle could run code when loaded, so it is not loaded"
        ) from error


def load_checkpoint(accelerator, path: Path, scheduler, ema=None) -> TrainingState:
    """Restore model, optimizer (Accelerate), scheduler, RNG and EMA; returns the saved `TrainingState`."""
    state = read_training_state(path)
    refuse_pickles(path)
    check_engine_metadata(path)
    required = [path / SCHEDULER_FILE, rng_state_file(path, accelerator.process_index)]
    if ema is not None:
        required.append(path / EMA_FILE)
    for file in required:
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} has no {file.name} (incomplete, or written by another version)")
    if accelerator.distributed_type in SHARDING_ENGINES:
        logger.warning(
            "resuming under %s: its engine loads the sharded model and optimizer state itself, including pickled "
            "metadata; resume only checkpoints you trust",
            accelerator.distributed_type,
        )
    try:
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    except Exception as error:  # accelerate/torch/safetensors raise many types for damaged files
        raise CheckpointError(f"checkpoint {path} could not be loaded: {type(error).__name__}: {error}") from error
    try:
        scheduler.load_state_dict(json.loads((path / SCHEDULER_FILE).read_text()))
        load_rng_state(path, accelerator.process_index)
    except Exception as error:
        raise CheckpointError(f"checkpoint {path}: scheduler or RNG state could not be loaded ({error})") from error
    if ema is not None:
        _load_ema(path, ema, state)
    return state


def _load_ema(path: Path, ema, state: TrainingState) -> None:
    from safetensors.torch import load_file

    try:
        ema.load_state_dict(load_file(str(path / EMA_FILE), device=str(next(ema.module.parameters()).device)))
    except Exception as error:
        raise CheckpointError(f"checkpoint {path}: EMA weights could not be loaded ({error})") from error
    ema.num_updates = state.ema_num_updates
