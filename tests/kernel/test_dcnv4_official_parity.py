"""The official DCNv4 CUDA op (OpenGVLab/DCNv4, unchanged, under the CUDA emulation: tools/dcnv4_official.py) against
our float64 `dcnv4_core` and our DCNv4 CUDA kernel under the same emulation, forward and backward, float32 within
1e-5, on the cases the official supports (group_channels a multiple of 8 for its forward d_stride, 8 or 9 points).

Needs the official source: ``$INTERNIMAGE_DCNV4_SOURCE`` (a DCNv4 checkout or git mirror) or the default mirror;
skipped, with that reason, without it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from dcnv4_cases import OFFICIAL_CASES, grad_output_for, make_dcnv4_inputs, reference_with_grads

from internimage_hf.ops.dcnv4 import dcnv4_core

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "cuda_emu"))
import dcnv4_official  # noqa: E402  (tools/ is on sys.path: tests/conftest.py)
from emulator import Dcnv4Emulator, build_dcnv4_emulator  # noqa: E402

pytestmark = [
    pytest.mark.cuda_host,
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no host C++ compiler"),
    pytest.mark.skipif(
        dcnv4_official.find_source() is None,
        reason=f"official DCNv4 source not found: set {dcnv4_official.SOURCE_ENV} to a DCNv4 checkout or git mirror",
    ),
]

TOL = 1e-5
# Official launch shapes the tests pin where its findspec default does not fit the case: with stride 2 the official
# chooses a query multiplier from the input's B*H*W that need not divide the output's B*Ho*Wo (its launcher asserts).
EXPLICIT_SPEC = {"cg64_stride2_pad0": {"forward": (8, 8), "backward": (2, 32)}}


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    cache = os.environ.get("INTERNIMAGE_KERNEL_BUILD_CACHE")
    path = Path(cache) / "cuda_emu" if cache else tmp_path_factory.mktemp("cuda_emu")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def official(build_dir) -> dcnv4_official.OfficialDcnv4:
    return dcnv4_official.OfficialDcnv4(build_dir=build_dir)


@pytest.fixture(scope="module")
def ours(build_dir) -> Dcnv4Emulator:
    emu = Dcnv4Emulator(build_dcnv4_emulator(REPO / "kernel_src", build_dir, 800))
    emu.configure(sm_count=1, compute_capability=(8, 0))
    return emu


def _official_args(params: dict) -> tuple:
    p = params
    return (p["kernel_h"], p["kernel_w"], p["stride_h"], p["stride_w"], p["pad_h"], p["pad_w"], p["dilation_h"],
            p["dilation_w"], p["group"], p["group_channels"], p["offset_scale"], 64)  # fmt: skip


def _close(got, want, name):
    scale = max(want.abs().max().item(), 1.0)
    torch.testing.assert_close(got.double(), want.double(), atol=TOL * scale, rtol=TOL, msg=name)


@pytest.mark.parametrize("case", OFFICIAL_CASES)
def test_official_matches_core_and_our_kernel(official, ours, case):
    # Zero padding columns for the official op: its backward writes nothing there (zeros from its allocation).
    params, value, offset_mask = make_dcnv4_inputs(case, padding_fill=0.0)
    grad = grad_output_for(value, offset_mask)
    spec = EXPLICIT_SPEC.get(case, {})
    args = _official_args(params)
    off_out = official.forward(value, offset_mask, *args, params["remove_center"], *spec.get("forward", (None, None)))
    off_grads = official.backward(value, offset_mask, *args, grad, params["remove_center"],
                                  *spec.get("backward", (None, None)))  # fmt: skip
    ref_out, ref_grads = reference_with_grads(grad, value, offset_mask, params)
    our_out, _ = ours.forward(value, offset_mask, params)
    our_grads, _ = ours.backward(grad, value, offset_mask, params)
    _close(off_out, ref_out, "official forward vs dcnv4_core")
    _close(our_out, off_out, "our kernel forward vs official")
    for name, off, ref, our in zip(("grad_value", "grad_offset_mask"), off_grads, ref_grads, our_grads, strict=True):
        _close(off, ref, f"official {name} vs dcnv4_core")
        _close(our, off, f"our kernel {name} vs official")


def test_module_functions_choose_the_official_launch_spec(official):
    """`official_dcnv4_forward` with d_stride / block_thread None applies findspec: FlashInternImage-T's 16-channel
    groups get d_stride 8 in the forward and 1 in the backward, and the results match explicit specs."""
    params, value, offset_mask = make_dcnv4_inputs("flash_t", batch=1, height=8, width=8, padding_fill=0.0)
    args = _official_args(params)
    assert dcnv4_official.findspec(official.tables, 1, 8, 8, 4, 16) == (8, 64 * 4 * 16 // 8)
    assert dcnv4_official.find_spec_bwd(official.tables, 1, 8, 8, 4, 16) == (1, 4 * 4 * 16)
    auto = dcnv4_official.official_dcnv4_forward(value, offset_mask, *args, False, None, None, False)
    explicit = official.forward(value, offset_mask, *args, False, 4, 16)
    torch.testing.assert_close(auto, explicit, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="query multiplier"):
        official.forward(value, offset_mask, *args, False, 8, 8 * 7)  # multiplier 7 does not divide 64 queries


def test_official_kernel_mixes_images_when_its_multiplier_does_not_divide_an_image(official):
    """The official launch (findspec) picks the queries per block from B*H*W; with two 8x4 images of 2 groups of 32
    channels it takes 64, twice an image's 32 queries, and the block's second half samples the *first* image below its
    bottom edge instead of the second image (FlashInternImage-T's stage 2 of a batch of two 64x32 images). One image at
    a time, or our core on the batch, give the second image's own result; the parity fixtures therefore hold one
    image (tools/flash_parity_fixtures.py)."""
    generator = torch.Generator().manual_seed(0)
    value = torch.randn(2, 8, 4, 64, generator=generator)
    offset_mask = torch.randn(2, 8, 4, 56, generator=generator)
    args = (3, 3, 1, 1, 1, 1, 1, 1, 2, 32, 1.0, 64)
    assert dcnv4_official.findspec(official.tables, 2, 8, 4, 2, 32) == (8, 512)  # 512 threads = 64 queries x 8
    batched = official.forward(value, offset_mask, *args, False)
    alone = official.forward(value[1:], offset_mask[1:], *args, False)
    ours = dcnv4_core(value, offset_mask, 3, 3, 1, 1, 1, 1, 1, 1, 2, 32, 1.0, False)
    torch.testing.assert_close(batched[0], ours[0], atol=TOL, rtol=TOL)  # the first image is right
    torch.testing.assert_close(ours[1], alone[0], atol=TOL, rtol=TOL)
    assert (batched[1] - alone[0]).abs().max() > 1.0
