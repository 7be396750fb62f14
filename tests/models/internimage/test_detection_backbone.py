"""InternImage as the backbone of Transformers' detectors (Deformable DETR, RT-DETR, RT-DETRv2): they train.

Transformers has no DINO, Mask R-CNN or Cascade Mask R-CNN (the official InternImage detectors); these DETR-family
models take any backbone through `backbone_config`, and InternImage's stage outputs are what they expect.
"""

from __future__ import annotations

import pytest
import torch

from internimage_hf import InternImageConfig

CHANNELS = 16
OUT_INDICES = [2, 3, 4]  # strides 8, 16, 32
LABELS = [
    {"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
    {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
]
SMALL_DETR = {
    "d_model": 64, "encoder_layers": 1, "decoder_layers": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
    "num_queries": 10, "num_labels": 3,
}  # fmt: skip


def backbone_config() -> InternImageConfig:
    return InternImageConfig(
        channels=CHANNELS, depths=(1, 1, 1, 1), groups=(1, 2, 4, 8), layer_scale=None, out_indices=OUT_INDICES
    )


def deformable_detr():
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

    config = DeformableDetrConfig(
        backbone_config=backbone_config(), use_timm_backbone=False, use_pretrained_backbone=False,
        num_feature_levels=len(OUT_INDICES), encoder_attention_heads=4, decoder_attention_heads=4, **SMALL_DETR,
    )  # fmt: skip
    return DeformableDetrForObjectDetection(config)


def rt_detr(version: str):
    import transformers

    prefix = "RTDetr" if version == "v1" else "RTDetrV2"
    config_class = getattr(transformers, f"{prefix}Config")
    model_class = getattr(transformers, f"{prefix}ForObjectDetection")
    widths = [CHANNELS * 2 ** (index - 1) for index in OUT_INDICES]
    config = config_class(
        backbone_config=backbone_config(), use_timm_backbone=False, use_pretrained_backbone=False,
        encoder_in_channels=widths, feat_strides=[8, 16, 32], encoder_hidden_dim=64, decoder_in_channels=[64] * 3,
        num_denoising=0, **SMALL_DETR,
    )  # fmt: skip
    return model_class(config)


DETECTORS = {
    "deformable_detr": deformable_detr,
    "rt_detr": lambda: rt_detr("v1"),
    "rt_detr_v2": lambda: rt_detr("v2"),
}


def backbone_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The InternImage backbone's parameters inside the detector (`model.backbone.model`)."""
    return dict(model.model.backbone.model.named_parameters())


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_with_internimage_backbone_trains(name):
    torch.manual_seed(0)
    model = DETECTORS[name]()
    backbone = backbone_parameters(model)
    assert type(model.model.backbone.model).__name__ == "InternImageBackbone"
    assert len(backbone) == len(list(model.model.backbone.model.parameters())) > 50
    assert all(parameter.requires_grad for parameter in backbone.values())

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pixel_values = torch.randn(2, 3, 64, 64)
    model.train()
    for step in range(2):
        optimizer.zero_grad()
        outputs = model(pixel_values=pixel_values, labels=LABELS)
        assert torch.isfinite(outputs.loss)
        outputs.loss.backward()
        missing = [key for key, parameter in backbone.items() if parameter.grad is None]
        assert not missing, f"step {step}: no gradient reaches {missing[:3]}"
        if step == 1:
            # At the official init the DCNv3 offset and mask projections are zero, which blocks the gradient of the
            # depthwise branch before them until one optimizer step has moved them; from then on every weight learns.
            zero = [key for key, parameter in backbone.items() if not parameter.grad.abs().sum() > 0]
            assert not zero, f"zero gradient for {zero[:3]}"
        optimizer.step()
    assert outputs.logits.shape == (2, SMALL_DETR["num_queries"], SMALL_DETR["num_labels"])
    assert outputs.pred_boxes.shape == (2, SMALL_DETR["num_queries"], 4)
