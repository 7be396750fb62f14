"""The kernel's CPU layers `InternImageMLP`, `InternImageDCNv3` and `FlashInternImageDCNv4` (oneDNN fused linears)
against the model's own modules."""

from __future__ import annotations

import copy
import logging
import types

import pytest
import torch

from internimage_hf import InternImageConfig, hub_kernels
from internimage_hf.hub_kernels import kernelizing
from internimage_hf.models.internimage.modeling_internimage import InternImageMLP
from internimage_hf.ops.dcnv3 import InternImageDCNv3
from internimage_hf.ops.dcnv4 import FlashInternImageDCNv4


def mlp(act_layer: str = "GELU", channels: int = 24, drop_rate: float = 0.0) -> InternImageMLP:
    torch.manual_seed(0)
    config = InternImageConfig(act_layer=act_layer, drop_rate=drop_rate)
    module = InternImageMLP(config, channels).eval()
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    return module


def with_kernel_forward(module: InternImageMLP, kernel) -> InternImageMLP:
    """The module with its forward replaced the way ``kernels.kernelize`` does it."""
    module.forward = types.MethodType(kernel.layers.InternImageMLP.forward, module)
    return module


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the oneDNN fused linear op."""
    calls = []
    op = torch.ops.mkldnn._linear_pointwise

    def counting(*args):
        calls.append(args[3])
        return op(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counting)
    return calls


@pytest.mark.parametrize(("act_layer", "post_op"), [("GELU", "gelu"), ("ReLU", "relu"), ("SiLU", "swish")])
def test_fused_inference_matches_the_model_mlp(dcnv3_kernel, fused_calls, act_layer, post_op):
    reference = mlp(act_layer)
    fused = with_kernel_forward(mlp(act_layer), dcnv3_kernel)
    hidden = torch.randn(2, 7, 5, 24)
    with torch.no_grad():
        expected = reference(hidden)
        out = fused(hidden)
    assert fused_calls == [post_op, "none"]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_fused_path_takes_strided_channels_last_views(dcnv3_kernel, fused_calls):
    hidden = torch.randn(2, 24, 7, 5).permute(0, 2, 3, 1)  # an NCHW tensor seen as (N, H, W, C)
    with torch.inference_mode():
        out = with_kernel_forward(mlp(), dcnv3_kernel)(hidden)
        expected = mlp()(hidden)
    assert len(fused_calls) == 2
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_gradients_take_the_plain_path(dcnv3_kernel, fused_calls):
    reference, fused = mlp(), with_kernel_forward(mlp(), dcnv3_kernel)
    hidden = torch.randn(3, 4, 4, 24)
    grads = []
    for module in (reference, fused):
        leaf = hidden.clone().requires_grad_()
        module(leaf).square().sum().backward()
        grads.append((leaf.grad, module.fc1.weight.grad))
    assert fused_calls == []
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("case", ["training_dropout", "bfloat16", "tanh_gelu", "autocast"])
def test_unfusable_cases_keep_the_module_semantics(dcnv3_kernel, fused_calls, case):
    module = mlp(drop_rate=0.5 if case == "training_dropout" else 0.0)
    hidden = torch.randn(2, 3, 3, 24)
    if case == "training_dropout":
        module.train()
    if case == "bfloat16":
        module, hidden = module.to(torch.bfloat16), hidden.to(torch.bfloat16)
    if case == "tanh_gelu":
        module.act = torch.nn.GELU(approximate="tanh")
    fused = with_kernel_forward(copy.deepcopy(module), dcnv3_kernel)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        torch.manual_seed(1)
        expected = module(hidden)
        torch.manual_seed(1)
        out = fused(hidden)
    assert fused_calls == []
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out, expected)


def test_kernel_mapping_serves_the_mlp_on_cpu_only():
    source = hub_kernels.resolve_kernel_source(local_path="/nonexistent/kernel")
    pytest.importorskip("kernels")
    cuda = kernelizing._kernel_mapping(source, ("cuda",))
    assert set(cuda[hub_kernels.DCNV3_LAYER_NAME]) == {"cuda"}
    assert cuda[hub_kernels.MLP_LAYER_NAME] == {}
    both = kernelizing._kernel_mapping(source, ("cuda", "cpu"))
    assert set(both[hub_kernels.MLP_LAYER_NAME]) == {"cpu"}
    assert both[hub_kernels.MLP_LAYER_NAME]["cpu"].layer_name == hub_kernels.MLP_LAYER_NAME
    for operator_layer in (hub_kernels.OPERATOR_LAYER_NAME, hub_kernels.FLASH_OPERATOR_LAYER_NAME):
        assert cuda[operator_layer] == {}
        assert set(both[operator_layer]) == {"cpu"}
        assert both[operator_layer]["cpu"].layer_name == operator_layer


def test_mlp_without_a_device_entry_keeps_its_forward(caplog):
    """What `kernelize` on CUDA does with the MLPs: the mapping has no cuda entry, kernels keeps the plain forward."""
    kernels = pytest.importorskip("kernels")
    module = mlp()
    mapping = kernelizing._kernel_mapping(hub_kernels.resolve_kernel_source(local_path="/nonexistent"), ("cuda",))
    with (
        caplog.at_level(logging.WARNING),
        kernels.use_kernel_mapping(
            {hub_kernels.MLP_LAYER_NAME: mapping[hub_kernels.MLP_LAYER_NAME]}, inherit_mapping=False
        ),
    ):
        kernels.kernelize(module, mode=kernels.Mode.INFERENCE, device="cuda")
    assert not kernelizing._runs_kernel(module)
    assert not caplog.records


# ------------------------------------------------------------------------------------- the DCNv3 operator layer

OPERATOR_VARIANTS = {
    "t": {},
    "h_style": {"center_feature_scale": True, "dw_kernel_size": 5},
    "remove_center_scale2": {"remove_center": True, "offset_scale": 2.0, "act_layer": "SiLU"},
}


def operator(variant: str = "t", channels: int = 32, group: int = 4) -> InternImageDCNv3:
    torch.manual_seed(0)
    module = InternImageDCNv3(channels=channels, group=group, **OPERATOR_VARIANTS[variant]).eval()
    for parameter in module.parameters():  # offsets of a few pixels, uneven point weights
        torch.nn.init.normal_(parameter, std=0.2)
    return module


def with_core_kernel(module: InternImageDCNv3, kernel) -> InternImageDCNv3:
    module.core.forward = types.MethodType(kernel.layers.DCNv3Core.forward, module.core)
    return module


def with_operator_kernel(module: InternImageDCNv3, kernel) -> InternImageDCNv3:
    module.forward = types.MethodType(kernel.layers.InternImageDCNv3.forward, module)
    return with_core_kernel(module, kernel)


@pytest.fixture
def query_calls(dcnv3_kernel, monkeypatch):
    """Activations passed to the kernel's fused depthwise conv + LayerNorm + activation op."""
    calls = []
    op = dcnv3_kernel.layers.depthwise_norm_act

    def counting(*args):
        calls.append(args[-1])
        return op(*args)

    monkeypatch.setattr(dcnv3_kernel.layers, "depthwise_norm_act", counting)
    return calls


