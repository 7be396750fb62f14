"""The CUDA implementation on a GPU (skipped without one): dtypes, gradients, layouts, batch sizes."""

from __future__ import annotations

import pytest
import torch
from dcnv3_test_inputs import dcnv3_params, make_inputs
from dcnv3_test_loader import load_variant

from internimage_hf.dcnv3 import dcnv3_core

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CASES = {
    "internimage_t": dcnv3_params(group=4, group_channels=16),
    "odd_channels": dcnv3_params(group=3, group_channels=5, remove_center=True),
    "wide_groups": dcnv3_params(group=2, group_channels=160, offset_scale=2.0),
    "stride_dilation": dcnv3_params(group=2, group_channels=8, stride=2, dilation=2),
    "kernel5": dcnv3_params(group=2, group_channels=32, kernel=5, remove_center=True),
}
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}


@pytest.fixture(scope="module")
def cuda_kernel(cuda_kernel_build):
    return load_variant(cuda_kernel_build.variant_dir)


def _forward_backward(fn, inputs, params, grad):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves, **params)
    out.backward(grad.to(out.dtype))
    return out.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_float64_reference(cuda_kernel, case, dtype):
    params = CASES[case]
    value, offset, mask = make_inputs(params, batch=3, height=13, width=11, dtype=torch.float64, offset_range=2.0)
    # fractional offsets away from pixel boundaries so rounded inputs keep the same bilinear cell
    offset = offset.round() + 0.25 + 0.5 * torch.rand(offset.shape, dtype=torch.float64)
    rounded = [t.to(dtype) for t in (value, offset, mask)]
    grad = torch.randn(value.shape[0], offset.shape[1], offset.shape[2], value.shape[3], dtype=torch.float64)
    ref_out, ref_grads = _forward_backward(dcnv3_core, [t.double() for t in rounded], params, grad.to(dtype).double())
    out, grads = _forward_backward(cuda_kernel.dcnv3, [t.cuda() for t in rounded], params, grad.cuda())
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.double().cpu(), ref_out, atol=tol * 4, rtol=tol)
    for got, want, name in zip(grads, ref_grads, ("value", "offset", "mask"), strict=True):
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double().cpu(), want, atol=tol * 8 * scale, rtol=tol, msg=name)


def test_gradcheck_float64_cuda(cuda_kernel):
    params = dcnv3_params(group=2, group_channels=3, offset_scale=1.5, remove_center=True)
    inputs = make_inputs(params, batch=2, height=5, width=4, dtype=torch.float64, offset_range=4.0, device="cuda")
    inputs = (inputs[0], inputs[1] + 0.1234, inputs[2])
    leaves = tuple(t.detach().requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(lambda v, o, m: cuda_kernel.dcnv3(v, o, m, **params), leaves, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("batch", [0, 1, 300])
def test_batch_sizes(cuda_kernel, batch):
    params = dcnv3_params(group=4, group_channels=16)
    value, offset, mask = make_inputs(params, batch=max(batch, 1), height=6, width=6, device="cuda")
    value, offset, mask = value[:batch], offset[:batch], mask[:batch]
    out = cuda_kernel.dcnv3(value, offset, mask, **params)
    torch.testing.assert_close(out, dcnv3_core(value, offset, mask, **params), atol=1e-4, rtol=1e-4)


def test_unaligned_and_strided_inputs(cuda_kernel):
    """Misaligned storage forces the scalar path; channels-last-strided views are copied."""
    params = dcnv3_params(group=2, group_channels=8)
    value, offset, mask = make_inputs(params, batch=2, height=9, width=9, device="cuda")
    expected = cuda_kernel.dcnv3(value, offset, mask, **params)
    shifted = torch.empty(value.numel() + 1, device="cuda")[1:].view(value.shape)
    shifted.copy_(value)
    torch.testing.assert_close(cuda_kernel.dcnv3(shifted, offset, mask, **params), expected, atol=1e-6, rtol=0)
    strided = value.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    torch.testing.assert_close(cuda_kernel.dcnv3(strided, offset, mask, **params), expected, atol=0, rtol=0)


def test_device_mix_raises(cuda_kernel):
    params = dcnv3_params()
    value, offset, mask = make_inputs(params, device="cuda")
    with pytest.raises(RuntimeError, match="is on cpu but `value` is on cuda"):
        cuda_kernel.dcnv3_forward(value, offset.cpu(), mask, *[params[k] for k in params])


def test_torch_compile_cuda(cuda_kernel):
    params = dcnv3_params(group=4, group_channels=16)
    value, offset, mask = make_inputs(params, batch=2, height=14, width=14, device="cuda")
    layer = cuda_kernel.layers.DCNv3Core()
    fn = torch.compile(lambda v, o, m: layer(v, o, m, *params.values()) * 2, fullgraph=True)
    torch.testing.assert_close(fn(value, offset, mask), 2 * cuda_kernel.dcnv3(value, offset, mask, **params))
