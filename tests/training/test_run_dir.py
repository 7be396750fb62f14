"""`output_dir` ownership: refusing another run's directory, `--overwrite_output_dir`, run ids in pruning and
`--resume latest`, the settings a resume must keep, and the lock that keeps a second run out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import load_weights, make_trainer, requires_accelerate, run_args, write_imagefolder

pytestmark = requires_accelerate


def checkpoint_names(output_dir) -> list[str]:
    return sorted(path.name for path in (output_dir / "checkpoints").iterdir())


def run_id(directory) -> str:
    return json.loads((directory / "run.json").read_text())["run_id"]


def test_new_run_refuses_another_runs_output_dir_unless_overwrite(imagefolder, tmp_path):
    from internimage_hf.training import OutputDirError

    out = tmp_path / "out"
    first = ("--max_steps", "4", "--save_steps", "2", "--save_total_limit", "0", "--ema_decay", "0.8")
    make_trainer(run_args(imagefolder, out, *first)).run()
    (out / "notes.txt").write_text("mine")  # not written by training: never touched
    first_run, first_weights = run_id(out), load_weights(out)
    assert checkpoint_names(out) == ["step_00000002", "step_00000004"]

    with pytest.raises(OutputDirError, match=r"holds 2 checkpoints and a finished model of another training run.*"
                       r"--resume latest.*--overwrite_output_dir"):  # fmt: skip
        make_trainer(run_args(imagefolder, out, "--max_steps", "2"))
    assert checkpoint_names(out) == ["step_00000002", "step_00000004"] and run_id(out) == first_run

    # --overwrite_output_dir: the old run's checkpoints, model and online model go; the new run's stay.
    second = ("--max_steps", "6", "--save_steps", "2", "--save_total_limit", "2", "--overwrite_output_dir")
    results = make_trainer(run_args(imagefolder, out, *second)).run()
    assert results["global_step"] == 6
    assert checkpoint_names(out) == ["step_00000004", "step_00000006"]
    second_run = run_id(out)
    assert second_run != first_run
    assert {run_id(out / "checkpoints" / name) for name in checkpoint_names(out)} == {second_run}
    assert not (out / "online_model").exists()  # the first run's EMA layout does not linger
    assert (out / "notes.txt").read_text() == "mine"
    assert not torch.equal(load_weights(out)["classifier.weight"], first_weights["classifier.weight"])


def test_pruning_and_resume_latest_only_consider_this_runs_checkpoints(imagefolder, tmp_path):
    other, out = tmp_path / "other", tmp_path / "out"
    make_trainer(run_args(imagefolder, other, "--max_steps", "8", "--save_steps", "8")).run()
    make_trainer(run_args(imagefolder, out, "--max_steps", "4", "--save_steps", "2", "--save_total_limit", "0")).run()
    # Another run's checkpoint with a higher step lands in this run's folder.
    shutil.copytree(other / "checkpoints" / "step_00000008", out / "checkpoints" / "step_00000008")

    argv = run_args(imagefolder, out, "--max_steps", "6", "--save_steps", "2", "--save_total_limit", "2")
    results = make_trainer([*argv, "--resume", "latest"]).run()
    assert results["global_step"] == 6  # resumed this run's step 4, not the other run's step 8
    # Pruning kept this run's newest two and left the other run's checkpoint alone.
    assert checkpoint_names(out) == ["step_00000004", "step_00000006", "step_00000008"]
    assert run_id(out / "checkpoints" / "step_00000008") == run_id(other) != run_id(out)


def test_resume_with_changed_settings_fails_naming_the_option(imagefolder, tmp_path):
    from internimage_hf.training import CheckpointError

    base = ("--max_steps", "2", "--save_steps", "2", "--ema_decay", "0.8")
    make_trainer(run_args(imagefolder, tmp_path / "out", *base)).run()
    other_data = tmp_path / "other_data"
    write_imagefolder(other_data, seed=1)
    changes = {
        "--per_device_train_batch_size": ("--per_device_train_batch_size", "4"),
        "--gradient_accumulation_steps": ("--gradient_accumulation_steps", "2"),
        "--seed": ("--seed", "7"),
        "--ema_decay": ("--ema_decay", "0"),
        "--model": ("--model", "t"),
        "--image_size": ("--image_size", "64"),
        "--learning_rate": ("--learning_rate", "1e-3"),
        "--max_train_samples": ("--max_train_samples", "12"),
    }
    for option, change in changes.items():
        with pytest.raises(CheckpointError, match=rf"written with other settings \({option}: "):
            make_trainer(run_args(imagefolder, tmp_path / "out", *base, "--resume", "latest", *change))
    # Same folder content under another path, and a smaller dataset: both named.
    with pytest.raises(CheckpointError, match=r"--dataset: .* then, .* now"):
        make_trainer(run_args(other_data, tmp_path / "out", *base, "--resume", "latest"))
    with pytest.raises(CheckpointError, match=r"number of training images .*: 24 then, 12 now"):
        make_trainer(run_args(imagefolder, tmp_path / "out", *base, "--resume", "latest", "--max_train_samples", "12"))


def test_changed_process_count_is_named():
    # Accelerate shards each batch over the processes, so the position in an epoch depends on their number.
    from internimage_hf.training import CheckpointError
    from internimage_hf.training.run_dir import check_resume_settings

    recorded, current = {"num_processes": 2, "seed": 1}, {"num_processes": 1, "seed": 1}
    expected = r"step_2: .* other settings \(number of processes \(accelerate launch --num_processes\): 2 then, 1 now\)"
    with pytest.raises(CheckpointError, match=expected):
        check_resume_settings(recorded, current, "checkpoints/step_2")
    check_resume_settings(recorded, {**current, "num_processes": 2}, "checkpoints/step_2")  # equal: no error


def test_resume_accepts_the_same_dataset_folder_spelled_differently(imagefolder, tmp_path, monkeypatch):
    base = ("--max_steps", "2", "--save_steps", "2")
    make_trainer(run_args(imagefolder, tmp_path / "out", *base)).run()
    monkeypatch.chdir(imagefolder.parent)
    relative = f"{imagefolder.name}/"
    trainer = make_trainer(run_args(relative, tmp_path / "out", *base, "--max_steps", "3", "--resume", "latest"))
    assert trainer.run()["global_step"] == 3


def test_resume_with_more_steps_continues_the_same_run(imagefolder, tmp_path):
    # A constant schedule, so a longer run is the same run continued (a cosine schedule would stretch).
    common = ("--lr_scheduler", "constant_with_warmup", "--save_total_limit", "0")
    make_trainer(run_args(imagefolder, tmp_path / "full", *common, "--max_steps", "6")).run()
    short = run_args(imagefolder, tmp_path / "short", *common, "--max_steps", "4", "--save_steps", "4")
    make_trainer(short).run()
    longer = run_args(imagefolder, tmp_path / "short", *common, "--max_steps", "6", "--resume", "latest")
    results = make_trainer(longer).run()
    assert results["global_step"] == 6 and results["epoch"] == pytest.approx(1.5)
    expected, actual = load_weights(tmp_path / "full"), load_weights(tmp_path / "short")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


HOLD_LOCK = """
import sys, time
from internimage_hf.training.run_dir import OutputDirLock
lock = OutputDirLock(sys.argv[1])  # kept referenced: a collected lock is released
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_run_on_the_same_output_dir_fails_with_the_holders_pid(imagefolder, tmp_path):
    from internimage_hf.training import OutputDirError

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError, match=rf"in use by another training run \(pid {holder.pid} on "):
            make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "1"))
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its holder; within one process a Trainer holds it until `run()` returns.
    trainer = make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "1"))
    with pytest.raises(OutputDirError, match=rf"in use by another training run \(pid {os.getpid()} on "):
        make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "1"))
    assert trainer.run()["global_step"] == 1
    assert not (tmp_path / "train.lock.pid").exists()


