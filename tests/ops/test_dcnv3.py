"""The portable DCNv3 core (`internimage_hf.dcnv3_core`) and the DCNv3 operator module."""

import warnings

import pytest
import torch

from internimage_hf import InternImageConfig, InternImageModel, dcnv3_core
from internimage_hf.ops.dcnv3 import DCNv3Core, InternImageDCNv3, as_rows, dcnv3_output_size, softmax_over_points


def make_inputs(batch, height, width, group, group_channels, kernel=3, stride=1, pad=1, dilation=1,
                remove_center=False, offset_range=1.5, dtype=torch.float32, seed=0):  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    points = kernel * kernel - int(remove_center)
    out_h = dcnv3_output_size(height, kernel, stride, pad, dilation)
    out_w = dcnv3_output_size(width, kernel, stride, pad, dilation)
    value = torch.randn(batch, height, width, group * group_channels, generator=generator, dtype=dtype)
    offset = torch.rand(batch, out_h, out_w, group * points * 2, generator=generator, dtype=dtype) * 2 - 1
    offset = offset * offset_range
    mask = torch.randn(batch, out_h, out_w, group, points, generator=generator, dtype=dtype).softmax(-1)
    params = dict(kernel_h=kernel, kernel_w=kernel, stride_h=stride, stride_w=stride, pad_h=pad, pad_w=pad,
                  dilation_h=dilation, dilation_w=dilation, group=group, group_channels=group_channels,
                  offset_scale=1.0, remove_center=remove_center)  # fmt: skip
    return value, offset, mask.reshape(batch, out_h, out_w, group * points), params


def test_golden_op_cases(golden):
    for params, value, offset, mask, expected in golden.op_cases:
        output = dcnv3_core(value, offset, mask, **params)
        assert output.shape == expected.shape
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)


GRADCHECK_CASES = {
    "plain": dict(),
    "stride2": dict(stride=2),
    "dilation2": dict(dilation=2, pad=2),
    "remove_center": dict(remove_center=True),
    "kernel5_remove_center": dict(kernel=5, pad=2, remove_center=True),
    "far_outside": dict(offset_range=6.0),
}


@pytest.mark.parametrize("offset_scale", [1.0, 2.0])
@pytest.mark.parametrize("case", sorted(GRADCHECK_CASES))
def test_gradcheck_float64(case, offset_scale):
    value, offset, mask, params = make_inputs(1, 4, 5, 2, 2, dtype=torch.float64, seed=1, **GRADCHECK_CASES[case])
    params["offset_scale"] = offset_scale
    inputs = tuple(t.clone().requires_grad_() for t in (value, offset, mask))
    assert torch.autograd.gradcheck(lambda v, o, m: dcnv3_core(v, o, m, **params), inputs, eps=1e-6, atol=1e-5)


def test_samples_outside_the_image_contribute_zero():
    value, offset, mask, params = make_inputs(1, 4, 4, 1, 2)
    offset = torch.full_like(offset, 100.0)
    assert dcnv3_core(value, offset, mask, **params).abs().max() == 0


