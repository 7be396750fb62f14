"""The kernel's fused `depthwise_norm_act` op (CPU, float32) against the separate PyTorch modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU(), "relu": nn.ReLU(), "silu": nn.SiLU()}


def modules(channels: int, kernel: int, seed: int = 0) -> tuple[nn.Conv2d, nn.LayerNorm]:
    torch.manual_seed(seed)
    conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)
    norm = nn.LayerNorm(channels, eps=1e-6)
    nn.init.normal_(norm.weight, 1.0, 0.5)
    nn.init.normal_(norm.bias, 0.0, 0.5)
    return conv, norm


def reference(hidden, conv, norm, activation):
    query = conv(hidden.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return ACTIVATIONS[activation](norm(query))


def fused(kernel, hidden, conv, norm, activation):
    return kernel.depthwise_norm_act(hidden, conv.weight, conv.bias, norm.weight, norm.bias, norm.eps, activation)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize(
    ("shape", "kernel_size"),
    [
        ((2, 9, 7, 32), 3),  # unrolled 3x3 taps, channels a multiple of the 8 lanes
        ((1, 6, 5, 20), 5),  # unrolled 5x5 taps, a channel remainder in the LayerNorm sums
        ((3, 4, 8, 12), 7),  # taps counted at run time
        ((1, 2, 1, 16), 5),  # every tap of every pixel near the border
    ],
)
@torch.no_grad()
def test_matches_the_separate_modules(dcnv3_kernel, activation, shape, kernel_size):
    conv, norm = modules(shape[-1], kernel_size)
    hidden = torch.randn(shape) * 2
    out = fused(dcnv3_kernel, hidden, conv, norm, activation)
    assert out.shape == hidden.shape and out.is_contiguous()
    torch.testing.assert_close(out, reference(hidden, conv, norm, activation), atol=2e-6, rtol=1e-5)


@torch.no_grad()
def test_gelu_follows_the_exact_erf_form_over_its_range(dcnv3_kernel):
    # LayerNorm output x * 1 + t with one tap of weight 1: the activation sees t + normalised x; a wide sweep of t.
    conv, norm = modules(8, 1)
    conv.weight.fill_(1.0)
    conv.bias.zero_()
    norm.weight.fill_(1e-3)
    norm.bias.copy_(torch.linspace(-9, 9, 8))
    hidden = torch.randn(4, 16, 16, 8)
    out = fused(dcnv3_kernel, hidden, conv, norm, "gelu")
    torch.testing.assert_close(out, reference(hidden, conv, norm, "gelu"), atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_strided_input_and_thread_count_give_the_same_bits(dcnv3_kernel):
    conv, norm = modules(24, 3)
    hidden = torch.randn(3, 11, 13, 24)
    expected = fused(dcnv3_kernel, hidden, conv, norm, "gelu")
    torch.testing.assert_close(
        fused(dcnv3_kernel, hidden.transpose(1, 2).contiguous().transpose(1, 2), conv, norm, "gelu"),
        expected,
        atol=0,
        rtol=0,
    )
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 4):
            torch.set_num_threads(count)
            torch.testing.assert_close(fused(dcnv3_kernel, hidden, conv, norm, "gelu"), expected, atol=0, rtol=0)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def test_nan_reaches_exactly_the_pixels_whose_taps_see_it(dcnv3_kernel):
    conv, norm = modules(16, 3)
    hidden = torch.randn(1, 6, 6, 16)
    hidden[0, 2, 3, 5] = float("nan")
    out = fused(dcnv3_kernel, hidden, conv, norm, "gelu")
    expected = reference(hidden, conv, norm, "gelu")
    assert torch.equal(out.isnan(), expected.isnan())
    assert out.isnan().any(dim=-1).sum() == 9  # the 3x3 neighbourhood, every channel (the LayerNorm mixes them)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "input": a["input"].double()}, "`input` must be a float32 CPU tensor"),
        (lambda a: {**a, "input": a["input"][0]}, "`input` must be a 4-D"),
        (lambda a: {**a, "conv_weight": a["conv_weight"][:, :, :2, :2]}, "odd k"),
        (lambda a: {**a, "conv_weight": a["conv_weight"][:4]}, "`conv_weight` must have shape"),
        (lambda a: {**a, "conv_bias": a["conv_bias"][:4]}, "`conv_bias` must have shape"),
        (lambda a: {**a, "norm_weight": a["norm_weight"].double()}, "`norm_weight` is Double"),
        (lambda a: {**a, "norm_bias": a["norm_bias"][None]}, "`norm_bias` must have shape"),
        (lambda a: {**a, "eps": -1.0}, "`eps` must be non-negative"),
        (lambda a: {**a, "activation": "tanh"}, "`activation` must be 'gelu', 'relu' or 'silu'"),
    ],
)
def test_bad_arguments_are_named(dcnv3_kernel, change, message):
    conv, norm = modules(8, 3)
    arguments = {"input": torch.randn(2, 5, 5, 8), "conv_weight": conv.weight.detach(), "conv_bias": conv.bias.detach(),
                 "norm_weight": norm.weight.detach(), "norm_bias": norm.bias.detach(), "eps": 1e-6,
                 "activation": "gelu"}  # fmt: skip
    with pytest.raises(RuntimeError, match=message):
        dcnv3_kernel.depthwise_norm_act(**change(arguments))


def test_traces_under_torch_compile(dcnv3_kernel):
    conv, norm = modules(16, 3)
    hidden = torch.randn(2, 7, 7, 16)

    def query(hidden):
        return fused(dcnv3_kernel, hidden, conv, norm, "silu") * 2

    with torch.no_grad():
        compiled = torch.compile(query, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(hidden), query(hidden), atol=0, rtol=0)


def test_opcheck(dcnv3_kernel):
    conv, norm = modules(16, 3)
    arguments = (torch.randn(2, 5, 6, 16), conv.weight.detach(), conv.bias.detach(), norm.weight.detach(),
                 norm.bias.detach(), 1e-6, "gelu")  # fmt: skip
    # No autograd formula on purpose (inference only): the schema, fake impl and dispatch are what is checked.
    torch.library.opcheck(
        dcnv3_kernel._ops.ops.depthwise_norm_act.default,
        arguments,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static", "test_aot_dispatch_dynamic"),
    )
