"""DeepSpeed ZeRO-2 and ZeRO-3 through `accelerate launch` with the shipped configs, on two CPU processes (DeepSpeed's
CPU accelerator, gloo): equal to a one-process run, checkpoints in DeepSpeed's format that resume exactly, the
final model as ordinary safetensors. The launch tests skip without `deepspeed`; the option checks run everywhere."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL, kill_during_save, make_trainer, requires_accelerate
from test_distributed import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "accelerate"
pytestmark = requires_accelerate
requires_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (pip install deepspeed)"
)


def deepspeed_env(monkeypatch, stage: int | None, clipping: str = "5.0") -> None:
    """The environment `accelerate launch` gives processes of a DeepSpeed config."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", clipping)
    if stage is not None:
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", str(stage))


def options_for(*extra: str):
    from internimage_hf.training.arguments import parse_options

    return parse_options(["--output_dir", "unused", *TINY_MODEL, *extra])


# --- the shipped configs and the checks at start (no deepspeed needed) ----------------------------------------------


@pytest.mark.parametrize("stage", [2, 3])
def test_shipped_deepspeed_configs_match_the_training_options(stage):
    import yaml

    from internimage_hf.training.arguments import OFFICIAL_RECIPE

    config = yaml.safe_load((CONFIGS / f"deepspeed_zero{stage}.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED" and config["use_cpu"] is False
    deepspeed = config["deepspeed_config"]
    assert deepspeed["zero_stage"] == stage
    # DeepSpeed clips in its engine; the config's value must be the recipe's --max_grad_norm.
    assert deepspeed["gradient_clipping"] == OFFICIAL_RECIPE["max_grad_norm"]
    # Batch sizes and accumulation come from the command line, not the config.
    assert not {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"} & set(deepspeed)
    if stage == 3:  # without it the sharded weights cannot be gathered into the final model.safetensors
        assert deepspeed["zero3_save_16bit_model"] is True


def test_deepspeed_plugin_builds_from_the_zero3_config(monkeypatch):
    """Accelerate's DeepSpeedPlugin, as a launch with configs/accelerate/deepspeed_zero3.yaml sets it up."""
    from accelerate.utils import DeepSpeedPlugin

    deepspeed_env(monkeypatch, 3)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "true")
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 3
    assert plugin.deepspeed_config["gradient_clipping"] == 5.0
    assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_deepspeed_refuses_use_cpu_and_mismatched_clipping(monkeypatch):
    from internimage_hf.training.deepspeed_engine import DeepSpeedOptionError, check_deepspeed_options

    check_deepspeed_options(options_for("--use_cpu"))  # outside a DeepSpeed launch nothing is checked
    deepspeed_env(monkeypatch, 2)
    check_deepspeed_options(options_for("--max_grad_norm", "5.0", "--ema_decay", "0.99"))
    with pytest.raises(DeepSpeedOptionError, match="--use_cpu"):
        check_deepspeed_options(options_for("--use_cpu"))
    with pytest.raises(DeepSpeedOptionError, match="--max_grad_norm 1.0 differs .* gradient_clipping 5.0"):
        check_deepspeed_options(options_for("--max_grad_norm", "1.0"))


def test_deepspeed_zero3_refuses_ema(monkeypatch):
    from internimage_hf.training.deepspeed_engine import DeepSpeedOptionError, check_deepspeed_options

    deepspeed_env(monkeypatch, 3)
    check_deepspeed_options(options_for())
    with pytest.raises(DeepSpeedOptionError, match="--ema_decay .* ZeRO-3"):
        check_deepspeed_options(options_for("--ema_decay", "0.99"))


def test_deepspeed_zero3_from_a_json_config_file_refuses_ema(monkeypatch, tmp_path):
    from internimage_hf.training.deepspeed_engine import DeepSpeedOptionError, check_deepspeed_options

    config_file = tmp_path / "ds.json"
    config_file.write_text('{"zero_optimization": {"stage": 3}, "gradient_clipping": "auto"}')
    deepspeed_env(monkeypatch, None, clipping="none")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config_file))
    with pytest.raises(DeepSpeedOptionError, match="--ema_decay"):
        check_deepspeed_options(options_for("--ema_decay", "0.99"))
    config_file.write_text('{"zero_optimization": {"stage": 2}}')
    check_deepspeed_options(options_for("--ema_decay", "0.99"))


def test_deepspeed_bf16_casts_buffers_with_the_parameters():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from internimage_hf.training.deepspeed_engine import cast_buffers_with_parameters

    def accelerator(distributed_type, config):
        state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config))
        return SimpleNamespace(distributed_type=distributed_type, state=state)

    for precision in ("bf16", "fp16"):
        config = {precision: {"enabled": True}, "zero_optimization": {"stage": 2}}
        cast_buffers_with_parameters(accelerator(DistributedType.DEEPSPEED, config))
        assert config["data_types"] == {"buffer_dtype": precision}
    fp32 = {"bf16": {"enabled": False}}
    cast_buffers_with_parameters(accelerator(DistributedType.DEEPSPEED, fp32))
    assert "data_types" not in fp32
    explicit = {"bf16": {"enabled": True}, "data_types": {"buffer_dtype": "fp32"}}  # the user's choice is kept
    cast_buffers_with_parameters(accelerator(DistributedType.DEEPSPEED, explicit))
    assert explicit["data_types"] == {"buffer_dtype": "fp32"}


