"""InternImage inside Transformers: the image-classification pipeline and dense-prediction heads."""

import pytest
import torch
from PIL import Image
from transformers import pipeline

from internimage_hf import InternImageConfig, InternImageForImageClassification, InternImageImageProcessorPil

LABELS = {0: "cat", 1: "dog", 2: "bird"}


def tiny_backbone_config(**overrides) -> InternImageConfig:
    kwargs = dict(channels=16, depths=(1, 1, 1, 1), groups=(2, 2, 4, 4), drop_path_rate=0.0)
    return InternImageConfig(**{**kwargs, **overrides})


def test_pipeline_shows_the_config_labels(tmp_path):
    config = tiny_backbone_config(id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    InternImageForImageClassification(config).save_pretrained(tmp_path)
    InternImageImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(
        tmp_path
    )
    classifier = pipeline("image-classification", model=str(tmp_path))
    predictions = classifier(Image.new("RGB", (80, 70), (200, 30, 30)), top_k=3)
    assert sorted(p["label"] for p in predictions) == sorted(LABELS.values())
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)


def test_upernet_with_internimage_backbone(tmp_path):
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    backbone_config = tiny_backbone_config(out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone_config, num_labels=5, hidden_size=32, auxiliary_channels=16)
    model = UperNetForSemanticSegmentation(config).eval()
    pixels, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    outputs = model(pixels, labels=labels)
    assert outputs.logits.shape == (2, 5, 64, 64) and torch.isfinite(outputs.loss)
    model.save_pretrained(tmp_path)
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(reloaded.backbone).__name__ == "InternImageBackbone"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).logits, model(pixels).logits, atol=1e-6, rtol=0)


def test_mask2former_with_internimage_backbone():
    pytest.importorskip("scipy")
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    config = Mask2FormerConfig(
        backbone_config=tiny_backbone_config(out_features=["stage1", "stage2", "stage3", "stage4"]),
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64,
        encoder_layers=1, decoder_layers=2, num_queries=4, num_labels=3,
    )  # fmt: skip
    model = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert outputs.class_queries_logits.shape == (1, 4, 4)
    assert outputs.masks_queries_logits.shape[:2] == (1, 4)


def test_detr_with_internimage_backbone():
    from transformers import DetrConfig, DetrForObjectDetection

    config = DetrConfig(
        backbone_config=tiny_backbone_config(out_features=["stage4"]), use_timm_backbone=False,
        use_pretrained_backbone=False, d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64,
        decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=5, num_labels=3,
    )  # fmt: skip
    model = DetrForObjectDetection(config).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert outputs.logits.shape == (1, 5, 4) and outputs.pred_boxes.shape == (1, 5, 4)
