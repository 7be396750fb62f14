"""The CUDA kernels (dcnv3_kernels.cu, unchanged but for the launch syntax) run on the CPU under an emulation of
the CUDA execution model (scripts/cuda_emu): numerics against the float64 reference for every dtype and launch
path, guard zones, grid-stride loops, warp-collective checks, atomic sector efficiency, and self-checks that
deliberately broken copies of the kernel are caught.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from dcnv3_test_inputs import (
    CUDA_CASES,
    DTYPE_TOLERANCE,
    dcnv3_params,
    make_inputs,
    off_cell_boundaries,
    reference_core,
)

from internimage_hf.ops.dcnv3 import dcnv3_core

REPO = Path(__file__).resolve().parents[2]
KERNEL_SRC = REPO / "kernel_src"
sys.path.insert(0, str(REPO / "scripts" / "cuda_emu"))
from emulator import CudaEmulator, EmulationError, build_emulator  # noqa: E402

pytestmark = [
    pytest.mark.cuda_host,
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no host C++ compiler"),
]

ARCHS = (800, 900)
CASES = CUDA_CASES
TOLERANCE = DTYPE_TOLERANCE


def _build_dir(tmp_path_factory) -> Path:
    cache = os.environ.get("INTERNIMAGE_KERNEL_BUILD_CACHE")
    return Path(cache) / "cuda_emu" if cache else tmp_path_factory.mktemp("cuda_emu")


@pytest.fixture(scope="module")
def emu_build_dir(tmp_path_factory) -> Path:
    path = _build_dir(tmp_path_factory)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module", params=ARCHS, ids=lambda a: f"sm{a // 10}")
def emulator(request, emu_build_dir) -> CudaEmulator:
    """The kernels built for one __CUDA_ARCH__, on an emulated device of that compute capability with one SM
    (so that the launch code caps the grid at a few blocks and every thread runs several grid-stride steps)."""
    arch = request.param
    emu = CudaEmulator(build_emulator(KERNEL_SRC, emu_build_dir, arch))
    emu.configure(sm_count=1, compute_capability=(arch // 100, 0))
    emu.arch = arch
    return emu


def _reference(value, offset, mask, params, grad, mask_logits):
    leaves = [t.double().requires_grad_() for t in (value, offset, mask)]
    fn = reference_core if mask_logits else lambda v, o, m, p: dcnv3_core(v, o, m, **p)
    out = fn(*leaves, params)
    out.backward(grad.double())
    return out.detach(), [leaf.grad for leaf in leaves]


def _assert_matches(out, grads, ref_out, ref_grads, dtype):
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_out, atol=tol * 4, rtol=tol)
    for got, want, name in zip(grads, ref_grads, ("value", "offset", "mask"), strict=True):
        assert got.dtype == dtype, name
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double(), want, atol=tol * 8 * scale, rtol=tol, msg=name)


@pytest.mark.parametrize("mask_logits", [False, True], ids=["mask", "logits"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_float64_reference(emulator, case, dtype, mask_logits):
    params = CASES[case]
    value, offset, mask = make_inputs(params, batch=2, height=9, width=7, dtype=torch.float64, mask_logits=mask_logits)
    offset = off_cell_boundaries(offset, params["offset_scale"])
    value, offset, mask = (t.to(dtype) for t in (value, offset, mask))
    grad = torch.randn(value.shape[0], offset.shape[1], offset.shape[2], value.shape[3], dtype=torch.float64).to(dtype)
    ref_out, ref_grads = _reference(value, offset, mask, params, grad, mask_logits)
    out, shape = emulator.forward(value, offset, mask, params, mask_logits=mask_logits)
    grads, _ = emulator.backward(grad, value, offset, mask, params, mask_logits=mask_logits)
    _assert_matches(out, grads, ref_out, ref_grads, dtype)
    assert not shape.wide_index


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_misaligned_buffers_take_the_scalar_path(emulator, dtype):
    params = CASES["internimage_t"]
    value, offset, mask = make_inputs(params, batch=2, height=8, width=8, dtype=torch.float64, mask_logits=True)
    offset = off_cell_boundaries(offset, 1.0)
    value, offset, mask = (t.to(dtype) for t in (value, offset, mask))
    grad = torch.randn(2, 8, 8, value.shape[3], dtype=torch.float64).to(dtype)
    ref_out, ref_grads = _reference(value, offset, mask, params, grad, True)
    out, shape = emulator.forward(value, offset, mask, params, mask_logits=True, misalign=True)
    grads, back_shape = emulator.backward(grad, value, offset, mask, params, mask_logits=True, misalign=True)
    assert (shape.vec, back_shape.vec) == (1, 1)
    _assert_matches(out, grads, ref_out, ref_grads, dtype)


def test_launch_shapes(emulator):
    """Vector width, lanes, grid cap and backward layout as the launch code picks them for this device."""
    params = CASES["internimage_t"]
    value, offset, mask = make_inputs(params, batch=2, height=8, width=8, dtype=torch.float32)
    grad = torch.randn(2, 8, 8, value.shape[3])
    _, forward = emulator.forward(value, offset, mask, params)
    _, backward = emulator.backward(grad, value, offset, mask, params)
    assert (forward.vec, forward.lanes) == (4, 4)  # 16-byte loads, 4 threads per 16-channel group
    assert forward.blocks == 8  # 2 * 64 pixels * 4 groups * 4 lanes = 2048 threads
    # float4 atomics (8 blocks) / one thread per channel (8192 threads: 32 blocks, capped at 16 on one SM)
    expected_backward = (4, 4, 8) if emulator.arch >= 900 else (1, 16, 16)
    assert (backward.vec, backward.lanes, backward.blocks) == expected_backward
    _, half_backward = emulator.backward(grad.half(), value.half(), offset.half(), mask.half(), params)
    assert half_backward.vec == (4 if emulator.arch >= 900 else 1)  # 16 bytes of float32 accumulators
    _, double_backward = emulator.backward(grad.double(), value.double(), offset.double(), mask.double(), params)
    assert double_backward.vec == 1


def test_grid_stride_loops_cover_every_pixel(emulator):
    """One SM caps the grid far below the work (each thread loops); a large device launches one thread per item."""
    params = CASES["odd_channels"]
    value, offset, mask = make_inputs(params, batch=3, height=16, width=15, dtype=torch.float64)
    grad = torch.randn(3, 16, 15, value.shape[3], dtype=torch.float64)
    try:
        out_small, small = emulator.forward(value, offset, mask, params)
        grads_small, back_small = emulator.backward(grad, value, offset, mask, params)
        emulator.configure(sm_count=1000, compute_capability=(emulator.arch // 100, 0))
        out_big, big = emulator.forward(value, offset, mask, params)
        grads_big, _ = emulator.backward(grad, value, offset, mask, params)
    finally:
        emulator.configure(sm_count=1, compute_capability=(emulator.arch // 100, 0))
    threads = 3 * 16 * 15 * params["group"] * small.lanes
    assert small.blocks == 16 and small.blocks * 256 < threads / 2  # at least two grid-stride steps per thread
    assert big.blocks * 256 >= threads
    torch.testing.assert_close(out_small, out_big, atol=0, rtol=0)
    torch.testing.assert_close(grads_small[1:], grads_big[1:], atol=0, rtol=0)
    torch.testing.assert_close(out_small, dcnv3_core(value, offset, mask, **params), atol=1e-12, rtol=0)


def test_softmax_large_logits_and_nan(emulator):
    params = CASES["internimage_t"]
    value, offset, logits = make_inputs(params, batch=1, height=6, width=6, dtype=torch.float64, mask_logits=True)
    big = logits.sign() * 1000 + logits  # exp(1000) overflows without the max subtraction
    out, _ = emulator.forward(value, offset, big, params, mask_logits=True)
    torch.testing.assert_close(out, reference_core(value, offset, big, params), atol=1e-9, rtol=0)
    poisoned = logits.clone()
    poisoned[0, 2, 3, 9] = float("nan")  # group 1 of pixel (2, 3)
    out, _ = emulator.forward(value, offset, poisoned, params, mask_logits=True)
    expected = reference_core(value, offset, poisoned, params)
    assert torch.equal(out.isnan(), expected.isnan()) and out.isnan().sum() == 16
    torch.testing.assert_close(out.nan_to_num(), expected.nan_to_num(), atol=1e-9, rtol=0)


def _nan_cases(params, value, offset, mask):
    """(name, offset, mask, offset_scale) where the reference gives NaN somewhere."""
    nan_offset = offset.clone()
    nan_offset[0, 1, 2, 0] = float("nan")
    inf_offset = offset.clone()
    inf_offset[0, 3, 3, 5] = float("inf")
    far_offset, nan_weight = offset.clone(), mask.clone()
    far_offset[0, 2, 2, 0] = 100.0  # point 0 of group 0 lands outside the image...
    nan_weight[0, 2, 2, 0] = float("nan")  # ... with a NaN weight: NaN * 0 in the reference
    return [
        ("nan_offset", nan_offset, mask, 1.0),
        ("inf_offset", inf_offset, mask, 1.0),
        ("nan_weight_outside", far_offset, nan_weight, 1.0),
        ("nan_offset_scale", offset, mask, float("nan")),
        ("inf_offset_scale", offset, mask, float("inf")),
    ]


def test_non_finite_inputs_propagate_like_the_reference(emulator):
    params = CASES["internimage_t"]
    value, offset, mask = make_inputs(params, batch=1, height=6, width=6, dtype=torch.float32)
    for name, off, msk, scale in _nan_cases(params, value, offset, mask):
        p = {**params, "offset_scale": scale}
        expected = dcnv3_core(value, off, msk, **p)
        out, _ = emulator.forward(value, off, msk, p)
        assert expected.isnan().any(), name
        assert torch.equal(out.isnan(), expected.isnan()), name
        torch.testing.assert_close(out.nan_to_num(), expected.nan_to_num(), atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_results_round_to_nearest_even(emulator, dtype):
    """Output = value * weight computed once in float32, so the result must equal torch's rounding bit for bit."""
    params = dcnv3_params(group=1, group_channels=64)
    value = torch.randn(1, 5, 5, 64).to(dtype)
    offset = torch.zeros(1, 5, 5, 18, dtype=dtype)
    weight = torch.rand(1, 5, 5, 1).to(dtype)
    mask = torch.zeros(1, 5, 5, 9, dtype=dtype)
    mask[..., 4:5] = weight  # the centre tap only: an exact pixel, bilinear weight 1
    out, _ = emulator.forward(value, offset, mask, params)
    expected = (value.float() * weight.float()).to(dtype)
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_atomics_fill_32_byte_sectors(emulator, dtype):
    """InternImage-T stage-1 geometry: every warp-wide atomic instruction carries >= 8 floats per 32-byte sector."""
    params = CASES["internimage_t"]
    value, offset, mask = make_inputs(params, batch=2, height=14, width=14, dtype=dtype, mask_logits=True)
    grad = torch.randn(2, 14, 14, value.shape[3]).to(dtype)
    emulator.reset_atomic_stats()
    emulator.backward(grad, value, offset, mask, params, mask_logits=True)
    stats = emulator.atomic_stats()
    assert stats["floats"] == pytest.approx(stats["lane_ops"] * (4 if emulator.arch >= 900 else 1))
    assert stats["floats"] / stats["sector_ops"] >= 8.0, stats


