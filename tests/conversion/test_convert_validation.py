"""Configuration checks of the converter (`internimage_hf.conversion.validation`): every bad value is a one-line
error naming the field, raised in well under a second and before any weight is read."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch
from safetensors.torch import save_file

import internimage_hf.conversion.sources as sources
from internimage_hf.conversion.cli import main

TINY = {"channels": 16, "depths": [1, 1, 2, 1], "groups": [1, 2, 4, 8], "num_classes": 10}

BAD_CONFIGS = [
    ({"offset_scale": "lots"}, "offset_scale"),
    ({"channels": -64}, "channels"),
    ({"channels": 2**40, "groups": [1, 1, 1, 1]}, "channels"),  # a huge width
    ({"mlp_ratio": float("nan")}, "mlp_ratio"),
    ({"depths": [10000, 4, 18, 4]}, r"depths\[0\]"),  # took two minutes to fail on the weights
    ({"depths": "4,4,18,4"}, "depths"),
    ({"post_norm": "yes"}, "post_norm"),
    ({"layer_scale": "lots"}, "layer_scale"),
    ({"drop_path_rate": 1.5}, "drop_path_rate"),
    ({"dw_kernel_size": 1001}, "dw_kernel_size"),
    ({"num_classes": 10**12}, "num_classes"),  # would allocate a label name per class
    ({"num_classes": "ten"}, "num_classes"),
    ({"chanels": 80}, "chanels.*did you mean 'channels'"),  # a typo would silently use the default width
]


@pytest.fixture
def weights_never_read(monkeypatch):
    """Fail the test if the converter reads any weight file."""

    def refuse(path, *args, **kwargs):
        raise AssertionError(f"weights were read from {path} before the configuration was checked")

    monkeypatch.setattr(sources, "torch_load_weights_only", refuse)
    monkeypatch.setattr(sources, "load_file", refuse)


def run(argv, capsys) -> tuple[int, str, float]:
    start = time.perf_counter()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err, time.perf_counter() - start


@pytest.mark.parametrize("override, field", BAD_CONFIGS, ids=[f for _, f in BAD_CONFIGS])
def test_bad_config_file_value_fails_fast_naming_the_field(override, field, tmp_path, capsys, weights_never_read):
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": {"patch_embed.conv1.weight": torch.zeros(8, 3, 3, 3)}}, checkpoint)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, **override}))
    code, err, seconds = run([checkpoint, tmp_path / "out", "--config", config], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "config file config.json" in err
    assert re.search(field, err), err
    assert seconds < 5
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("document", [[64, [4, 4, 18, 4]], "t", 64, None], ids=["list", "string", "number", "null"])
def test_config_file_that_is_not_an_object_is_refused(document, tmp_path, capsys, weights_never_read):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(document))
    code, err, _ = run([tmp_path / "ckpt.pth", tmp_path / "out", "--config", config], capsys)
    assert code == 2
    assert "must hold a JSON object of configuration fields" in err and type(document).__name__ in err


def test_bad_official_hub_config_fails_before_the_weights_are_read(tmp_path, capsys, weights_never_read):
    hub = tmp_path / "internimage_t_1k_224"
    hub.mkdir()
    (hub / "config.json").write_text(json.dumps({**TINY, "model_type": "internimage", "mlp_ratio": float("nan")}))
    save_file({"model.patch_embed.conv1.weight": torch.zeros(8, 3, 3, 3)}, str(hub / "model.safetensors"))
    code, err, _ = run([hub, tmp_path / "out"], capsys)
    assert code == 2
    assert "internimage_t_1k_224/config.json" in err and "mlp_ratio" in err and "nan" in err


@pytest.mark.parametrize(
    "option, value", [("--image_size", "-5"), ("--image_size", "100000"), ("--verify_size", "100000")]
)
def test_bad_size_option_fails_naming_it(option, value, tmp_path, capsys, weights_never_read):
    code, err, _ = run([tmp_path / "ckpt.pth", tmp_path / "out", "--preset", "t", option, value], capsys)
    assert code == 2
    assert option.removeprefix("--") in err and value in err


def test_hub_preprocessor_crop_size_is_checked(tmp_path, capsys, weights_never_read):
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text(json.dumps({**TINY, "model_type": "internimage"}))
    (hub / "preprocessor_config.json").write_text(json.dumps({"crop_size": "big"}))
    code, err, _ = run([hub, tmp_path / "out"], capsys)
    assert code == 2 and "crop_size" in err and "'big'" in err