def test_zero_offset_uniform_mask_is_box_filter():
    value, offset, mask, params = make_inputs(1, 6, 7, 2, 3)
    output = dcnv3_core(value, torch.zeros_like(offset), torch.full_like(mask, 1 / 9), **params)
    channels_first = value.permute(0, 3, 1, 2)
    box = torch.nn.functional.avg_pool2d(channels_first, 3, stride=1, padding=1, count_include_pad=True)
    torch.testing.assert_close(output, box.permute(0, 2, 3, 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_without_autocast(dtype, atol):
    value, offset, mask, params = make_inputs(2, 9, 8, 4, 8)
    reference = dcnv3_core(value, offset, mask, **params)
    output = dcnv3_core(value.to(dtype), offset.to(dtype), mask.to(dtype), **params)
    assert output.dtype == dtype
    torch.testing.assert_close(output.float(), reference, atol=atol, rtol=atol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_backward(dtype):
    value, offset, mask, params = make_inputs(1, 5, 5, 2, 4)
    inputs = [t.to(dtype).requires_grad_() for t in (value, offset, mask)]
    dcnv3_core(*inputs, **params).sum().backward()
    for tensor in inputs:
        assert tensor.grad.dtype == dtype and torch.isfinite(tensor.grad.float()).all()


@pytest.mark.parametrize("batch", [0, 1, 300])
def test_any_batch_size(batch):
    value, offset, mask, params = make_inputs(batch, 4, 4, 1, 2)
    output = dcnv3_core(value, offset, mask, **params)
    assert output.shape == (batch, 4, 4, 2)
    if batch:
        single = dcnv3_core(value[-1:], offset[-1:], mask[-1:], **params)
        torch.testing.assert_close(output[-1:], single)


def test_non_contiguous_inputs():
    value, offset, mask, params = make_inputs(2, 6, 6, 2, 4)
    expected = dcnv3_core(value, offset, mask, **params)
    strided = [t.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1) for t in (value, offset, mask)]
    assert not strided[0].is_contiguous()
    torch.testing.assert_close(dcnv3_core(*strided, **params), expected)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda v, o, m, p: (v[0], o, m, p), "value"),
        (lambda v, o, m, p: (v[..., :-1], o, m, p), "group \\* group_channels"),
        (lambda v, o, m, p: (v, o[..., :-2], m, p), "offset"),
        (lambda v, o, m, p: (v, o, m[..., :-1], p), "mask"),
        (lambda v, o, m, p: (v, o[:1], m[:1], p), "batch"),
        (lambda v, o, m, p: (v.long(), o, m, p), "floating-point"),
        (lambda v, o, m, p: (v, o, m, {**p, "stride_h": 2}), "output size"),
        (lambda v, o, m, p: (v, o, m, {**p, "group": 0}), "positive"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, message):
    value, offset, mask, params = mutate(*make_inputs(2, 5, 5, 2, 4))
    with pytest.raises((ValueError, TypeError), match=message):
        dcnv3_core(value, offset, mask, **params)


def test_operator_module_starts_on_the_regular_grid():
    """With zero offset/mask weights (the official init) the operator is output_proj(box-filter(input_proj(x)))."""
    config = InternImageConfig(channels=8, groups=(2, 2, 2, 2))
    module = InternImageDCNv3.from_config(config, channels=8, group=2)
    for linear in (module.offset, module.mask):
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
    hidden = torch.randn(2, 5, 6, 8)
    value = module.input_proj(hidden).permute(0, 3, 1, 2)
    box = torch.nn.functional.avg_pool2d(value, 3, stride=1, padding=1, count_include_pad=True)
    expected = module.output_proj(box.permute(0, 2, 3, 1))
    torch.testing.assert_close(module(hidden), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device_type", ["cpu", "meta"])
def test_softmax_over_points_is_a_grouped_softmax(device_type):
    logits = (torch.randn(2, 3, 4, 4 * 9, dtype=torch.float64) * 5).requires_grad_()
    expected = logits.unflatten(-1, (4, 9)).softmax(-1).flatten(-2)
    if device_type == "meta":  # the non-CPU branch (torch.softmax), checked for shape only
        assert softmax_over_points(logits.detach().to("meta"), 4).shape == expected.shape
        return
    weights = softmax_over_points(logits, 4)
    torch.testing.assert_close(weights, expected)
    grad = torch.randn_like(weights)
    (got,) = torch.autograd.grad(weights, logits, grad)
    (want,) = torch.autograd.grad(expected, logits, grad)
    torch.testing.assert_close(got, want)


def test_core_module_normalises_mask_logits():
    value, offset, mask, params = make_inputs(2, 6, 5, 3, 4)
    logits = torch.randn(mask.shape) * 3
    expected = dcnv3_core(value, offset, logits.unflatten(-1, (3, 9)).softmax(-1).flatten(-2), **params)
    torch.testing.assert_close(DCNv3Core()(value, offset, logits, *params.values()), expected)


@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 2)])
def test_traced_core_follows_the_input_size(stride, dilation):
    """`torch.jit.trace` (the TorchScript ONNX exporter) must record the sampling grid and its normaliser as
    shape computations, not as constants of the example size."""
    pad = dilation

    def core(value, offset, mask):
        return dcnv3_core(value, offset, mask, 3, 3, stride, stride, pad, pad, dilation, dilation, 2, 4, 1.5, False)

    def inputs(batch, height, width):
        value, offset, mask, _ = make_inputs(batch, height, width, 2, 4, stride=stride, pad=pad, dilation=dilation)
        return value, offset, mask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the input checks run once, at trace time
        traced = torch.jit.trace(core, inputs(1, 8, 9))
    for shape in [(2, 13, 6), (3, 5, 17)]:
        example = inputs(*shape)
        torch.testing.assert_close(traced(*example), core(*example), atol=1e-6, rtol=0)


OPERATOR_CONFIGS = {
    "t": dict(),
    "l": dict(offset_scale=2.0, layer_scale=1e-5, post_norm=True),
    "h": dict(dw_kernel_size=5, center_feature_scale=True, act_layer="SiLU"),
    "remove_center": dict(remove_center=True, layer_norm_eps=1e-5),
}