def test_deepspeed_without_gpu_names_gloo(monkeypatch):
    """Accelerate finds no backend without a GPU and would count one process; the loop names gloo for it."""
    import torch

    from internimage_hf.training.deepspeed_engine import process_group_kwargs

    assert process_group_kwargs() == []
    deepspeed_env(monkeypatch, 2)
    if torch.accelerator.is_available():
        assert process_group_kwargs() == []
    else:
        (handler,) = process_group_kwargs()
        assert handler.backend == "gloo"


# --- two-process runs (need deepspeed) -------------------------------------------------------------------------------


def fit_args(imagefolder, output_dir, *extra: str) -> list[str]:
    """3 steps of 2 x 6 images. No stochastic depth (its masks are per process). AdamW's epsilon is raised from
    1e-8 to 1e-3: with epsilon far below a gradient's size the first steps move every weight by about the learning
    rate whatever the gradient's value, so float rounding in near-zero gradients (which differs with the order
    DeepSpeed reduces in) would show as 1e-4 differences and hide real ones."""
    return [
        "--dataset", str(imagefolder), "--output_dir", str(output_dir), *TINY_MODEL,
        "--per_device_train_batch_size", "6", "--per_device_eval_batch_size", "12", "--learning_rate", "3e-3",
        "--warmup_steps", "1", "--train_crop", "resize", "--drop_path_rate", "0", "--adam_epsilon", "1e-3",
        "--max_steps", "3", "--logging_steps", "1", "--num_predictions", "0", *extra,
    ]  # fmt: skip


def deepspeed_command(
    stage: int, train_args: list[str], mixed_precision: str = "no", script: Path = REPO / "scripts" / "train.py"
) -> tuple[list[str], dict]:
    """`accelerate launch` with configs/accelerate/deepspeed_zero<stage>.yaml on two CPU processes (fp32 unless
    `mixed_precision` says otherwise): the command and its environment."""
    config = CONFIGS / f"deepspeed_zero{stage}.yaml"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
        "--num_processes", "2", "--mixed_precision", mixed_precision, "--main_process_port", str(free_port()),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return [*launch, str(script), *train_args], env


def launch_deepspeed(stage: int, train_args: list[str], mixed_precision: str = "no") -> subprocess.CompletedProcess:
    command, env = deepspeed_command(stage, train_args, mixed_precision)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def one_process_reference(imagefolder, tmp_path_factory):
    """The same global batch on one process (2 accumulated micro-batches of 6, as the head's BatchNorm needs
    6-image batches), with EMA: `output_dir` holds the EMA model, `online_model/` the trained weights."""
    output_dir = tmp_path_factory.mktemp("one_process")
    argv = [*fit_args(imagefolder, output_dir, "--ema_decay", "0.9"), "--gradient_accumulation_steps", "2", "--use_cpu"]
    make_trainer(argv).run()
    return output_dir


def parameters(directory: Path) -> dict:
    """Parameters (not BatchNorm running statistics, which each process keeps for itself) loaded by from_pretrained."""
    from internimage_hf import InternImageForImageClassification

    model = InternImageForImageClassification.from_pretrained(directory)
    return {name: tensor.detach() for name, tensor in model.named_parameters()}


def max_difference(expected: dict, got: dict) -> float:
    assert expected.keys() == got.keys()
    return max((expected[name] - got[name]).abs().max().item() for name in expected)


def resume_copy(run_dir: Path, destination: Path, step: int) -> None:
    """A directory holding only what the run had written at `step`: the run record and that checkpoint."""
    destination.mkdir()
    shutil.copy(run_dir / "run.json", destination / "run.json")
    name = f"step_{step:08d}"
    shutil.copytree(run_dir / "checkpoints" / name, destination / "checkpoints" / name)


