"""InternImage models: parity with the official implementation, checkpoint formats, outputs, training features."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification

from internimage_hf import (
    InternImageBackbone,
    InternImageConfig,
    InternImageForImageClassification,
    InternImageModel,
    convert_official_state_dict,
)
from internimage_hf.models.internimage.modeling_internimage import (
    ChannelsLastConv2d,
    InternImageDCNv3,
    InternImageLayer,
    drop_path,
)

LOGIT_ATOL = 1e-4


def tiny_config(**overrides) -> InternImageConfig:
    kwargs = dict(channels=16, depths=(1, 1, 2, 1), groups=(2, 2, 4, 4), num_labels=3, drop_path_rate=0.0)
    return InternImageConfig(**{**kwargs, **overrides})


def golden_model(golden) -> InternImageForImageClassification:
    model = InternImageForImageClassification(InternImageConfig(**golden.model_kwargs)).eval()
    model.load_state_dict(convert_official_state_dict(golden.state_dict), strict=True)
    return model


def assert_matches_golden(golden, logits=None, stage_outputs=None):
    if logits is not None:
        torch.testing.assert_close(logits, golden.logits, atol=LOGIT_ATOL, rtol=0)
    for produced, expected in zip(stage_outputs or [], golden.stage_outputs, strict=True):
        torch.testing.assert_close(produced, expected, atol=LOGIT_ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------- parity


@torch.no_grad()
def test_golden_parity_from_official_pth_names(golden):
    outputs = golden_model(golden)(golden.input, output_hidden_states=True)
    assert len(outputs.hidden_states) == 5
    assert_matches_golden(golden, outputs.logits, list(outputs.hidden_states[1:]))


@torch.no_grad()
def test_golden_parity_from_official_hub_directory(golden, tmp_path):
    hub_dir = golden.write_official_hub_dir(tmp_path / "hub")
    classifier = AutoModelForImageClassification.from_pretrained(hub_dir).eval()
    assert isinstance(classifier, InternImageForImageClassification)
    assert classifier.config.num_labels == golden.model_kwargs["num_classes"]
    outputs = classifier(golden.input, output_hidden_states=True)
    assert_matches_golden(golden, outputs.logits, list(outputs.hidden_states[1:]))

    base = AutoModel.from_pretrained(hub_dir).eval()
    assert isinstance(base, InternImageModel)
    base_outputs = base(golden.input, output_hidden_states=True)
    assert_matches_golden(golden, stage_outputs=list(base_outputs.hidden_states[1:]))
    torch.testing.assert_close(base_outputs.last_hidden_state, golden.stage_outputs[-1], atol=LOGIT_ATOL, rtol=0)

    backbone = InternImageBackbone.from_pretrained(hub_dir, out_features=["stage1", "stage2", "stage3", "stage4"])
    assert_matches_golden(golden, stage_outputs=list(backbone.eval()(golden.input).feature_maps))


@torch.no_grad()
def test_official_format_round_trips_through_our_format(golden_cases, tmp_path):
    golden = golden_cases["tiny_h"]
    model = AutoModelForImageClassification.from_pretrained(golden.write_official_hub_dir(tmp_path / "hub")).eval()
    model.save_pretrained(tmp_path / "ours")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "ours").eval()
    from safetensors.torch import load_file

    saved_keys = load_file(str(tmp_path / "ours" / "model.safetensors")).keys()
    assert all(not key.startswith("model.") for key in saved_keys), "saved in the official names, not ours"
    assert "internimage.encoder.stages.0.layers.0.dcn.offset.weight" in saved_keys
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # Weights are bit-identical; outputs may differ in the last ulp because loaded tensors have other alignment.
    torch.testing.assert_close(model(golden.input).logits, reloaded(golden.input).logits, atol=1e-6, rtol=0)


@torch.no_grad()
def test_backbone_inside_auto_backbone_matches_golden(golden_cases):
    golden = golden_cases["tiny_s"]
    config = InternImageConfig(**golden.model_kwargs, out_indices=[1, 2, 3, 4])
    backbone = AutoBackbone.from_config(config).eval()
    assert isinstance(backbone, InternImageBackbone)
    state = {k.removeprefix("internimage."): v for k, v in convert_official_state_dict(golden.state_dict).items()}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    assert not missing and all(k.startswith(("head.", "classifier.")) for k in unexpected)
    outputs = backbone(golden.input)
    assert backbone.channels == [golden.model_kwargs["channels"] * 2**i for i in range(4)]
    assert_matches_golden(golden, stage_outputs=list(outputs.feature_maps))
    # Views of the channels-last tensors the network continues from (no copy), dense in channels-last memory.
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in outputs.feature_maps)


# ---------------------------------------------------------------------------------------------------- outputs


@torch.no_grad()
def test_output_shapes_and_tuple_outputs():
    config = tiny_config()
    model = InternImageModel(config).eval()
    pixels = torch.randn(2, 3, 64, 96)
    outputs = model(pixels, output_hidden_states=True)
    assert outputs.last_hidden_state.shape == (2, 128, 2, 3)
    assert outputs.pooler_output.shape == (2, 128)
    assert [h.shape[1:] for h in outputs.hidden_states] == [(16, 16, 24), (16, 16, 24), (32, 8, 12), (64, 4, 6),
                                                            (128, 2, 3)]  # fmt: skip
    as_tuple = model(pixels, return_dict=False)
    assert len(as_tuple) == 2 and torch.equal(as_tuple[0], outputs.last_hidden_state)

    classifier = InternImageForImageClassification(config).eval()
    labels = torch.tensor([0, 2])
    loss, logits = classifier(pixels, labels=labels, return_dict=False)
    assert logits.shape == (2, 3) and loss.ndim == 0


def test_backbone_out_features_and_channels():
    backbone = InternImageBackbone(tiny_config(out_features=["stem", "stage2", "stage4"])).eval()
    assert backbone.channels == [16, 32, 128]
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 64), output_hidden_states=True)
    assert [f.shape[1:] for f in outputs.feature_maps] == [(16, 16, 16), (32, 8, 8), (128, 2, 2)]
    assert len(outputs.hidden_states) == 5


@pytest.mark.parametrize(
    "problem_type, labels, expected_loss",
    [
        ("single_label_classification", torch.tensor([0, 2]), torch.nn.functional.cross_entropy),
        ("multi_label_classification", torch.tensor([[1.0, 0, 1], [0, 1, 0]]),
         torch.nn.functional.binary_cross_entropy_with_logits),
        ("regression", torch.tensor([[0.5, 1.0, -1.0], [0.0, 0.2, 0.3]]), torch.nn.functional.mse_loss),
    ],
)  # fmt: skip
def test_loss_follows_problem_type(problem_type, labels, expected_loss):
    model = InternImageForImageClassification(tiny_config(problem_type=problem_type)).eval()
    outputs = model(torch.randn(2, 3, 32, 32), labels=labels)
    torch.testing.assert_close(outputs.loss, expected_loss(outputs.logits, labels))


def test_problem_type_is_inferred_from_labels():
    model = InternImageForImageClassification(tiny_config()).eval()
    model(torch.randn(2, 3, 32, 32), labels=torch.tensor([1, 2]))
    assert model.config.problem_type == "single_label_classification"


# ---------------------------------------------------------------------------------------------------- init/save


def test_init_matches_the_official_scheme():
    config = tiny_config(layer_scale=0.3, center_feature_scale=True)
    model = InternImageForImageClassification(config)
    dcn = next(m for m in model.modules() if isinstance(m, InternImageDCNv3))
    assert dcn.offset.weight.abs().sum() == 0 and dcn.mask.bias.abs().sum() == 0
    assert dcn.center_feature_scale_proj_weight.abs().sum() == 0
    assert dcn.input_proj.weight.std() > 0 and dcn.input_proj.bias.abs().sum() == 0
    layer = next(m for m in model.modules() if isinstance(m, InternImageLayer))
    assert torch.all(layer.layer_scale1 == 0.3) and torch.all(layer.layer_scale2 == 0.3)
    assert model.classifier.weight.abs().max() <= 2.0 and 0.01 < model.classifier.weight.std() < 0.03
    assert torch.all(model.head.norm.running_var == 1)


def test_save_load_is_exact_and_missing_head_is_initialised(tmp_path):
    model = InternImageForImageClassification(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    reloaded = InternImageForImageClassification.from_pretrained(tmp_path).eval()
    pixels = torch.randn(1, 3, 32, 32)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).logits, reloaded(pixels).logits, atol=1e-6, rtol=0)

    InternImageModel(tiny_config()).save_pretrained(tmp_path / "base")
    with_new_head = InternImageForImageClassification.from_pretrained(tmp_path / "base")
    assert torch.all(with_new_head.head.norm.running_var == 1)
    assert torch.isfinite(with_new_head.classifier.weight).all()
    assert with_new_head.classifier.weight.abs().max() <= 2.0


def test_head_swap_with_ignore_mismatched_sizes(tmp_path):
    InternImageForImageClassification(tiny_config()).save_pretrained(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(
        tmp_path, num_labels=7, ignore_mismatched_sizes=True, id2label={i: str(i) for i in range(7)}
    )
    assert model.classifier.out_features == 7


# ---------------------------------------------------------------------------------------------------- training


def test_gradient_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = InternImageForImageClassification(tiny_config(drop_rate=0.0)).train()
    pixels, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])

    def gradients():
        model.zero_grad()
        model(pixels, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = gradients()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert model.internimage.encoder.stages[0].layers[0].gradient_checkpointing
    checkpointed = gradients()
    assert reference.keys() == checkpointed.keys()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-6, rtol=0, msg=name)


def test_with_cp_enables_checkpointing():
    model = InternImageModel(tiny_config(with_cp=True))
    assert all(layer.gradient_checkpointing for stage in model.encoder.stages for layer in stage.layers)


def test_drop_path_is_active_only_in_training():
    model = InternImageModel(tiny_config(drop_path_rate=0.9, drop_path_type="uniform"))
    pixels = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(pixels).pooler_output, model(pixels).pooler_output)
        model.train()
        torch.manual_seed(0)
        first = model(pixels).pooler_output
        torch.manual_seed(1)
        assert not torch.allclose(first, model(pixels).pooler_output)


def test_drop_path_keeps_or_zeroes_whole_samples_scaled_by_the_keep_probability():
    branch = torch.randn(64, 3, 3, 4, requires_grad=True)
    torch.manual_seed(0)
    out = drop_path(branch, 0.25, training=True)
    kept = out.flatten(1).ne(0).any(dim=1)
    assert 0 < int(kept.sum()) < 64  # both outcomes occur at p = 0.25 over 64 samples with this seed
    torch.testing.assert_close(out[kept], branch[kept] / 0.75)
    assert torch.equal(out[~kept], torch.zeros_like(out[~kept]))
    out.sum().backward()
    torch.testing.assert_close(branch.grad, kept.float().view(64, 1, 1, 1).div(0.75).expand_as(branch))
    assert drop_path(branch, 0.25, training=False) is branch


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 5e-2), (torch.bfloat16, 1.5e-1)])
def test_half_precision_model_forward(golden_cases, dtype, atol):
    golden = golden_cases["tiny_t"]
    model = golden_model(golden).to(dtype)
    with torch.no_grad():
        logits = model(golden.input.to(dtype)).logits
    assert logits.dtype == dtype
    torch.testing.assert_close(logits.float(), golden.logits, atol=atol, rtol=0)


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
    model = InternImageForImageClassification(tiny_config()).eval()
    with pytest.raises(error, match=message):
        model(pixels)


def test_clip_head_requires_multiples_of_32():
    model = InternImageForImageClassification(
        tiny_config(use_clip_projector=True, center_feature_scale=True, dw_kernel_size=5)
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 3)
        with pytest.raises(ValueError, match="multiples of 32"):
            model(torch.randn(1, 3, 48, 64))


# ---------------------------------------------------------------------------------------------------- auto


def test_auto_classes_resolve(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), InternImageConfig)
    assert isinstance(AutoModel.from_config(config), InternImageModel)
    assert isinstance(AutoModelForImageClassification.from_config(config), InternImageForImageClassification)
    assert isinstance(AutoBackbone.from_config(config), InternImageBackbone)


def test_device_map_auto_loads(tmp_path):
    pytest.importorskip("accelerate")
    InternImageForImageClassification(tiny_config()).save_pretrained(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(tmp_path, device_map="auto")
    assert model.device.type == "cpu"
    assert set(model._no_split_modules) >= {"InternImageLayer"}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)


@pytest.mark.parametrize("model_class", [InternImageModel, InternImageForImageClassification, InternImageBackbone])
def test_load_contiguous_weights(tmp_path, model_class):
    # Transformers' common test: loading takes a non-contiguous parameter for one altered by a conversion.
    config = InternImageConfig(channels=16, depths=[1, 1, 1, 1], groups=[1, 2, 4, 8], num_labels=3)
    model = model_class(config)
    assert all(param.is_contiguous() for param in model.parameters())
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path)
    assert all(param.is_contiguous() for param in loaded.parameters())


def test_convolutions_run_channels_last_on_contiguous_weights(tmp_path):
    # The channels-last copy a convolution over channels-last activations needs is made once, not per call.
    config = InternImageConfig(channels=16, depths=[1, 1, 1, 1], groups=[1, 2, 4, 8], num_labels=3)
    model = InternImageForImageClassification(config).eval()
    model.save_pretrained(tmp_path)
    loaded = InternImageForImageClassification.from_pretrained(tmp_path)
    convs = [m for m in loaded.modules() if isinstance(m, ChannelsLastConv2d)]
    assert len(convs) == 2 + 3 + 1  # stem, downsamples, head
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, atol=0, rtol=0)
        copies = [conv.channels_last_weight() for conv in convs]
        assert all(copy.is_contiguous(memory_format=torch.channels_last) for copy in copies)
        assert not any(
            copy.is_contiguous() for conv, copy in zip(convs, copies, strict=True) if conv.kernel_size == (3, 3)
        )
        assert all(conv.channels_last_weight() is copy for conv, copy in zip(convs, copies, strict=True))
        stem = loaded.internimage.embeddings
        assert stem.conv2(torch.randn(1, 8, 8, 8)).is_contiguous(memory_format=torch.channels_last)


def test_channels_last_weight_follows_every_change_of_the_parameter():
    conv = ChannelsLastConv2d(4, 8, kernel_size=3, padding=1).eval()
    pixels = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        conv(pixels)
        conv.weight.mul_(2)  # in place: the cached copy is stale
        torch.testing.assert_close(conv(pixels), F.conv2d(pixels, conv.weight, conv.bias, padding=1))
        conv.weight.data = torch.randn_like(conv.weight)  # a new tensor of the same size
        torch.testing.assert_close(conv(pixels), F.conv2d(pixels, conv.weight, conv.bias, padding=1))
        conv.load_state_dict({"weight": torch.ones_like(conv.weight), "bias": conv.bias})
        torch.testing.assert_close(conv(pixels), F.conv2d(pixels, conv.weight, conv.bias, padding=1))
        half = conv.to(torch.float64)(pixels.double())
        torch.testing.assert_close(half, F.conv2d(pixels.double(), conv.weight, conv.bias, padding=1))
    # Under autograd the conversion is differentiable: the contiguous parameter gets its gradient.
    conv.float().train()
    conv(pixels).sum().backward()
    expected = torch.autograd.grad(F.conv2d(pixels, conv.weight, conv.bias, padding=1).sum(), conv.weight)[0]
    torch.testing.assert_close(conv.weight.grad, expected)
    assert conv.weight.is_contiguous()


def test_channels_last_weight_sees_fused_optimizer_steps():
    # Fused AdamW writes the weights without bumping their version counter.
    conv = ChannelsLastConv2d(4, 8, kernel_size=3, padding=1)
    optimizer = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)
    pixels = torch.randn(2, 4, 9, 9)
    for _ in range(2):
        conv.eval()
        with torch.no_grad():
            torch.testing.assert_close(conv(pixels), F.conv2d(pixels, conv.weight, conv.bias, padding=1))
        conv(pixels).sum().backward()  # the training forward may come without a train() call
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        torch.testing.assert_close(conv(pixels), F.conv2d(pixels, conv.weight, conv.bias, padding=1))


@pytest.mark.parametrize("build", ["model", "operator"])
def test_fresh_weights_follow_the_official_dcnv3_initialisation(build):
    # Transformers >= 5.2x skips re-initialising tensors it has marked, so each linear must get its rule directly.
    torch.manual_seed(0)
    if build == "model":
        config = InternImageConfig(channels=16, depths=[1, 1, 2, 1], groups=[1, 2, 4, 8], num_labels=3)
        operators = [m.dcn for m in InternImageForImageClassification(config).modules() if hasattr(m, "dcn")]
    else:
        operators = [InternImageDCNv3(channels=32, group=4)]
    for dcn in operators:
        for linear in (dcn.offset, dcn.mask):
            assert not linear.weight.any() and not linear.bias.any()
        for linear in (dcn.input_proj, dcn.output_proj):
            bound = (6 / sum(linear.weight.shape)) ** 0.5  # xavier_uniform
            assert linear.weight.abs().max() <= bound and linear.weight.std() > bound / 3
            assert not linear.bias.any()
