"""FSDP2 through Accelerate with the shipped `configs/accelerate/fsdp.yaml`, on two CPU processes (gloo).

The launches take ~15-25 s each (three of them); the unit tests below them are instant.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import kill_during_save, load_weights, make_trainer, requires_accelerate, run_args
from test_distributed import REPO, free_port

pytestmark = requires_accelerate

SLOW_SAVE_SCRIPT = Path(__file__).with_name("slow_save_train.py")
# Adam divides by sqrt(v) + eps: a gradient that is zero in exact arithmetic (the last stage's norm bias feeds a 1x1
# conv followed by BatchNorm, which removes any per-channel shift) is rounding noise whose update would be ~lr with
# the default eps, so the 2-process and 1-process runs are compared with an eps above that noise (1e-6 still left
# 2.4e-5 with torch 2.13; 1e-3 as in the DeepSpeed tests).
FSDP_RUN = ("--max_steps", "4", "--save_steps", "2", "--save_total_limit", "0", "--adam_epsilon", "1e-3")


def fsdp_command(script: Path, args: list[str]) -> tuple[list[str], dict]:
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/fsdp.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return [*launch, str(script), "--use_cpu", *args], env


def launch_fsdp(args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 scripts/train.py --use_cpu`."""
    command, env = fsdp_command(REPO / "scripts" / "train.py", args)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def sharding_reports(log: str) -> dict[int, dict[str, str]]:
    """The `sharding: key=value ...` line each process logs after `prepare`, by rank."""
    reports = {}
    for line in re.findall(r"sharding: (.*)", log):
        report = dict(item.split("=", 1) for item in line.split())
        reports[int(report["rank"])] = report
    return reports


