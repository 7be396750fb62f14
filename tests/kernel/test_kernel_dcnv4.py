"""The compiled DCNv4 op (CPU kernel) against the portable core `dcnv4_core` and a point-by-point reference, its
argument checks, torch.library / torch.compile integration, kernelize and the op benchmark script."""

from __future__ import annotations

import copy
import inspect
import math
import runpy
from pathlib import Path

import pytest
import torch
from dcnv4_test_inputs import dcnv4_params, make_dcnv4_inputs, naive_dcnv4, positional, used_columns
from torch import nn

from internimage_hf.hub_kernels import kernelizing
from internimage_hf.ops.dcnv4 import DCNv4Core, FlashInternImageDCNv4, dcnv4_core

BENCHMARK_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_dcnv4.py"


def reference(value, offset_mask, params):
    """`dcnv4_core` in float64 (the ground truth for the kernel)."""
    return dcnv4_core(value.double(), offset_mask.double(), **params)


# group_channels: 16 and 32 (the official widths, whole AVX2 blocks), 8 and 24 (half blocks, which the official op
# rejects) and 5 (the scalar path); points: 9 (3x3), 8 (remove_center), 24 (5x5 without centre).
FORWARD_CASES = {
    "internimage_t": dcnv4_params(group=4, group_channels=16),
    "remove_center": dcnv4_params(group=4, group_channels=16, remove_center=True),
    "group_channels8": dcnv4_params(group=3, group_channels=8),
    "group_channels24": dcnv4_params(group=2, group_channels=24, remove_center=True),
    "group_channels32": dcnv4_params(group=2, group_channels=32, offset_scale=1.5),
    "group_channels5": dcnv4_params(group=3, group_channels=5),
    "stride2_pad0": dcnv4_params(group=2, group_channels=16, stride=2, pad=0),
    "pad2_dilation2": dcnv4_params(group=2, group_channels=8, pad=2, dilation=2),
    "offset_scale2": dcnv4_params(group=2, group_channels=16, offset_scale=2.0),
    "kernel5_rc": dcnv4_params(group=2, group_channels=8, kernel=5, remove_center=True),
    "rect": {
        **dcnv4_params(group=3, group_channels=6, kernel=3, kernel_w=5),
        "stride_w": 2,
        "dilation_h": 2,
        "pad_h": 2,
        "pad_w": 1,
    },  # fmt: skip
}


def test_exports_and_layer_contract(dcnv3_kernel):
    assert {"dcnv4", "dcnv4_backward", "layers"} <= set(dcnv3_kernel.__all__)
    layer = dcnv3_kernel.layers.DCNv4Core
    assert layer.__init__ is torch.nn.Module.__init__
    extra = set(vars(layer)) - set(vars(torch.nn.Module)) - {"__module__", "__doc__", "__qualname__", "__annotations__"}
    assert extra <= {"forward", "has_backward", "can_torch_compile", "__firstlineno__", "__static_attributes__"}
    assert layer.has_backward and layer.can_torch_compile
    assert inspect.signature(layer.forward) == inspect.signature(DCNv4Core.forward)


# --------------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FORWARD_CASES))
def test_forward_matches_portable_core(dcnv3_kernel, name):
    params = FORWARD_CASES[name]
    # offsets up to 3 px put samples outside the 9x8 image and across its border
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=9, width=8, offset_range=3.0)
    out = dcnv3_kernel.dcnv4(value, offset_mask, **params)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(value, offset_mask, params), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["internimage_t", "remove_center", "stride2_pad0", "rect"])
def test_forward_matches_point_by_point_reference(dcnv3_kernel, name):
    params = {**FORWARD_CASES[name], "group_channels": 3}
    value, offset_mask = make_dcnv4_inputs(params, batch=1, height=5, width=6, dtype=torch.float64, offset_range=3.0)
    out = dcnv3_kernel.dcnv4(value, offset_mask, **params)
    torch.testing.assert_close(out, naive_dcnv4(value, offset_mask, params), atol=1e-12, rtol=0)


