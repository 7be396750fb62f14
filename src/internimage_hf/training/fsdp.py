"""FSDP specifics of the training loop: CPU (gloo) FSDP2, the start-of-run sharding report, unsupported options and a
pickle-free check of torch.distributed.checkpoint metadata.

Accelerate (checked with 1.16) turns on FSDP only for accelerator devices: with `--use_cpu` under an FSDP config it
silently trains with DDP, and `accelerate launch --cpu` starts a single process whatever `--num_processes` says.
torch's FSDP2 (`fully_shard`) itself runs on CPU with gloo, so `enable_cpu_fsdp` switches Accelerate's state to FSDP
in that case; `sharding_report` logs what each process really holds, so a run shows whether it was sharded.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Files torch.distributed.checkpoint writes next to its `.distcp` shards; they are pickles.
DCP_METADATA_FILE = ".metadata"


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def warn_single_process_cpu_launch() -> None:
    """Warn when `accelerate launch --cpu --num_processes N` started this script as one process.

    The launcher's `--cpu` uses its single-process launcher (it sets MASTER_ADDR but no WORLD_SIZE) and drops the
    config's FSDP/DeepSpeed settings, so the run would look fine but neither be distributed nor sharded.
    """
    launched_with_cpu = _flag("ACCELERATE_USE_CPU") and "MASTER_ADDR" in os.environ
    single = all(name not in os.environ for name in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    if launched_with_cpu and single:
        logger.warning(
            "`accelerate launch --cpu` started one process: Accelerate's launcher ignores --num_processes and the "
            "config's FSDP/DeepSpeed settings with --cpu. For multi-process CPU training launch without --cpu "
            "and pass --use_cpu to the script (e.g. accelerate launch --config_file configs/accelerate/fsdp.yaml "
            "--num_processes 2 scripts/train.py --use_cpu ...)."
        )


def enable_cpu_fsdp(accelerator) -> bool:
    """Switch a multi-process CPU run launched with an FSDP config from Accelerate's DDP fallback to FSDP.

    Accelerate creates the FSDP plugin from the launcher's environment but keeps `MULTI_CPU` (DDP) as the
    distributed type on CPU. This sets the type and plugin as Accelerate does for GPUs; returns True when it did.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU or not _flag("ACCELERATE_USE_FSDP"):
        return False
    state = AcceleratorState()
    plugin = getattr(state, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    logger.info("FSDP config on CPU: using torch FSDP (version %d) over gloo instead of DDP", plugin.fsdp_version)
    return True


def check_fsdp_options(options, distributed_type) -> None:
    """Refuse options that FSDP runs do not support, before anything is built."""
    if str(distributed_type).split(".")[-1] != "FSDP":
        return
    if options.ema_decay:
        raise ValueError(
            f"--ema_decay {options.ema_decay} is not supported under FSDP: the EMA copy is a full, unsharded model "
            "on every process, which FSDP exists to avoid. Train with DDP (configs/accelerate/multi_gpu.yaml) or "
            "DeepSpeed ZeRO-2 for EMA runs, or drop --ema_decay."
        )


def sharding_report(accelerator, model) -> dict:
    """What this process holds after `prepare`: engine, FSDP settings, shard units and local parameter counts."""
    from torch.distributed.tensor import DTensor

    parameters = list(model.parameters())
    report = {
        "rank": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type).split(".")[-1],
        "mixed_precision": accelerator.mixed_precision,
        "parameters": len(parameters),
        "dtensor_parameters": sum(isinstance(p, DTensor) for p in parameters),
        "global_numel": sum(p.numel() for p in parameters),
        "local_numel": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in parameters),
    }
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if report["distributed_type"] == "FSDP" and plugin is not None:
        from torch.distributed.fsdp import FSDPModule

        report.update(
            fsdp_version=plugin.fsdp_version,
            reshard_after_forward=plugin.reshard_after_forward,
            state_dict_type=str(plugin.state_dict_type).split(".")[-1],
            shard_units=sum(isinstance(m, FSDPModule) for m in model.modules()),
        )
    return report


def log_sharding(accelerator, model) -> dict:
    """Log `sharding_report` on every process (each holds different shards); returns it."""
    report = sharding_report(accelerator, model)
    logger.info("sharding: %s", " ".join(f"{key}={value}" for key, value in report.items()))
    return report


# ----------------------------------------------------------------------------------------------------------
# torch.distributed.checkpoint metadata

# The classes a DCP `.metadata` pickle of a model or optimizer state holds (torch 2.4 to 2.14), as (module, name).
_DCP_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"), ("collections", "OrderedDict"),
    # a layout by name (`torch.strided`), and the checkpoint path in `StorageMeta` (pathlib's module on 3.13+: _local)
    ("torch.serialization", "_get_layout"),
    *((module, name) for module in ("pathlib", "pathlib._local") for name in ("PosixPath", "WindowsPath")),
}  # fmt: skip
_TORCH_ENUM_TYPES = (torch.dtype, torch.layout, torch.memory_format)


class _MetadataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the data classes of DCP metadata and torch dtypes/layouts (no callables)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _DCP_METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_ENUM_TYPES):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a torch.distributed.checkpoint metadata type")


def check_dcp_metadata(path: Path) -> None:
    """Raise `pickle.UnpicklingError` (or another error) unless every DCP `.metadata` under `path` holds only
    metadata types.

    torch.distributed.checkpoint reads these files with plain `pickle.load`, which can run code; reading them first
    with an unpickler that resolves nothing but metadata classes means the engine then loads only plain data.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    for file in sorted(Path(path).rglob(DCP_METADATA_FILE)):
        metadata = _MetadataUnpickler(io.BytesIO(file.read_bytes())).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"{file} holds a {type(metadata).__name__}, not DCP Metadata")


def sync_buffers_from_main(accelerator, model) -> None:
    """Under FSDP, copy the main process's buffers (the head's BatchNorm running statistics) to every process.

    FSDP shards parameters only; each process updates its own buffers from its own batches, whereas DDP broadcasts
    rank 0's before every forward. Evaluation, checkpoints and the saved model then see the same buffers everywhere.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP or accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)