@pytest.mark.parametrize("variant", sorted(OPERATOR_VARIANTS))
def test_operator_inference_matches_the_model_operator(dcnv3_kernel, fused_calls, query_calls, variant):
    reference = operator(variant)
    fused = with_operator_kernel(operator(variant), dcnv3_kernel)
    hidden = torch.randn(2, 9, 7, 32).permute(0, 2, 1, 3)  # a strided channels-last view, as stages hand it over
    with torch.no_grad():
        expected = reference(hidden)
        out = fused(hidden)
    assert fused_calls == ["none"] * 4  # input_proj, offset, mask, output_proj
    assert query_calls == ["silu" if variant == "remove_center_scale2" else "gelu"]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_operator_with_tanh_gelu_keeps_the_separate_query_modules(dcnv3_kernel, fused_calls, query_calls):
    reference = operator()
    reference.depthwise_act = torch.nn.GELU(approximate="tanh")
    fused = with_operator_kernel(copy.deepcopy(reference), dcnv3_kernel)
    hidden = torch.randn(2, 5, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(hidden), reference(hidden), atol=1e-5, rtol=1e-5)
    assert query_calls == [] and fused_calls == ["none"] * 4


@pytest.mark.parametrize("case", ["gradients", "bfloat16", "autocast"])
def test_operator_keeps_the_module_path_when_onednn_would_differ(dcnv3_kernel, fused_calls, query_calls, case):
    reference = with_core_kernel(operator("h_style"), dcnv3_kernel)  # the same core: only the path may differ
    fused = with_operator_kernel(operator("h_style"), dcnv3_kernel)
    assert_module_path(reference, fused, case, lambda module: module.offset.weight)
    assert fused_calls == [] and query_calls == []


def assert_module_path(reference: torch.nn.Module, fused: torch.nn.Module, case: str, weight) -> None:
    """`fused` (kernel layer) computes exactly what `reference` (the module's own path, same core) does in `case`
    ("gradients": also the gradient of `weight(module)`; "bfloat16", "autocast": those dtypes)."""
    hidden = torch.randn(2, 6, 5, 32)
    if case == "bfloat16":
        reference, fused, hidden = reference.bfloat16(), fused.bfloat16(), hidden.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        outputs = [module(hidden.clone().requires_grad_(case == "gradients")) for module in (reference, fused)]
    torch.testing.assert_close(outputs[1], outputs[0], atol=0, rtol=0)
    if case == "gradients":
        grads = [torch.autograd.grad(out.square().sum(), weight(module))[0]
                 for out, module in zip(outputs, (reference, fused), strict=True)]  # fmt: skip
        torch.testing.assert_close(grads[1], grads[0], atol=0, rtol=0)