def all_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow  # two launches of two processes per stage: about 30 s each on 2 shared CPU cores
@requires_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_like_one_process_and_resumes_exactly(
    stage, imagefolder, tmp_path, one_process_reference
):
    # EMA at stage 2 (full weights on every process); stage 3 refuses it (see test_deepspeed_zero3_refuses_ema).
    ema = ("--ema_decay", "0.9") if stage == 2 else ()
    run_dir = tmp_path / "run"
    completed = launch_deepspeed(stage, fit_args(imagefolder, run_dir, "--save_steps", "2", *ema))
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert '"global_step": 3' in completed.stdout

    # Trained weights, saved as ordinary safetensors that from_pretrained loads, equal the one-process run's.
    online_dir = run_dir / "online_model" if ema else run_dir
    assert max_difference(parameters(one_process_reference / "online_model"), parameters(online_dir)) <= 1e-5
    if ema:
        assert max_difference(parameters(one_process_reference), parameters(run_dir)) <= 1e-5

    # The checkpoint holds DeepSpeed's own files (optimizer state sharded per process) next to ours.
    checkpoint = run_dir / "checkpoints" / "step_00000002"
    shards = sorted(p.name for p in (checkpoint / "pytorch_model").glob("zero_pp_rank_*_optim_states.pt"))
    assert shards == [f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)]
    assert {f"rng_state_{rank}.safetensors" for rank in (0, 1)} <= {p.name for p in checkpoint.iterdir()}

    # Resuming at step 2 ends where the uninterrupted run ended, buffers and EMA included.
    resumed_dir = tmp_path / "resumed"
    resume_copy(run_dir, resumed_dir, 2)
    completed = launch_deepspeed(
        stage, fit_args(imagefolder, resumed_dir, "--save_steps", "2", "--resume", "latest", *ema)
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    saved = [Path("model.safetensors")] + ([Path("online_model") / "model.safetensors"] if ema else [])
    for name in saved:
        expected, got = all_weights(run_dir / name), all_weights(resumed_dir / name)
        assert max_difference(expected, got) <= 1e-6, name


@pytest.mark.slow
@requires_deepspeed
def test_deepspeed_zero3_ema_is_refused_at_start_with_one_line(imagefolder, tmp_path):
    completed = launch_deepspeed(3, fit_args(imagefolder, tmp_path / "run", "--ema_decay", "0.9"))
    assert completed.returncode != 0
    assert "error: --ema_decay needs the full weights on every process, which ZeRO-3 shards" in completed.stderr
    assert "Traceback" not in completed.stderr.split("error: --ema_decay")[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@requires_deepspeed
def test_deepspeed_zero2_bf16_trains_with_a_float32_ema(imagefolder, tmp_path):
    """The configs' bf16: DeepSpeed holds the weights in bf16; the head's BatchNorm statistics must follow them
    (batch_norm refuses bf16 weights with float32 statistics), and the EMA stays in float32 (a bf16 average would
    drop updates much smaller than the weights, as (1 - 0.9999) x difference is)."""
    import torch

    run_dir = tmp_path / "run"
    completed = launch_deepspeed(2, fit_args(imagefolder, run_dir, "--ema_decay", "0.9"), mixed_precision="bf16")
    assert completed.returncode == 0, completed.stderr[-4000:]
    online = all_weights(run_dir / "online_model" / "model.safetensors")
    ema = all_weights(run_dir / "model.safetensors")
    assert online["head.norm.running_var"].dtype == torch.bfloat16
    assert {t.dtype for t in ema.values() if t.is_floating_point()} == {torch.float32}
    assert (ema["classifier.weight"] - online["classifier.weight"].float()).abs().max() > 1e-4
    assert set(parameters(run_dir)) == set(parameters(run_dir / "online_model"))  # both load with from_pretrained


@pytest.mark.slow
@requires_deepspeed
def test_deepspeed_kill_during_save_then_resume_with_gradient_checkpointing(imagefolder, tmp_path):
    """ZeRO-2 killed with SIGKILL while saving step 4 keeps a usable step-2 checkpoint; resumed from it (both parts
    with --gradient_checkpointing) it ends with the weights of an uninterrupted run without checkpointing."""
    from internimage_hf.training.checkpointing import list_checkpoints

    four_steps = ("--max_steps", "4", "--save_steps", "2")
    uninterrupted = tmp_path / "uninterrupted"
    completed = launch_deepspeed(2, fit_args(imagefolder, uninterrupted, *four_steps))
    assert completed.returncode == 0, completed.stderr[-4000:]

    output_dir = tmp_path / "run"
    args = fit_args(imagefolder, output_dir, *four_steps, "--gradient_checkpointing")
    slow_save = Path(__file__).with_name("slow_save_train.py")
    kill_during_save(*deepspeed_command(2, args, script=slow_save), tmp_path / "saving", step=4)
    staged = output_dir / "checkpoints" / "step_00000004.tmp"
    assert sorted(staged.glob("pytorch_model/zero_pp_rank_*_optim_states.pt"))  # DeepSpeed's part written
    assert [path.name for path in list_checkpoints(output_dir)] == ["step_00000002"]
    assert not (output_dir / "model.safetensors").exists()

    command, env = deepspeed_command(2, [*args, "--resume", "latest"])
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert not staged.exists() and (output_dir / "checkpoints" / "step_00000004").is_dir()
    expected, got = all_weights(uninterrupted / "model.safetensors"), all_weights(output_dir / "model.safetensors")
    assert max_difference(expected, got) <= 1e-6
