"""The compiled DCNv3 op (CPU kernel) against the golden outputs and the PyTorch reference `dcnv3_core`."""

from __future__ import annotations

import pytest
import torch
from dcnv3_test_inputs import dcnv3_params, make_inputs, reference_core
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from internimage_hf.ops.dcnv3 import dcnv3_core

ARG_ORDER = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w", "group",
             "group_channels", "offset_scale", "remove_center")  # fmt: skip


def positional(params: dict) -> tuple:
    return tuple(params[name] for name in ARG_ORDER)


def reference(value, offset, mask, params):
    """`dcnv3_core` in float64 (the ground truth for the kernel)."""
    return dcnv3_core(value.double(), offset.double(), mask.double(), **params)


# --------------------------------------------------------------------------------------------------
# golden outputs of the official implementation
# --------------------------------------------------------------------------------------------------


def test_golden_op_cases(dcnv3_kernel, golden_cases):
    checked = 0
    for golden in golden_cases.values():
        for params, value, offset, mask, expected in golden.op_cases:
            out = dcnv3_kernel.dcnv3(value, offset, mask, **params)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=0, msg=f"{golden.name} {params}")
            checked += 1
    assert checked == 6 * len(golden_cases)


@pytest.mark.parametrize("layer_name", ["DCNv3Core", "InternImageMLP"])
def test_exports_and_layer_contract(dcnv3_kernel, layer_name):
    assert {"dcnv3", "dcnv3_softmax", "layers"} <= set(dcnv3_kernel.__all__)
    layer = getattr(dcnv3_kernel.layers, layer_name)
    assert layer.__init__ is torch.nn.Module.__init__
    extra = set(vars(layer)) - set(vars(torch.nn.Module)) - {"__module__", "__doc__", "__qualname__", "__annotations__"}
    assert extra <= {"forward", "has_backward", "can_torch_compile", "__firstlineno__", "__static_attributes__"}
    assert layer.has_backward and layer.can_torch_compile


# --------------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------------

GRADCHECK_CASES = {
    "basic": dcnv3_params(group=2, group_channels=3),
    "stride2": dcnv3_params(group=1, group_channels=2, stride=2),
    "dilation2": dcnv3_params(group=2, group_channels=2, dilation=2),
    "offset_scale2": dcnv3_params(group=2, group_channels=2, offset_scale=2.0),
    "remove_center": dcnv3_params(group=2, group_channels=2, remove_center=True),
    "kernel5_rc": dcnv3_params(group=1, group_channels=3, kernel=5, remove_center=True),
    "rect_kernel": dcnv3_params(group=1, group_channels=2, kernel=3, kernel_w=1, pad=1),
    # the official group widths take the backward's fixed-width path (runtime widths the general one)
    "group_channels16": dcnv3_params(group=2, group_channels=16),
    "group_channels32": dcnv3_params(group=1, group_channels=32, offset_scale=1.5),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_gradcheck_float64(dcnv3_kernel, name):
    params = GRADCHECK_CASES[name]
    if name == "rect_kernel":
        params = {**params, "pad_w": 0}
    # offsets up to 4 px put samples outside the 5x4 image: zero padding and border corners are exercised
    value, offset, mask = make_inputs(params, batch=2, height=5, width=4, dtype=torch.float64, offset_range=4.0)
    # keep samples away from integer coordinates, where bilinear interpolation is not differentiable
    offset = offset + 0.1234
    inputs = tuple(t.requires_grad_() for t in (value, offset, mask))
    assert torch.autograd.gradcheck(lambda v, o, m: dcnv3_kernel.dcnv3(v, o, m, **params), inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["basic", "stride2", "offset_scale2", "remove_center"])
def test_gradients_match_reference(dcnv3_kernel, name):
    params = GRADCHECK_CASES[name]
    value, offset, mask = make_inputs(params, batch=2, height=9, width=8, dtype=torch.float64, offset_range=3.0)
    grads = []
    for fn in (dcnv3_kernel.dcnv3, dcnv3_core):
        leaves = [t.clone().requires_grad_() for t in (value, offset, mask)]
        out = fn(*leaves, **params)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=out.dtype)).reshape(out.shape))
        grads.append([leaf.grad for leaf in leaves])
    for got, want, name_ in zip(grads[0], grads[1], ("value", "offset", "mask"), strict=True):
        # the reference's grid normalisation costs ~1e-6 relative accuracy even in float64
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name_)


