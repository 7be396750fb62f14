"""The CUDA emulator's counting build (scripts/cuda_emu: GCC's outlined address-sanitizer checks report every global
load and store of the kernel code): sectors, warp-wide instructions and lane accesses on probe kernels with known
answers (tests/kernel/memory_probe), no counting outside the registered buffers, and the DCNv4 kernels' results
unchanged by the instrumentation, with exact store counts."""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from dcnv4_cases import grad_output_for, make_dcnv4_inputs

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parent / "memory_probe"
sys.path.insert(0, str(REPO / "scripts" / "cuda_emu"))
from emulator import (  # noqa: E402
    Dcnv4Emulator,
    build_dcnv4_emulator,
    build_emulator,
    read_memory_stats,
    register_global_buffers,
    total_memory_stats,
)

pytestmark = [
    pytest.mark.cuda_host,
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no host C++ compiler"),
]


@pytest.fixture(scope="module")
def emu_build_dir(tmp_path_factory) -> Path:
    cache = os.environ.get("INTERNIMAGE_KERNEL_BUILD_CACHE")
    path = Path(cache) / "cuda_emu" if cache else tmp_path_factory.mktemp("cuda_emu")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def probe(emu_build_dir) -> ctypes.CDLL:
    library = build_emulator(
        PROBE, emu_build_dir, 800, kernel=Path("memory_probe.cu"), harness=PROBE / "probe_harness.cpp", counting=True
    )
    return ctypes.CDLL(str(library))


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _run_probe(lib: ctypes.CDLL, kernel: str, inputs: torch.Tensor, output: torch.Tensor, *args) -> dict:
    """The memory counters of one probe launch with `inputs` and `output` as its global memory, summed; each
    buffer's are only loads (inputs) or only stores (output)."""
    names = register_global_buffers(lib, {"inputs": inputs, "output": output})
    assert getattr(lib, f"probe_{kernel}")(_ptr(inputs), _ptr(output), *args) == 0
    by_buffer = read_memory_stats(lib, names)
    assert by_buffer["inputs"]["store_lane_accesses"] == 0 and by_buffer["output"]["load_lane_accesses"] == 0
    return total_memory_stats(by_buffer)


def _expect(stats: dict, **expected) -> None:
    assert {key: stats[key] for key in expected} == expected


@pytest.mark.parametrize(("stride", "sectors"), [(1, 4), (2, 8), (8, 32)])
def test_lanes_loading_consecutive_or_strided_floats(probe, stride, sectors):
    """32 lanes reading floats `stride` apart: 128 consecutive bytes are 4 sectors; 8 floats apart, one per lane."""
    inputs = torch.arange(32 * stride, dtype=torch.float32)
    output = torch.zeros(32)
    stats = _run_probe(probe, "gather", inputs, output, stride)
    assert torch.equal(output, inputs[::stride])
    _expect(stats, load_sectors=sectors, load_instructions=1, load_lane_accesses=32)
    _expect(stats, store_sectors=4, store_instructions=1, store_lane_accesses=32)


def test_vector_access_is_one_instruction(probe):
    """A 16-byte Pack copy per lane stays one access (the build keeps aggregates whole): 512 bytes, 16 sectors."""
    inputs = torch.randn(128)
    output = torch.zeros(128)
    stats = _run_probe(probe, "copy_packs", inputs, output)
    assert torch.equal(output, inputs)
    _expect(stats, load_sectors=16, load_instructions=1, load_lane_accesses=32)
    _expect(stats, store_sectors=16, store_instructions=1, store_lane_accesses=32)


def test_diverging_lanes_form_partial_instructions(probe):
    """Lane i loads i % 4 + 1 rows: 4 instructions of 32, 24, 16 and 8 lanes, each spanning a 128-byte row's 4
    sectors; the stack array it accumulates in is not global memory."""
    inputs = torch.randn(4 * 32)
    output = torch.zeros(32)
    stats = _run_probe(probe, "diverging_sum", inputs, output)
    rows = inputs.view(4, 32)
    lane = torch.arange(32)
    expected = sum(torch.where(lane % 4 >= k, rows[k], torch.zeros(32)) for k in range(4))
    torch.testing.assert_close(output, expected)
    _expect(stats, load_sectors=16, load_instructions=4, load_lane_accesses=32 + 24 + 16 + 8)
    _expect(stats, store_sectors=4, store_instructions=1, store_lane_accesses=32)


def test_unregistered_memory_is_not_counted(probe):
    """Only the registered buffer's accesses count: with the output alone registered, no loads."""
    inputs, output = torch.randn(32), torch.zeros(32)
    names = register_global_buffers(probe, {"output": output})
    assert probe.probe_gather(_ptr(inputs), _ptr(output), 1) == 0
    assert torch.equal(output, inputs)
    _expect(read_memory_stats(probe, names)["output"], load_lane_accesses=0, store_sectors=4, store_lane_accesses=32)


@pytest.fixture(scope="module")
def dcnv4_builds(emu_build_dir) -> tuple[Dcnv4Emulator, Dcnv4Emulator]:
    """(plain, counting) DCNv4 builds for sm_80 on a one-SM device."""
    builds = []
    for counting in (False, True):
        emu = Dcnv4Emulator(build_dcnv4_emulator(REPO / "kernel_src", emu_build_dir, 800, counting=counting))
        emu.configure(sm_count=1, compute_capability=(8, 0))
        builds.append(emu)
    return builds[0], builds[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_counting_build_changes_no_dcnv4_result(dcnv4_builds, dtype):
    """Bitwise the plain build's forward and backward; the forward stores each output sector once (its lanes write
    whole consecutive packs) and the backward's plain stores are grad_offset_mask's elements, each once (its
    grad_value atomics count as atomics only, not as loads or stores)."""
    plain, counting = dcnv4_builds
    params, value, offset_mask = make_dcnv4_inputs("flash_t", dtype=dtype)
    grad = grad_output_for(value, offset_mask)
    out, _ = counting.forward(value, offset_mask, params)
    forward = counting.memory_stats()
    assert torch.equal(out, plain.forward(value, offset_mask, params)[0])
    assert forward["output"]["store_sectors"] == out.numel() * out.element_size() / 32
    assert forward["value"]["load_sectors"] > 0 and forward["offset_mask"]["load_sectors"] > 0
    counting.reset_atomic_stats()
    grads, _ = counting.backward(grad, value, offset_mask, params)
    backward = counting.memory_stats()
    for got, want in zip(grads, plain.backward(grad, value, offset_mask, params)[0], strict=True):
        assert torch.equal(got, want)
    assert total_memory_stats(backward)["store_lane_accesses"] == offset_mask.numel()
    assert backward["grad_offset_mask"]["store_lane_accesses"] == offset_mask.numel()
    assert backward["grad_value"]["load_lane_accesses"] == 0 and counting.atomic_stats()["instructions"] > 0