@pytest.mark.parametrize("padding_value", [float("nan"), float("inf"), 1e30])
def test_padding_columns_are_never_read(dcnv3_kernel, padding_value):
    params = FORWARD_CASES["internimage_t"]  # 108 used columns of the official 112
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=6, width=7)
    expected = dcnv3_kernel.dcnv4(value, offset_mask, **params)
    padded = offset_mask.clone()
    padded[..., used_columns(params) :] = padding_value
    assert padded.shape[-1] == 112 and used_columns(params) == 108
    assert torch.equal(dcnv3_kernel.dcnv4(value, padded, **params), expected)
    # wider than the official width, and exactly G * P * 3 wide: the same output
    wide = torch.cat([padded, torch.full_like(padded, padding_value)], dim=-1)
    assert torch.equal(dcnv3_kernel.dcnv4(value, wide, **params), expected)
    assert torch.equal(dcnv3_kernel.dcnv4(value, padded[..., :108].contiguous(), **params), expected)


@pytest.mark.parametrize("batch", [1, 3, 257])
def test_any_batch_size(dcnv3_kernel, batch):
    params = dcnv4_params(group=2, group_channels=8)
    value, offset_mask = make_dcnv4_inputs(params, batch=batch, height=5, width=4)
    out = dcnv3_kernel.dcnv4(value, offset_mask, **params)
    assert out.shape == (batch, 5, 4, 16)
    torch.testing.assert_close(out.double(), reference(value, offset_mask, params), atol=1e-5, rtol=0)
    grads = dcnv3_kernel.dcnv4_backward(torch.ones_like(out), value, offset_mask, *positional(params))
    assert grads[0].shape == value.shape and grads[1].shape == offset_mask.shape


def test_batch_zero(dcnv3_kernel):
    params = dcnv4_params()
    value, offset_mask = (t[:0].requires_grad_() for t in make_dcnv4_inputs(params))
    out = dcnv3_kernel.dcnv4(value, offset_mask, **params)
    assert out.shape == (0, 7, 6, 8)
    out.sum().backward()
    assert value.grad.shape == value.shape and offset_mask.grad.shape == offset_mask.shape


def test_strided_inputs_and_sliced_offset_mask(dcnv3_kernel):
    """A channels-last-strided value and offset_mask sliced out of a wider projection give the contiguous result."""
    params = dcnv4_params(group=2, group_channels=16)
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=8, width=7)
    expected = dcnv3_kernel.dcnv4(value, offset_mask, **params)
    value_strided = value.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    projection = torch.cat([torch.randn(*offset_mask.shape[:3], 5), offset_mask], dim=-1)
    offset_mask_sliced = projection[..., 5:]
    assert not value_strided.is_contiguous() and not offset_mask_sliced.is_contiguous()
    assert torch.equal(dcnv3_kernel.dcnv4(value_strided, offset_mask_sliced, **params), expected)


def test_mixed_dtypes_are_cast_by_the_wrapper(dcnv3_kernel):
    params = dcnv4_params()
    value, offset_mask = make_dcnv4_inputs(params, dtype=torch.float64)
    out = dcnv3_kernel.dcnv4(value.float(), offset_mask, **params)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(value.float(), offset_mask, params), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------------

GRADCHECK_CASES = {
    "basic": dcnv4_params(group=2, group_channels=3),
    "group_channels16": dcnv4_params(group=2, group_channels=16),
    "group_channels32": dcnv4_params(group=1, group_channels=32, offset_scale=1.5),
    "stride2_pad0": dcnv4_params(group=1, group_channels=2, stride=2, pad=0),
    "dilation2_pad2": dcnv4_params(group=2, group_channels=2, dilation=2, pad=2),
    "remove_center": dcnv4_params(group=2, group_channels=2, remove_center=True),
    "kernel5_rc": dcnv4_params(group=1, group_channels=3, kernel=5, remove_center=True),
}


def _backward_pair(fn, value, offset_mask, params, dtype):
    leaves = [t.to(dtype).clone().requires_grad_() for t in (value, offset_mask)]
    out = fn(*leaves, **params)
    out.backward(torch.cos(torch.arange(out.numel(), dtype=dtype)).reshape(out.shape))
    return [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_gradients_match_float64_autograd_of_the_core(dcnv3_kernel, name):
    params = GRADCHECK_CASES[name]
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=6, width=5, dtype=torch.float64, offset_range=3.0)
    offset_mask = offset_mask + 0.0123  # off the integer grid, where kernel and autograd agree on the derivative
    got = _backward_pair(dcnv3_kernel.dcnv4, value, offset_mask, params, torch.float64)
    want = _backward_pair(dcnv4_core, value, offset_mask, params, torch.float64)
    for a, b, grad_name in zip(got, want, ("value", "offset_mask"), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=grad_name)
    used = used_columns(params)  # the padding columns (none for kernel5_rc: 72 is a multiple of 8) get zeros
    assert torch.equal(got[1][..., used:], torch.zeros_like(got[1][..., used:]))


