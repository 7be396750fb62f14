"""FlashInternImage models: parity with the official implementation through the converter, outputs, training
features, Auto classes and the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flash_cases import FLASH_NAMES, FlashCase
from PIL import Image
from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification, pipeline

# The top-level name is a placeholder without torchvision in transformers < 5.5; the module is always real.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from internimage_hf import (
    FlashInternImageBackbone,
    FlashInternImageConfig,
    FlashInternImageDCNv4,
    FlashInternImageForImageClassification,
    FlashInternImageModel,
    InternImageImageProcessorPil,
    convert_official_state_dict,
    dcnv4_core,
)
from internimage_hf.conversion.pipeline import convert_checkpoint
from internimage_hf.models.internimage.modeling_internimage import InternImageMLP

LOGIT_ATOL = 1e-4  # fp32 parity of logits, stage outputs and feature maps
OP_ATOL = 1e-5  # the DCNv4 core alone
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def tiny_config(**overrides) -> FlashInternImageConfig:
    kwargs = dict(channels=32, depths=(1, 1, 2, 1), groups=(2, 2, 4, 4), num_labels=3, drop_path_rate=0.0)
    return FlashInternImageConfig(**{**kwargs, **overrides})


@pytest.fixture(scope="module", params=FLASH_NAMES)
def case(request) -> FlashCase:
    return FlashCase.load(request.param)


def official_config_file(case: FlashCase, directory: Path) -> Path:
    """The official constructor kwargs as a config file (the converter reads `core_op="DCNv4"` as FlashInternImage)."""
    path = directory / "config.json"
    path.write_text(json.dumps(case.metadata["model_kwargs"]))
    return path


def convert(case: FlashCase, checkpoint: dict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "official.pth"
    torch.save(checkpoint, path)
    output = directory / "converted"
    result = convert_checkpoint(
        path, output, config_file=official_config_file(case, directory), verify=True, verify_size=64,
        log=lambda message: None,
    )  # fmt: skip
    assert result.max_abs_diff is not None and result.max_abs_diff <= LOGIT_ATOL
    return output


# ---------------------------------------------------------------------------------------------------- parity


@torch.no_grad()
def test_classifier_converted_from_the_official_pth_matches_the_official_outputs(case, tmp_path):
    output = convert(case, {"model": case.state_dict, "epoch": 299}, tmp_path)
    model = AutoModelForImageClassification.from_pretrained(output).eval()
    assert type(model) is FlashInternImageForImageClassification
    outputs = model(case.input, output_hidden_states=True)
    torch.testing.assert_close(outputs.logits, case.logits, atol=LOGIT_ATOL, rtol=0)
    for produced, expected in zip(outputs.hidden_states[1:], case.stage_outputs, strict=True):
        torch.testing.assert_close(produced, expected, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_backbone_converted_from_an_mmdet_checkpoint_matches_the_official_stage_outputs(case, tmp_path):
    weights = {"backbone." + k: v for k, v in case.backbone_state_dict.items()}
    weights["neck.fpn_convs.0.conv.weight"] = torch.zeros(4, 4, 3, 3)  # a detector part, left out
    output = convert(case, {"state_dict": weights, "meta": {"epoch": 12}}, tmp_path)
    assert type(AutoConfig.from_pretrained(output)) is FlashInternImageConfig
    backbone = FlashInternImageBackbone.from_pretrained(output).eval()
    assert backbone.config.out_features == STAGES
    for produced, expected in zip(backbone(case.input).feature_maps, case.stage_outputs, strict=True):
        torch.testing.assert_close(produced, expected, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_dcnv4_core_matches_the_fixture_op_cases(case):
    """The op cases were computed by the fixture's `op_backend` (the official kernel for the committed fixtures)."""
    assert case.metadata["op_backend"] in ("official", "portable-fallback")
    for params, value, offset_mask, expected in case.op_cases:
        scalars = {k: v for k, v in params.items() if k not in ("im2col_step", "d_stride", "block_thread", "softmax")}
        torch.testing.assert_close(dcnv4_core(value, offset_mask, **scalars), expected, atol=OP_ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------- architecture


def test_official_bias_flags_decide_the_bias_parameters():
    plain = FlashInternImageModel(tiny_config()).encoder.stages[0].layers[0]
    assert plain.mlp.fc2.bias is None and plain.dcn.output_proj.bias is None and plain.dcn.depthwise_conv is None
    large = FlashInternImageModel(tiny_config(mlp_fc2_bias=True, dcn_output_bias=True, dw_kernel_size=3))
    layer = large.encoder.stages[0].layers[0]
    assert isinstance(layer.mlp, InternImageMLP) and isinstance(layer.dcn, FlashInternImageDCNv4)
    assert layer.mlp.fc2.bias is not None and layer.dcn.output_proj.bias is not None
    assert layer.dcn.depthwise_conv.kernel_size == (3, 3) and layer.dcn.depthwise_conv.groups == 32
    # 2 groups x 9 points x 3 = 54 columns, rounded up to 56 as the official projection
    assert layer.dcn.offset_mask.out_features == 56 and not hasattr(layer.dcn, "center_feature_scale_proj_weight")


def test_center_feature_scale_keeps_the_stage_norm_under_post_norm_only():
    """As in the official code: the flag only keeps each stage's final LayerNorm; DCNv4 gets no gate."""
    post_norm = FlashInternImageModel(tiny_config(post_norm=True, layer_scale=1.0))
    with_scale = FlashInternImageModel(tiny_config(post_norm=True, layer_scale=1.0, center_feature_scale=True))
    assert not post_norm.encoder.stages[0].use_norm and with_scale.encoder.stages[0].use_norm
    assert not with_scale.encoder.stages[0].layers[0].dcn.center_feature_scale


def test_fresh_weights_follow_the_official_initialisation():
    torch.manual_seed(0)
    layer = FlashInternImageModel(tiny_config(dw_kernel_size=3, dcn_output_bias=True)).encoder.stages[1].layers[0]
    dcn = layer.dcn
    assert torch.count_nonzero(dcn.offset_mask.weight) == 0 and torch.count_nonzero(dcn.offset_mask.bias) == 0
    for linear in (dcn.value_proj, dcn.output_proj):  # Xavier uniform: bound sqrt(6 / (fan_in + fan_out))
        bound = (6 / (2 * linear.in_features)) ** 0.5
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.9 * bound
        assert torch.count_nonzero(linear.bias) == 0
    assert 0.015 < layer.mlp.fc1.weight.std() < 0.025  # truncated normal, std 0.02


# ---------------------------------------------------------------------------------------------------- outputs


@torch.no_grad()
def test_output_shapes_hidden_states_and_tuples():
    model = FlashInternImageModel(tiny_config()).eval()
    pixels = torch.randn(2, 3, 64, 96)
    outputs = model(pixels, output_hidden_states=True)
    assert outputs.last_hidden_state.shape == (2, 256, 2, 3) and outputs.pooler_output.shape == (2, 256)
    assert [h.shape[1:] for h in outputs.hidden_states] == [(32, 16, 24), (32, 16, 24), (64, 8, 12), (128, 4, 6),
                                                            (256, 2, 3)]  # fmt: skip
    assert outputs.hidden_states[1].is_contiguous(memory_format=torch.channels_last)  # NCHW views, as InternImage
    as_tuple = model(pixels, return_dict=False)
    assert len(as_tuple) == 2 and torch.equal(as_tuple[0], outputs.last_hidden_state)
    classifier = FlashInternImageForImageClassification(tiny_config()).eval()
    loss, logits = classifier(pixels, labels=torch.tensor([0, 2]), return_dict=False)
    assert logits.shape == (2, 3) and loss.ndim == 0


def test_backbone_out_features_and_channels():
    backbone = FlashInternImageBackbone(tiny_config(out_features=["stem", "stage2", "stage4"])).eval()
    assert backbone.channels == [32, 64, 256]
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 64), output_hidden_states=True)
    assert [f.shape[1:] for f in outputs.feature_maps] == [(32, 16, 16), (64, 8, 8), (256, 2, 2)]
    assert len(outputs.hidden_states) == 5
    assert FlashInternImageBackbone(tiny_config(out_indices=[1, 3])).out_features == ["stage1", "stage3"]


