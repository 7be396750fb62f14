"""The CUDA multi-scale deformable attention kernels (msda_kernels.cu, unchanged but for the launch syntax) on the
CPU under the CUDA emulation (scripts/cuda_emu): forward and backward against the kernel's CPU op and the float64
reference for every dtype, guard zones, grid-stride loops, partial warps at the shuffles, and self-checks that broken
copies of the kernel are caught.

One architecture only: the MSDA kernels have no architecture-dependent path.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from msda_test_inputs import MSDA_CASES, make_msda_inputs, reference_with_grads

REPO = Path(__file__).resolve().parents[2]
KERNEL_SRC = REPO / "kernel_src"
sys.path.insert(0, str(REPO / "scripts" / "cuda_emu"))
from emulator import EmulationError, MsdaEmulator, build_msda_emulator  # noqa: E402

pytestmark = [
    pytest.mark.cuda_host,
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no host C++ compiler"),
]

ARCH = 800
# Relative / absolute tolerance per dtype against float64 (one rounding of float32 sums for the half types).
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(scope="module")
def emu_build_dir(tmp_path_factory) -> Path:
    cache = os.environ.get("INTERNIMAGE_KERNEL_BUILD_CACHE")
    path = Path(cache) / "cuda_emu" if cache else tmp_path_factory.mktemp("cuda_emu")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def emulator(emu_build_dir) -> MsdaEmulator:
    """One SM, so that the launch code caps the grid at 16 blocks and larger inputs take grid-stride steps."""
    emu = MsdaEmulator(build_msda_emulator(KERNEL_SRC, emu_build_dir, ARCH))
    emu.configure(sm_count=1, compute_capability=(ARCH // 100, 0))
    return emu


def _grad_output(value, locations, dtype):
    generator = torch.Generator().manual_seed(5)
    shape = (value.shape[0], locations.shape[1], value.shape[2] * value.shape[3])
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", sorted(MSDA_CASES))
def test_matches_reference_and_cpu_op(emulator, dcnv3_kernel, case, dtype):
    inputs = make_msda_inputs(case, dtype)
    value, shapes, starts, locations, weights = inputs
    grad = _grad_output(value, locations, dtype)
    ref_out, ref_grads = reference_with_grads(grad, *inputs)
    out, _ = emulator.forward(*inputs)
    grads, _ = emulator.backward(grad, *inputs)
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    for got, want, name in zip(grads, ref_grads, ("value", "sampling_locations", "weights"), strict=True):
        assert got.dtype == dtype, name
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double(), want, atol=2 * tol * scale, rtol=tol, msg=name)
    if dtype == torch.float32:  # the two backends of the kernel agree to float32 rounding
        leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
        cpu_out = dcnv3_kernel.multi_scale_deformable_attention(leaves[0], shapes, starts, leaves[1], leaves[2])
        cpu_out.backward(grad)
        torch.testing.assert_close(out, cpu_out.detach(), atol=1e-5, rtol=1e-5)
        for got, leaf in zip(grads, leaves, strict=True):
            torch.testing.assert_close(got, leaf.grad, atol=1e-4, rtol=1e-4)


def test_launch_shapes(emulator):
    """4 channels a thread up to 128 channels per head (DETR's 32: 8 lanes), 8 beyond; grid capped at 16 blocks."""
    _, detr = emulator.forward(*make_msda_inputs("detr_heads"))
    assert (detr.vec, detr.lanes, detr.blocks) == (4, 8, 6)  # 24 queries * 8 heads * 8 lanes = 1536 threads
    _, odd = emulator.forward(*make_msda_inputs("odd_levels"))
    assert (odd.vec, odd.lanes) == (4, 2)  # 6 channels: lanes 0 and 1, the second half used
    value, shapes, starts, locations, weights = make_msda_inputs("odd_levels")
    wide = torch.randn(value.shape[0], value.shape[1], 1, 200)  # one head of 200 channels
    one_head = (locations[:, :, :1].contiguous(), weights[:, :, :1].contiguous())
    out, shape = emulator.forward(wide, shapes, starts, *one_head)
    assert (shape.vec, shape.lanes) == (8, 32)
    assert torch.isfinite(out).all()


def test_grid_stride_and_partial_warps(emulator):
    """More threads than one SM's grid (grid-stride steps) with a partly idle last warp (lanes past the end must
    still join the shuffles); the result is that of a grid with a thread per item."""
    value, shapes, starts, locations, weights = make_msda_inputs("detr_heads", torch.float64)
    locations = locations.repeat(1, 9, 1, 1, 1, 1)[:, :203]  # 203 queries * 8 heads * 8 lanes: 12992 threads
    weights = weights.repeat(1, 9, 1, 1, 1)[:, :203]
    inputs = (value, shapes, starts, locations, weights)
    grad = _grad_output(value, locations, torch.float64)
    out_small, small = emulator.forward(*inputs)
    grads_small, _ = emulator.backward(grad, *inputs)
    try:
        emulator.configure(sm_count=1000, compute_capability=(ARCH // 100, 0))
        out_big, big = emulator.forward(*inputs)
        grads_big, _ = emulator.backward(grad, *inputs)
    finally:
        emulator.configure(sm_count=1, compute_capability=(ARCH // 100, 0))
    assert small.blocks == 16 and big.blocks * 256 >= 203 * 8 * 8
    torch.testing.assert_close(out_small, out_big, atol=0, rtol=0)
    torch.testing.assert_close(grads_small[1:], grads_big[1:], atol=0, rtol=0)
    _, ref_grads = reference_with_grads(grad, *inputs)
    torch.testing.assert_close(grads_small[0], ref_grads[0], atol=1e-12, rtol=0)

    odd = make_msda_inputs("odd_levels", torch.float64)  # 2 * 13 * 3 * 2 = 156 threads: the 5th warp has 28
    grads, _ = emulator.backward(_grad_output(odd[0], odd[3], torch.float64), *odd)
    _, ref_grads = reference_with_grads(_grad_output(odd[0], odd[3], torch.float64), *odd)
    torch.testing.assert_close(grads[1], ref_grads[1], atol=1e-12, rtol=0)


# Self-checks: broken copies of the kernel source must be caught.


def _broken_copy(tmp_path, name: str, old: str, new: str) -> Path:
    source = (KERNEL_SRC / "dcnv3_cuda" / "msda_kernels.cu").read_text()
    assert source.count(old) == 1, f"self-check anchor not found once: {old!r}"
    path = tmp_path / f"{name}.cu"
    path.write_text(source.replace(old, new))
    return path


def test_self_check_exit_before_shuffle_is_caught(emu_build_dir, tmp_path):
    """Lanes past the end returning before the reductions leave their warp's full-mask shuffle short."""
    old = "    const bool active = t < total;\n"
    broken = _broken_copy(tmp_path, "exit", old, old + "    if (!active) return;\n")
    emu = MsdaEmulator(build_msda_emulator(KERNEL_SRC, emu_build_dir, ARCH, kernel_file=broken))
    inputs = make_msda_inputs("odd_levels")  # 156 threads: the last warp is partly idle
    with pytest.raises(EmulationError, match=r"__shfl_xor_sync at .*msda_kernels.* has exited"):
        emu.backward(_grad_output(inputs[0], inputs[3], torch.float32), *inputs)


def test_self_check_reading_the_padding_is_caught(emu_build_dir, tmp_path):
    """A backward that reads corners in the zero padding takes values from outside the level (or its buffer)."""
    broken = _broken_copy(tmp_path, "padding", "            if (!on_level) continue;\n", "")
    emu = MsdaEmulator(build_msda_emulator(KERNEL_SRC, emu_build_dir, ARCH, kernel_file=broken))
    inputs = make_msda_inputs("odd_levels", torch.float64, spread=0.5)
    grad = _grad_output(inputs[0], inputs[3], torch.float64)
    _, ref_grads = reference_with_grads(grad, *inputs)
    try:
        grads, _ = emu.backward(grad, *inputs)
    except EmulationError:
        return  # a write outside grad_value's buffer is caught by the guard zones
    assert not torch.allclose(grads[1], ref_grads[1], atol=1e-6, equal_nan=False)