@pytest.mark.parametrize("name", sorted(OPERATOR_CONFIGS))
def test_operator_from_plain_arguments_matches_the_models(name):
    """The operator built from plain arguments has the structure and outputs of the one the model builds."""
    config = InternImageConfig(channels=16, depths=(1, 1, 1, 1), groups=(2, 4, 4, 8), **OPERATOR_CONFIGS[name])
    built = InternImageModel(config).encoder.stages[1].layers[0].dcn
    plain = InternImageDCNv3(
        channels=32,
        kernel_size=3,
        dw_kernel_size=config.dw_kernel_size,
        stride=1,
        pad=1,
        dilation=1,
        group=4,
        offset_scale=config.offset_scale,
        act_layer=config.act_layer,
        norm_layer="LN",
        layer_norm_eps=config.layer_norm_eps,
        center_feature_scale=config.center_feature_scale,
        remove_center=config.remove_center,
    )
    assert [(n, type(m).__name__) for n, m in plain.named_modules()] == [
        (n, type(m).__name__) for n, m in built.named_modules()
    ]
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    assert plain.depthwise_norm.eps == built.depthwise_norm.eps == config.layer_norm_eps
    assert plain.points == built.points == 9 - int(config.remove_center)
    generator = torch.Generator().manual_seed(0)
    plain.load_state_dict({k: torch.randn(v.shape, generator=generator) for k, v in built.state_dict().items()})
    built.load_state_dict(plain.state_dict())
    hidden = torch.randn(2, 7, 6, 32, generator=generator)
    torch.testing.assert_close(plain(hidden), built(hidden), atol=0, rtol=0)
    from_config = InternImageDCNv3.from_config(config, channels=32, group=4)
    from_config.load_state_dict(plain.state_dict())
    torch.testing.assert_close(from_config(hidden), built(hidden), atol=0, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(channels=10, group=4), "`group` \\(4\\) must divide `channels` \\(10\\)"),
        (dict(channels=0), "`channels` must be a positive int"),
        (dict(kernel_size=2.0), "`kernel_size` must be a positive int"),
        (dict(stride=2), "stride=1"),
        (dict(pad=0), "2 \\* pad == dilation \\* \\(kernel_size - 1\\)"),
        (dict(kernel_size=4), "kernel_size=4"),
        (dict(dw_kernel_size=4), "`dw_kernel_size` must be odd"),
        (dict(act_layer="gelu"), "`act_layer` must be one of"),
        (dict(norm_layer="BN"), "`norm_layer` must be 'LN'"),
    ],
)
def test_operator_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InternImageDCNv3(**{"channels": 16, "group": 4, **kwargs})


def test_as_rows_views_a_channels_last_convolution_output_and_normalises_alike():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8).to(memory_format=torch.channels_last)
    hidden = conv(torch.randn(2, 5, 6, 8).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    rows = as_rows(hidden)
    assert rows.shape == (60, 8)
    assert rows.data_ptr() == hidden.data_ptr()  # a view: no copy in eager mode
    norm = torch.nn.LayerNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    torch.testing.assert_close(norm(rows).view(hidden.shape), norm(hidden), rtol=0, atol=1e-6)


def test_operator_with_dilation_keeps_the_spatial_size():
    module = InternImageDCNv3(channels=8, kernel_size=5, dilation=2, group=2, remove_center=True)
    assert (module.pad, module.points) == (4, 24)
    assert module(torch.randn(1, 9, 10, 8)).shape == (1, 9, 10, 8)


# ------------------------------------------------------------------------- torch.compile: the core as an opaque op

COMPILE_ARGS = (3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 2.0, False)


def test_compile_op_passes_opcheck():
    from internimage_hf.ops.dcnv3 import _dcnv3_softmax_core_op

    torch.manual_seed(0)
    tensors = [torch.randn(1, 5, 6, c, dtype=torch.float64, requires_grad=True) for c in (8, 36, 18)]
    torch.library.opcheck(_dcnv3_softmax_core_op, (*tensors, *COMPILE_ARGS))


def test_compiled_model_runs_the_core_as_one_op_with_eager_outputs_and_gradients():
    from torch._dynamo.testing import EagerAndRecordGraphs

    torch.manual_seed(0)
    config = InternImageConfig(channels=16, depths=[1, 1, 2, 1], groups=[1, 2, 4, 8], drop_path_rate=0.0)
    model = InternImageModel(config)
    for parameter in model.parameters():  # non-zero offsets and weights: points off the regular grid
        torch.nn.init.normal_(parameter, std=0.05)
    pixel_values = torch.randn(2, 3, 64, 48)
    expected = model(pixel_values).last_hidden_state
    expected_grads = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    graphs = EagerAndRecordGraphs()
    compiled = torch.compile(model, backend=graphs, fullgraph=True)
    output = compiled(pixel_values).last_hidden_state
    grads = torch.autograd.grad(output.square().sum(), list(model.parameters()))
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=0)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)
    code = graphs.graphs[0].code
    assert code.count("internimage_hf.dcnv3_softmax_core") == sum(config.depths)
    assert "grid_sample" not in code