def test_kernelize_serves_the_operator_on_cpu(cpu_kernel_build, fused_calls):
    pytest.importorskip("kernels")
    from internimage_hf import InternImageForImageClassification, kernelize

    config = InternImageConfig(channels=16, depths=[1, 1, 2, 1], groups=[1, 2, 4, 8], num_labels=3)
    torch.manual_seed(0)
    model = InternImageForImageClassification(config).eval()
    assert_kernelize_serves(model, InternImageDCNv3, cpu_kernel_build, kernelize)
    assert fused_calls.count("none") == 4 * 5 + 5  # four linears per operator, fc2 of every MLP


def assert_kernelize_serves(model, operator_class, cpu_kernel_build, kernelize) -> None:
    """`kernelize` runs the kernel layer for each of the 5 `operator_class` modules of `model` (a tiny classifier
    with 5 blocks) and leaves its logits as they were."""
    reference = copy.deepcopy(model)
    kernelize(model, mode="inference", local_path=cpu_kernel_build.root)
    operators = [m for m in model.modules() if isinstance(m, operator_class)]
    assert len(operators) == 5 and all(kernelizing._runs_kernel(m) for m in operators)
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, reference(pixel_values).logits, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- the FlashInternImage DCNv4 layer

FLASH_OPERATOR_VARIANTS = {
    "t": {"output_bias": False},  # FlashInternImage-T: no depthwise convolution, no output bias
    "l_style": {"dw_kernel_size": 3, "offset_scale": 2.0},
    "remove_center": {"remove_center": True, "group": 2, "offset_scale": 0.5},
}


def flash_operator(variant: str = "t", channels: int = 32, **options) -> FlashInternImageDCNv4:
    torch.manual_seed(0)
    options = {"group": 4, **FLASH_OPERATOR_VARIANTS[variant], **options}
    module = FlashInternImageDCNv4(channels=channels, **options).eval()
    for parameter in module.parameters():  # offsets of a few pixels, uneven unnormalised point weights
        torch.nn.init.normal_(parameter, std=0.2)
    return module


def with_flash_operator_kernel(module: FlashInternImageDCNv4, kernel) -> FlashInternImageDCNv4:
    module.forward = types.MethodType(kernel.layers.FlashInternImageDCNv4.forward, module)
    module.core.forward = types.MethodType(kernel.layers.DCNv4Core.forward, module.core)
    return module


@pytest.mark.parametrize("variant", sorted(FLASH_OPERATOR_VARIANTS))
def test_flash_operator_inference_matches_the_model_operator(dcnv3_kernel, fused_calls, variant):
    reference = flash_operator(variant)  # the portable DCNv4 core and nn.Linear projections
    fused = with_flash_operator_kernel(flash_operator(variant), dcnv3_kernel)
    hidden = torch.randn(2, 9, 7, 32).permute(0, 2, 1, 3)  # a strided channels-last view, as stages hand it over
    with torch.no_grad():
        expected = reference(hidden)
        out = fused(hidden)
    assert fused_calls == ["none"] * 3  # value_proj, offset_mask, output_proj
    assert expected.abs().max() > 0.1  # the samples are not all in the zero padding
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["gradients", "bfloat16", "autocast", "center_feature_scale"])
def test_flash_operator_keeps_the_module_path_when_onednn_would_differ(dcnv3_kernel, fused_calls, case):
    # The centre-feature gate is an option of the module that no official model enables.
    gate = {"center_feature_scale": case == "center_feature_scale"}
    reference = flash_operator("l_style", **gate)
    reference.core.forward = types.MethodType(dcnv3_kernel.layers.DCNv4Core.forward, reference.core)
    fused = with_flash_operator_kernel(flash_operator("l_style", **gate), dcnv3_kernel)
    assert_module_path(reference, fused, case, lambda module: module.offset_mask.weight)
    assert fused_calls == []


def test_kernelize_serves_the_flash_operator_on_cpu(cpu_kernel_build, fused_calls):
    pytest.importorskip("kernels")
    from internimage_hf import FlashInternImageConfig, FlashInternImageForImageClassification, kernelize

    config = FlashInternImageConfig(channels=16, depths=[1, 1, 2, 1], groups=[1, 2, 4, 8], num_labels=3)
    torch.manual_seed(0)
    model = FlashInternImageForImageClassification(config).eval()
    with torch.no_grad():  # the official init zeroes the offsets and weights: give them something to sample
        for module in model.modules():
            if isinstance(module, FlashInternImageDCNv4):
                module.offset_mask.weight.normal_(std=0.1)
                module.offset_mask.bias.normal_(std=0.3)
    assert_kernelize_serves(model, FlashInternImageDCNv4, cpu_kernel_build, kernelize)
    assert fused_calls.count("none") == 3 * 5 + 5  # three linears per operator, fc2 of every MLP