# Self-checks: broken copies of the kernel source must be caught.


def _broken_copy(tmp_path, name: str, old: str, new: str) -> Path:
    source = (KERNEL_SRC / "dcnv3_cuda" / "dcnv3_kernels.cu").read_text()
    assert source.count(old) == 1, f"self-check anchor not found once: {old!r}"
    path = tmp_path / f"{name}.cu"
    path.write_text(source.replace(old, new))
    return path


@pytest.fixture(scope="module")
def broken_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("broken_kernels")


def test_self_check_off_by_one_border_is_caught(emu_build_dir, broken_tmp):
    """A right-column test that admits x0 = W - 1 reads one pixel past the row: wrong values or guard NaN."""
    broken = _broken_copy(broken_tmp, "border", "cell.right = x < geo.last_x;", "cell.right = x < geo.width_f;")
    emu = CudaEmulator(build_emulator(KERNEL_SRC, emu_build_dir, 800, kernel_file=broken))
    params = CASES["internimage_t"]
    value, offset, mask = make_inputs(params, batch=1, height=6, width=6, dtype=torch.float64, offset_range=3.0)
    out, _ = emu.forward(value, offset, mask, params)
    assert not torch.allclose(out, dcnv3_core(value, offset, mask, **params), atol=1e-6, equal_nan=False)