def test_cli_reports_a_refused_output_dir_in_one_line(imagefolder, tmp_path, capsys):
    from internimage_hf.training.cli import main

    make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "1")).run()
    capsys.readouterr()
    assert main(run_args(imagefolder, tmp_path, "--max_steps", "1")) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --output_dir {tmp_path} holds a finished model of another training run")
    assert error.count("\n") == 1
    assert "--resume" not in error  # no checkpoint to resume: not suggested


@pytest.mark.parametrize("model_inside", ["", "online_model"])
def test_overwrite_refuses_to_delete_the_model_it_starts_from(imagefolder, tmp_path, model_inside):
    """`--model X --output_dir X --overwrite_output_dir` would delete X before training loads it."""
    from internimage_hf.training import OutputDirError

    out = tmp_path / "out"
    make_trainer(run_args(imagefolder, out, "--max_steps", "1", "--ema_decay", "0.8")).run()
    before = load_weights(out / model_inside)
    model = str(out / model_inside)
    with pytest.raises(OutputDirError, match=r"--model .* would delete before training reads it"):
        make_trainer(run_args(imagefolder, out, "--model", model, "--max_steps", "1", "--overwrite_output_dir"))
    after = load_weights(out / model_inside)
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)


def test_overwrite_may_write_into_a_folder_inside_the_input_model(imagefolder, tmp_path):
    make_trainer(run_args(imagefolder, tmp_path / "base", "--max_steps", "1")).run()
    inner = tmp_path / "base" / "finetuned"
    make_trainer(run_args(imagefolder, inner, "--max_steps", "1")).run()
    rerun = run_args(
        imagefolder, inner, "--model", str(tmp_path / "base"), "--max_steps", "1", "--overwrite_output_dir"
    )
    assert make_trainer(rerun).run()["global_step"] == 1
