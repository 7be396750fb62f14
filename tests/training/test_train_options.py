"""Training options that reach outside the loop: `--push_to_hub` (HfApi mocked) and `--torch_compile`."""

from __future__ import annotations

import math

import pytest
from conftest import requires_accelerate, run_args

pytestmark = requires_accelerate


class RecordingHfApi:
    """Stands in for `huggingface_hub.HfApi`: records the calls instead of uploading."""

    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

        class RepoUrl:
            pass

        url = RepoUrl()
        url.repo_id = f"someone/{repo_id}"
        return url

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


def test_push_to_hub_uploads_model_processor_and_card(imagefolder, tmp_path, monkeypatch):
    import huggingface_hub

    from internimage_hf.training.arguments import parse_options
    from internimage_hf.training.loop import Trainer

    RecordingHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    output_dir = tmp_path / "digits-model"
    Trainer(parse_options(run_args(imagefolder, output_dir, "--max_steps", "2", "--push_to_hub"))).run()

    names = [name for name, _ in RecordingHfApi.calls]
    assert names == ["create_repo", "upload_folder"]
    assert RecordingHfApi.calls[0][1]["repo_id"] == "digits-model"
    upload = RecordingHfApi.calls[1][1]
    assert upload["repo_id"] == "someone/digits-model" and upload["folder_path"] == str(output_dir)
    assert {"checkpoints/*", "run.json", "train.lock", "train.lock.pid"} <= set(upload["ignore_patterns"])
    for name in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json"):
        assert (output_dir / name).exists(), name
    card = (output_dir / "README.md").read_text()
    assert "eval_accuracy" in card and 'pipeline("image-classification", model="someone/digits-model")' in card


@pytest.mark.parametrize(("flags", "with_code"), [([], True), (["--no_hub_remote_code"], False)])
def test_push_to_hub_uploads_remote_code_unless_disabled(tmp_path, monkeypatch, flags, with_code):
    import json

    import huggingface_hub

    from internimage_hf import InternImageConfig, InternImageForImageClassification, InternImageImageProcessorPil
    from internimage_hf.training.arguments import parse_options
    from internimage_hf.training.hub import push_to_hub

    RecordingHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    output_dir = tmp_path / "digits-model"
    config = InternImageConfig(channels=16, depths=[1, 1, 1, 1], groups=[1, 2, 4, 8], num_labels=3)
    InternImageForImageClassification(config).save_pretrained(output_dir)
    InternImageImageProcessorPil().save_pretrained(output_dir)
    options = parse_options(["--output_dir", str(output_dir), "--push_to_hub", *flags])
    assert options.hub_remote_code is with_code

    push_to_hub(output_dir, options, {"eval_accuracy": 0.5})
    assert RecordingHfApi.calls[1][1]["folder_path"] == str(output_dir)
    assert (output_dir / "modeling_internimage_hf.py").exists() is with_code
    auto_map = json.loads((output_dir / "config.json").read_text()).get("auto_map", {})
    assert auto_map.get("AutoModelForImageClassification") == (
        "modeling_internimage_hf.InternImageForImageClassification" if with_code else None
    )
    card = (output_dir / "README.md").read_text()
    assert 'pipeline("image-classification", model="someone/digits-model")' in card
    remote_usage = 'pipeline("image-classification", model="someone/digits-model", trust_remote_code=True)'
    assert (remote_usage in card) is with_code


@pytest.mark.slow
def test_torch_compile_training_runs(imagefolder, tmp_path):
    pytest.importorskip("torch._inductor")
    from internimage_hf.training.arguments import parse_options
    from internimage_hf.training.loop import Trainer

    results = Trainer(parse_options(run_args(imagefolder, tmp_path, "--max_steps", "2", "--torch_compile"))).run()
    assert results["global_step"] == 2
    assert math.isfinite(results["eval_loss"]) and math.isfinite(results["train_loss"])