def parameters_only(weights: dict) -> dict:
    """Weights without BatchNorm running statistics (each process normalises its own micro-batch)."""
    return {k: v for k, v in weights.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def fsdp_run(imagefolder, tmp_path_factory):
    """An uninterrupted 4-step FSDP run (global batch 2 x 6) with sharded checkpoints at steps 2 and 4."""
    output_dir = tmp_path_factory.mktemp("fsdp")
    completed = launch_fsdp(run_args(imagefolder, output_dir, *FSDP_RUN, "--write_replica_checksums"))
    assert completed.returncode == 0, completed.stderr[-4000:]
    return output_dir, completed.stderr


def test_fsdp_run_logs_its_sharding_and_parameters_are_dtensor_shards(fsdp_run):
    _, log = fsdp_run
    reports = sharding_reports(log)
    assert sorted(reports) == [0, 1]
    global_numel = int(reports[0]["global_numel"])
    for report in reports.values():
        assert report["distributed_type"] == "FSDP" and report["fsdp_version"] == "2"
        assert report["mixed_precision"] == "no"
        assert report["reshard_after_forward"] == "True" and report["state_dict_type"] == "SHARDED_STATE_DICT"
        # tiny: 5 InternImageLayers, the stem (Accelerate's input embeddings) and the root module
        assert report["shard_units"] == "7"
        assert report["dtensor_parameters"] == report["parameters"]
        assert 0.45 < int(report["local_numel"]) / global_numel < 0.55
    assert sum(int(report["local_numel"]) for report in reports.values()) == global_numel


def test_fsdp_processes_end_with_the_same_gathered_weights_and_buffers(fsdp_run):
    output_dir, _ = fsdp_run
    checksums = [(output_dir / f"replica_checksum_{rank}.txt").read_text() for rank in range(2)]
    assert checksums[0] == checksums[1]


def test_fsdp_equals_one_process_with_the_same_global_batch(fsdp_run, imagefolder, tmp_path):
    output_dir, _ = fsdp_run
    # One process sees the global batch as two micro-batches of 6: the head's BatchNorm normalises each
    # micro-batch as it normalises each process's batch under FSDP/DDP.
    reference = tmp_path / "single"
    argv = run_args(imagefolder, reference, *FSDP_RUN, "--gradient_accumulation_steps", "2", "--use_cpu")
    make_trainer([*argv, "--mixed_precision", "no", "--save_steps", "0"]).run()
    difference = max_difference(parameters_only(load_weights(output_dir)), parameters_only(load_weights(reference)))
    assert difference < 1e-5


def test_fsdp_checkpoint_is_sharded_dcp_and_final_model_is_the_gathered_weights(fsdp_run):
    output_dir, _ = fsdp_run
    checkpoint = output_dir / "checkpoints" / "step_00000004"
    for engine_dir in ("pytorch_model_fsdp_0", "optimizer_0"):
        files = sorted(path.name for path in (checkpoint / engine_dir).iterdir())
        assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one shard per process
    assert not (checkpoint / "model.safetensors").exists()
    assert not list(checkpoint.rglob("*.pkl"))

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load

    from internimage_hf import InternImageForImageClassification
    from internimage_hf.training.fsdp import check_dcp_metadata

    model = InternImageForImageClassification.from_pretrained(output_dir)
    saved = model.state_dict()
    check_dcp_metadata(checkpoint)  # before DCP unpickles it
    sharded = {"model": {name: torch.empty_like(tensor) for name, tensor in saved.items()}}
    dcp_load(sharded, storage_reader=FileSystemReader(checkpoint / "pytorch_model_fsdp_0"), no_dist=True)
    # The final model.safetensors (full state dict gathered from the shards) is the step-4 state, bit for bit.
    assert max_difference(saved, sharded["model"]) == 0.0
    assert int(saved["head.norm.num_batches_tracked"]) == 4


def test_fsdp_kill_during_sharded_save_then_resume_ends_equal(fsdp_run, imagefolder, tmp_path):
    """Killed with SIGKILL while saving step 4, the run keeps a usable step-2 checkpoint; resumed from it (both
    parts with --gradient_checkpointing) it ends with the uninterrupted run's weights."""
    from internimage_hf.training.checkpointing import list_checkpoints

    uninterrupted, _ = fsdp_run
    output_dir = tmp_path / "run"
    args = run_args(imagefolder, output_dir, *FSDP_RUN, "--gradient_checkpointing")
    kill_during_save(*fsdp_command(SLOW_SAVE_SCRIPT, args), tmp_path / "saving", step=4)
    checkpoints = output_dir / "checkpoints"
    staged = checkpoints / "step_00000004.tmp"
    assert (staged / "pytorch_model_fsdp_0" / "__1_0.distcp").is_file()  # shards written, not marked complete
    assert [path.name for path in list_checkpoints(output_dir)] == ["step_00000002"]
    assert not (output_dir / "model.safetensors").exists()

    completed = launch_fsdp([*args, "--resume", "latest"])
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "resumed from" in completed.stderr and "step_00000002 at step 2" in completed.stderr
    assert not staged.exists() and (checkpoints / "step_00000004" / "training_state.json").is_file()
    assert max_difference(load_weights(output_dir), load_weights(uninterrupted)) < 1e-6


# --- no launch -----------------------------------------------------------------------------------------------------


def test_fsdp_refuses_ema_naming_the_option():
    from internimage_hf.training.fsdp import check_fsdp_options

    with pytest.raises(ValueError, match="--ema_decay 0.999 is not supported under FSDP"):
        check_fsdp_options(SimpleNamespace(ema_decay=0.999), "DistributedType.FSDP")
    check_fsdp_options(SimpleNamespace(ema_decay=0.999), "DistributedType.MULTI_CPU")  # DDP keeps EMA
    check_fsdp_options(SimpleNamespace(ema_decay=0.0), "DistributedType.FSDP")


class _RunsCode:
    def __reduce__(self):
        return (print, ("a pickle ran code",))


def test_dcp_metadata_that_could_run_code_is_refused(tmp_path, capsys):
    from internimage_hf.training.checkpointing import CheckpointError, load_checkpoint
    from internimage_hf.training.fsdp import check_dcp_metadata

    checkpoint = tmp_path / "step_00000002"
    (checkpoint / "pytorch_model_fsdp_0").mkdir(parents=True)
    (checkpoint / "training_state.json").write_text("{}")
    (checkpoint / "pytorch_model_fsdp_0" / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print is not a torch.distributed.checkpoint"):
        check_dcp_metadata(checkpoint)
    with pytest.raises(CheckpointError, match=r"\.metadata file holds more than checkpoint metadata"):
        load_checkpoint(SimpleNamespace(process_index=0), checkpoint, scheduler=None)
    assert "a pickle ran code" not in capsys.readouterr().out


def test_single_process_cpu_launch_is_warned(monkeypatch, caplog):
    from internimage_hf.training.fsdp import warn_single_process_cpu_launch

    for name in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with caplog.at_level("WARNING"):
        warn_single_process_cpu_launch()
    assert "`accelerate launch --cpu` started one process" in caplog.text
    caplog.clear()
    monkeypatch.setenv("WORLD_SIZE", "2")
    warn_single_process_cpu_launch()
    assert not caplog.text


def test_model_stem_is_the_input_embeddings_fsdp2_wrapping_asks_for():
    from internimage_hf.models.internimage.modeling_internimage import (
        InternImageBackbone,
        InternImageForImageClassification,
        InternImageModel,
        InternImageStem,
    )
    from internimage_hf.training.models import preset_config

    for model_class in (InternImageModel, InternImageForImageClassification, InternImageBackbone):
        model = model_class(preset_config("tiny"))
        assert isinstance(model.get_input_embeddings(), InternImageStem)


def test_head_batchnorm_accepts_fsdp2_bf16_parameters_with_float32_statistics():
    """FSDP2 mixed precision (the shipped yaml's bf16) casts parameters, not buffers, to bf16."""
    from internimage_hf.models.internimage.modeling_internimage import InternImageBatchNorm2d

    torch.manual_seed(0)
    norm, reference = InternImageBatchNorm2d(8), torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    reference.load_state_dict(norm.state_dict())
    norm.weight.data, norm.bias.data = norm.weight.data.bfloat16(), norm.bias.data.bfloat16()
    inputs = torch.randn(4, 8, 5, 5).bfloat16()
    plain = torch.nn.BatchNorm2d(8)
    plain.weight.data, plain.bias.data = plain.weight.data.bfloat16(), plain.bias.data.bfloat16()
    with pytest.raises(RuntimeError, match="expected scalar type BFloat16 but found Float"):
        plain(inputs)
    for _ in range(2):
        output = norm(inputs)
        expected = reference(inputs.float())
    assert output.dtype == torch.bfloat16
    assert (output.float() - expected).abs().max() < 0.05  # bf16 rounding of outputs of size ~3
    assert torch.allclose(norm.running_mean, reference.running_mean) and norm.running_mean.dtype == torch.float32
    assert torch.allclose(norm.running_var, reference.running_var) and int(norm.num_batches_tracked) == 2
