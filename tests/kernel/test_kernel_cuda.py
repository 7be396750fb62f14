"""The CUDA implementation on a GPU (skipped without one): dtypes, gradients, layouts, batch sizes."""

from __future__ import annotations

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
from dcnv3_test_loader import load_variant

from internimage_hf.ops.dcnv3 import dcnv3_core

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CASES = CUDA_CASES
TOLERANCE = DTYPE_TOLERANCE


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
    offset = off_cell_boundaries(offset, params["offset_scale"])
    rounded = [t.to(dtype) for t in (value, offset, mask)]
    grad = torch.randn(value.shape[0], offset.shape[1], offset.shape[2], value.shape[3], dtype=torch.float64)
    ref_out, ref_grads = _forward_backward(dcnv3_core, [t.double() for t in rounded], params, grad.to(dtype).double())
    out, grads = _forward_backward(cuda_kernel.dcnv3, [t.cuda() for t in rounded], params, grad.cuda())
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.double().cpu(), ref_out, atol=tol * 4, rtol=tol)
    for got, want, name in zip(grads, ref_grads, ("value", "offset", "mask"), strict=True):
        assert got.dtype == dtype, name
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double().cpu(), want, atol=tol * 8 * scale, rtol=tol, msg=name)


@pytest.mark.parametrize(
    "params",
    [
        dcnv3_params(group=2, group_channels=3, offset_scale=1.5, remove_center=True),
        {**dcnv3_params(group=2, group_channels=4, kernel=3, kernel_w=1), "stride_h": 2, "dilation_w": 2},
    ],
    ids=["remove_center", "rect_stride"],
)
def test_gradcheck_float64_cuda(cuda_kernel, params):
    inputs = make_inputs(params, batch=2, height=5, width=4, dtype=torch.float64, offset_range=4.0, device="cuda")
    inputs = (inputs[0], inputs[1] + 0.1234, inputs[2])
    leaves = tuple(t.detach().requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(lambda v, o, m: cuda_kernel.dcnv3(v, o, m, **params), leaves, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("batch", [0, 1, 300])
def test_batch_sizes(cuda_kernel, batch):
    params = dcnv3_params(group=4, group_channels=16)
    value, offset, mask = make_inputs(params, batch=max(batch, 1), height=6, width=6, device="cuda")
    offset = off_cell_boundaries(offset, params["offset_scale"])  # 777k offsets: some would hit a cell edge
    value, offset, mask = value[:batch], offset[:batch], mask[:batch]
    grad = torch.randn(batch, 6, 6, value.shape[3], device="cuda")
    out, grads = _forward_backward(cuda_kernel.dcnv3, [value, offset, mask], params, grad)
    if batch == 0:  # the reference returns a constant here; the kernel must still give empty outputs
        ref_out, ref_grads = torch.zeros_like(out), [torch.zeros_like(t) for t in (value, offset, mask)]
    else:
        ref_out, ref_grads = _forward_backward(dcnv3_core, [value, offset, mask], params, grad)
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
    for got, want, name in zip(grads, ref_grads, ("value", "offset", "mask"), strict=True):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)


def test_unaligned_and_strided_inputs(cuda_kernel):
    """Misaligned storage forces the scalar path (forward and backward); channels-last-strided views are copied."""
    params = dcnv3_params(group=2, group_channels=8)
    value, offset, mask = make_inputs(params, batch=2, height=9, width=9, device="cuda")
    grad = torch.randn(value.shape, device="cuda")
    expected = cuda_kernel.dcnv3(value, offset, mask, **params)
    expected_grads = cuda_kernel.dcnv3_backward(grad, value, offset, mask, *params.values())

    def shifted(t):
        out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
        return out.copy_(t)

    torch.testing.assert_close(cuda_kernel.dcnv3(shifted(value), offset, mask, **params), expected, atol=1e-6, rtol=0)
    grads = cuda_kernel.dcnv3_backward(shifted(grad), shifted(value), offset, mask, *params.values())
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    strided = value.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    torch.testing.assert_close(cuda_kernel.dcnv3(strided, offset, mask, **params), expected, atol=0, rtol=0)


@pytest.mark.parametrize("group_channels", [832, 835], ids=["vec8", "vec1"])
def test_int64_indexing_past_2_31_elements(cuda_kernel, group_channels):
    """value with > 2**31 elements: the last image's samples and grad_value scatter sit past int32 range.

    Compared with the same op on a copy of that image alone (small indices). Stride 4 keeps the work small.
    """
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs a GPU with >= 40 GiB (peak use about 20 GiB)")
    batch, size, group = 5, 256, 8
    params = dcnv3_params(group=group, group_channels=group_channels, stride=4)
    assert batch * size * size * group * group_channels > 2**31
    gen = torch.Generator(device="cuda").manual_seed(0)
    value = torch.randn(batch, size, size, group * group_channels, device="cuda", dtype=torch.float16, generator=gen)
    # offset / mask do not depend on group_channels; a 1-channel make_inputs keeps its CPU value tensor small.
    small = {**params, "group_channels": 1}
    _, offset, mask = make_inputs(small, batch=batch, height=size, width=size, dtype=torch.float16, device="cuda")
    grad = torch.randn(offset.shape[:3] + (value.shape[3],), device="cuda", dtype=torch.float16, generator=gen)
    args = list(params.values())
    out = cuda_kernel.dcnv3_forward(value, offset, mask, *args)
    grads = cuda_kernel.dcnv3_backward(grad, value, offset, mask, *args)
    last = [t[-1:].clone() for t in (value, offset, mask, grad)]
    ref_out = cuda_kernel.dcnv3_forward(*last[:3], *args)
    ref_grads = cuda_kernel.dcnv3_backward(last[3], *last[:3], *args)
    torch.testing.assert_close(out[-1:], ref_out, atol=0, rtol=0)
    names = ("value", "offset", "mask")
    for got, want, name in zip(grads, ref_grads, names, strict=True):
        # grad_value is an atomicAdd scatter (order-dependent); offset / mask are deterministic reductions.
        tol = 2e-3 if name == "value" else 0
        torch.testing.assert_close(got[-1:], want, atol=tol, rtol=tol, msg=name)
    assert grads[0][-1, -8:].count_nonzero() > 0, "samples must reach the part of value past 2**31 elements"


def test_runs_on_current_stream(cuda_kernel):
    """Inputs produced on a side stream after a long sleep: a kernel on another stream would read them early."""
    params = dcnv3_params(group=4, group_channels=16)
    value, offset, mask = make_inputs(params, batch=2, height=14, width=14, device="cuda")
    grad = torch.randn(value.shape, device="cuda")
    expected = cuda_kernel.dcnv3(value, offset, mask, **params)
    expected_grads = cuda_kernel.dcnv3_backward(grad, value, offset, mask, *params.values())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU time
        v, g = value * 1, grad * 1
        out = cuda_kernel.dcnv3(v, offset, mask, **params)
        grads = cuda_kernel.dcnv3_backward(g, v, offset, mask, *params.values())
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


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
    torch.testing.assert_close(fn(value, offset, mask), 2 * cuda_kernel.dcnv3_softmax(value, offset, mask, **params))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fused_softmax_on_cuda(cuda_kernel, dtype):
    """`dcnv3_softmax` is one kernel forward and one backward on CUDA (softmax and its Jacobian inside)."""
    params = CASES["internimage_t"]
    value, offset, logits = make_inputs(params, batch=2, height=9, width=9, dtype=torch.float64, mask_logits=True)
    offset = off_cell_boundaries(offset, params["offset_scale"])
    rounded = [t.to(dtype) for t in (value, offset, logits * 3)]
    grad = torch.randn(2, 9, 9, value.shape[3], dtype=torch.float64).to(dtype)
    ref_out, ref_grads = _forward_backward(
        lambda v, o, m, **p: reference_core(v, o, m, p), [t.double() for t in rounded], params, grad.double()
    )
    out, grads = _forward_backward(cuda_kernel.dcnv3_softmax, [t.cuda() for t in rounded], params, grad.cuda())
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double().cpu(), ref_out, atol=tol * 4, rtol=tol)
    for got, want, name in zip(grads, ref_grads, ("value", "offset", "logits"), strict=True):
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double().cpu(), want, atol=tol * 8 * scale, rtol=tol, msg=name)


def test_backward_alerts_non_determinism(cuda_kernel):
    params = CASES["internimage_t"]
    value, offset, mask = make_inputs(params, batch=1, height=5, width=5, device="cuda")
    grad = torch.randn(value.shape, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="dcnv3_backward_cuda"):
            cuda_kernel.dcnv3_backward(grad, value, offset, mask, *params.values())
    finally:
        torch.use_deterministic_algorithms(False)
