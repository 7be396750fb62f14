"""FlashInternImage as the backbone of dense-prediction heads: UperNet, Mask2Former (Transformers) and DINO (this
package), each built from a `backbone_config` of model_type "flash_internimage", run forward and trained one step."""

from __future__ import annotations

import pytest
import torch

from internimage_hf import DinoDetrConfig, DinoDetrForObjectDetection, FlashInternImageBackbone, FlashInternImageConfig

STAGES = ["stage1", "stage2", "stage3", "stage4"]


def tiny_backbone_config(**overrides) -> FlashInternImageConfig:
    """S-style (post-norm, layer scale, depthwise convolution) with every DCNv4 group 16 channels wide."""
    kwargs = dict(channels=32, depths=(1, 1, 1, 1), groups=(2, 4, 8, 16), layer_scale=1.0, post_norm=True,
                  dw_kernel_size=3, mlp_fc2_bias=True, dcn_output_bias=True, drop_path_rate=0.0)  # fmt: skip
    return FlashInternImageConfig(**{**kwargs, **overrides})


def assert_the_backbone_gets_gradients(backbone: torch.nn.Module) -> None:
    """At the official initialisation DCNv4's point weights are zero, so its output (and the gradient of what feeds
    the sampled values) is zero; the loss reaches the network through each block's offset/weight projection, the MLPs
    and the stem."""
    gradients = {name: p.grad for name, p in backbone.named_parameters()}
    reached = [name for name, grad in gradients.items() if grad is not None and grad.abs().sum() > 0]
    projections = [name for name in gradients if name.endswith("dcn.offset_mask.weight")]
    assert len(projections) == 4 and set(projections) <= set(reached)
    assert {"embeddings.conv1.weight", "encoder.stages.3.layers.0.mlp.fc1.weight"} <= set(reached)


def test_upernet_forward_loss_and_backward(tmp_path):
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    config = UperNetConfig(
        backbone_config=tiny_backbone_config(out_features=STAGES), num_labels=5, hidden_size=32, auxiliary_channels=16
    )
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(config).train()
    assert type(model.backbone) is FlashInternImageBackbone
    pixels, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    outputs = model(pixels, labels=labels)
    assert outputs.logits.shape == (2, 5, 64, 64) and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert_the_backbone_gets_gradients(model.backbone)
    model.eval().save_pretrained(tmp_path)
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(reloaded.backbone) is FlashInternImageBackbone
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).logits, model(pixels).logits, atol=1e-6, rtol=0)


def test_mask2former_forward_loss_and_backward():
    pytest.importorskip("scipy")  # Mask2Former's Hungarian matcher
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    config = Mask2FormerConfig(
        backbone_config=tiny_backbone_config(out_features=STAGES), feature_size=32, mask_feature_size=32,
        hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
        num_queries=4, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).train()
    assert type(model.model.pixel_level_module.encoder) is FlashInternImageBackbone
    masks = torch.zeros(2, 64, 64)
    masks[0, :32], masks[1, :, 16:] = 1, 1
    outputs = model(
        torch.randn(1, 3, 64, 64),
        mask_labels=[masks], class_labels=[torch.tensor([0, 2])],
    )  # fmt: skip
    assert outputs.class_queries_logits.shape == (1, 4, 4) and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert_the_backbone_gets_gradients(model.model.pixel_level_module.encoder)


def test_dino_forward_loss_and_backward():
    backbone = tiny_backbone_config(out_features=["stage2", "stage3", "stage4"]).to_dict()
    config = DinoDetrConfig(
        backbone_config=backbone, d_model=32, neck_norm_groups=8, num_queries=20, encoder_layers=1,
        decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_labels=5,
    )  # fmt: skip
    assert type(config.backbone_config) is FlashInternImageConfig
    torch.manual_seed(0)
    model = DinoDetrForObjectDetection(config).train()
    assert type(model.model.backbone) is FlashInternImageBackbone
    assert list(model.model.backbone.channels) == [64, 128, 256]
    labels = [{"class_labels": torch.tensor([i]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])} for i in range(2)]
    outputs = model(torch.randn(2, 3, 64, 96), labels=labels)
    assert outputs.logits.shape == (2, 20, 5) and outputs.pred_boxes.shape == (2, 20, 4)
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert_the_backbone_gets_gradients(model.model.backbone)