def test_self_check_divergent_exit_before_shuffle_is_caught(emu_build_dir, broken_tmp):
    """Threads past the end returning before the lane reductions leave their warp's full-mask shuffle short."""
    old = "    const bool active = t < total;\n"
    broken = _broken_copy(broken_tmp, "exit", old, old + "    if (!active) return;\n")
    emu = CudaEmulator(build_emulator(KERNEL_SRC, emu_build_dir, 800, kernel_file=broken))
    params = CASES["odd_channels"]  # 3 groups * 8 lanes per pixel: the last block is partly idle
    value, offset, mask = make_inputs(params, batch=1, height=5, width=5, dtype=torch.float32)
    grad = torch.randn(1, 5, 5, value.shape[3])
    with pytest.raises(EmulationError, match=r"__shfl_xor_sync at .*dcnv3_kernels.* has exited"):
        emu.backward(grad, value, offset, mask, params)


def test_self_check_launch_limits_are_enforced(emu_build_dir, broken_tmp):
    broken = _broken_copy(broken_tmp, "limits", "constexpr int kThreads = 256;", "constexpr int kThreads = 2048;")
    emu = CudaEmulator(build_emulator(KERNEL_SRC, emu_build_dir, 800, kernel_file=broken))
    params = CASES["internimage_t"]
    value, offset, mask = make_inputs(params, batch=1, height=4, width=4, dtype=torch.float32)
    with pytest.raises(EmulationError, match="CUDA error 9: invalid launch configuration: block dimensions"):
        emu.forward(value, offset, mask, params)