@pytest.mark.parametrize("name", ["group_channels16", "group_channels32"])
def test_float32_gradients_match_float64(dcnv3_kernel, name):
    params = GRADCHECK_CASES[name]
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=9, width=8, dtype=torch.float64, offset_range=3.0)
    got = _backward_pair(dcnv3_kernel.dcnv4, value, offset_mask, params, torch.float32)
    want = _backward_pair(dcnv4_core, value, offset_mask, params, torch.float64)
    for a, b, grad_name in zip(got, want, ("value", "offset_mask"), strict=True):
        torch.testing.assert_close(a.double(), b, atol=2e-4, rtol=1e-4, msg=grad_name)


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_gradcheck_float64(dcnv3_kernel, name):
    params = GRADCHECK_CASES[name]
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=5, width=4, dtype=torch.float64, offset_range=4.0)
    offset_mask = offset_mask + 0.1234
    inputs = (value.requires_grad_(), offset_mask.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, om: dcnv3_kernel.dcnv4(v, om, **params), inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("group_channels", [16, 5])
def test_backward_does_not_depend_on_the_thread_count(dcnv3_kernel, group_channels):
    """Batch 1 with 3 groups: one group range for 1 thread, 2 uneven ones for 2, 3 for 4; the same bits each time."""
    params = dcnv4_params(group=3, group_channels=group_channels)
    value, offset_mask = make_dcnv4_inputs(params, batch=1, height=7, width=6, dtype=torch.float64, offset_range=3.0)
    grad = torch.randn(1, 7, 6, 3 * group_channels, dtype=torch.float64)
    threads = torch.get_num_threads()
    results = {}
    try:
        for count in (1, 2, 4):
            torch.set_num_threads(count)
            results[count] = dcnv3_kernel.dcnv4_backward(grad, value, offset_mask, *positional(params))
    finally:
        torch.set_num_threads(threads)
    for count in (2, 4):
        for a, b in zip(results[1], results[count], strict=True):
            assert torch.equal(a, b), count


# --------------------------------------------------------------------------------------------------
# half precision and non-finite values
# --------------------------------------------------------------------------------------------------

# Outputs are rounded to 8 (bf16) / 11 (fp16) mantissa bits; accumulation is float32.
HALF_TOLERANCE = {torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(dcnv3_kernel, dtype):
    params = dcnv4_params(group=4, group_channels=16)
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=10, width=9, offset_range=1.5)
    # Fractional offsets in [0.2, 0.8]: rounding must not move a location across a pixel, where the offset gradient
    # jumps.
    jitter = 0.2 + 0.6 * torch.rand(offset_mask.shape, generator=torch.Generator().manual_seed(1))
    offset_mask = offset_mask.round() + jitter
    half = [t.to(dtype).requires_grad_() for t in (value, offset_mask)]
    full = [t.detach().float().requires_grad_() for t in half]  # float32 on the same rounded inputs
    out = dcnv3_kernel.dcnv4(*half, **params)
    expected = dcnv3_kernel.dcnv4(*full, **params)
    assert out.dtype == dtype
    tol = HALF_TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected.detach(), atol=tol, rtol=tol)
    grad = torch.randn(out.shape)
    out.backward(grad.to(dtype))
    expected.backward(grad.to(dtype).float())
    for got, want in zip(half, full, strict=True):
        assert got.grad.dtype == dtype
        scale = want.grad.abs().max().item()
        torch.testing.assert_close(got.grad.float(), want.grad, atol=2 * tol * scale, rtol=tol)


