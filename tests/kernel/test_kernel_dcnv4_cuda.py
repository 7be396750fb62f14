"""The DCNv4 CUDA kernel on a GPU (skipped without one): every dtype against the float64 portable core, forward and
backward, batch sizes, padding columns, devices. `scripts/gpu_check.sh` runs it; CI checks the same kernel under the
CUDA emulator (`test_kernel_dcnv4_cuda_emulated.py`)."""

from __future__ import annotations

import pytest
import torch
from dcnv3_test_inputs import DTYPE_TOLERANCE
from dcnv3_test_loader import load_variant
from dcnv4_test_inputs import dcnv4_params, make_dcnv4_inputs, positional, used_columns

from internimage_hf.ops.dcnv4 import dcnv4_core

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# offset_scale 1 throughout, so that a location's cell is decided by the fractional part of its offset (see
# `inside_cells`); group widths 16 and 32 (the official ones), 8 and 5 (which the official kernel rejects).
CASES = {
    "internimage_t": dcnv4_params(group=4, group_channels=16),
    "remove_center": dcnv4_params(group=4, group_channels=16, remove_center=True),
    "group_channels32": dcnv4_params(group=2, group_channels=32),
    "group_channels8": dcnv4_params(group=3, group_channels=8),
    "group_channels5": dcnv4_params(group=3, group_channels=5),
    "stride2_pad0": dcnv4_params(group=2, group_channels=16, stride=2, pad=0),
    "kernel5_rc": dcnv4_params(group=2, group_channels=8, kernel=5, remove_center=True),
}


@pytest.fixture(scope="module")
def cuda_kernel(cuda_kernel_build):
    return load_variant(cuda_kernel_build.variant_dir)


def inside_cells(offset_mask: torch.Tensor, params: dict, seed: int = 1) -> torch.Tensor:
    """`offset_mask` with every offset 0.25..0.75 px inside a bilinear cell: the offset gradient jumps where a location
    crosses a pixel, so rounding to a half dtype must not move one there."""
    used = used_columns(params)
    grouped = offset_mask[..., :used].unflatten(-1, (params["group"], -1)).clone()
    points = grouped.shape[-1] // 3
    jitter = 0.25 + 0.5 * torch.rand(grouped[..., : 2 * points].shape, generator=torch.Generator().manual_seed(seed))
    grouped[..., : 2 * points] = grouped[..., : 2 * points].round() + jitter.to(grouped.dtype)
    return torch.cat([grouped.flatten(-2), offset_mask[..., used:]], dim=-1)


def _forward_backward(fn, inputs, params, grad):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves, **params)
    out.backward(grad.to(device=out.device, dtype=out.dtype))
    return out.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_float64_core(cuda_kernel, case, dtype):
    params = CASES[case]
    value, offset_mask = make_dcnv4_inputs(params, batch=3, height=13, width=11, dtype=torch.float64)
    rounded = [t.to(dtype) for t in (value, inside_cells(offset_mask, params))]
    out_shape = (3, *offset_mask.shape[1:3], value.shape[3])
    grad = torch.randn(out_shape, dtype=torch.float64).to(dtype)
    ref_out, ref_grads = _forward_backward(dcnv4_core, [t.double() for t in rounded], params, grad.double())
    out, grads = _forward_backward(cuda_kernel.dcnv4, [t.cuda() for t in rounded], params, grad)
    tol = DTYPE_TOLERANCE[dtype]
    assert out.dtype == dtype and out.is_cuda
    torch.testing.assert_close(out.double().cpu(), ref_out, atol=tol * 4, rtol=tol)
    for got, want, name in zip(grads, ref_grads, ("value", "offset_mask"), strict=True):
        assert got.dtype == dtype, name
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double().cpu(), want, atol=tol * 8 * scale, rtol=tol, msg=name)
    padding = grads[1][..., used_columns(params) :]
    assert torch.equal(padding, torch.zeros_like(padding))


@pytest.mark.parametrize("batch", [1, 300])
def test_batch_sizes_and_unread_padding_columns(cuda_kernel, batch):
    """Batch 300 of 14x14 maps is more queries than one launch's grid rows at stage 3's width; NaN in the padding
    columns (which the official projection adds) must change nothing."""
    params = dcnv4_params(group=16, group_channels=16)
    value, offset_mask = make_dcnv4_inputs(params, batch=batch, height=14, width=14, padding_value=float("nan"))
    out = cuda_kernel.dcnv4(value.cuda(), offset_mask.cuda(), **params)
    expected = dcnv4_core(value.double(), offset_mask.double(), **params)
    assert not out.isnan().any()
    torch.testing.assert_close(out.double().cpu(), expected, atol=4e-4, rtol=1e-4)


def test_device_mix_raises(cuda_kernel):
    params = dcnv4_params()
    value, offset_mask = make_dcnv4_inputs(params)
    with pytest.raises(RuntimeError, match="`offset_mask` is on cpu but `value` is on cuda"):
        cuda_kernel.dcnv4(value.cuda(), offset_mask, *positional(params))