@pytest.mark.parametrize("name", ["group_channels16", "group_channels32"])
def test_float32_gradients_match_float64_reference(dcnv3_kernel, name):
    """The float32 backward (vectorised for the official group widths) against the float64 reference, samples
    inside, on the border of and outside the image."""
    params = GRADCHECK_CASES[name]
    value, offset, mask = make_inputs(params, batch=2, height=9, width=8, dtype=torch.float64, offset_range=3.0)
    grads = []
    for fn, dtype in ((dcnv3_kernel.dcnv3, torch.float32), (dcnv3_core, torch.float64)):
        leaves = [t.to(dtype).requires_grad_() for t in (value, offset, mask)]
        out = fn(*leaves, **params)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=dtype)).reshape(out.shape))
        grads.append([leaf.grad for leaf in leaves])
    for got, want, name_ in zip(grads[0], grads[1], ("value", "offset", "mask"), strict=True):
        torch.testing.assert_close(got.double(), want, atol=2e-4, rtol=1e-4, msg=name_)


def test_backward_is_deterministic(dcnv3_kernel):
    params = dcnv3_params(group=4, group_channels=8)
    value, offset, mask = make_inputs(params, batch=3, height=12, width=12, offset_range=1.0)
    grad = torch.randn(3, 12, 12, 32)
    first = dcnv3_kernel.dcnv3_backward(grad, value, offset, mask, *positional(params))
    second = dcnv3_kernel.dcnv3_backward(grad, value, offset, mask, *positional(params))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("group_channels", [16, 5])
def test_backward_does_not_depend_on_the_thread_count(dcnv3_kernel, group_channels):
    """The CPU backward splits an image's groups into as many ranges as the threads need (batch 1 here, 3 groups:
    one range for 1 thread, 2 uneven ones for 2, 3 for 4 threads); every split gives the same bits, and the
    reference's gradients."""
    params = dcnv3_params(group=3, group_channels=group_channels)
    value, offset, mask = make_inputs(params, batch=1, height=7, width=6, dtype=torch.float64, offset_range=3.0)
    offset = offset + 0.0123  # off the integer grid, where the reference's derivative is the kernel's
    grad = torch.randn(1, 7, 6, 3 * group_channels, dtype=torch.float64)
    threads = torch.get_num_threads()
    results = {}
    try:
        for count in (1, 2, 4):
            torch.set_num_threads(count)
            results[count] = dcnv3_kernel.dcnv3_backward(grad, value, offset, mask, *positional(params))
    finally:
        torch.set_num_threads(threads)
    for count in (2, 4):
        for a, b in zip(results[1], results[count], strict=True):
            assert torch.equal(a, b), count
    leaves = [t.clone().requires_grad_() for t in (value, offset, mask)]
    dcnv3_core(*leaves, **params).backward(grad)
    for got, leaf in zip(results[2], leaves, strict=True):
        torch.testing.assert_close(got, leaf.grad, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(dcnv3_kernel, dtype):
    params = dcnv3_params(group=4, group_channels=16)
    value, offset, mask = make_inputs(params, batch=2, height=10, width=9, offset_range=1.5)
    # Fractional parts in [0.2, 0.8]: rounded offsets must not land on a pixel boundary, where the offset
    # gradient jumps (kernel and reference may legitimately take different one-sided derivatives there).
    offset = offset.round() + 0.2 + 0.6 * torch.rand(offset.shape, generator=torch.Generator().manual_seed(1))
    half = [t.to(dtype).requires_grad_() for t in (value, offset, mask)]
    # Reference on the same rounded inputs: rounding an offset across a pixel boundary legitimately changes
    # the offset gradient, which is not what this test is about.
    full = [t.detach().double().requires_grad_() for t in half]
    out = dcnv3_kernel.dcnv3(*half, **params)
    expected = dcnv3_core(*full, **params)
    assert out.dtype == dtype
    # outputs are rounded to 8 (bf16) / 11 (fp16) mantissa bits; accumulation is float32
    tol = 1.6e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.double(), expected.detach(), atol=tol, rtol=tol)
    grad = torch.randn(out.shape, dtype=torch.float64)
    out.backward(grad.to(dtype))
    expected.backward(grad.to(dtype).double())
    for got, want in zip(half, full, strict=True):
        assert got.grad.dtype == dtype
        scale = want.grad.abs().max().item()
        torch.testing.assert_close(got.grad.double(), want.grad, atol=2 * tol * scale, rtol=tol)