def test_nan_in_value_reaches_the_outputs_that_sample_it(dcnv3_kernel):
    params = dcnv4_params(group=2, group_channels=16)
    value, offset_mask = make_dcnv4_inputs(params, batch=1, height=8, width=8, offset_range=1.0)
    value[0, 4, 3, :16] = float("nan")  # an interior pixel, group 0 only
    out = dcnv3_kernel.dcnv4(value, offset_mask, **params)
    expected = dcnv4_core(value, offset_mask, **params)
    assert expected[..., :16].isnan().any() and not expected[..., 16:].isnan().any()
    assert torch.equal(out.isnan(), expected.isnan())
    torch.testing.assert_close(out.nan_to_num(), expected.nan_to_num(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("column", [0, 1, 18, 27 + 20])  # group 0's dx, dy and first weight; group 1's third weight
def test_nan_in_a_used_column_reaches_its_group(dcnv3_kernel, column):
    params = dcnv4_params(group=2, group_channels=8)
    value, offset_mask = make_dcnv4_inputs(params, batch=1, height=6, width=6)
    offset_mask[0, 2, 3, column] = float("nan")
    out = dcnv3_kernel.dcnv4(value, offset_mask, **params)
    expected = dcnv4_core(value, offset_mask, **params)
    group = column // 27
    assert out[0, 2, 3, group * 8 : (group + 1) * 8].isnan().all()
    assert torch.equal(out.isnan(), expected.isnan())
    assert out.isnan().sum() == 8  # that pixel's group only
    torch.testing.assert_close(out.nan_to_num(), expected.nan_to_num(), atol=1e-5, rtol=0)


def test_non_finite_weight_of_a_sample_outside_gives_nan_like_the_core(dcnv3_kernel):
    """The core adds weight * 0 for a sample in the zero padding: NaN for an infinite weight, as the kernel."""
    params = dcnv4_params(group=1, group_channels=8)
    value, offset_mask = make_dcnv4_inputs(params, batch=1, height=5, width=5)
    offset_mask[0, 1, 1, 0] = 100.0  # point 0 far outside
    offset_mask[0, 1, 1, 18] = float("inf")  # its weight
    out = dcnv3_kernel.dcnv4(value, offset_mask, **params)
    expected = dcnv4_core(value, offset_mask, **params)
    assert expected[0, 1, 1].isnan().all()
    assert torch.equal(out.isnan(), expected.isnan())


# --------------------------------------------------------------------------------------------------
# bad inputs: clear errors naming the argument, never a crash
# --------------------------------------------------------------------------------------------------


def _bad_calls():
    params = dcnv4_params(group=2, group_channels=4)
    value, offset_mask = make_dcnv4_inputs(params)
    p = positional(params)
    return {
        "value rank": ((value[0], offset_mask, *p), "`value` must be a 4-D"),
        "value dtype": ((value.long(), offset_mask.long(), *p), "`value` must be float32, float64"),
        "offset_mask rank": ((value, offset_mask[0], *p), "`offset_mask` must be a 4-D"),
        "offset_mask dtype": ((value, offset_mask.double(), *p), "`offset_mask` has dtype"),
        "channels": ((value[..., :7], offset_mask, *p), "`value` has 7 channels but group \\* group_channels"),
        "offset_mask width": ((value, offset_mask[..., :53], *p), "`offset_mask` must have at least group \\* points"),
        "output size": ((value, offset_mask[:, :-1], *p), "`offset_mask` has shape .* \\(N, H_out, W_out\\)"),
        "batch": ((value, offset_mask[:1], *p), "`offset_mask` has shape .* \\(N, H_out, W_out\\)"),
        "kernel_h": ((value, offset_mask, 0, *p[1:]), "`kernel_h` and `kernel_w` must be positive"),
        "kernel_w": ((value, offset_mask, 3, -1, *p[2:]), "`kernel_h` and `kernel_w` must be positive"),
        "stride_h": ((value, offset_mask, *p[:2], 0, *p[3:]), "`stride_h` and `stride_w` must be positive"),
        "stride_w": ((value, offset_mask, *p[:3], 0, *p[4:]), "`stride_h` and `stride_w` must be positive"),
        "pad_h": ((value, offset_mask, *p[:4], -1, *p[5:]), "`pad_h` and `pad_w` must be non-negative"),
        "dilation_w": ((value, offset_mask, *p[:7], 0, *p[8:]), "`dilation_h` and `dilation_w` must be positive"),
        "group": ((value, offset_mask, *p[:8], 0, *p[9:]), "`group` must be positive"),
        "group_channels": ((value, offset_mask, *p[:9], 0, *p[10:]), "`group_channels` must be positive"),
        "remove_center even kernel": ((value, offset_mask, 2, 2, *p[2:11], True), "`remove_center` needs odd"),
    }


@pytest.mark.parametrize("case", sorted(_bad_calls()))
@pytest.mark.parametrize("op", ["dcnv4_forward", "dcnv4_backward"])
def test_bad_inputs_raise_clear_errors(dcnv3_kernel, case, op):
    args, message = _bad_calls()[case]
    if op == "dcnv4_backward":
        args = (torch.zeros(2, 7, 6, 8), *args)
    with pytest.raises(RuntimeError, match=message):
        getattr(dcnv3_kernel._ops.ops, op)(*args)


def _wrapping_calls():
    """Arguments whose int64 products wrap; unchecked, a wrapped product could pass the shape checks."""
    value = torch.randn(1, 3, 3, 4)
    empty = torch.zeros(1, 4, 4, 0)
    big, half, p = 2**32, 2**31, (3, 3, 1, 1, 1, 1, 1, 1)
    return {
        "kernel_h * kernel_w": ((value, empty, big, big, 1, 1, half, half, 1, 1, 1, 4, 1.0, False), "kernel_h"),
        "group * group_channels": ((value, empty, *p, 2**62, 4, 1.0, False), "group \\* group_channels"),
        # 2^61 channels as a stride-0 view (its numel fits): group * group_channels matches, G * P does not fit
        "group * points": (
            (torch.zeros(1, 1, 1, 1).expand(1, 1, 1, 2**61), empty, *p, 2**61, 1, 1.0, False),
            "group \\* points",
        ),  # fmt: skip
        "2 * pad": ((value, empty, 3, 3, 1, 1, 2**62, 1, 1, 1, 1, 4, 1.0, False), "2 \\* pad"),
        "dilation": ((value, empty, 3, 3, 1, 1, 1, 1, 2**62, 1, 1, 4, 1.0, False), "dilation \\* \\(kernel"),
    }


@pytest.mark.parametrize("case", sorted(_wrapping_calls()))
@pytest.mark.parametrize("op", ["dcnv4_forward", "dcnv4_backward"])
def test_wrapping_arguments_raise_before_touching_memory(dcnv3_kernel, case, op):
    args, name = _wrapping_calls()[case]
    if op == "dcnv4_backward":
        args = (torch.zeros(1, 4, 4, 4), *args)
    with pytest.raises(RuntimeError, match=f"{name}.* overflows int64"):
        getattr(dcnv3_kernel._ops.ops, op)(*args)


def test_bad_grad_output_raises(dcnv3_kernel):
    params = dcnv4_params()
    value, offset_mask = make_dcnv4_inputs(params)
    with pytest.raises(RuntimeError, match="`grad_output` has shape"):
        dcnv3_kernel.dcnv4_backward(torch.zeros(2, 7, 6, 4), value, offset_mask, *positional(params))
    with pytest.raises(RuntimeError, match="`grad_output` has dtype"):
        dcnv3_kernel.dcnv4_backward(torch.zeros(2, 7, 6, 8).double(), value, offset_mask, *positional(params))


def test_device_mix_raises(dcnv3_kernel):
    params = dcnv4_params()
    value, offset_mask = make_dcnv4_inputs(params)
    # No second real device here: a meta offset_mask beside a CPU value goes through the fake implementation, which
    # repeats the C++ device check (the CUDA tests cover cpu/cuda mixes).
    with pytest.raises(
        RuntimeError, match="`offset_mask` is torch.float32 on meta but `value` is torch.float32 on cpu"
    ):
        dcnv3_kernel.dcnv4(value, offset_mask.to("meta"), **params)


# --------------------------------------------------------------------------------------------------
# torch.library / torch.compile integration
# --------------------------------------------------------------------------------------------------


def test_opcheck(dcnv3_kernel):
    params = dcnv4_params(group=2, group_channels=3)
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=5, width=6)
    forward_args = (value.requires_grad_(), offset_mask.requires_grad_(), *positional(params))
    torch.library.opcheck(dcnv3_kernel._ops.ops.dcnv4_forward.default, forward_args)
    grad = torch.randn(2, 5, 6, 6)
    backward_args = (grad, value.detach(), offset_mask.detach(), *positional(params))
    torch.library.opcheck(dcnv3_kernel._ops.ops.dcnv4_backward.default, backward_args)


def test_torch_compile_fullgraph(dcnv3_kernel):
    params = dcnv4_params(group=2, group_channels=4, offset_scale=1.5)
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=8, width=8)
    layer = dcnv3_kernel.layers.DCNv4Core()

    def block(v, om):
        return torch.relu(layer(v * 2.0, om * 0.5, *positional(params))) + 1.0

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (value, offset_mask)]
    out = compiled(*leaves)
    out.sum().backward()
    eager_leaves = [t.clone().requires_grad_() for t in (value, offset_mask)]
    eager = block(*eager_leaves)
    eager.sum().backward()
    torch.testing.assert_close(out, eager)
    for a, b in zip(leaves, eager_leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


# --------------------------------------------------------------------------------------------------
# kernelize
# --------------------------------------------------------------------------------------------------


class TinyFlashBlock(nn.Module):
    """Two FlashInternImage DCNv4 operators (with and without centre and depthwise convolution) around a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.first = FlashInternImageDCNv4(channels=32, group=2, dw_kernel_size=3)
        self.norm = nn.LayerNorm(32)
        self.second = FlashInternImageDCNv4(channels=32, group=4, remove_center=True, center_feature_scale=True)

    def forward(self, hidden):
        return self.second(self.norm(self.first(hidden)))


def test_kernelize_runs_dcnv4_cores_on_the_kernel(cpu_kernel_build):
    pytest.importorskip("kernels")
    from internimage_hf import kernelize

    torch.manual_seed(0)
    model = TinyFlashBlock()
    with torch.no_grad():  # the official init zeroes the offsets and weights: give them something to sample
        for module in (model.first, model.second):
            module.offset_mask.weight.normal_(std=0.1)
            module.offset_mask.bias.normal_(std=0.3)
    reference = copy.deepcopy(model)
    kernelize(model, mode="training", local_path=cpu_kernel_build.root)
    cores = [m for m in model.modules() if isinstance(m, DCNv4Core)]
    assert len(cores) == 2 and all(kernelizing._runs_kernel(m) for m in cores)
    assert kernelizing.dcnv3_backend(model).startswith("local:")
    assert kernelizing.dcnv3_backend(reference) == "pytorch"
    hidden = torch.randn(2, 9, 7, 32)
    outputs = [m(hidden) for m in (model, reference)]
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    for out in outputs:
        out.square().sum().backward()
    for (name, got), want in zip(model.named_parameters(), reference.parameters(), strict=True):
        scale = max(want.grad.abs().max().item(), 1.0)
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5 * scale, rtol=1e-4, msg=name)


# --------------------------------------------------------------------------------------------------
# scripts/benchmark_dcnv4.py (timings are never asserted)
# --------------------------------------------------------------------------------------------------


def test_benchmark_function_reports_ratios_against_dcnv3(dcnv3_kernel):
    script = runpy.run_path(str(BENCHMARK_SCRIPT))
    lines = []
    rows = script["run"](dcnv3_kernel, batches=(1, 2), stages=[(8, 2, 5)], iters=1, report=lines.append)
    assert [(row["batch"], row["channels"], row["groups"], row["size"]) for row in rows] == [(1, 8, 2, 5), (2, 8, 2, 5)]
    for row in rows:
        for key in ("fwd", "fwdbwd"):
            assert row[f"dcnv3_{key}_speedup"] == 1.0
            for name in ("dcnv4", "dcnv4_pytorch"):
                ratio = row[f"{name}_{key}_speedup"]
                assert math.isfinite(ratio) and ratio > 0
                assert ratio == pytest.approx(row[f"dcnv3_{key}_ms"] / row[f"{name}_{key}_ms"])
    assert len(lines) == 2 and all("dcnv4, pytorch vs dcnv3" in line for line in lines)


def test_benchmark_inputs_make_the_ops_compute_the_same(dcnv3_kernel):
    """The benchmark feeds DCNv4 the DCNv3 inputs in its layout (softmaxed logits as weights): the same outputs."""
    script = runpy.run_path(str(BENCHMARK_SCRIPT))
    inputs = script["make_inputs"](2, 32, 2, 6, torch.float32, "cpu")
    assert inputs["offset_mask"].shape[-1] == 56  # 2 * 27 = 54 used columns, padded to a multiple of 8
    calls = script["stage_calls"](dcnv3_kernel, inputs, 2, 32)
    outputs = {name: fn(inputs) for name, fn in calls.items()}
    torch.testing.assert_close(outputs["dcnv4"], outputs["dcnv3"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["dcnv4_pytorch"], outputs["dcnv3"], atol=1e-5, rtol=1e-5)
