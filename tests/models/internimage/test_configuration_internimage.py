"""InternImageConfig: official field names, presets, validation, backbone fields, round trips."""

import json

import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError

from internimage_hf import PRESETS, InternImageConfig, InternImageForImageClassification

# Parameter counts of the official classification models (1000 classes), counted on the official code.
OFFICIAL_PARAMETER_COUNTS = {
    "t": 29_918_424,
    "s": 50_079_880,
    "b": 97_461_832,
    "l": 223_334_810,
    "xl": 334_819_780,
    "h": 1_089_636_760,
    "g": 3_076_373_352,
}

OFFICIAL_HUB_NAMES = [
    "internimage_t_1k_224", "internimage_s_1k_224", "internimage_b_1k_224", "internimage_l_22kto1k_384",
    "internimage_xl_22kto1k_384", "internimage_h_22kto1k_640", "internimage_g_22kto1k_512", "internimage_l_22k_384",
    "internimage_xl_22k_384", "internimage_h_jointto22k_384", "internimage_g_jointto22k_384",
]  # fmt: skip


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETER_COUNTS))
def test_preset_parameter_counts(name):
    config = InternImageConfig.from_preset(name, num_labels=1000)
    with torch.device("meta"):  # counts without allocating H/G
        model = InternImageForImageClassification(config)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMETER_COUNTS[name]


def test_preset_names_and_overrides():
    config = InternImageConfig.from_preset("InternImage-XL", num_labels=3, drop_path_rate=0.0)
    assert (config.channels, config.offset_scale, config.num_labels, config.drop_path_rate) == (192, 2.0, 3, 0.0)
    assert InternImageConfig.from_preset("internimage_h").use_clip_projector
    with pytest.raises(ValueError, match="Unknown InternImage preset"):
        InternImageConfig.from_preset("q")


@pytest.mark.parametrize("hub_name", OFFICIAL_HUB_NAMES)
def test_official_hub_config_loads(shared_dir, hub_name, tmp_path):
    official = json.loads((shared_dir / "official_hub" / hub_name / "config.json").read_text())
    config = InternImageConfig.from_pretrained(shared_dir / "official_hub" / hub_name)
    assert config.num_labels == official["num_classes"]
    for field in ("channels", "depths", "groups", "layer_scale", "offset_scale", "post_norm", "res_post_norm",
                  "dw_kernel_size", "level2_post_norm", "level2_post_norm_block_ids", "center_feature_scale",
                  "use_clip_projector", "remove_center", "mlp_ratio", "cls_scale"):  # fmt: skip
        assert getattr(config, field) == official[field], field
    assert "auto_map" not in config.to_dict(), "the remote-code auto_map must not survive into our checkpoints"
    preset = InternImageConfig.from_preset(hub_name.split("_")[1])
    assert (config.channels, config.depths, config.groups) == (preset.channels, preset.depths, preset.groups)
    config.save_pretrained(tmp_path)
    reloaded = InternImageConfig.from_pretrained(tmp_path).to_dict()
    reloaded.pop("_name_or_path")
    assert reloaded == {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


def test_round_trip_keeps_every_field(tmp_path):
    config = InternImageConfig.from_preset(
        "h", num_labels=5, out_features=["stage2", "stage4"], with_cp=True, remove_center=True
    )
    config.save_pretrained(tmp_path)
    loaded = InternImageConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.out_features == ["stage2", "stage4"] and loaded.out_indices == [2, 4]
    assert InternImageConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_yaml_style_strings_are_literal_evaluated():
    assert InternImageConfig(layer_scale="1e-5").layer_scale == 1e-5
    assert InternImageConfig(layer_scale="None").layer_scale is None


def test_backbone_fields():
    config = InternImageConfig(out_indices=[1, 3])
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert config.out_features == ["stage1", "stage3"]
    assert InternImageConfig().out_features == ["stage4"]
    with pytest.raises(ValueError):
        InternImageConfig(out_features=["stage9"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 64, "groups": (3, 8, 16, 32)}, r"groups\[0\]"),
        ({"depths": (1, 1, 1)}, "4 entries"),
        ({"core_op": "DCNv4"}, "core_op"),
        ({"act_layer": "Tanh"}, "act_layer"),
        ({"norm_layer": "BN"}, "norm_layer"),
        ({"dw_kernel_size": 4}, "dw_kernel_size"),
        ({"drop_path_type": "cosine"}, "drop_path_type"),
        ({"level2_post_norm": True, "level2_post_norm_block_ids": (40,)}, "level2_post_norm_block_ids"),
        ({"mlp_ratio": float("nan")}, "mlp_ratio"),
        ({"offset_scale": float("inf")}, "offset_scale"),
        ({"cls_scale": 0}, "cls_scale"),
        ({"layer_norm_eps": -1e-6}, "layer_norm_eps"),
        ({"drop_rate": -0.1}, "drop_rate"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"layer_scale": "lots"}, "layer_scale"),
        ({"layer_scale": 0.0}, "layer_scale"),
        ({"image_size": 0}, "image_size"),
        ({"num_channels": -3}, "num_channels"),
        ({"initializer_range": float("nan")}, "initializer_range"),
    ],
)
def test_invalid_architecture_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InternImageConfig(**kwargs)