def test_mixed_dtypes_are_cast_by_the_wrapper(dcnv3_kernel):
    params = dcnv3_params()
    value, offset, mask = make_inputs(params, dtype=torch.float64)
    out = dcnv3_kernel.dcnv3(value.float(), offset, mask, **params)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(value.float(), offset, mask, params), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# layouts and sizes
# --------------------------------------------------------------------------------------------------


def test_non_contiguous_and_channels_last_strided_inputs(dcnv3_kernel):
    params = dcnv3_params(group=2, group_channels=4)
    value, offset, mask = make_inputs(params, batch=2, height=8, width=7)
    expected = dcnv3_kernel.dcnv3(value, offset, mask, **params)
    # NCHW tensor in channels_last memory: an NHWC view of it is contiguous; its NCHW->NHWC permute of a
    # standard NCHW tensor is not. Both must give the same result.
    nchw = value.permute(0, 3, 1, 2).contiguous()
    value_strided = nchw.permute(0, 2, 3, 1)
    assert not value_strided.is_contiguous()
    # every other element of a wider tensor (non-unit channel stride)
    offset_wide = torch.stack([offset, torch.full_like(offset, 7.0)], dim=-1)[..., 0]
    mask_t = mask.transpose(1, 2).contiguous().transpose(1, 2)
    assert not offset_wide.is_contiguous() and not mask_t.is_contiguous()
    out = dcnv3_kernel.dcnv3(value_strided, offset_wide, mask_t, **params)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    leaves = [t.clone().requires_grad_() for t in (value_strided, offset_wide, mask_t)]
    dcnv3_kernel.dcnv3(*leaves, **params).sum().backward()
    assert all(leaf.grad is not None and leaf.grad.shape == leaf.shape for leaf in leaves)


def test_batch_zero(dcnv3_kernel):
    params = dcnv3_params()
    value, offset, mask = (t[:0].requires_grad_() for t in make_inputs(params))
    out = dcnv3_kernel.dcnv3(value, offset, mask, **params)
    assert out.shape == (0, 7, 6, 8)
    out.sum().backward()
    assert value.grad.shape == value.shape and offset.grad.shape == offset.shape


def test_batch_300(dcnv3_kernel):
    params = dcnv3_params(group=2, group_channels=4)
    value, offset, mask = make_inputs(params, batch=300, height=5, width=5)
    out = dcnv3_kernel.dcnv3(value, offset, mask, **params)
    torch.testing.assert_close(out.double(), reference(value, offset, mask, params), atol=1e-5, rtol=0)


def test_samples_far_outside_give_zero(dcnv3_kernel):
    params = dcnv3_params()
    value, offset, mask = make_inputs(params)
    out = dcnv3_kernel.dcnv3(value, offset + 1e4, mask, **params)
    assert torch.equal(out, torch.zeros_like(out))


# --------------------------------------------------------------------------------------------------
# bad inputs: clear errors, never a crash
# --------------------------------------------------------------------------------------------------


def _bad_calls():
    params = dcnv3_params(group=2, group_channels=4)
    value, offset, mask = make_inputs(params)
    p = positional(params)
    return {
        "value rank": ((value[0], offset, mask, *p), "`value` must be a 4-D"),
        "channels": ((value[..., :7], offset, mask, *p), "group \\* group_channels"),
        "offset channels": ((value, offset[..., :-2], mask, *p), "`offset` must have group \\* points \\* 2"),
        "mask channels": ((value, offset, mask[..., :-1], *p), "`mask` must have group \\* points"),
        "output size": ((value, offset[:, :-1], mask[:, :-1], *p), "H_out, W_out"),
        "batch": ((value, offset[:1], mask[:1], *p), "H_out, W_out"),
        "dtype mix": ((value, offset.double(), mask, *p), "dtype"),
        "integer": ((value.long(), offset.long(), mask.long(), *p), "float32, float64, float16 or bfloat16"),
        "stride": ((value, offset, mask, *p[:2], 0, *p[3:]), "stride must be positive"),
        "group": ((value, offset, mask, *p[:8], 0, 4, *p[10:]), "must be positive"),
        "remove_center even kernel": ((value, offset, mask, 2, 2, *p[2:11], True), "odd kernel"),
    }


