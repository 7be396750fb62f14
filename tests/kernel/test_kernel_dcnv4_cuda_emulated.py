"""The DCNv4 CUDA kernels (dcnv4_kernels.cu, unchanged but for the launch syntax) on the CPU under the CUDA emulation
(scripts/cuda_emu): forward and backward against the float64 `dcnv4_core` (+ autograd) for every dtype and launch
path, NaN padding columns, NaN propagation, guard zones (out-of-bounds reads poison results, out-of-bounds writes
are caught), grid-stride loops, the 64-bit index path's launch choice, and self-checks that broken copies of the
kernel are caught.

The kernel supports any group_channels (vector width: the widest power of two dividing it, up to 16 bytes), any
kernel size (3x3 fully unrolled) and any number of points.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from dcnv4_cases import DCNV4_CASES, grad_output_for, make_dcnv4_inputs, points_of, reference_with_grads

from internimage_hf.ops.dcnv4 import dcnv4_core

REPO = Path(__file__).resolve().parents[2]
KERNEL_SRC = REPO / "kernel_src"
sys.path.insert(0, str(REPO / "scripts" / "cuda_emu"))
from emulator import Dcnv4Emulator, EmulationError, build_dcnv4_emulator  # noqa: E402

pytestmark = [
    pytest.mark.cuda_host,
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no host C++ compiler"),
]

ARCHS = (800, 900)
# Against float64 on the rounded inputs: relative and (times the gradient's scale) absolute.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.fixture(scope="module")
def emu_build_dir(tmp_path_factory) -> Path:
    cache = os.environ.get("INTERNIMAGE_KERNEL_BUILD_CACHE")
    path = Path(cache) / "cuda_emu" if cache else tmp_path_factory.mktemp("cuda_emu")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _emulator(build_dir: Path, arch: int) -> Dcnv4Emulator:
    """The kernels for one __CUDA_ARCH__ on a one-SM device of that compute capability (the launch code then caps
    the grid at 16 blocks and larger inputs take grid-stride steps)."""
    emu = Dcnv4Emulator(build_dcnv4_emulator(KERNEL_SRC, build_dir, arch))
    emu.configure(sm_count=1, compute_capability=(arch // 100, 0))
    emu.arch = arch
    return emu


@pytest.fixture(scope="module", params=ARCHS, ids=lambda a: f"sm{a // 10}")
def emulator(request, emu_build_dir) -> Dcnv4Emulator:
    return _emulator(emu_build_dir, request.param)


@pytest.fixture(scope="module")
def emulator_sm80(emu_build_dir) -> Dcnv4Emulator:
    return _emulator(emu_build_dir, 800)


def _assert_matches(out, grads, ref_out, ref_grads, dtype):
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    for got, want, name in zip(grads, ref_grads, ("value", "offset_mask"), strict=True):
        assert got.dtype == dtype, name
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double(), want, atol=tol * scale, rtol=tol, msg=name)


@pytest.mark.parametrize("case", sorted(DCNV4_CASES))
def test_float32_matches_float64_reference(emulator, case):
    """fp32 within 1e-5 on every case; NaN padding columns change nothing and get zero gradient."""
    params, value, offset_mask = make_dcnv4_inputs(case, dtype=torch.float32)
    grad = grad_output_for(value, offset_mask)
    ref_out, ref_grads = reference_with_grads(grad, value, offset_mask, params)
    out, shape = emulator.forward(value, offset_mask, params)
    grads, _ = emulator.backward(grad, value, offset_mask, params)
    _assert_matches(out, grads, ref_out, ref_grads, torch.float32)
    used = params["group"] * points_of(params) * 3
    assert offset_mask[..., used:].isnan().all()
    assert (grads[1][..., used:] == 0).all()
    assert not shape.wide_index


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ["flash_t", "odd_channels", "cg24_remove_center"])
def test_other_dtypes_match_float64_reference(emulator_sm80, case, dtype):
    """fp64 within 1e-10; half types (accumulated in float32) within their rounding."""
    params, value, offset_mask = make_dcnv4_inputs(case, batch=1, height=6, width=5, dtype=dtype)
    grad = grad_output_for(value, offset_mask)
    ref_out, ref_grads = reference_with_grads(grad, value, offset_mask, params)
    out, _ = emulator_sm80.forward(value, offset_mask, params)
    grads, _ = emulator_sm80.backward(grad, value, offset_mask, params)
    _assert_matches(out, grads, ref_out, ref_grads, dtype)


def test_launch_shapes(emulator):
    """FlashInternImage's 16-channel groups: 16-byte loads by 4 lanes in the forward; the backward keeps atomics
    contiguous (one channel a lane below sm_90, float4 atomics from sm_90); misaligned buffers go scalar."""
    params, value, offset_mask = make_dcnv4_inputs("flash_t", batch=2, height=8, width=8)
    grad = grad_output_for(value, offset_mask)
    _, forward = emulator.forward(value, offset_mask, params)
    _, backward = emulator.backward(grad, value, offset_mask, params)
    assert (forward.vec, forward.lanes, forward.blocks) == (4, 4, 8)  # 2 * 64 queries * 4 groups * 4 lanes
    assert (backward.vec, backward.lanes) == ((4, 4) if emulator.arch >= 900 else (1, 16))
    _, half = emulator.forward(value.half(), offset_mask.half(), params)
    assert (half.vec, half.lanes) == (8, 2)
    _, misaligned = emulator.forward(value, offset_mask, params, misalign=True)
    assert misaligned.vec == 1


def test_misaligned_buffers_match_reference(emulator_sm80):
    params, value, offset_mask = make_dcnv4_inputs("flash_t", batch=1, height=6, width=6, dtype=torch.bfloat16)
    grad = grad_output_for(value, offset_mask)
    ref_out, ref_grads = reference_with_grads(grad, value, offset_mask, params)
    out, _ = emulator_sm80.forward(value, offset_mask, params, misalign=True)
    grads, _ = emulator_sm80.backward(grad, value, offset_mask, params, misalign=True)
    _assert_matches(out, grads, ref_out, ref_grads, torch.bfloat16)


def test_grid_stride_loops_cover_every_query(emulator_sm80):
    """One SM caps the grid below the work (each thread loops); a large device launches a thread per item."""
    params, value, offset_mask = make_dcnv4_inputs("odd_channels", batch=3, height=16, width=15, dtype=torch.float64)
    grad = grad_output_for(value, offset_mask)
    emu = emulator_sm80
    try:
        out_small, small = emu.forward(value, offset_mask, params)
        grads_small, _ = emu.backward(grad, value, offset_mask, params)
        emu.configure(sm_count=1000, compute_capability=(8, 0))
        out_big, big = emu.forward(value, offset_mask, params)
        grads_big, _ = emu.backward(grad, value, offset_mask, params)
    finally:
        emu.configure(sm_count=1, compute_capability=(8, 0))
    threads = 3 * 16 * 15 * params["group"] * small.lanes
    assert small.blocks == 16 and small.blocks * 256 < threads / 2  # at least two grid-stride steps per thread
    assert big.blocks * 256 >= threads
    torch.testing.assert_close(out_small, out_big, atol=0, rtol=0)
    torch.testing.assert_close(grads_small[1], grads_big[1], atol=0, rtol=0)
    torch.testing.assert_close(out_small, dcnv4_core(value, offset_mask, **params), atol=1e-12, rtol=0)


def _poisoned(offset_mask, params):
    """(name, offset_mask, offset_scale) where the reference gives NaN somewhere."""
    points = points_of(params)
    nan_dx = offset_mask.clone()
    nan_dx[0, 1, 2, 0] = float("nan")  # dx of point 0, group 0
    inf_dy = offset_mask.clone()
    inf_dy[0, 3, 3, 3 * points + 5] = float("inf")  # dy of point 2, group 1
    nan_weight_outside = offset_mask.clone()
    nan_weight_outside[0, 2, 2, 0] = 100.0  # point 0 of group 0 lands outside the image...
    nan_weight_outside[0, 2, 2, 2 * points] = float("nan")  # ... with a NaN weight: NaN * 0 in the reference
    return [
        ("nan_dx", nan_dx, 1.0),
        ("inf_dy", inf_dy, 1.0),
        ("nan_weight_outside", nan_weight_outside, 1.0),
        ("nan_offset_scale", offset_mask, float("nan")),
    ]


def test_non_finite_inputs_propagate_like_the_reference(emulator_sm80):
    params, value, offset_mask = make_dcnv4_inputs("flash_t", batch=1, height=6, width=6, padding_fill=0.0)
    for name, om, scale in _poisoned(offset_mask, params):
        p = {**params, "offset_scale": scale}
        expected = dcnv4_core(value, om, **p)
        out, _ = emulator_sm80.forward(value, om, p)
        assert expected.isnan().any(), name
        assert torch.equal(out.isnan(), expected.isnan()), name
        torch.testing.assert_close(out.nan_to_num(), expected.nan_to_num(), atol=1e-5, rtol=0, msg=name)


def test_backward_atomics_fill_32_byte_sectors(emulator):
    """FlashInternImage-T stage-1 geometry: every warp-wide atomic instruction carries >= 8 floats per sector."""
    params, value, offset_mask = make_dcnv4_inputs("flash_t", batch=2, height=14, width=14)
    emulator.reset_atomic_stats()
    emulator.backward(grad_output_for(value, offset_mask), value, offset_mask, params)
    stats = emulator.atomic_stats()
    assert stats["floats"] == pytest.approx(stats["lane_ops"] * (4 if emulator.arch >= 900 else 1))
    assert stats["floats"] / stats["sector_ops"] >= 8.0, stats


# Self-checks: broken copies of the kernel source must be caught.


def _broken(build_dir, tmp_path, name: str, old: str, new: str) -> Dcnv4Emulator:
    source = (KERNEL_SRC / "dcnv3_cuda" / "dcnv4_kernels.cu").read_text()
    assert source.count(old) == 1, f"self-check anchor not found once: {old!r}"
    path = tmp_path / f"{name}.cu"
    path.write_text(source.replace(old, new))
    emu = Dcnv4Emulator(build_dcnv4_emulator(KERNEL_SRC, build_dir, 800, kernel_file=path))
    emu.configure(sm_count=1, compute_capability=(8, 0))
    return emu


def test_self_check_reading_the_padding_columns_is_caught(emu_build_dir, tmp_path):
    """Weights read from the wrong columns (past the group's 3P) hit the NaN padding of the last group."""
    emu = _broken(emu_build_dir, tmp_path, "columns", "m(to_acc(mask[2 * geo.points + q]))",
                  "m(to_acc(mask[3 * geo.points + q]))")  # fmt: skip
    params, value, offset_mask = make_dcnv4_inputs("flash_t", batch=1, height=5, width=5)
    out, _ = emu.forward(value, offset_mask, params)
    assert out.isnan().any()


def test_self_check_unwritten_padding_gradient_is_caught(emu_build_dir, tmp_path):
    """A backward that skips the padding columns leaves the NaN the emulator fills its outputs with."""
    emu = _broken(emu_build_dir, tmp_path, "padding", "for (I k = qg.padding; k < qg.row_end; ++k)",
                  "for (I k = qg.padding; k < qg.row_end - 1; ++k)")  # fmt: skip
    params, value, offset_mask = make_dcnv4_inputs("flash_t", batch=1, height=5, width=5)
    (_, grad_offset_mask), _ = emu.backward(grad_output_for(value, offset_mask), value, offset_mask, params)
    assert grad_offset_mask[..., -1].isnan().all() and not grad_offset_mask[..., :-1].isnan().any()


def test_self_check_divergent_exit_before_shuffle_is_caught(emu_build_dir, tmp_path):
    old = "    const bool active = t < total;\n"
    emu = _broken(emu_build_dir, tmp_path, "exit", old, old + "    if (!active) return;\n")
    params, value, offset_mask = make_dcnv4_inputs("odd_channels", batch=1, height=5, width=5)
    with pytest.raises(EmulationError, match=r"__shfl_xor_sync at .*dcnv4_kernels.* has exited"):
        emu.backward(grad_output_for(value, offset_mask), value, offset_mask, params)
