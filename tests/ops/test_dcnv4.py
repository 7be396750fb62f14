"""The portable DCNv4 core (`internimage_hf.ops.dcnv4.dcnv4_core`) and the FlashInternImage DCNv4 operator module,
against an independent point-by-point reference (no kernel needed)."""

from __future__ import annotations

import pytest
import torch
from dcnv4_test_inputs import dcnv4_params, make_dcnv4_inputs, naive_dcnv4, used_columns

from internimage_hf.ops.dcnv4 import (
    DCNv4Core,
    FlashInternImageDCNv4,
    dcnv4_core,
    dcnv4_offset_mask_channels,
    split_offset_mask,
)

# Tiny cases for the Python reference loop: every sampling parameter away from its default at least once.
NAIVE_CASES = {
    "3x3": dcnv4_params(group=2, group_channels=3),
    "remove_center": dcnv4_params(group=2, group_channels=2, remove_center=True),
    "stride2_pad0": dcnv4_params(group=1, group_channels=3, stride=2, pad=0),
    "dilation2_pad2": dcnv4_params(group=2, group_channels=2, dilation=2, pad=2),
    "offset_scale2": dcnv4_params(group=3, group_channels=1, offset_scale=2.0),
    "rect_kernel": {**dcnv4_params(group=1, group_channels=2, kernel=3, kernel_w=5), "pad_w": 2, "stride_w": 2},
}


@pytest.mark.parametrize("name", sorted(NAIVE_CASES))
def test_core_matches_point_by_point_reference(name):
    params = NAIVE_CASES[name]
    # offsets up to 3 px put samples outside the 5x6 image (zero padding) and across its border
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=5, width=6, dtype=torch.float64, offset_range=3.0)
    expected = naive_dcnv4(value, offset_mask, params)
    torch.testing.assert_close(dcnv4_core(value, offset_mask, **params), expected, atol=1e-12, rtol=0)


def test_official_width_rounds_up_to_eight():
    assert dcnv4_offset_mask_channels(4, 9) == 112  # 108 used columns, as FlashInternImage-T's first stage
    assert dcnv4_offset_mask_channels(8, 9) == 216  # already a multiple of 8
    assert dcnv4_offset_mask_channels(3, 8) == 72


def test_split_reads_each_groups_offsets_then_weights():
    group, points = 2, 3
    offset_mask = torch.arange(group * points * 3 + 2, dtype=torch.float64).view(1, 1, 1, -1)
    offset, mask = split_offset_mask(offset_mask, group, points)
    assert offset.flatten().tolist() == [0, 1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14]
    assert mask.flatten().tolist() == [6, 7, 8, 15, 16, 17]


@pytest.mark.parametrize("padding_value", [float("nan"), 1e30, float("-inf")])
def test_padding_columns_are_never_read(padding_value):
    params = dcnv4_params(group=3, group_channels=4)
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=6, width=5)
    expected = dcnv4_core(value, offset_mask, **params)
    padded = offset_mask.clone()
    padded[..., used_columns(params) :] = padding_value
    assert padded.shape[-1] > used_columns(params)
    torch.testing.assert_close(dcnv4_core(value, padded, **params), expected, atol=0, rtol=0)


def test_weights_are_used_as_given():
    """No softmax: scaling every point weight scales the output (a normalisation would cancel it)."""
    params = dcnv4_params(group=2, group_channels=3)
    value, offset_mask = make_dcnv4_inputs(params)
    scaled = offset_mask.unflatten(-1, (-1, 1)).clone()
    columns = torch.arange(offset_mask.shape[-1])
    is_weight = (columns < used_columns(params)) & (columns % 27 >= 18)
    scaled[..., is_weight, :] *= 3.0
    output = dcnv4_core(value, scaled.flatten(-2), **params)
    torch.testing.assert_close(output, 3.0 * dcnv4_core(value, offset_mask, **params), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(NAIVE_CASES))
