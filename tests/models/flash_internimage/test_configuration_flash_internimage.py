"""FlashInternImage configuration: the official sizes, their parameter counts, and errors naming the field."""

import pytest
import torch
from transformers import AutoConfig

from internimage_hf import FLASH_PRESETS, FlashInternImageConfig, FlashInternImageForImageClassification

# Parameters of the official `FlashInternImage` (OpenGVLab/DCNv4 @ 4b848f7, classification/models/flash_intern_image.py)
# built from classification/configs/flash_intern_image_{t,s,b}_1k_224.yaml and flash_intern_image_l_22kto1k_384.yaml
# (1000 classes) with `tools/flash_parity_fixtures.official_parameter_counts`: the official DCNv4 package with the
# stand-in extension, timm 0.9.16, on CPU. The README rounds them to 30M, 50M, 97M and 223M.
OFFICIAL_PARAMETERS = {"t": 29_815_528, "s": 50_067_496, "b": 97_448_960, "l": 223_297_080}


@pytest.mark.parametrize("size", sorted(OFFICIAL_PARAMETERS))
def test_presets_have_the_official_parameter_counts(size):
    with torch.device("meta"):
        model = FlashInternImageForImageClassification(FlashInternImageConfig.from_preset(size, num_labels=1000))
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMETERS[size]


def test_presets_carry_the_official_options():
    t, s, b, large = (FlashInternImageConfig.from_preset(name) for name in "tsbl")
    assert t.dw_kernel_size is None and t.layer_scale is None and not t.post_norm and t.offset_scale == 1.0
    assert s.dw_kernel_size == 3 and s.post_norm and s.layer_scale == 1e-5 and s.offset_scale == 1.0
    assert b.offset_scale == 0.5 and b.channels == 112
    assert large.offset_scale == 2.0 and large.mlp_fc2_bias and large.dcn_output_bias and large.image_size == 384
    assert not any(c.mlp_fc2_bias or c.dcn_output_bias for c in (t, s, b))
    assert all(c.core_op == "DCNv4" and c.model_type == "flash_internimage" for c in (t, s, b, large))
    assert sorted(FLASH_PRESETS) == ["b", "l", "s", "t"]
    assert FlashInternImageConfig.from_preset("flash_internimage-b").channels == 112


def test_config_round_trips_through_auto_config(tmp_path):
    FlashInternImageConfig.from_preset("l", num_labels=7).save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is FlashInternImageConfig
    assert loaded.mlp_fc2_bias and loaded.dcn_output_bias and loaded.dw_kernel_size == 3 and loaded.num_labels == 7
    assert loaded.hidden_sizes == [160, 320, 640, 1280] and loaded.hidden_size == 1280


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"core_op": "DCNv3"}, "`core_op` must be one of \\('DCNv4',\\)"),
        ({"groups": (3, 8, 16, 32)}, "`groups\\[0\\]` = 3 does not divide"),
        ({"dw_kernel_size": 4}, "`dw_kernel_size` must be a positive odd number"),
        ({"offset_scale": 0.0}, "`offset_scale` must be a finite positive number"),
    ],
)
def test_bad_values_raise_errors_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlashInternImageConfig(**kwargs)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="Unknown FlashInternImage preset 'xl'"):
        FlashInternImageConfig.from_preset("xl")