@pytest.mark.parametrize(
    "field, value",
    [("offset_scale", "lots"), ("post_norm", "yes"), ("channels", 64.5), ("depths", "4,4,18,4"), ("groups", None)],
)
def test_wrong_types_are_rejected_naming_the_field(field, value):
    """`@strict` type checks, on construction and on assignment (a wrong type used to fail only at forward)."""
    with pytest.raises(StrictDataclassFieldValidationError, match=f"field '{field}'"):
        InternImageConfig(**{field: value})
    config = InternImageConfig()
    with pytest.raises(StrictDataclassFieldValidationError, match=f"field '{field}'"):
        setattr(config, field, value)


def test_integers_are_accepted_for_float_fields():
    """JSON writes `4` for 4.0; official YAML-style strings still work for `layer_scale`."""
    config = InternImageConfig(mlp_ratio=4, offset_scale=2, drop_path_rate=0, cls_scale=1, layer_scale=1)
    assert (config.mlp_ratio, config.offset_scale, config.layer_scale) == (4, 2, 1)


def test_presets_cover_the_seven_official_sizes():
    assert sorted(PRESETS) == sorted(["t", "s", "b", "l", "xl", "h", "g"])
    assert [InternImageConfig.from_preset(n).image_size for n in ("t", "l", "h", "g")] == [224, 384, 640, 512]


# ------------------------------------------------------------------------------ common config behaviour (ConfigTester)

# What generic tooling passes (Transformers' ConfigTester passes `hidden_size=37` to every vision config).
COMMON_INPUTS = {"hidden_size": 37, "num_channels": 3, "channels": 16, "depths": [1, 1, 2, 1], "groups": [2, 2, 4, 4]}
HIDDEN_SIZE_LOGGER = "internimage_hf.models.internimage.configuration_internimage"


def test_common_kwargs_are_accepted_and_hidden_size_follows_the_widths(caplog):
    with caplog.at_level("WARNING", logger=HIDDEN_SIZE_LOGGER):
        config = InternImageConfig(**COMMON_INPUTS)
    assert config.hidden_size == 16 * 8 == config.hidden_sizes[-1]
    assert "`hidden_size`=37 is ignored" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=HIDDEN_SIZE_LOGGER):
        assert InternImageConfig(channels=16, groups=[2, 2, 4, 4], hidden_size=128).hidden_size == 128
    assert not caplog.text, "a hidden_size that agrees with the widths is not worth a warning"
    assert [InternImageConfig.from_preset(n).hidden_size for n in ("t", "s", "h", "g")] == [512, 640, 2560, 4096]


@pytest.mark.parametrize("name, value", [("num_channels", 5), ("hidden_size", 7), ("num_labels", 4)])
def test_common_properties_can_be_set(name, value):
    config = InternImageConfig(**COMMON_INPUTS)
    assert hasattr(config, name)
    setattr(config, name, value)
    assert getattr(config, name) == value


