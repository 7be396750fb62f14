"""Unreadable images: an error naming the file and split, and `--skip_bad_images` with an exact resume."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from conftest import load_weights, make_trainer, requires_accelerate, run_args

pytestmark = requires_accelerate


def test_unreadable_image_error_names_the_file_and_split(broken_imagefolder, tmp_path):
    from internimage_hf.training import UnreadableImageError

    root, truncated, not_an_image = broken_imagefolder
    # One epoch (4 steps) visits every training image; the truncated one stops the run.
    with pytest.raises(
        UnreadableImageError,
        match=rf"cannot read image {re.escape(str(truncated))} \(split 'train', row \d+\): OSError: image file is "
        r"truncated.*--skip_bad_images",
    ):
        make_trainer(run_args(root, tmp_path / "train", "--max_steps", "4")).run()
    truncated.unlink()
    with pytest.raises(UnreadableImageError, match=rf"{re.escape(str(not_an_image))} \(split 'validation', row"):
        make_trainer(run_args(root, tmp_path / "eval", "--max_steps", "1")).run()


def test_skip_bad_images_leaves_them_out_and_resumes_exactly(broken_imagefolder, tmp_path, caplog):
    root, truncated, not_an_image = broken_imagefolder
    common = ("--skip_bad_images", "--max_steps", "6", "--save_total_limit", "0", "--drop_path_rate", "0.2")
    with caplog.at_level(logging.WARNING, logger="internimage_hf.training.data"):
        results = make_trainer(run_args(root, tmp_path / "full", *common, "--save_steps", "3")).run()
    assert (results["train_samples"], results["eval_samples"], results["global_step"]) == (23, 11, 6)
    log = caplog.text
    assert f"leaving out 1 unreadable image(s) of 24 in split 'train': {truncated} (OSError: image file is " in log
    assert f"leaving out 1 unreadable image(s) of 12 in split 'validation': {not_an_image} (UnidentifiedImage" in log

    checkpoint = tmp_path / "full" / "checkpoints" / "step_00000003"
    make_trainer(run_args(root, tmp_path / "resumed", *common, "--resume", str(checkpoint))).run()
    expected, actual = load_weights(tmp_path / "full"), load_weights(tmp_path / "resumed")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_run_stopped_by_an_unreadable_image_resumes_with_skip_bad_images_exactly(imagefolder, tmp_path):
    import shutil

    from internimage_hf.training.data import EpochPermutationSampler, image_source, load_raw_dataset

    root = tmp_path / "data"
    shutil.copytree(imagefolder, root)
    common = ("--max_steps", "6", "--save_total_limit", "0", "--drop_path_rate", "0.2")
    # The interrupted run gets to a checkpoint at step 1 (the first 6 images of epoch 0); then an image it has not
    # reached yet turns out unreadable, and the run is resumed with --skip_bad_images.
    make_trainer(run_args(root, tmp_path / "resumed", *common, "--save_steps", "1", "--max_steps", "1")).run()
    train = load_raw_dataset(str(root))["train"]
    unread_row = list(EpochPermutationSampler(len(train), seed=42))[10]
    bad = root / image_source(train, "image", unread_row)
    bad.write_bytes(bad.read_bytes()[:200])

    argv = run_args(root, tmp_path / "resumed", *common, "--skip_bad_images", "--resume", "latest")
    assert make_trainer(argv).run()["train_samples"] == 23
    make_trainer(run_args(root, tmp_path / "skipping", *common, "--skip_bad_images")).run()
    expected, actual = load_weights(tmp_path / "skipping"), load_weights(tmp_path / "resumed")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)
