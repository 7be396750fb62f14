"""DinoDetrConfig: the official InternImage-T DINO defaults, serialisation with a nested backbone, clear errors."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, ResNetConfig

from internimage_hf import DinoDetrConfig, InternImageConfig


def test_defaults_are_the_official_internimage_t_detector():
    config = DinoDetrConfig()
    assert (config.d_model, config.num_queries, config.num_feature_levels) == (256, 900, 4)
    assert (config.encoder_layers, config.decoder_layers, config.encoder_ffn_dim, config.decoder_ffn_dim) == (
        6,
        6,
        2048,
        2048,
    )
    assert config.position_embedding_temperature == 20
    assert config.num_labels == 80
    assert (config.id2label[0], config.id2label[79], config.label2id["car"]) == ("person", "toothbrush", 2)
    backbone = config.backbone_config
    assert isinstance(backbone, InternImageConfig)
    assert (backbone.channels, backbone.depths, backbone.groups) == (64, [4, 4, 18, 4], [4, 8, 16, 32])
    assert backbone.out_features == ["stage2", "stage3", "stage4"]
    assert (backbone.layer_scale, backbone.drop_path_rate) == (1.0, 0.2)


def test_round_trip_keeps_the_backbone(tmp_path):
    config = DinoDetrConfig(
        backbone_config=InternImageConfig(channels=16, depths=(1, 1, 2, 1), groups=(1, 2, 4, 8), out_indices=(2, 3, 4)),
        num_queries=30,
        id2label={0: "cat", 1: "dog"},
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is DinoDetrConfig
    assert loaded.num_queries == 30 and loaded.id2label == {0: "cat", 1: "dog"}
    assert type(loaded.backbone_config) is InternImageConfig
    assert loaded.backbone_config.channels == 16
    assert loaded.backbone_config.out_features == ["stage2", "stage3", "stage4"]


def test_any_transformers_backbone_config():
    config = DinoDetrConfig(backbone_config={"model_type": "resnet", "out_features": ["stage2", "stage3", "stage4"]})
    assert isinstance(config.backbone_config, ResNetConfig)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_feature_levels": 2}, "num_feature_levels"),
        ({"encoder_attention_heads": 7}, "encoder_attention_heads"),
        ({"decoder_attention_heads": 0}, "decoder_attention_heads"),
        ({"d_model": 250}, "d_model"),
        ({"num_queries": 0}, "num_queries"),
        ({"decoder_layers": 0}, "decoder_layers"),
        ({"num_denoising": -1}, "num_denoising"),
        ({"backbone_config": {"model_type": "no-such-model"}}, "backbone_config"),
    ],
)
def test_bad_configuration_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DinoDetrConfig(**kwargs)