@pytest.mark.parametrize("case", sorted(_bad_calls()))
def test_bad_inputs_raise_clear_errors(dcnv3_kernel, case):
    args, message = _bad_calls()[case]
    with pytest.raises(RuntimeError, match=message):
        dcnv3_kernel.dcnv3_forward(*args)


def _wrapping_calls():
    """Arguments whose int64 products wrap: unchecked, a wrapped product passes the shape checks (P = 2^64 = 0
    here matches empty offset/mask tensors) and the loops then run far outside every buffer."""
    value = torch.randn(1, 3, 3, 4)
    empty = torch.zeros(1, 4, 4, 0)
    big, half, p = 2**32, 2**31, (3, 3, 1, 1, 1, 1, 1, 1)
    return {
        "kernel_h * kernel_w": ((value, empty, empty, big, big, 1, 1, half, half, 1, 1, 1, 4, 1.0, False), "kernel_h"),
        "group * group_channels": ((value, empty, empty, *p, 2**62, 4, 1.0, False), "group \\* group_channels"),
        "2 * pad": ((value, empty, empty, 3, 3, 1, 1, 2**62, 1, 1, 1, 1, 4, 1.0, False), "2 \\* pad"),
        "dilation": ((value, empty, empty, 3, 3, 1, 1, 1, 1, 2**62, 1, 1, 4, 1.0, False), "dilation \\* \\(kernel"),
    }


@pytest.mark.parametrize("case", sorted(_wrapping_calls()))
@pytest.mark.parametrize("op", ["dcnv3_forward", "dcnv3_softmax_forward", "dcnv3_backward"])
def test_wrapping_arguments_raise_before_touching_memory(dcnv3_kernel, case, op):
    args, name = _wrapping_calls()[case]
    if op == "dcnv3_backward":
        args = (torch.zeros(1, 4, 4, 4), *args)
    with pytest.raises(RuntimeError, match=f"{name}.* overflows int64"):
        getattr(dcnv3_kernel._ops.ops, op)(*args)


def test_non_finite_inputs_propagate_like_the_reference(dcnv3_kernel):
    """NaN/inf offsets, a NaN weight on a sample outside the image and a non-finite offset_scale give NaN where
    the PyTorch core does (the outside sample adds weight * 0 there)."""
    params = dcnv3_params(group=4, group_channels=16)
    value, offset, mask = make_inputs(params, batch=1, height=6, width=6)
    nan_offset, inf_offset, far_offset, nan_weight = offset.clone(), offset.clone(), offset.clone(), mask.clone()
    nan_offset[0, 1, 2, 0] = float("nan")
    inf_offset[0, 3, 3, 5] = float("inf")
    far_offset[0, 2, 2, 0] = 100.0
    nan_weight[0, 2, 2, 0] = float("nan")
    cases = {
        "nan_offset": (nan_offset, mask, 1.0),
        "inf_offset": (inf_offset, mask, 1.0),
        "nan_weight_outside": (far_offset, nan_weight, 1.0),
        "nan_offset_scale": (offset, mask, float("nan")),
        "inf_offset_scale": (offset, mask, float("inf")),
    }
    for name, (off, msk, scale) in cases.items():
        p = {**params, "offset_scale": scale}
        expected = dcnv3_core(value, off, msk, **p)
        out = dcnv3_kernel.dcnv3(value, off, msk, **p)
        assert expected.isnan().any(), name
        assert torch.equal(out.isnan(), expected.isnan()), name
        torch.testing.assert_close(out.nan_to_num(), expected.nan_to_num(), atol=1e-5, rtol=0, msg=name)


def test_bad_grad_output_raises(dcnv3_kernel):
    params = dcnv3_params()
    value, offset, mask = make_inputs(params)
    with pytest.raises(RuntimeError, match="`grad_output` has shape"):
        dcnv3_kernel.dcnv3_backward(torch.zeros(2, 7, 6, 4), value, offset, mask, *positional(params))


