"""Checkpoints load no pickle: their contents, and crafted pickles refused without running them."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import make_trainer, requires_accelerate, run_args

pytestmark = requires_accelerate


class WritesAFile:
    """Unpickling this (with `weights_only=False`) creates the file `path`: stands for any code a pickle can run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_holds_only_safetensors_json_and_a_weights_only_optimizer_state(imagefolder, tmp_path):
    make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "2", "--save_steps", "2", "--ema_decay", "0.8")).run()
    checkpoint = tmp_path / "checkpoints" / "step_00000002"
    assert sorted(path.name for path in checkpoint.iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.bin", "rng_state_0.safetensors", "run.json",
        "scheduler.json", "training_state.json",
    ]  # fmt: skip
    torch.load(checkpoint / "optimizer.bin", weights_only=True)  # plain tensors and numbers


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_crafted_pickle_in_a_checkpoint_is_refused_and_never_run(imagefolder, tmp_path, name):
    from internimage_hf.training import CheckpointError

    out = tmp_path / "out"
    make_trainer(run_args(imagefolder, out, "--max_steps", "2", "--save_steps", "2")).run()
    checkpoint = out / "checkpoints" / "step_00000002"
    marker = tmp_path / "payload-ran"
    torch.save({"state": WritesAFile(str(marker)), "param_groups": []}, checkpoint / name)
    # A .pkl file is refused before anything is loaded; the optimizer state is read with weights_only=True.
    expected = rf"contains pickle files \({name}\)" if name.endswith(".pkl") else "could not be loaded: UnpicklingError"
    with pytest.raises(CheckpointError, match=expected):
        make_trainer(run_args(imagefolder, out, "--max_steps", "4", "--resume", str(checkpoint))).run()
    assert not marker.exists()


def test_rng_state_round_trips_through_safetensors(tmp_path):
    from internimage_hf.training.rng_state import load_rng_state, save_rng_state

    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    save_rng_state(tmp_path, 0)
    expected = (random.random(), np.random.standard_normal(), np.random.random(), torch.rand(3))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    load_rng_state(tmp_path, 0)
    actual = (random.random(), np.random.standard_normal(), np.random.random(), torch.rand(3))
    assert actual[:3] == expected[:3]
    assert torch.equal(actual[3], expected[3])