def test_gradcheck_float64(name):
    params = NAIVE_CASES[name]
    value, offset_mask = make_dcnv4_inputs(params, batch=1, height=4, width=5, dtype=torch.float64, offset_range=3.0)
    offset_mask = offset_mask + 0.1234  # off the integer grid, where bilinear interpolation is not differentiable
    inputs = (value.requires_grad_(), offset_mask.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, om: dcnv4_core(v, om, **params), inputs, eps=1e-6, atol=1e-5)


def test_padding_columns_get_zero_gradient():
    params = dcnv4_params(group=2, group_channels=3)
    value, offset_mask = make_dcnv4_inputs(params, dtype=torch.float64)
    offset_mask.requires_grad_()
    dcnv4_core(value, offset_mask, **params).square().sum().backward()
    used = used_columns(params)
    assert offset_mask.grad[..., :used].abs().sum() > 0
    assert torch.equal(offset_mask.grad[..., used:], torch.zeros_like(offset_mask.grad[..., used:]))


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_close_to_float32(dtype, tol):
    params = dcnv4_params(group=4, group_channels=8)
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=9, width=8, offset_range=1.5)
    half = [t.to(dtype) for t in (value, offset_mask)]
    output = dcnv4_core(*half, **params)
    assert output.dtype == dtype
    # reference on the rounded inputs: only the computation's rounding is measured
    expected = dcnv4_core(*(t.float() for t in half), **params)
    torch.testing.assert_close(output.float(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("batch", [1, 3, 257])
def test_any_batch_size(batch):
    params = dcnv4_params(group=2, group_channels=2)
    value, offset_mask = make_dcnv4_inputs(params, batch=batch, height=4, width=4)
    output = dcnv4_core(value, offset_mask, **params)
    assert output.shape == (batch, 4, 4, 4)
    torch.testing.assert_close(output[-1:], dcnv4_core(value[-1:], offset_mask[-1:], **params), atol=0, rtol=0)


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda v, om, p: (v, om[..., : used_columns(p) - 1], p), ValueError, "at least group \\* points \\* 3"),
        (lambda v, om, p: (v, om[0], p), ValueError, "`offset_mask` must be 4-D"),
        (lambda v, om, p: (v, om.tolist(), p), TypeError, "`offset_mask` must be a torch.Tensor"),
        (lambda v, om, p: (v[..., :-1], om, p), ValueError, "group \\* group_channels"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, error, message):
    params = dcnv4_params(group=2, group_channels=4)
    value, offset_mask, params = mutate(*make_dcnv4_inputs(params), params)
    with pytest.raises(error, match=message):
        dcnv4_core(value, offset_mask, **params)


def test_core_module_is_the_function():
    params = dcnv4_params(group=2, group_channels=3, remove_center=True)
    value, offset_mask = make_dcnv4_inputs(params)
    expected = dcnv4_core(value, offset_mask, **params)
    torch.testing.assert_close(DCNv4Core()(value, offset_mask, **params), expected, atol=0, rtol=0)


def test_operator_starts_at_zero_and_samples_its_value_projection():
    """The official init zeroes the offset/weight projection (zero output); with weights 1/9 and no offsets the core is
    a 3x3 box filter of the projected value."""
    torch.manual_seed(0)
    module = FlashInternImageDCNv4(channels=8, group=2)
    hidden = torch.randn(2, 5, 6, 8)
    torch.testing.assert_close(module(hidden), module.output_proj(torch.zeros(2, 5, 6, 8)), atol=0, rtol=0)
    with torch.no_grad():
        bias = torch.zeros(module.offset_mask.out_features)
        bias[: used_columns(dcnv4_params(group=2))].view(2, 27)[:, 18:] = 1 / 9
        module.offset_mask.bias.copy_(bias)
    value = module.value_proj(hidden).permute(0, 3, 1, 2)
    box = torch.nn.functional.avg_pool2d(value, 3, stride=1, padding=1, count_include_pad=True)
    expected = module.output_proj(box.permute(0, 2, 3, 1))
    torch.testing.assert_close(module(hidden), expected, atol=1e-5, rtol=0)
