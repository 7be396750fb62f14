"""Parity with the official DCNv4 op without its source: the compact fixture of official op outputs
(tests/fixtures/dcnv4_op/official_dcnv4_op.safetensors, written by scripts/make_dcnv4_op_fixtures.py from the official
op under the CUDA emulation) against our float64 `dcnv4_core` (+ autograd) and our DCNv4 CUDA kernel under the
emulation, float32 within 1e-5, forward and backward.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from internimage_hf.ops.dcnv4 import dcnv4_core

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "dcnv4_op" / "official_dcnv4_op.safetensors"
sys.path.insert(0, str(REPO / "scripts" / "cuda_emu"))
import dcnv4_official  # noqa: E402  (tools/ is on sys.path: tests/conftest.py)
from emulator import Dcnv4Emulator, build_dcnv4_emulator  # noqa: E402

TOL = 1e-5
CASES, METADATA = dcnv4_official.read_op_fixture(FIXTURE)


def _params(name: str) -> dict:
    case = METADATA["cases"][name]
    kh, kw, sh, sw, ph, pw, dh, dw, group, cg, scale, _ = dcnv4_official.fixture_arguments(case)
    return dict(kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw, dilation_h=dh,
                dilation_w=dw, group=group, group_channels=cg, offset_scale=scale,
                remove_center=case["remove_center"])  # fmt: skip


def _close(got, want, name):
    scale = max(want.abs().max().item(), 1.0)
    torch.testing.assert_close(got.double(), want.double(), atol=TOL * scale, rtol=TOL, msg=name)


def test_fixture_records_the_official_cases():
    assert sorted(CASES) == sorted(dcnv4_official.FIXTURE_CASES)
    assert len(METADATA["commit"]) == 40
    for name, tensors in CASES.items():  # the inputs are the ones the fixture recipe makes
        value, offset_mask, grad = dcnv4_official.fixture_inputs(METADATA["cases"][name], sorted(CASES).index(name))
        assert torch.equal(tensors["value"], value) and torch.equal(tensors["offset_mask"], offset_mask), name
        assert torch.equal(tensors["grad_output"], grad), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_core_matches_official_fixture(name):
    t = CASES[name]
    leaves = [t["value"].double().requires_grad_(), t["offset_mask"].double().requires_grad_()]
    out = dcnv4_core(*leaves, **_params(name))
    out.backward(t["grad_output"].double())
    _close(out.detach(), t["output"], "forward")
    _close(leaves[0].grad, t["grad_value"], "grad_value")
    _close(leaves[1].grad, t["grad_offset_mask"], "grad_offset_mask")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Dcnv4Emulator:
    cache = os.environ.get("INTERNIMAGE_KERNEL_BUILD_CACHE")
    build_dir = Path(cache) / "cuda_emu" if cache else tmp_path_factory.mktemp("cuda_emu")
    build_dir.mkdir(parents=True, exist_ok=True)
    return Dcnv4Emulator(build_dcnv4_emulator(REPO / "kernel_src", build_dir, 800))


@pytest.mark.cuda_host
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no host C++ compiler")
@pytest.mark.parametrize("name", sorted(CASES))
def test_emulated_kernel_matches_official_fixture(emulator, name):
    emu = emulator
    t, params = CASES[name], _params(name)
    out, _ = emu.forward(t["value"], t["offset_mask"], params)
    (grad_value, grad_offset_mask), _ = emu.backward(t["grad_output"], t["value"], t["offset_mask"], params)
    _close(out, t["output"], "forward")
    _close(grad_value, t["grad_value"], "grad_value")
    _close(grad_offset_mask, t["grad_offset_mask"], "grad_offset_mask")
