"""DinoDetrForObjectDetection on tiny configurations: outputs, Auto classes, other backbones, initialisation, errors.

Numerical equality with the official implementation is tested against fixtures in test_dino_detr_parity.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModel, AutoModelForObjectDetection, ResNetConfig

from internimage_hf import DinoDetrConfig, DinoDetrForObjectDetection, DinoDetrModel

TINY_BACKBONE = {
    "model_type": "internimage",
    "channels": 16,
    "depths": [1, 1, 2, 1],
    "groups": [1, 2, 4, 8],
    "out_features": ["stage2", "stage3", "stage4"],
    "layer_scale": 1.0,
}


def tiny_config(**overrides) -> DinoDetrConfig:
    settings = {
        "backbone_config": TINY_BACKBONE,
        "d_model": 32,
        "neck_norm_groups": 8,
        "num_queries": 20,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "num_labels": 5,
    }
    return DinoDetrConfig(**{**settings, **overrides})


def tiny_detector(**overrides) -> DinoDetrForObjectDetection:
    torch.manual_seed(0)
    return DinoDetrForObjectDetection(tiny_config(**overrides)).eval()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 96, 128)
    pixel_mask = torch.ones(2, 96, 128, dtype=torch.long)
    pixel_mask[1, 64:] = 0
    pixel_mask[1, :, 96:] = 0
    pixel_values[1, :, 64:] = 0
    pixel_values[1, :, :, 96:] = 0
    return pixel_values, pixel_mask


@torch.no_grad()
def test_outputs_have_the_documented_shapes():
    model = tiny_detector()
    pixel_values, pixel_mask = padded_batch()
    outputs = model(pixel_values, pixel_mask=pixel_mask)
    assert outputs.logits.shape == (2, 20, 5)
    assert outputs.pred_boxes.shape == (2, 20, 4)
    assert len(outputs.auxiliary_outputs) == 1
    assert outputs.auxiliary_outputs[0]["pred_boxes"].shape == (2, 20, 4)
    assert outputs.intermediate_hidden_states.shape == (2, 2, 20, 32)
    assert outputs.intermediate_reference_points.shape == (2, 3, 20, 4)
    assert outputs.encoder_topk_logits.shape == (2, 20, 5)
    sequence = 12 * 16 + 6 * 8 + 3 * 4 + 2 * 2  # strides 8, 16, 32 and the extra stride-64 level
    assert outputs.encoder_last_hidden_state.shape == (2, sequence, 32)
    assert torch.isfinite(outputs.logits).all()
    assert ((outputs.pred_boxes > 0) & (outputs.pred_boxes < 1)).all()


@torch.no_grad()
def test_first_layer_boxes_start_from_the_selected_proposals():
    """Layer 0 predicts offsets from the selected encoder proposals; its references are those proposals."""
    model = tiny_detector()
    pixel_values, pixel_mask = padded_batch()
    outputs = model(pixel_values, pixel_mask=pixel_mask)
    torch.testing.assert_close(outputs.intermediate_reference_points[:, 0], outputs.encoder_topk_boxes)


@torch.no_grad()
def test_save_and_load_through_the_auto_classes(tmp_path):
    model = tiny_detector()
    pixel_values, pixel_mask = padded_batch()
    expected = model(pixel_values, pixel_mask=pixel_mask)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert type(loaded) is DinoDetrForObjectDetection
    produced = loaded(pixel_values, pixel_mask=pixel_mask)
    torch.testing.assert_close(produced.logits, expected.logits, atol=0, rtol=0)
    torch.testing.assert_close(produced.pred_boxes, expected.pred_boxes, atol=0, rtol=0)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is DinoDetrModel


@torch.no_grad()
def test_a_transformers_backbone_through_backbone_config():
    backbone = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"]
    )
    model = tiny_detector(backbone_config=backbone)
    assert type(model.model.backbone).__name__ == "ResNetBackbone"
    pixel_values, pixel_mask = padded_batch()
    outputs = model(pixel_values, pixel_mask=pixel_mask)
    assert outputs.logits.shape == (2, 20, 5)


# Unpadded image sizes: the last is not a multiple of 32, so alone it is padded to 96x128 (as the batch is).
MIXED_SIZES = [(64, 96), (96, 64), (70, 100)]


def mixed_size_images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(3, height, width, generator=generator) for height, width in MIXED_SIZES]


def pad_images(images: list[torch.Tensor], divisor: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad at the bottom and right to the largest size rounded up to `divisor`, as the image processor does."""
    height = -(-max(image.shape[1] for image in images) // divisor) * divisor
    width = -(-max(image.shape[2] for image in images) // divisor) * divisor
    pixel_values = torch.zeros(len(images), 3, height, width)
    pixel_mask = torch.zeros(len(images), height, width, dtype=torch.long)
    for index, image in enumerate(images):
        pixel_values[index, :, : image.shape[1], : image.shape[2]] = image
        pixel_mask[index, : image.shape[1], : image.shape[2]] = 1
    return pixel_values, pixel_mask


def batch_and_single_outputs(model) -> tuple[list[dict], list[dict]]:
    images = mixed_size_images()
    batch = model(*pad_images(images))
    singles = [model(*pad_images([image])) for image in images]
    pick = ("logits", "pred_boxes", "encoder_topk_logits", "encoder_topk_boxes")
    batched = [{name: getattr(batch, name)[index] for name in pick} for index in range(len(images))]
    alone = [{name: getattr(single, name)[0] for name in pick} for single in singles]
    return batched, alone


@torch.no_grad()
def test_a_padded_batch_gives_every_image_its_own_detections():
    """Backbone, neck GroupNorm, query selection and query positions would all see the batch's padding."""
    batched, alone = batch_and_single_outputs(tiny_detector())
    for index, (produced, expected) in enumerate(zip(batched, alone, strict=True)):
        for name, value in produced.items():
            difference = (value - expected[name]).abs().max().item()
            assert difference <= 1e-4, f"image {index} ({MIXED_SIZES[index]}): {name} differs by {difference:.2e}"


@torch.no_grad()
def test_without_padding_invariance_the_batch_changes_the_detections():
    """The official behaviour (`padding_invariant=False`): the smaller images' outputs depend on the batch."""
    batched, alone = batch_and_single_outputs(tiny_detector(padding_invariant=False))
    torch.testing.assert_close(batched[2]["logits"], alone[2]["logits"], atol=1e-4, rtol=0)  # its own padded size
    for index in (0, 1):
        assert (batched[index]["logits"] - alone[index]["logits"]).abs().max() > 1e-2


def test_padding_invariant_training_step_sees_each_image_alone():
    """In training too: each image's loss reaches its pixels, and no image reads the padding beyond its own size."""
    model = tiny_detector(num_denoising=0).train()
    pixel_values, pixel_mask = pad_images(mixed_size_images())
    pixel_values.requires_grad_(True)
    labels = [
        {"class_labels": torch.tensor([index]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])} for index in range(3)
    ]
    model(pixel_values, pixel_mask=pixel_mask, labels=labels).loss.backward()
    for index, (height, width) in enumerate(MIXED_SIZES):
        own_height, own_width = -(-height // 32) * 32, -(-width // 32) * 32
        gradient = pixel_values.grad[index]
        assert gradient[:, :height, :width].abs().sum() > 0
        assert gradient[:, own_height:].abs().sum() == 0 and gradient[:, :, own_width:].abs().sum() == 0


def test_parameter_count_of_the_official_t_detector():
    """The official README lists 49M parameters for DINO with InternImage-T."""
    with torch.device("meta"):
        model = DinoDetrForObjectDetection(DinoDetrConfig())
    assert round(sum(parameter.numel() for parameter in model.parameters()) / 1e6) == 49


def test_initialisation_follows_the_official_detector():
    model = tiny_detector()
    attention = model.model.encoder.layers[0].self_attn
    offsets = attention.sampling_offsets.bias.view(attention.n_heads, attention.n_levels, attention.n_points, 2)
    # head 0 points along +x, k + 1 steps out for point k, on every level
    torch.testing.assert_close(
        offsets[0, :, :, 0], torch.arange(1.0, attention.n_points + 1).expand(attention.n_levels, -1)
    )
    assert torch.count_nonzero(attention.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attention.attention_weights.weight) == 0
    prior = -math.log((1 - 0.01) / 0.01)
    for head in model.model.class_heads:
        torch.testing.assert_close(head.bias, torch.full_like(head.bias, prior))
    for head in model.model.box_heads:
        assert torch.count_nonzero(head.layers[-1].weight) == 0


@pytest.mark.parametrize(
    ("pixel_values", "pixel_mask", "message"),
    [
        (torch.zeros(3, 64, 64), None, "pixel_values"),
        (torch.zeros(1, 3, 64, 64), torch.ones(1, 32, 64), "pixel_mask"),
    ],
)
def test_bad_inputs_name_the_argument(pixel_values, pixel_mask, message):
    model = tiny_detector()
    with pytest.raises(ValueError, match=message):
        model(pixel_values, pixel_mask=pixel_mask)


def test_too_few_positions_for_the_queries_is_a_clear_error():
    """A 32x32 image has 4x4 + 2x2 + 1 + 1 = 22 positions over the four levels: too few for 30 queries."""
    model = tiny_detector(num_queries=30)
    with pytest.raises(ValueError, match="22 positions .* fewer than num_queries=30"):
        model(torch.zeros(1, 3, 32, 32))