# ---------------------------------------------------------------------------------------------------- training


def test_gradient_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    config = tiny_config(dw_kernel_size=3, post_norm=True, layer_scale=1.0, mlp_fc2_bias=True)
    model = FlashInternImageForImageClassification(config).train()
    with torch.no_grad():  # leave the official zero init of the offsets, so the sampling gradients are non-trivial
        for module in model.modules():
            if isinstance(module, FlashInternImageDCNv4):
                module.offset_mask.weight.normal_(std=0.1)
    pixels, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])

    def gradients():
        model.zero_grad()
        model(pixels, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = gradients()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()  # the name of Transformers >= 5.25; the older one before
    assert model.internimage.encoder.stages[0].layers[0].gradient_checkpointing
    checkpointed = gradients()
    assert reference.keys() == checkpointed.keys()
    assert reference["internimage.encoder.stages.0.layers.0.dcn.offset_mask.weight"].abs().max() > 0
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-6, rtol=0, msg=name)


def test_with_cp_enables_checkpointing():
    model = FlashInternImageModel(tiny_config(with_cp=True))
    assert all(layer.gradient_checkpointing for stage in model.encoder.stages for layer in stage.layers)


@torch.no_grad()
def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = FlashInternImageForImageClassification(tiny_config(dw_kernel_size=3, dcn_output_bias=True)).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "flash_internimage" and config["dcn_output_bias"] is True
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is FlashInternImageForImageClassification
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    pixels = torch.randn(1, 3, 64, 64)
    assert torch.equal(reloaded(pixels).logits, model(pixels).logits)


