"""Fixtures for the training tests: a tiny generated `imagefolder` dataset and a fast run configuration."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

requires_accelerate = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None or importlib.util.find_spec("datasets") is None,
    reason="training needs accelerate and datasets (pip install 'internimage_hf[train]')",
)
requires_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed (augmentations need it)"
)

CLASSES = ("red", "green", "blue")
IMAGES_PER_CLASS = {"train": 8, "validation": 4}
TINY_MODEL = ["--model", "tiny", "--image_size", "32"]


def write_imagefolder(root, size: int = 40, seed: int = 0) -> None:
    """`root/{train,validation}/<class>/*.png`: noisy images dominated by one colour channel per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in IMAGES_PER_CLASS.items():
        for channel, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 90, size=(size, size, 3))
                pixels[..., channel] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")


@pytest.fixture(scope="session")
def imagefolder(tmp_path_factory):
    """Path of a 3-class imagefolder dataset (24 train and 12 validation images of 40x40 pixels)."""
    root = tmp_path_factory.mktemp("imagefolder")
    write_imagefolder(root)
    return root


@pytest.fixture
def broken_imagefolder(imagefolder, tmp_path):
    """A copy of `imagefolder` with a truncated PNG in train and a non-image in validation: (root, train, eval)."""
    import shutil

    root = tmp_path / "broken_data"
    shutil.copytree(imagefolder, root)
    truncated = root / "train" / "green" / "3.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    not_an_image = root / "validation" / "red" / "1.png"
    not_an_image.write_bytes(b"not an image")
    return root, truncated, not_an_image


def make_trainer(argv):
    """A `Trainer` for command-line arguments (holds output_dir's lock until `run()` returns)."""
    from internimage_hf.training.arguments import parse_options
    from internimage_hf.training.loop import Trainer

    return Trainer(parse_options(argv))


def load_weights(directory) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def run_args(imagefolder, output_dir, *extra: str) -> list[str]:
    """Command-line arguments of a fast run on the tiny dataset (extra arguments win)."""
    return [
        "--dataset", str(imagefolder), "--output_dir", str(output_dir), *TINY_MODEL,
        "--per_device_train_batch_size", "6", "--per_device_eval_batch_size", "12",
        "--learning_rate", "3e-3", "--warmup_steps", "1", "--train_crop", "resize",
        "--logging_steps", "1", "--num_predictions", "0", *extra,
    ]  # fmt: skip


def kill_during_save(command: list[str], env: dict, marker, step: int) -> None:
    """Launch `command` (a launcher running `slow_save_train.py`, which stalls in the checkpoint of `step` once every
    process wrote its part) and SIGKILL the launcher and all its workers there."""
    import signal
    import subprocess
    import time

    import psutil

    env = {**env, "SLOW_SAVE_STEP": str(step), "SLOW_SAVE_MARKER": str(marker)}
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"the run never reached the save of step {step}"
        processes = [launcher.pid, *(child.pid for child in psutil.Process(launcher.pid).children(recursive=True))]
        for pid in processes:
            os.kill(pid, signal.SIGKILL)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.communicate()
