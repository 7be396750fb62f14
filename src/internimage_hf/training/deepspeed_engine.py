"""What the training loop needs to know about a DeepSpeed launch (`accelerate launch --config_file
configs/accelerate/deepspeed_zero{2,3}.yaml`): checks of the options against the engine, before anything starts, and
the process-group settings for machines without a GPU (DeepSpeed's CPU accelerator, `DS_ACCELERATOR=cpu`), and the
dtype of buffers under bf16/fp16."""

from __future__ import annotations

import os
from pathlib import Path

USE_DEEPSPEED_ENV = "ACCELERATE_USE_DEEPSPEED"
ZERO_STAGE_ENV = "ACCELERATE_DEEPSPEED_ZERO_STAGE"
CLIPPING_ENV = "ACCELERATE_GRADIENT_CLIPPING"
CONFIG_FILE_ENV = "ACCELERATE_DEEPSPEED_CONFIG_FILE"


class DeepSpeedOptionError(ValueError):
    """An option that the DeepSpeed launch cannot honour (reported at start, before any work)."""


def is_deepspeed_launch() -> bool:
    """True in processes started by `accelerate launch` with a DeepSpeed config (or `--use_deepspeed`)."""
    return os.environ.get(USE_DEEPSPEED_ENV, "false").lower() == "true"


def launched_zero_stage() -> int | None:
    """The ZeRO stage of the launch: the Accelerate config's `zero_stage`, else the stage in its
    `deepspeed_config_file` (None outside a DeepSpeed launch or when neither gives one)."""
    if not is_deepspeed_launch():
        return None
    stage = os.environ.get(ZERO_STAGE_ENV)
    if stage not in (None, ""):
        return int(stage)
    config_file = os.environ.get(CONFIG_FILE_ENV)
    if config_file in (None, "", "none"):
        return None
    import json

    stage = json.loads(Path(config_file).read_text()).get("zero_optimization", {}).get("stage")
    return int(stage) if isinstance(stage, int) else None


def check_deepspeed_options(options) -> None:
    """Refuse combinations that DeepSpeed would run silently wrong, naming the option."""
    if not is_deepspeed_launch():
        return
    if options.use_cpu:
        # Accelerate drops DeepSpeed when `cpu=True` and would train plain DDP under a ZeRO config.
        raise DeepSpeedOptionError(
            "--use_cpu cannot be combined with a DeepSpeed launch: Accelerate would ignore DeepSpeed and run DDP. "
            "On a machine without GPU leave --use_cpu out; DeepSpeed then runs on its CPU accelerator "
            "(DS_ACCELERATOR=cpu)"
        )
    if options.ema_decay and launched_zero_stage() == 3:
        raise DeepSpeedOptionError(
            "--ema_decay needs the full weights on every process, which ZeRO-3 shards; use ZeRO-2 "
            "(configs/accelerate/deepspeed_zero2.yaml) or DDP for EMA, or leave --ema_decay out"
        )
    check_gradient_clipping(options.max_grad_norm, os.environ.get(CLIPPING_ENV))


def check_gradient_clipping(max_grad_norm: float, launched_clipping: str | None) -> None:
    """DeepSpeed clips inside its engine with the config's `gradient_clipping`, and Accelerate's `clip_grad_norm_`
    does nothing under DeepSpeed, so a --max_grad_norm that differs from the config would be silently ignored."""
    if launched_clipping in (None, "", "auto", "none"):
        return
    configured = float(launched_clipping)
    if abs(configured - (max_grad_norm or 0.0)) > 1e-12:
        raise DeepSpeedOptionError(
            f"--max_grad_norm {max_grad_norm} differs from the DeepSpeed config's gradient_clipping {configured}, "
            "which is what DeepSpeed applies; set both to the same value"
        )


def process_group_kwargs() -> list:
    """Accelerate's `kwargs_handlers` for a DeepSpeed launch on a machine without GPU: gloo named explicitly.

    Accelerate derives the backend from the GPU type; with none it records no backend and then believes it runs
    one process, while DeepSpeed's CPU accelerator has started all of them (batch sizes then disagree)."""
    import torch

    if not is_deepspeed_launch() or _has_accelerator(torch):
        return []
    from accelerate.utils import InitProcessGroupKwargs

    return [InitProcessGroupKwargs(backend="gloo")]


def _has_accelerator(torch) -> bool:
    try:
        return torch.accelerator.current_accelerator() is not None and torch.accelerator.is_available()
    except RuntimeError:  # CPU-only builds of some PyTorch versions raise instead of returning None
        return False


def cast_buffers_with_parameters(accelerator) -> None:
    """Under DeepSpeed bf16/fp16, have the engine cast buffers (BatchNorm running statistics) with the parameters.

    DeepSpeed casts only the parameters by default; the head's BatchNorm then holds bf16 weights and fp32 running
    statistics, which `batch_norm` refuses ("expected scalar type BFloat16 but found Float")."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    for precision in ("bf16", "fp16"):
        if config.get(precision, {}).get("enabled") is True:
            config.setdefault("data_types", {}).setdefault("buffer_dtype", precision)
