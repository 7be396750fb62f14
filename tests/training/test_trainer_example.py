"""`examples/trainer_finetune.py`: transformers.Trainer runs 2 steps with evaluation and a checkpoint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import requires_accelerate, requires_torchvision

REPO = Path(__file__).resolve().parents[2]
pytestmark = [requires_accelerate, requires_torchvision]


def load_example():
    spec = importlib.util.spec_from_file_location("trainer_finetune", REPO / "examples" / "trainer_finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trainer_two_steps_with_eval_and_save(imagefolder, tmp_path):
    example = load_example()
    argv = ["--dataset", str(imagefolder), "--output_dir", str(tmp_path), "--max_steps", "2", "--save_steps", "2",
            "--batch_size", "6", "--use_cpu"]  # fmt: skip
    trainer = example.main(argv)
    assert trainer.state.global_step == 2
    assert any("eval_loss" in entry for entry in trainer.state.log_history)
    checkpoint = tmp_path / "checkpoint-2"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "trainer_state.json"):
        assert (checkpoint / name).is_file(), name
    assert "eval_accuracy" in json.loads((tmp_path / "eval_results.json").read_text())


def test_trainer_refuses_an_earlier_run_unless_resumed_or_overwritten(imagefolder, tmp_path):
    from internimage_hf.training import OutputDirError

    example = load_example()
    argv = ["--dataset", str(imagefolder), "--output_dir", str(tmp_path), "--max_steps", "2", "--save_steps", "2",
            "--batch_size", "6", "--use_cpu"]  # fmt: skip
    example.main(argv)
    with pytest.raises(OutputDirError, match=r"holds an earlier run \(checkpoint-2, config.json, model.safetensors\)"):
        example.main(argv)
    assert example.main([*argv, "--max_steps", "4", "--resume_from_checkpoint", "latest"]).state.global_step == 4
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # A new run: the earlier checkpoints go first, so Trainer's pruning and resuming see only the new run's.
    assert example.main([*argv, "--overwrite_output_dir"]).state.global_step == 2
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