def test_device_mix_raises(dcnv3_kernel):
    params = dcnv3_params()
    value, offset, mask = make_inputs(params)
    # No second real device here: a meta offset beside CPU tensors goes through the fake implementation,
    # which repeats the C++ device check (the CUDA tests cover cpu/cuda mixes).
    with pytest.raises(RuntimeError, match="is on meta but `value` is on cpu"):
        dcnv3_kernel.dcnv3_forward(value, offset.to("meta"), mask, *positional(params))


# --------------------------------------------------------------------------------------------------
# the op with the mask softmax fused in (what the kernel's DCNv3Core layer runs on CPU)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_softmax_op_matches_softmax_then_reference(dcnv3_kernel, name):
    params = GRADCHECK_CASES[name]
    if name == "rect_kernel":
        params = {**params, "pad_w": 0}
    value, offset, logits = make_inputs(params, batch=2, height=9, width=8, offset_range=3.0, mask_logits=True)
    logits = logits * 4.0  # peaked point weights, far from uniform
    out = dcnv3_kernel.dcnv3_softmax(value, offset, logits, **params)
    expected = reference_core(value.double(), offset.double(), logits.double(), params)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_softmax_op_is_stable_for_large_logits(dcnv3_kernel):
    params = dcnv3_params(group=2, group_channels=4)
    value, offset, logits = make_inputs(params, dtype=torch.float64, mask_logits=True)
    # exp(1000) overflows even float64: only a max-subtracted softmax stays finite (and shift-invariant)
    shifted = dcnv3_kernel.dcnv3_softmax(value, offset, logits + 1000.0, **params)
    assert torch.isfinite(shifted).all()
    torch.testing.assert_close(shifted, dcnv3_kernel.dcnv3_softmax(value, offset, logits, **params), atol=1e-9, rtol=0)


def test_softmax_op_propagates_nan_logits(dcnv3_kernel):
    params = dcnv3_params(group=2, group_channels=4)
    value, offset, logits = make_inputs(params, mask_logits=True)
    logits[0, 1, 2, 3] = float("nan")  # group 0 of one output pixel
    out = dcnv3_kernel.dcnv3_softmax(value, offset, logits, **params)
    expected = reference_core(value, offset, logits, params)
    assert out[0, 1, 2, :4].isnan().all() and expected[0, 1, 2, :4].isnan().all()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("name", ["basic", "stride2", "remove_center", "kernel5_rc", "group_channels16"])
def test_softmax_op_gradcheck_float64(dcnv3_kernel, name):
    params = GRADCHECK_CASES[name]
    value, offset, logits = make_inputs(
        params, batch=2, height=5, width=4, dtype=torch.float64, offset_range=4.0, mask_logits=True
    )
    offset = offset + 0.1234
    inputs = tuple(t.requires_grad_() for t in (value, offset, logits))
    assert torch.autograd.gradcheck(
        lambda v, o, m: dcnv3_kernel.dcnv3_softmax(v, o, m, **params), inputs, eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_softmax_op_half_precision(dcnv3_kernel, dtype):
    params = dcnv3_params(group=4, group_channels=16)
    value, offset, logits = make_inputs(params, batch=2, height=10, width=9, offset_range=1.5, mask_logits=True)
    half = [t.to(dtype) for t in (value, offset, logits)]
    out = dcnv3_kernel.dcnv3_softmax(*half, **params)
    assert out.dtype == dtype
    expected = reference_core(*(t.double() for t in half), params)
    tol = 1.6e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)


def test_softmax_op_rejects_bad_mask(dcnv3_kernel):
    params = dcnv3_params(group=2, group_channels=4)
    value, offset, logits = make_inputs(params, mask_logits=True)
    with pytest.raises(RuntimeError, match="`mask` must have group \\* points"):
        dcnv3_kernel.dcnv3_softmax(value, offset, logits[..., :-1], **params)


# --------------------------------------------------------------------------------------------------
# torch.library / torch.compile integration
# --------------------------------------------------------------------------------------------------


