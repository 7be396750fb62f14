"""InternImage models running their DCNv3 cores on the built kernel (CPU build)."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_classifier import tiny_model

from internimage_hf import (
    InternImageConfig,
    InternImageForImageClassification,
    convert_official_state_dict,
    hub_kernels,
)
from internimage_hf.hub_kernels import kernelizing
from internimage_hf.models.internimage.modeling_internimage import InternImageMLP

LOGIT_ATOL = 1e-4


@pytest.fixture(autouse=True)
def _kernels_and_clean_env(monkeypatch):
    pytest.importorskip("kernels", reason="the `kernels` package is not installed")
    monkeypatch.delenv(hub_kernels.KERNEL_ENV, raising=False)
    monkeypatch.delenv(hub_kernels.REVISION_ENV, raising=False)


def golden_model(golden) -> InternImageForImageClassification:
    model = InternImageForImageClassification(InternImageConfig(**golden.model_kwargs)).eval()
    model.load_state_dict(convert_official_state_dict(golden.state_dict), strict=True)
    return model


@torch.no_grad()
def test_golden_logits_through_kernel(golden, cpu_kernel_build):
    model = hub_kernels.kernelize(golden_model(golden), local_path=cpu_kernel_build.variant_dir)
    assert hub_kernels.dcnv3_backend(model) == f"local:{cpu_kernel_build.variant_dir}"
    assert model.dcnv3_backend == hub_kernels.dcnv3_backend(model)
    # on CPU the MLPs run the kernel's fused oneDNN layer too (float32, no gradients here)
    mlps = [module for module in model.modules() if isinstance(module, InternImageMLP)]
    assert mlps and all(kernelizing._runs_kernel(module) for module in mlps)
    outputs = model(golden.input, output_hidden_states=True)
    torch.testing.assert_close(outputs.logits, golden.logits, atol=LOGIT_ATOL, rtol=0)
    for produced, expected in zip(outputs.hidden_states[1:], golden.stage_outputs, strict=True):
        torch.testing.assert_close(produced, expected, atol=LOGIT_ATOL, rtol=0)


def test_training_step_through_kernel_matches_pytorch(cpu_kernel_build):
    reference, kernelized = tiny_model().train(), tiny_model().train()
    hub_kernels.kernelize(kernelized, local_path=cpu_kernel_build.variant_dir)
    assert hub_kernels.dcnv3_backend(kernelized).startswith("local:")
    pixels = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([0, 2])
    losses = []
    for model in (reference, kernelized):
        loss = model(pixels, labels=labels).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=0)
    for (name, p_ref), (_, p_ker) in zip(reference.named_parameters(), kernelized.named_parameters(), strict=True):
        if p_ref.grad is not None:
            torch.testing.assert_close(p_ker.grad, p_ref.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_torch_compile_fullgraph_tiny_model(cpu_kernel_build):
    import kernels

    model = tiny_model()
    mode = kernels.Mode.INFERENCE | kernels.Mode.TORCH_COMPILE
    hub_kernels.kernelize(model, mode=mode, local_path=cpu_kernel_build.variant_dir)
    assert hub_kernels.dcnv3_backend(model).startswith("local:")
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eager = model(pixels).logits
        torch._dynamo.reset()
        # aot_eager runs dynamo + AOTAutograd with the fake kernels; a graph break would raise (fullgraph)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(pixels).logits, eager, atol=1e-5, rtol=1e-5)


def test_torch_compile_keeps_the_onednn_linears(cpu_kernel_build):
    """Under torch.compile the kernel layers still call oneDNN's linear (which inductor keeps as one external call)
    for the operator's four projections and both MLP linears, instead of leaving `nn.Linear` to the compiler."""
    model = tiny_model()
    hub_kernels.kernelize(model, mode="inference", local_path=cpu_kernel_build.variant_dir)
    graphs = []

    def capture(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eager = model(pixels).logits
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend=capture)
        torch.testing.assert_close(compiled(pixels).logits, eager, atol=1e-5, rtol=1e-5)
    targets = [node.target for graph in graphs for node in graph.graph.nodes if node.op == "call_function"]
    blocks = sum(model.config.depths)
    assert targets.count(torch.ops.mkldnn._linear_pointwise) == 6 * blocks
    # `nn.Linear` is left only for the classifier head (and there is no separate activation of the MLP's fc1).
    assert targets.count(torch._C._nn.linear) == 1


@torch.no_grad()
def test_dino_detector_kernelizes_quietly(cpu_kernel_build, caplog):
    """`kernelize` on a whole DINO detector runs its backbone's DCNv3 and Transformers' deformable attention on the
    kernel without a "No kernel mapping" warning, and changes no output beyond float rounding."""
    from internimage_hf import DinoDetrConfig, DinoDetrForObjectDetection

    backbone = {
        "model_type": "internimage",
        "channels": 16,
        "depths": [1, 1, 2, 1],
        "groups": [1, 2, 4, 8],
        "out_features": ["stage2", "stage3", "stage4"],
    }
    torch.manual_seed(0)
    config = DinoDetrConfig(
        backbone_config=backbone, num_queries=30, d_model=32, neck_norm_groups=8, encoder_ffn_dim=64, decoder_ffn_dim=64
    )
    detector = DinoDetrForObjectDetection(config).eval()
    pixel_values = torch.randn(1, 3, 128, 160)
    expected = detector(pixel_values)
    with caplog.at_level(logging.WARNING):
        hub_kernels.kernelize(detector, local_path=cpu_kernel_build.variant_dir)
    assert hub_kernels.dcnv3_backend(detector) == f"local:{cpu_kernel_build.variant_dir}"
    attention = [m for m in detector.modules() if type(m).__name__ == hub_kernels.MSDA_LAYER_NAME]
    assert len(attention) == 12 and all(kernelizing._runs_kernel(m) for m in attention)  # 6 encoder + 6 decoder
    assert not [record for record in caplog.records if "No kernel mapping" in record.getMessage()]
    produced = detector(pixel_values)
    torch.testing.assert_close(produced.logits, expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(produced.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=0)
