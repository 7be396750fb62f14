"""The FlashInternImage parity fixtures (`tests/fixtures/flash_tiny_*`, `tools/flash_parity_fixtures.py`): size,
provenance, the op backend they record, the stand-in extension's argument list, and (given an OpenGVLab/DCNv4
checkout in ``INTERNIMAGE_DCNV4_CHECKOUT``) a rerun of the official code on them."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flash_cases import FLASH_NAMES, FlashCase
from flash_parity_fixtures import (
    FALLBACK_BACKEND,
    OFFICIAL_BACKEND,
    OFFICIAL_OP_ARGUMENTS,
    STYLES,
    OfficialFlashCode,
    select_op_backend,
)

from internimage_hf import dcnv4_core

REPO = Path(__file__).resolve().parents[2]


def test_fixtures_are_compact_and_record_their_provenance():
    files = sorted((REPO / "tests" / "fixtures").glob("flash_tiny_*.safetensors"))
    assert [f.stem for f in files] == sorted(FLASH_NAMES) == sorted(STYLES)
    assert sum(f.stat().st_size for f in files) <= 3_000_000
    for name in FLASH_NAMES:
        metadata = FlashCase.load(name).metadata
        assert re.fullmatch(r"[0-9a-f]{40}", metadata["official_commit"])
        assert metadata["op_backend"] in (OFFICIAL_BACKEND, FALLBACK_BACKEND)
        assert metadata["model_kwargs"] == STYLES[name] and metadata["family"] == "flash_internimage"
        channels, groups = metadata["model_kwargs"]["channels"], metadata["model_kwargs"]["groups"]
        assert all((channels * 2**i // g) % 16 == 0 for i, g in enumerate(groups))  # the official DCNv4's rule


def test_fixtures_cover_every_official_style():
    options = {name: STYLES[name] for name in FLASH_NAMES}
    assert options["flash_tiny_t"]["dw_kernel_size"] is None and not options["flash_tiny_t"]["post_norm"]
    assert options["flash_tiny_s"]["dw_kernel_size"] == 3 and options["flash_tiny_s"]["layer_scale"] == 1e-5
    assert options["flash_tiny_b"]["offset_scale"] == 0.5
    assert options["flash_tiny_l"]["offset_scale"] == 2.0
    assert options["flash_tiny_l"]["mlp_fc2_bias"] and options["flash_tiny_l"]["dcn_output_bias"]
    assert options["flash_tiny_h"]["res_post_norm"] and options["flash_tiny_h"]["level2_post_norm_block_ids"] == [1]
    assert options["flash_tiny_g"]["post_norm"] and options["flash_tiny_g"]["center_feature_scale"]


def test_fallback_backend_takes_the_official_argument_list():
    """Without tools/dcnv4_official.py the stand-in extension runs `dcnv4_core` with `ext.dcnv4_forward`'s arguments."""
    if "dcnv4_official" in sys.modules or (REPO / "tools" / "dcnv4_official.py").exists():
        pytest.skip("the official kernel is importable: the fallback is not used")
    backend, forward = select_op_backend()
    assert backend == FALLBACK_BACKEND
    case = FlashCase.load("flash_tiny_t")
    params, value, offset_mask, _ = case.op_cases[1]
    scalars = {k: v for k, v in params.items() if k not in ("im2col_step", "d_stride", "block_thread", "softmax")}
    output = forward(value, offset_mask, *(params[name] for name in OFFICIAL_OP_ARGUMENTS))
    assert torch.equal(output, dcnv4_core(value, offset_mask, **scalars))
    with pytest.raises(NotImplementedError, match="softmax"):
        forward(value, offset_mask, *(params[name] for name in OFFICIAL_OP_ARGUMENTS[:-1]), True)


def test_a_folder_without_the_official_code_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass an OpenGVLab/DCNv4 checkout"):
        OfficialFlashCode(tmp_path)


def test_script_selects_the_family():
    script = REPO / "scripts" / "make_parity_fixtures.py"
    result = subprocess.run(
        [sys.executable, str(script), "--family", "flash_internimage", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "OpenGVLab/DCNv4" in result.stdout


@pytest.mark.skipif(not os.environ.get("INTERNIMAGE_DCNV4_CHECKOUT"), reason="set INTERNIMAGE_DCNV4_CHECKOUT")
def test_official_code_reproduces_the_fixtures():
    script = REPO / "scripts" / "make_parity_fixtures.py"
    files = [str(REPO / "tests" / "fixtures" / f"{name}.safetensors") for name in FLASH_NAMES]
    command = [sys.executable, str(script), "--family", "flash_internimage"]
    command += ["--official", os.environ["INTERNIMAGE_DCNV4_CHECKOUT"], "--check", *files]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