def test_opcheck(dcnv3_kernel):
    params = dcnv3_params(group=2, group_channels=3)
    value, offset, mask = make_inputs(params, batch=2, height=5, width=6)
    forward_args = (value.requires_grad_(), offset.requires_grad_(), mask.requires_grad_(), *positional(params))
    torch.library.opcheck(dcnv3_kernel._ops.ops.dcnv3_forward.default, forward_args)
    grad = torch.randn(2, 5, 6, 6)
    backward_args = (grad, value.detach(), offset.detach(), mask.detach(), *positional(params))
    torch.library.opcheck(dcnv3_kernel._ops.ops.dcnv3_backward.default, backward_args)
    logits = make_inputs(params, batch=2, height=5, width=6, mask_logits=True)[2].requires_grad_()
    softmax_args = (value, offset, logits, *positional(params))
    torch.library.opcheck(dcnv3_kernel._ops.ops.dcnv3_softmax_forward.default, softmax_args)
    softmax_backward_args = (grad, value.detach(), offset.detach(), logits.detach(), *positional(params))
    torch.library.opcheck(dcnv3_kernel._ops.ops.dcnv3_softmax_backward.default, softmax_backward_args)


def test_torch_compile_fullgraph(dcnv3_kernel):
    params = dcnv3_params(group=2, group_channels=4, offset_scale=1.5)
    value, offset, mask = make_inputs(params, batch=2, height=8, width=8)
    layer = dcnv3_kernel.layers.DCNv3Core()

    def block(v, o, m):
        return torch.relu(layer(v * 2.0, o, m * 3.0, *positional(params))) + 1.0

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (value, offset, mask)]
    out = compiled(*leaves)
    out.sum().backward()
    eager_leaves = [t.clone().requires_grad_() for t in (value, offset, mask)]
    eager = block(*eager_leaves)
    eager.sum().backward()
    torch.testing.assert_close(out, eager)
    for a, b in zip(leaves, eager_leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


# --------------------------------------------------------------------------------------------------
# randomised comparison with the PyTorch reference
# --------------------------------------------------------------------------------------------------


@st.composite
def dcnv3_cases(draw):
    kernel = draw(st.sampled_from([1, 3, 5]))
    kernel_w = draw(st.sampled_from([kernel, 3]))
    remove_center = draw(st.booleans()) and kernel > 1 and kernel_w % 2 == 1 and kernel % 2 == 1
    dilation_h, dilation_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride_h, stride_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pad_h, pad_w = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    if (height + 2 * pad_h - dilation_h * (kernel - 1) - 1) < 0 or (
        width + 2 * pad_w - dilation_w * (kernel_w - 1) - 1
    ) < 0:
        pad_h, pad_w = dilation_h * (kernel - 1), dilation_w * (kernel_w - 1)
    params = dict(
        kernel_h=kernel, kernel_w=kernel_w, stride_h=stride_h, stride_w=stride_w, pad_h=pad_h, pad_w=pad_w,
        dilation_h=dilation_h, dilation_w=dilation_w, group=draw(st.integers(1, 4)),
        group_channels=draw(st.integers(1, 9)), offset_scale=draw(st.sampled_from([0.5, 1.0, 1.5, 2.0])),
        remove_center=remove_center,
    )  # fmt: skip
    batch = draw(st.integers(1, 3))
    offset_range = draw(st.sampled_from([0.0, 1.0, 3.0, 20.0]))
    seed = draw(st.integers(0, 2**16))
    return params, batch, height, width, offset_range, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=dcnv3_cases())
def test_random_cases_match_reference(dcnv3_kernel, case):
    params, batch, height, width, offset_range, seed = case
    value, offset, mask = make_inputs(params, batch, height, width, torch.float64, offset_range, seed)
    out = dcnv3_kernel.dcnv3(value, offset, mask, **params)
    torch.testing.assert_close(out, dcnv3_core(value, offset, mask, **params), atol=1e-5, rtol=1e-5)
    out32 = dcnv3_kernel.dcnv3(value.float(), offset.float(), mask.float(), **params)
    torch.testing.assert_close(out32.double(), out, atol=1e-4, rtol=1e-4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=dcnv3_cases())
def test_random_backward_matches_reference(dcnv3_kernel, case):
    params, batch, height, width, offset_range, seed = case
    value, offset, mask = make_inputs(params, batch, height, width, torch.float64, offset_range, seed)
    offset = offset + 0.0123  # off the integer grid, where the reference and kernel agree on the derivative
    results = []
    for fn in (dcnv3_kernel.dcnv3, dcnv3_core):
        leaves = [t.clone().requires_grad_() for t in (value, offset, mask)]
        out = fn(*leaves, **params)
        out.backward(torch.sin(torch.arange(out.numel(), dtype=out.dtype)).reshape(out.shape))
        results.append([leaf.grad for leaf in leaves])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
