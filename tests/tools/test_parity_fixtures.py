"""The compact parity fixtures (`tests/fixtures`, `tools/parity_fixtures.py`): our model and DCNv3 core
against the official outputs they hold, their size and provenance, and where the golden cases come from."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from parity_fixtures import (
    MODEL_ATOL,
    OP_ATOL,
    STYLES,
    grid_tensor,
    main,
    rebuild_weights,
    tensor_sha256,
)
from safetensors.torch import load_file

from internimage_hf import InternImageConfig, InternImageForImageClassification, convert_official_state_dict, dcnv3_core

FIXTURE_NAMES = sorted(STYLES)
REPO = Path(__file__).resolve().parents[2]


@torch.no_grad()
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_logits_and_stage_outputs_match_the_official_code(name, fixture_cases):
    case = fixture_cases[name]
    model = InternImageForImageClassification(InternImageConfig(**case.model_kwargs)).eval()
    model.load_state_dict(convert_official_state_dict(case.state_dict), strict=True)
    outputs = model(case.input, output_hidden_states=True)
    torch.testing.assert_close(outputs.logits, case.logits, atol=MODEL_ATOL, rtol=0)
    for produced, expected in zip(outputs.hidden_states[1:], case.stage_outputs, strict=True):
        torch.testing.assert_close(produced, expected, atol=MODEL_ATOL, rtol=0)


def test_dcnv3_core_matches_the_official_op_cases(fixture_cases):
    checked = 0
    for case in fixture_cases.values():
        for params, value, offset, mask, expected in case.op_cases:
            output = dcnv3_core(value, offset, mask, **params)
            torch.testing.assert_close(output, expected, atol=OP_ATOL, rtol=0, msg=f"{case.name} {params}")
            checked += 1
    assert checked == 6 * len(fixture_cases)


def test_fixtures_are_compact_and_record_the_official_commit(fixture_cases):
    files = sorted((REPO / "tests" / "fixtures").glob("tiny_*.safetensors"))  # flash_tiny_*: test_flash_parity_fixtures
    assert [f.stem for f in files] == FIXTURE_NAMES
    assert sum(f.stat().st_size for f in files) <= 3_000_000
    for case in fixture_cases.values():
        assert re.fullmatch(r"[0-9a-f]{40}", case.metadata["official_commit"])
        assert case.model_kwargs == STYLES[case.name]  # the script's styles are the ones committed
        assert list(case.input.shape) == case.metadata["input_shape"]


def test_fixtures_cover_every_official_model_option(fixture_cases):
    options = {name: case.model_kwargs for name, case in fixture_cases.items()}
    assert options["tiny_t"]["post_norm"] is False and options["tiny_t"]["layer_scale"] is None
    assert options["tiny_s"]["post_norm"] and options["tiny_s"]["layer_scale"] == 1e-5
    assert options["tiny_l"]["offset_scale"] == 2.0
    assert options["tiny_h"]["res_post_norm"] and not options["tiny_h"]["post_norm"]
    assert options["tiny_g"]["post_norm"] and not options["tiny_g"]["res_post_norm"]
    for name in ("tiny_h", "tiny_g"):
        assert options[name]["use_clip_projector"] and options[name]["center_feature_scale"]
        assert options[name]["level2_post_norm_block_ids"] == [1] and options[name]["depths"][2] == 2
    assert options["tiny_rc"]["remove_center"] and options["tiny_rc"]["dw_kernel_size"] == 5


def test_weights_are_far_from_the_official_init(fixture_cases):
    """Zero offsets/masks or 1e-5 layer scales would leave the deformable sampling and the branches untested."""
    state = fixture_cases["tiny_s"].state_dict
    assert state["levels.0.blocks.0.dcn.offset.weight"].std() > 0.2
    assert state["levels.0.blocks.0.dcn.offset.bias"].abs().max() > 0.5
    assert state["levels.0.blocks.0.dcn.mask.bias"].std() > 0.3
    assert 0.5 <= state["levels.1.blocks.0.gamma1"].min() and state["levels.1.blocks.0.gamma1"].max() < 1.0
    running_var = fixture_cases["tiny_t"].state_dict["conv_head.1.0.running_var"]
    assert (running_var - 1).abs().max() > 0.25
    gate = fixture_cases["tiny_h"].state_dict["levels.2.blocks.0.dcn.center_feature_scale_proj_weight"]
    assert gate.abs().max() > 0.1


def test_large_weights_are_rebuilt_from_their_recipes(fixture_cases):
    case = fixture_cases["tiny_h"]
    recipes = case.metadata["generated"]
    assert "clip_projector.cross_dcn.q.weight" in recipes
    stored = load_file(str(case.path))
    assert not any(f"state_dict.{key}" in stored for key in recipes)
    head = case.state_dict["clip_projector.cross_dcn.q.weight"]
    assert (
        list(head.shape) == [1024, 1024]
        and tensor_sha256(head) == recipes["clip_projector.cross_dcn.q.weight"]["sha256"]
    )


def test_a_recipe_that_rebuilds_other_values_is_refused(fixture_cases):
    key = "clip_projector.cross_dcn.q.weight"
    recipe = dict(fixture_cases["tiny_g"].metadata["generated"][key])
    recipe["seed"] += 1
    with pytest.raises(RuntimeError, match=re.escape(key)):
        rebuild_weights({key: recipe})


def test_grid_values_are_exact_multiples_of_their_step():
    values = grid_tensor((4, 1000), seed=3, exponent=-2, center=1.0)
    steps = (values - 1.0) * 2.0 ** (12 + 2)
    assert torch.equal(steps, steps.round())
    assert 0.75 <= values.min() and values.max() < 1.25 and values.unique().numel() > 3000
    assert torch.equal(values, grid_tensor((4, 1000), seed=3, exponent=-2, center=1.0))


def test_golden_cases_fall_back_to_the_fixtures(monkeypatch, tmp_path, reference_dir_finder, golden_cases):
    monkeypatch.setenv("INTERNIMAGE_SHARED_DIR", str(tmp_path / "missing"))
    assert reference_dir_finder() == REPO / "tests" / "fixtures"
    (tmp_path / "shared" / "golden").mkdir(parents=True)
    monkeypatch.setenv("INTERNIMAGE_SHARED_DIR", str(tmp_path / "shared"))
    assert reference_dir_finder() == tmp_path / "shared" / "golden"
    monkeypatch.undo()
    assert golden_cases["tiny_t"].path.parent == reference_dir_finder()


def test_script_refuses_a_folder_that_is_not_an_official_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--official", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--official" in capsys.readouterr().err and not (tmp_path / "out").exists()


OFFICIAL_DIR = os.environ.get("INTERNIMAGE_OFFICIAL_DIR")


@pytest.mark.skipif(
    not OFFICIAL_DIR, reason="set INTERNIMAGE_OFFICIAL_DIR to an OpenGVLab/InternImage checkout (with timm installed)"
)
def test_script_regenerates_the_committed_fixtures(tmp_path):
    """The official code, run again by the script, gives the committed inputs and weights bit for bit."""
    script = [sys.executable, str(REPO / "scripts" / "make_parity_fixtures.py"), "--official", OFFICIAL_DIR]
    subprocess.run([*script, "--out", str(tmp_path)], check=True, capture_output=True)
    for name in FIXTURE_NAMES:
        committed, fresh = (load_file(str(d / f"{name}.safetensors")) for d in (REPO / "tests" / "fixtures", tmp_path))
        assert committed.keys() == fresh.keys()
        for key, value in committed.items():
            atol = 0 if key.startswith("state_dict.") or key == "input" else 1e-6
            torch.testing.assert_close(fresh[key], value, atol=atol, rtol=0, msg=f"{name} {key}")


def test_detection_fixture_is_compact_and_records_the_official_commit():
    from detection_fixtures import read_fixture as read_detection_fixture

    path = REPO / "tests" / "fixtures" / "detection" / "dino_internimage_t.safetensors"
    assert path.stat().st_size <= 1_000_000
    tensors, metadata = read_detection_fixture(path)
    assert re.fullmatch(r"[0-9a-f]{40}", metadata["official_commit"])
    assert metadata["official_config"].endswith("dino_4scale_internimage_t_1x_coco_layer_wise_lr.py")
    assert sum(v.numel() for k, v in tensors.items() if k.startswith("state_dict.")) == 48_736_828


OFFICIAL_DETECTION_PYTHON = os.environ.get("INTERNIMAGE_OFFICIAL_DETECTION_PYTHON")


@pytest.mark.skipif(
    not (OFFICIAL_DIR and OFFICIAL_DETECTION_PYTHON),
    reason="set INTERNIMAGE_OFFICIAL_DIR and INTERNIMAGE_OFFICIAL_DETECTION_PYTHON (the python of the environment "
    "scripts/make_official_detection_env.sh builds)",
)
def test_detection_script_regenerates_the_committed_fixture(tmp_path):
    """The official detection code, run again by the script in its environment, writes the committed fixture."""
    fresh_path = tmp_path / "dino.safetensors"
    script = [OFFICIAL_DETECTION_PYTHON, str(REPO / "scripts" / "make_detection_fixtures.py")]
    subprocess.run([*script, "--official", OFFICIAL_DIR, "--out", str(fresh_path)], check=True, capture_output=True)
    committed_path = REPO / "tests" / "fixtures" / "detection" / "dino_internimage_t.safetensors"
    committed, fresh = load_file(str(committed_path)), load_file(str(fresh_path))
    assert committed.keys() == fresh.keys()
    for key, value in committed.items():
        torch.testing.assert_close(fresh[key], value, atol=0, rtol=0, msg=key)