def test_update_and_update_from_string():
    config = InternImageConfig(**COMMON_INPUTS)
    config.update({"hidden_size": 40, "drop_rate": 0.25, "custom_field": "x"})
    assert (config.hidden_size, config.drop_rate, config.custom_field) == (40, 0.25, "x")
    config.update_from_string("mlp_ratio=2.0,post_norm=true")
    assert (config.mlp_ratio, config.post_norm) == (2.0, True)


def test_changing_the_widths_keeps_hidden_size_consistent():
    config = InternImageConfig(**COMMON_INPUTS)
    config.channels = 32
    assert config.hidden_size == 256
    config.depths = [1, 1, 1, 1]
    assert config.hidden_size == 256


def test_to_json_string_and_file_round_trip(tmp_path):
    config = InternImageConfig(**COMMON_INPUTS)
    as_json = json.loads(config.to_json_string())
    assert {k: as_json[k] for k in ("num_channels", "channels", "depths", "groups")} == {
        k: COMMON_INPUTS[k] for k in ("num_channels", "channels", "depths", "groups")
    }
    assert as_json["hidden_size"] == 128
    config.to_json_file(tmp_path / "config.json")
    assert InternImageConfig.from_json_file(tmp_path / "config.json").to_dict() == config.to_dict()


def test_to_dict_from_dict_round_trip_keeps_unknown_kwargs(tmp_path):
    config = InternImageConfig(**COMMON_INPUTS, my_tool_setting=[1, 2], num_labels=5)
    as_dict = config.to_dict()
    assert as_dict["my_tool_setting"] == [1, 2] and as_dict["hidden_size"] == 128
    assert InternImageConfig.from_dict(as_dict).to_dict() == as_dict
    config.save_pretrained(tmp_path)
    reloaded = InternImageConfig.from_pretrained(tmp_path)
    assert reloaded.my_tool_setting == [1, 2]
    assert reloaded.to_dict() == config.to_dict()


def test_save_pretrained_from_pretrained_with_subfolder(tmp_path):
    config = InternImageConfig(**COMMON_INPUTS)
    config.save_pretrained(tmp_path / "sub")
    reloaded = InternImageConfig.from_pretrained(tmp_path, subfolder="sub")
    assert reloaded.to_dict() == config.to_dict()


def test_disagreeing_hidden_size_in_a_config_file_is_ignored(tmp_path, caplog):
    as_dict = {**InternImageConfig(**COMMON_INPUTS).to_dict(), "hidden_size": 999}
    (tmp_path / "config.json").write_text(json.dumps(as_dict))
    with caplog.at_level("WARNING", logger=HIDDEN_SIZE_LOGGER):
        assert InternImageConfig.from_pretrained(tmp_path).hidden_size == 128
    assert "`hidden_size`=999 is ignored" in caplog.text


def test_hidden_sizes_is_accepted_but_follows_channels(caplog):
    with caplog.at_level("WARNING", logger=HIDDEN_SIZE_LOGGER):
        agreeing = InternImageConfig(**COMMON_INPUTS, hidden_sizes=[16, 32, 64, 128])
    assert "hidden_sizes" not in caplog.text, "a value that agrees with the widths is not worth a warning"
    with caplog.at_level("WARNING", logger=HIDDEN_SIZE_LOGGER):
        config = InternImageConfig(**COMMON_INPUTS, hidden_sizes=[8, 16, 32, 64])
        config.hidden_sizes = [1, 2, 3, 4]
    assert config.hidden_sizes == agreeing.hidden_sizes == [16, 32, 64, 128]
    assert caplog.text.count("`hidden_sizes`=") == 2
    assert "hidden_sizes" not in config.to_dict()


def test_num_labels_and_id2label():
    config = InternImageConfig(**COMMON_INPUTS, num_labels=5)
    assert len(config.id2label) == 5 and len(config.label2id) == 5
    config.num_labels = 3
    assert len(config.id2label) == 3 and len(config.label2id) == 3
    named = InternImageConfig(**COMMON_INPUTS, id2label={"0": "cat", "1": "dog"})
    assert named.num_labels == 2 and named.id2label == {0: "cat", 1: "dog"}
    assert InternImageConfig.from_dict(named.to_dict()).id2label == {0: "cat", 1: "dog"}
