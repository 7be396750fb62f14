"""Model behaviour every Transformers vision model guarantees, checked on tiny InternImage models of both head styles.

Written in the spirit of Transformers' common model tests (ModelTesterMixin / BackboneTesterMixin), without
importing them: hidden-state gradients, save/load, gradient checkpointing, a training step, batching equivalence,
reduced precision, and the classification head's pre-logit feature.
"""

import pytest
import torch

from internimage_hf import (
    InternImageBackbone,
    InternImageConfig,
    InternImageForImageClassification,
    InternImageModel,
)

MODEL_CLASSES = (InternImageModel, InternImageForImageClassification, InternImageBackbone)
# The classifier runs all of InternImageModel (its hidden states included) plus a head; the backbone has its own
# forward. Checks of numerics run on these two only, to keep the suite fast.
HEAD_CLASSES = (InternImageForImageClassification, InternImageBackbone)
# T..XL use the conv head; H/G the CLIP-projector head, which also reads stage 3 (and have their own block options).
STYLES = {
    "conv_head": {},
    "clip_head": {"use_clip_projector": True, "center_feature_scale": True, "dw_kernel_size": 5, "res_post_norm": True},
}
ALL_STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]
CHANNELS = 16
IMAGE_SIZE = 64
# Stem and the four stage outputs of a 64x64 image: (channels, height, width).
HIDDEN_STATE_SHAPES = [(16, 16, 16), (16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]


def tiny_config(style: str = "conv_head", **overrides) -> InternImageConfig:
    kwargs = dict(channels=CHANNELS, depths=(1, 1, 2, 1), groups=(2, 2, 4, 4), num_labels=3, drop_path_rate=0.0)
    return InternImageConfig(**{**kwargs, **STYLES[style], **overrides})


def build(model_class, style: str = "conv_head", **overrides) -> torch.nn.Module:
    if model_class is InternImageBackbone:
        overrides.setdefault("out_features", ALL_STAGES)
    torch.manual_seed(0)
    return model_class(tiny_config(style, **overrides))


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def final_output(model, outputs) -> torch.Tensor:
    """The output a user trains on: logits, the last hidden state, or the deepest backbone feature map."""
    if isinstance(model, InternImageForImageClassification):
        return outputs.logits
    if isinstance(model, InternImageBackbone):
        return outputs.feature_maps[-1]
    return outputs.last_hidden_state


def output_tensors(model, outputs) -> dict[str, torch.Tensor]:
    """Every tensor of an output, by name, for comparisons."""
    tensors = {}
    for key, value in outputs.items():
        for index, tensor in enumerate(value if isinstance(value, tuple) else (value,)):
            tensors[f"{key}.{index}"] = tensor
    return tensors


# ---------------------------------------------------------------------------------------------------- hidden states


@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_hidden_states_get_gradients(model_class, style):
    """Each hidden state (and backbone feature map) is a tensor the network continues from: `retain_grad()` works.

    The loss reads only the final output, so a hidden state gets a gradient only if the layers after it consumed
    that very tensor (a copy made for the output would get none).
    """
    model = build(model_class, style).eval()
    outputs = model(pixels(), output_hidden_states=True)
    handed_out = list(outputs.hidden_states)
    if model_class is InternImageBackbone:
        handed_out += list(outputs.feature_maps)
    assert [tuple(h.shape[1:]) for h in outputs.hidden_states] == HIDDEN_STATE_SHAPES
    for tensor in handed_out:
        tensor.retain_grad()
    final_output(model, outputs).square().sum().backward()
    for index, tensor in enumerate(handed_out):
        assert tensor.grad is not None, f"output {index} is cut off from the autograd graph"
        assert tensor.grad.abs().sum() > 0, f"output {index} gets an all-zero gradient"


# ---------------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("model_class", [InternImageModel, InternImageBackbone])
def test_save_load_gives_identical_outputs(model_class, tmp_path):
    overrides = {"out_features": ["stage2", "stage4"]} if model_class is InternImageBackbone else {}
    model = build(model_class, **overrides).eval()
    model.save_pretrained(tmp_path)
    reloaded = model_class.from_pretrained(tmp_path).eval()
    assert reloaded.config.to_dict() | {"_name_or_path": ""} == model.config.to_dict() | {"_name_or_path": ""}
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        expected, produced = output_tensors(model, model(pixels())), output_tensors(reloaded, reloaded(pixels()))
    assert expected.keys() == produced.keys()
    for name in expected:
        torch.testing.assert_close(produced[name], expected[name], atol=1e-6, rtol=0, msg=name)


# ---------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("model_class", [InternImageModel, InternImageBackbone])
def test_gradient_checkpointing_gives_identical_gradients(model_class):
    model = build(model_class).train()
    inputs = pixels()

    def gradients():
        model.zero_grad()
        final_output(model, model(inputs)).square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = gradients()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert all(layer.gradient_checkpointing for stage in model.encoder.stages for layer in stage.layers)
    checkpointed = gradients()
    assert reference.keys() == checkpointed.keys()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_training_steps_update_every_weight_and_lower_the_loss(style):
    model = build(InternImageForImageClassification, style).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, labels = pixels(4), torch.tensor([0, 1, 2, 1])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    running_mean = model.head.norm.running_mean.clone() if style == "conv_head" else None
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = model(inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged, f"parameters not trained: {unchanged}"
    assert losses[-1] < losses[0], losses
    if running_mean is not None:
        assert not torch.equal(model.head.norm.running_mean, running_mean), "BatchNorm statistics not updated"


# ---------------------------------------------------------------------------------------------------- batching


@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("model_class", HEAD_CLASSES)
@torch.no_grad()
def test_batched_outputs_equal_single_image_outputs(model_class, style):
    model = build(model_class, style).eval()
    batch = pixels(3)
    batched = output_tensors(model, model(batch, output_hidden_states=True))
    for index in range(3):
        single = output_tensors(model, model(batch[index : index + 1], output_hidden_states=True))
        for name, tensor in single.items():
            torch.testing.assert_close(tensor[0], batched[name][index], atol=1e-5, rtol=0, msg=f"{name} [{index}]")


# ---------------------------------------------------------------------------------------------------- dtypes

# Worst deviation from float32, relative to the largest float32 value of each output (random tiny models).
REDUCED_PRECISION_TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("dtype", sorted(REDUCED_PRECISION_TOLERANCE, key=str))
@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("model_class", HEAD_CLASSES)
@torch.no_grad()
def test_half_precision_forward_is_close_to_float32(model_class, style, dtype):
    model = build(model_class, style).eval()
    inputs = pixels()
    reference = output_tensors(model, model(inputs, output_hidden_states=True))
    reduced = output_tensors(model, model.to(dtype)(inputs, output_hidden_states=True))
    for name, expected in reference.items():
        assert reduced[name].dtype == dtype, name
        error = (reduced[name].float() - expected).abs().max() / expected.abs().max()
        assert error <= REDUCED_PRECISION_TOLERANCE[dtype], f"{name}: relative error {error:.3g}"


# ---------------------------------------------------------------------------------------------------- pre-logits


@pytest.mark.parametrize("style, features", [("conv_head", int(8 * CHANNELS * 1.5)), ("clip_head", 768)])
@torch.no_grad()
def test_pre_logits_are_what_the_classifier_reads(style, features):
    model = build(InternImageForImageClassification, style).eval()
    outputs = model(pixels(), output_pre_logits=True)
    assert outputs.pre_logits.shape == (2, features)
    torch.testing.assert_close(model.classifier(outputs.pre_logits), outputs.logits, atol=0, rtol=0)
    assert model(pixels()).pre_logits is None, "only returned on request"

    labels = torch.tensor([0, 2])
    loss, logits, hidden_states, pre_logits = model(
        pixels(), labels=labels, output_hidden_states=True, output_pre_logits=True, return_dict=False
    )
    assert len(hidden_states) == 5 and torch.equal(pre_logits, outputs.pre_logits)
    assert len(model(pixels(), labels=labels, return_dict=False)) == 2, "tuple outputs unchanged without the flag"
