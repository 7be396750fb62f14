"""Converting an official DINO checkpoint (official key names from the official code, via the parity fixture)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from detection_fixtures import read_fixture

from internimage_hf import DinoDetrForObjectDetection
from internimage_hf.conversion.dino_detr import DINO_KEY_RULES, convert_official_dino_key
from internimage_hf.conversion.errors import ConversionError
from internimage_hf.conversion.pipeline import convert_checkpoint
from internimage_hf.conversion.releases import DINO_RELEASES

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "detection" / "dino_internimage_t.safetensors"
RELEASE = "dino_4scale_internimage_t_1x_coco"


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    """The fixture's official weights saved as mmdet saves a detector: {"state_dict": ..., "meta": ...}."""
    tensors, _ = read_fixture(FIXTURE)
    state_dict = {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")}
    path = tmp_path_factory.mktemp("official") / f"{RELEASE}.pth"
    torch.save({"state_dict": state_dict, "meta": {"epoch": 12}}, path)
    return path, tensors


@pytest.fixture(scope="module")
def converted(official_checkpoint, tmp_path_factory):
    pytest.importorskip("torchvision", reason="the DINO image processor extends Deformable DETR's (torchvision)")
    path, _ = official_checkpoint
    output = tmp_path_factory.mktemp("converted") / "dino_t"
    result = convert_checkpoint(path, output, verify=True, log=lambda message: None)
    return result, output


def test_official_dino_converts_with_the_release_facts(converted):
    result, output = converted
    assert result.task == "dino"
    assert result.num_parameters == 48_736_828  # the official README: 49M
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "dino_detr" and config["num_denoising"] == DINO_RELEASES[RELEASE].num_denoising
    assert config["id2label"]["0"] == "person" and len(config["id2label"]) == 80
    assert config["backbone_config"]["out_features"] == ["stage2", "stage3", "stage4"]
    processor = json.loads((output / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "DinoDetrImageProcessor" and processor["top_k"] == 100
    card = (output / "README.md").read_text()
    assert "53.9" in card and "object-detection" in card and "COCO" in card


def test_converted_detector_holds_the_official_weights(converted, official_checkpoint):
    """The written detector loads through the Auto class with exactly the official weights, converted: the parity
    tests run the official outputs on those (tests/models/dino_detr/test_dino_detr_parity.py)."""
    from transformers import AutoModelForObjectDetection

    from internimage_hf.conversion.dino_detr import convert_official_dino_state_dict

    _, output = converted
    _, tensors = official_checkpoint
    model = AutoModelForObjectDetection.from_pretrained(output)
    assert type(model) is DinoDetrForObjectDetection
    official = {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")}
    expected = convert_official_dino_state_dict(official)
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())


def test_every_official_key_has_one_rule(official_checkpoint):
    _, tensors = official_checkpoint
    head_keys = [k.removeprefix("state_dict.") for k in tensors if k.startswith("state_dict.")]
    head_keys = [k for k in head_keys if not k.startswith("backbone.") and "in_proj_" not in k]
    for key in head_keys:
        matches = [pattern for pattern, _ in DINO_KEY_RULES if re.search(pattern, key)]
        assert len(matches) == 1, (key, matches)
    with pytest.raises(ValueError, match="not a weight of the official InternImage DINO"):
        convert_official_dino_key("bbox_head.something_else.weight")


@pytest.mark.parametrize(
    "name", ["dino_4scale_cbinternimage_h_objects365_coco", "dino_4scale_cbinternimage_h_objects365_lvis.pth"]
)
def test_composite_backbone_releases_are_refused_before_reading(tmp_path, name):
    missing = tmp_path / "does-not-exist.pth"  # refused by name, before the file is opened
    with pytest.raises(ConversionError, match="CB-InternImage .* composite backbone"):
        convert_checkpoint(missing, tmp_path / "out", name=name, log=lambda message: None)
    assert not (tmp_path / "out").exists()


def test_composite_backbone_weights_are_refused(tmp_path):
    state_dict = {
        "backbone.cb_modules.0.patch_embed.conv1.weight": torch.zeros(1),
        "neck.convs.0.conv.weight": torch.zeros(1),
    }
    path = tmp_path / "my_detector.pth"
    torch.save({"state_dict": state_dict}, path)
    with pytest.raises(ConversionError, match="CB-InternImage"):
        convert_checkpoint(path, tmp_path / "out", log=lambda message: None)


@pytest.mark.parametrize("release", sorted(name for name, r in DINO_RELEASES.items() if r.reported_params))
def test_parameter_counts_are_the_published_ones(release):
    """The detector of each release, built from its preset, has the parameter count of the official README (the
    FlashInternImage DINO rows publish none)."""
    from internimage_hf import DinoDetrConfig, InternImageConfig

    facts = DINO_RELEASES[release]
    backbone = InternImageConfig.from_preset(facts.preset, out_features=["stage2", "stage3", "stage4"])
    with torch.device("meta"):
        model = DinoDetrForObjectDetection(DinoDetrConfig(backbone_config=backbone))
    count = sum(parameter.numel() for parameter in model.parameters())
    published = facts.reported_params
    value = float(published[:-1]) * {"M": 1e6, "B": 1e9}[published[-1]]
    digits = len(published[:-1].replace(".", "")) - 1  # equal at the published precision: "49M", "241M", "1.1B"
    assert abs(count - value) <= 0.5 * 10 ** (len(str(int(value))) - 1 - digits), (count, published)


def test_unknown_detector_keys_are_one_clean_error(official_checkpoint, tmp_path):
    path, _ = official_checkpoint
    saved = torch.load(path, weights_only=True)
    saved["state_dict"]["bbox_head.extra_branch.weight"] = torch.zeros(3)
    broken = tmp_path / f"{RELEASE}.pth"
    torch.save(saved, broken)
    message = "1 checkpoint key.* not weights of the official InternImage DINO detector: bbox_head.extra_branch.weight"
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(broken, tmp_path / "out", log=lambda message: None)
    assert not (tmp_path / "out").exists()