# Looser than InternImage's (5e-3, 5e-2): DCNv4's point weights are not normalised, so the rounding of the fused
# projection is not damped by a softmax (measured: float16 0.014 / 0.015, bfloat16 0.062 / 0.082 for T / L).
@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 2.5e-2), (torch.bfloat16, 1e-1)])
@pytest.mark.parametrize("name", ["flash_tiny_t", "flash_tiny_l"])
@torch.no_grad()
def test_half_precision_forward_is_finite_and_close_to_float32(name, dtype, tolerance):
    """Relative to float32, on 64x64 images: torch 2.14's CPU bfloat16 convolution returns garbage for some tiny maps
    (batch 2, 256 -> 512 channels, 4x2 -> 2x1), which the fixtures' 64x32 input would reach."""
    case = FlashCase.load(name)
    model = FlashInternImageForImageClassification(FlashInternImageConfig(**case.config_kwargs)).eval()
    model.load_state_dict(convert_official_state_dict(case.state_dict), strict=True)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = model(pixels).logits
    logits = model.to(dtype)(pixels.to(dtype)).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    error = (logits.float() - expected).abs().max() / expected.abs().max()
    assert error <= tolerance, f"relative error {error:.3g}"


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "pixels, error, message",
    [
        (torch.randn(1, 1, 32, 32), ValueError, "channels"),
        (torch.randn(1, 3, 16, 64), ValueError, "at least 32x32"),
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), TypeError, "floating-point"),
        (torch.randn(3, 32, 32), ValueError, "4-D"),
        (None, ValueError, "required"),
    ],
)
def test_bad_pixel_values_raise_clear_errors(pixels, error, message):
    model = FlashInternImageForImageClassification(tiny_config()).eval()
    with pytest.raises(error, match=message):
        model(pixels)


# ---------------------------------------------------------------------------------------------------- Auto, pipeline


def test_auto_classes_resolve(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is FlashInternImageConfig
    assert type(AutoModel.from_config(config)) is FlashInternImageModel
    assert type(AutoModelForImageClassification.from_config(config)) is FlashInternImageForImageClassification
    assert type(AutoBackbone.from_config(config)) is FlashInternImageBackbone
    InternImageImageProcessorPil(crop_size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert type(processor) is InternImageImageProcessorPil


def test_image_classification_pipeline_from_a_local_directory(tmp_path):
    labels = {0: "cat", 1: "dog", 2: "bird"}
    config = tiny_config(id2label=labels, label2id={v: k for k, v in labels.items()})
    FlashInternImageForImageClassification(config).save_pretrained(tmp_path)
    processor = InternImageImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    processor.save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path))
    assert type(classifier.model) is FlashInternImageForImageClassification
    predictions = classifier(Image.new("RGB", (80, 70), (200, 30, 30)), top_k=3)
    assert sorted(p["label"] for p in predictions) == sorted(labels.values())
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)
