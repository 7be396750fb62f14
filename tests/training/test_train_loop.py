"""The Accelerate training entry point on a tiny imagefolder dataset: learning, outputs, exact resume, errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_weights, make_trainer, requires_accelerate, requires_torchvision, run_args

pytestmark = requires_accelerate


def test_training_reduces_loss_and_saves_a_loadable_model(imagefolder, tmp_path):
    from internimage_hf.training.loop import evaluate

    trainer = make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "8"))
    before = evaluate(trainer.model, trainer.eval_loader, trainer.accelerator)["loss"]
    results = trainer.run()
    assert results["eval_loss"] < before
    assert results["global_step"] == 8
    saved = json.loads((tmp_path / "all_results.json").read_text())
    for key in ("eval_accuracy", "eval_top5_accuracy", "eval_loss", "train_loss", "train_runtime",
                "train_samples_per_second", "epoch"):  # fmt: skip
        assert key in saved
    assert saved["epoch"] == pytest.approx(2.0)  # 24 images / batch 6 = 4 steps per epoch

    from transformers import AutoModelForImageClassification

    # The top-level name is a placeholder without torchvision in transformers < 5.5; the module is always real.
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    import internimage_hf  # noqa: F401

    model = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert model.config.id2label == {0: "blue", 1: "green", 2: "red"}
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.crop_size["height"] == 32


def resume_options(*extra):
    """Drop path, EMA, clipping and an eval each epoch: every piece of state that resuming must restore."""
    return ("--drop_path_rate", "0.2", "--ema_decay", "0.8", "--max_steps", "7", "--save_total_limit", "0", *extra)


@pytest.mark.parametrize(
    "extra",
    [
        ("--save_steps", "3"),  # checkpoint in the middle of epoch 0
        ("--save_steps", "2", "--gradient_accumulation_steps", "2"),  # at the end of epoch 0, with accumulation
    ],
    ids=["mid-epoch", "epoch-end-accumulation"],
)
def test_resume_matches_uninterrupted_run(imagefolder, tmp_path, extra):
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    make_trainer(run_args(imagefolder, full_dir, *resume_options(*extra))).run()
    checkpoints = sorted((full_dir / "checkpoints").iterdir())
    first = checkpoints[0]
    assert first.name in ("step_00000002", "step_00000003")
    resumed = make_trainer(run_args(imagefolder, resumed_dir, *resume_options(*extra), "--resume", str(first)))
    results = resumed.run()
    assert results["global_step"] == 7
    for subdir in ("", "online_model"):  # EMA weights, then the online weights
        expected, actual = load_weights(full_dir / subdir), load_weights(resumed_dir / subdir)
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=f"{subdir}/{key}")


@requires_torchvision
def test_resume_with_augmentations_is_exact(imagefolder, tmp_path):
    augment = ("--train_crop", "random_resized", "--randaugment", "--random_erasing", "0.5", "--mixup", "0.8",
               "--cutmix", "1.0", "--layer_decay", "0.8", "--save_steps", "3")  # fmt: skip
    make_trainer(run_args(imagefolder, tmp_path / "full", *resume_options(*augment))).run()
    first = sorted((tmp_path / "full" / "checkpoints").iterdir())[0]
    argv = run_args(imagefolder, tmp_path / "resumed", *resume_options(*augment), "--resume", str(first))
    make_trainer(argv).run()
    expected, actual = load_weights(tmp_path / "full"), load_weights(tmp_path / "resumed")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_resume_latest_and_checkpoint_errors(imagefolder, tmp_path):
    from internimage_hf.training.checkpointing import CheckpointError

    with pytest.raises(CheckpointError, match="no checkpoint found"):
        make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "2", "--resume", "latest")).run()
    with pytest.raises(CheckpointError, match="does not exist"):
        make_trainer(run_args(imagefolder, tmp_path, "--resume", str(tmp_path / "nope"))).run()

    make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "2", "--save_steps", "2")).run()
    checkpoint = tmp_path / "checkpoints" / "step_00000002"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # staging directories are renamed away
    # `latest` finds it; the run is already complete, so it only re-evaluates and saves.
    assert (
        make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "2", "--resume", "latest")).run()["global_step"]
        == 2
    )

    model_file = next(checkpoint.glob("model*.safetensors"))
    model_file.write_bytes(model_file.read_bytes()[:100])  # truncated weights
    with pytest.raises(CheckpointError, match="could not be loaded"):
        make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "4", "--resume", str(checkpoint))).run()
    (checkpoint / "training_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable training_state.json"):
        make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "4", "--resume", str(checkpoint))).run()
    (checkpoint / "training_state.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "4", "--resume", str(checkpoint))).run()


def test_missing_columns_give_a_clear_error(imagefolder, tmp_path):
    from datasets import Dataset
    from PIL import Image

    from internimage_hf.training.data import IMAGE_COLUMN_CANDIDATES, ColumnError, find_column

    with pytest.raises(ColumnError, match=r"--image_column 'picture' is not a column.*\['image', 'label'\]"):
        make_trainer(run_args(imagefolder, tmp_path, "--image_column", "picture"))
    with pytest.raises(ColumnError, match=r"--label_column 'y' is not a column"):
        make_trainer(run_args(imagefolder, tmp_path, "--label_column", "y"))
    dataset = Dataset.from_dict({"photo": [Image.new("RGB", (4, 4))], "y": [0]})
    with pytest.raises(ColumnError, match=r"no image column .* columns are \['photo', 'y'\]\. Pass --image_column"):
        find_column(dataset, None, IMAGE_COLUMN_CANDIDATES, "image", "--image_column")


def test_augmentations_without_torchvision_fail_clearly(monkeypatch, imagefolder, tmp_path):
    from internimage_hf.training import data

    monkeypatch.setattr(data, "has_torchvision", lambda: False)
    with pytest.raises(ImportError, match=r"--randaugment, --mixup/--cutmix need torchvision"):
        make_trainer(run_args(imagefolder, tmp_path, "--randaugment", "--mixup", "0.8"))
    # The plain path (resize only) needs no torchvision.
    data.check_torchvision(data_options := __import__("types").SimpleNamespace(
        train_crop="resize", randaugment=False, random_erasing=0.0, mixup=0.0, cutmix=0.0))  # fmt: skip
    assert data_options.train_crop == "resize"


def test_builtin_defaults():
    from internimage_hf.training.arguments import DIGITS_RECIPE, parse_options

    options = parse_options([])
    assert options.model == "tiny" and options.output_dir == "outputs/digits" and options.dataset is None
    assert options.learning_rate == DIGITS_RECIPE["learning_rate"]
    official = parse_options(["--dataset", "x", "--output_dir", "o"])
    assert (official.model, official.learning_rate, official.warmup_epochs, official.max_grad_norm) == (
        "t",
        5e-4,
        20.0,
        5.0,
    )
    with pytest.raises(ValueError, match="--output_dir is required"):
        parse_options(["--dataset", "x"])


def test_digits_dataset_split():
    from internimage_hf.training.data import digits_dataset

    data = digits_dataset()
    assert (len(data["train"]), len(data["validation"])) == (1437, 360)
    assert data["train"].features["label"].names == [str(d) for d in range(10)]
    image = data["validation"][0]["image"]
    assert image.size == (8, 8) and image.mode == "L"


def test_a_failing_evaluation_keeps_the_trained_model(imagefolder, tmp_path, monkeypatch):
    """The weights are saved before the error propagates; no results are written for them."""
    from internimage_hf.training.loop import Trainer

    def broken(self, model):
        raise RuntimeError("evaluation data went bad")

    monkeypatch.setattr(Trainer, "_evaluate", broken)
    trainer = make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "2"))
    with pytest.raises(RuntimeError, match="evaluation data went bad"):
        trainer.run()
    saved = load_weights(tmp_path)
    online = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    assert all(torch.equal(saved[key], online[key].cpu()) for key in saved)
    assert not (tmp_path / "all_results.json").exists()
