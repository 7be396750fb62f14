"""Converting official FlashInternImage (DCNv4) checkpoints: family detection, releases, refusals, UperNet."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from flash_cases import FlashCase

from internimage_hf import FlashInternImageBackbone, FlashInternImageConfig, InternImageConfig
from internimage_hf.conversion.errors import ConversionError
from internimage_hf.conversion.families import FLASH_INTERNIMAGE, INTERNIMAGE, detect_family
from internimage_hf.conversion.keys import convert_official_backbone_key
from internimage_hf.conversion.pipeline import convert_checkpoint
from internimage_hf.conversion.planning import plan_conversion
from internimage_hf.conversion.releases import (
    DINO_RELEASES,
    FLASH_DENSE_RELEASES,
    RELEASES,
    find_dense_release,
    find_detection_release,
    find_release,
)
from internimage_hf.conversion.sources import Source

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def case() -> FlashCase:
    return FlashCase.load("flash_tiny_s")


def quiet(message: str) -> None:
    pass


def config_file(case: FlashCase, path: Path, **changes) -> Path:
    path.write_text(json.dumps({**case.metadata["model_kwargs"], **changes}))
    return path


def stub_weights(channels: int, *suffixes: str) -> dict[str, torch.Tensor]:
    """Official-named backbone weights that only fix what planning reads: the stem width and the operator keys."""
    weights = {"patch_embed.conv2.weight": torch.zeros(channels, 1, 1, 1)}
    weights |= {f"levels.0.blocks.0.dcn.{suffix}": torch.zeros(1) for suffix in suffixes}
    return weights


# --------------------------------------------------------------------------------------------------- the family


def test_family_is_read_off_the_operator_weights(case):
    assert detect_family(case.backbone_state_dict) is FLASH_INTERNIMAGE
    assert detect_family(stub_weights(64, "offset.weight", "mask.weight")) is INTERNIMAGE
    with pytest.raises(ConversionError, match="mixes DCNv3 .* and DCNv4"):
        detect_family(stub_weights(64, "mask.weight", "offset_mask.weight"))


def test_official_names_map_to_ours_inside_dcnv4():
    assert (
        convert_official_backbone_key("levels.1.blocks.0.dcn.offset_mask_dw.weight")
        == "encoder.stages.1.layers.0.dcn.depthwise_conv.weight"
    )
    assert (
        convert_official_backbone_key("levels.3.blocks.2.dcn.offset_mask.bias")
        == "encoder.stages.3.layers.2.dcn.offset_mask.bias"
    )


@pytest.mark.parametrize("size, channels", [("t", 64), ("s", 80), ("b", 112), ("l", 160)])
def test_size_is_inferred_from_the_stem_within_the_family(size, channels):
    weights = stub_weights(channels, "offset_mask.weight") | {"head.weight": torch.zeros(1000, 1)}
    plan = plan_conversion(Source(Path("weights.pth"), "classification", weights))
    preset = FlashInternImageConfig.from_preset(size)
    assert type(plan.config) is FlashInternImageConfig and plan.config.num_labels == 1000
    for field in ("channels", "depths", "groups", "layer_scale", "offset_scale", "post_norm", "dw_kernel_size",
                  "mlp_fc2_bias", "dcn_output_bias"):  # fmt: skip
        assert getattr(plan.config, field) == getattr(preset, field), field


# --------------------------------------------------------------------------------------------------- releases


def test_release_table_lists_the_official_flash_checkpoints():
    flash = {name: r for name, r in RELEASES.items() if r.family == "flash_internimage"}
    assert {name: (r.preset, r.num_classes, r.image_size, r.top1) for name, r in flash.items()} == {
        "flash_intern_image_t_1k_224": ("t", 1000, 224, 83.6),
        "flash_intern_image_s_1k_224": ("s", 1000, 224, 84.4),
        "flash_intern_image_b_1k_224": ("b", 1000, 224, 84.9),
        "flash_internimage_l_22kto1k_384": ("l", 1000, 384, 88.1),
        "flash_intern_image_l_22k_384": ("l", 21841, 384, None),
    }
    assert flash["flash_intern_image_t_1k_224"].pth_url == (
        "https://huggingface.co/OpenGVLab/DCNv4/resolve/main/flash_intern_image_t_1k_224.pth"
    )
    assert all(r.hub_repo is None for r in flash.values())
    dino = {name: r.box_ap for name, r in DINO_RELEASES.items() if r.family == "flash_internimage"}
    assert dino == {
        f"dino_4scale_flash_internimage_{s}_1x_coco": ap for s, ap in zip("tsbl", (54.7, 55.3, 56.0, 58.8), strict=True)
    }
    methods = sorted({r.method for r in FLASH_DENSE_RELEASES.values()})
    assert methods == ["Cascade Mask R-CNN", "Mask R-CNN", "Mask2Former", "UperNet"] and len(FLASH_DENSE_RELEASES) == 16
    for name, release in FLASH_DENSE_RELEASES.items():
        assert re.search(rf"_flash_internimage_{release.preset}_", name), name


def test_classification_release_gives_the_flash_preset_labels_and_size():
    source = Source(
        Path("flash_internimage_l_22kto1k_384.pth"), "classification", stub_weights(160, "offset_mask.weight")
    )
    plan = plan_conversion(source, release=find_release(source.path.name))
    assert type(plan.config) is FlashInternImageConfig
    assert plan.config.mlp_fc2_bias and plan.config.dcn_output_bias and plan.config.offset_scale == 2.0
    assert plan.config.num_labels == 1000 and plan.image_size == 384 and plan.config.id2label[0] == "tench, Tinca tinca"


def test_dense_release_gives_the_backbone_size_and_a_note():
    name = "mask_rcnn_flash_internimage_b_fpn_3x_coco"
    weights = {"backbone." + k: v for k, v in stub_weights(112, "offset_mask.weight").items()}
    weights["roi_head.mask_head.conv_logits.weight"] = torch.zeros(1)
    source = Source(Path(f"{name}.pth"), "mmlab", weights)
    plan = plan_conversion(source, dense_release=find_dense_release(source.path.name))
    assert plan.task == "backbone" and plan.config.channels == 112 and plan.config.offset_scale == 0.5
    assert plan.config.layer_scale is None  # no gammas in these weights: the presence follows the checkpoint
    assert any("Mask R-CNN, COCO AP 50.6/45.4" in note for note in plan.notes)


def test_dino_release_of_the_other_family_is_refused():
    weights = {"backbone." + k: v for k, v in stub_weights(64, "offset.weight", "mask.weight").items()}
    weights |= {
        "bbox_head.transformer.query_embed.weight": torch.zeros(1),
        "bbox_head.label_embedding.weight": torch.zeros(1),
    }
    release = find_detection_release("dino_4scale_flash_internimage_t_1x_coco")
    message = "the release dino_4scale_flash_internimage_t_1x_coco describes a flash_internimage model, but the weights"
    with pytest.raises(ConversionError, match=message):
        plan_conversion(Source(Path("x.pth"), "mmlab", weights), detection_release=release)


# --------------------------------------------------------------------------------------------------- conversion


def test_unknown_keys_are_refused_with_a_listing(case, tmp_path):
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": {**case.state_dict, "levels.0.blocks.0.dcn.extra.weight": torch.zeros(2)}}, checkpoint)
    with pytest.raises(
        ConversionError, match=r"unexpected \(1\):\n    internimage.encoder.stages.0.layers.0.dcn.extra"
    ):
        convert_checkpoint(checkpoint, tmp_path / "out", config_file=config_file(case, tmp_path / "c.json"), log=quiet)
    assert not (tmp_path / "out").exists()


def test_config_of_the_other_family_is_refused(case, tmp_path):
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": case.state_dict}, checkpoint)
    kwargs = {k: v for k, v in case.metadata["model_kwargs"].items() if k not in ("mlp_fc2_bias", "dcn_output_bias")}
    internimage_config = tmp_path / "c.json"
    internimage_config.write_text(json.dumps({**kwargs, "core_op": "DCNv3"}))
    with pytest.raises(ConversionError, match="the configuration describes a internimage model, but the weights are"):
        convert_checkpoint(checkpoint, tmp_path / "out", config_file=internimage_config, log=quiet)


def test_upernet_with_a_flash_backbone_converts_exactly(case, tmp_path):
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    kwargs = {k: v for k, v in case.config_kwargs.items() if k != "num_labels"}
    backbone_config = FlashInternImageConfig(**kwargs, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone_config, hidden_size=24, auxiliary_channels=16, num_labels=5)
    torch.manual_seed(0)
    reference = UperNetForSemanticSegmentation(config).eval()
    state = reference.state_dict()
    for key in state:  # random heads, BatchNorm statistics included, so a missed tensor changes the output
        if key.startswith(("decode_head.", "auxiliary_head.")) and state[key].is_floating_point():
            fill = torch.rand_like(state[key]) + 0.5 if key.endswith("running_var") else torch.randn_like(state[key])
            state[key] = fill * 0.2
    state |= {"backbone." + convert_official_backbone_key(k): v for k, v in case.backbone_state_dict.items()}
    reference.load_state_dict(state, strict=True)
    mmseg = {"backbone." + k: v for k, v in case.backbone_state_dict.items()}
    for key, value in state.items():
        if key.startswith(("decode_head.", "auxiliary_head.")):
            mmseg[re.sub(r"\.classifier\.", ".conv_seg.", re.sub(r"\.batch_norm\.", ".bn.", key))] = value
    checkpoint = tmp_path / "upernet_flash_internimage_s_512_160k_ade20k.pth"
    torch.save({"state_dict": mmseg}, checkpoint)
    result = convert_checkpoint(
        checkpoint, tmp_path / "out", config_file=config_file(case, tmp_path / "c.json"), verify=True, verify_size=64,
        log=quiet,
    )  # fmt: skip
    assert result.task == "upernet" and result.max_abs_diff <= TOLERANCE
    card = (tmp_path / "out" / "README.md").read_text()
    assert "UperNetForSemanticSegmentation`, FlashInternImage backbone" in card
    assert "FlashInternImage-CUSTOM-32" in card and "deformable convolution v4 (DCNv4)" in card
    assert "arXiv:2401.06197" in card and "- flash_internimage" in card and "- dcnv4" in card
    assert "UperNet, ADE20K mIoU 50.6 / 51.6 (official README)" in card and "47.9" not in card  # not InternImage's
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["crop_size"]["height"] == 512
    converted = UperNetForSemanticSegmentation.from_pretrained(tmp_path / "out").eval()
    assert type(converted.backbone) is FlashInternImageBackbone
    with torch.no_grad():
        assert torch.equal(converted(case.input).logits, reference(case.input).logits)
        for ours, official in zip(converted.backbone(case.input).feature_maps, case.stage_outputs, strict=True):
            torch.testing.assert_close(ours, official, atol=TOLERANCE, rtol=0)


def test_internimage_checkpoints_still_convert_as_internimage():
    source = Source(
        Path("internimage_t_1k_224.pth"), "classification", stub_weights(64, "offset.weight", "mask.weight")
    )
    plan = plan_conversion(source, release=find_release(source.path.name))
    assert type(plan.config) is InternImageConfig and plan.config.core_op == "DCNv3"


def test_remote_code_is_not_written_for_flash_checkpoints(case, tmp_path):
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": case.state_dict}, checkpoint)
    config = config_file(case, tmp_path / "c.json")
    with pytest.raises(ConversionError, match="a FlashInternImage checkpoint loads with internimage_hf installed"):
        convert_checkpoint(checkpoint, tmp_path / "out", config_file=config, remote_code=True, log=quiet)
    messages = []
    convert_checkpoint(checkpoint, tmp_path / "out", config_file=config, repo_id="me/flash", log=messages.append)
    assert "remote code: not included (a FlashInternImage checkpoint loads with internimage_hf installed)" in messages
    assert not list((tmp_path / "out").glob("*.py"))


def test_mask2former_with_a_flash_backbone_converts(case, tmp_path):
    from official_mask2former import SMALL_HEAD, random_official_head
    from transformers import Mask2FormerForUniversalSegmentation

    in_channels = [case.metadata["model_kwargs"]["channels"] * 2**i for i in range(4)]
    weights = {"backbone." + k: v for k, v in case.backbone_state_dict.items()}
    weights |= random_official_head(0, in_channels=in_channels, **SMALL_HEAD)
    # not an official release name: a release's head facts are checked (tests/conversion/test_convert_mask2former.py)
    checkpoint = tmp_path / "mask2former_flash_s_small_head_ade20k.pth"
    torch.save({"state_dict": weights}, checkpoint)
    result = convert_checkpoint(
        checkpoint, tmp_path / "out", config_file=config_file(case, tmp_path / "c.json"), verify=True, verify_size=64,
        log=quiet,
    )  # fmt: skip
    assert result.task == "mask2former" and result.max_abs_diff <= TOLERANCE
    model = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path / "out").eval()
    encoder = model.model.pixel_level_module.encoder
    assert type(encoder) is FlashInternImageBackbone and model.config.id2label[0] == "wall"  # ADE20K, from the name
    with torch.no_grad():
        for ours, official in zip(encoder(case.input).feature_maps, case.stage_outputs, strict=True):
            torch.testing.assert_close(ours, official, atol=TOLERANCE, rtol=0)


# Our backbone names -> the official ones (the inverse of the renames the converter applies), for building an official
# detector checkpoint around a full-size FlashInternImage backbone.
OFFICIAL_BACKBONE_NAMES = (
    (r"^embeddings\.conv(\d)\.", r"patch_embed.conv\1."),
    (r"^embeddings\.norm(\d)\.", r"patch_embed.norm\1.1."),
    (r"^encoder\.stages\.", "levels."),
    (r"\.layers\.", ".blocks."),
    (r"\.depthwise_conv\.", ".offset_mask_dw."),
    (r"\.(norm1|norm2|norm)\.(weight|bias)$", r".\1.0.\2"),
    (r"\.downsample\.norm\.0\.", ".downsample.norm.1."),
    (r"\.layer_scale([12])$", r".gamma\1"),
)


def official_backbone_weights(config: FlashInternImageConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    weights = {}
    for key, value in FlashInternImageBackbone(config).state_dict().items():
        official = key
        for pattern, replacement in OFFICIAL_BACKBONE_NAMES:
            official = re.sub(pattern, replacement, official)
        assert convert_official_backbone_key(official) == key, (key, official)  # the helper inverts the converter
        weights[official] = value
    return weights


def test_official_flash_dino_release_converts_with_its_facts(tmp_path):
    """The official DINO head of the InternImage-T fixture reads 128/256/512-channel stages, as FlashInternImage-T's."""
    pytest.importorskip("torchvision", reason="the DINO image processor extends Deformable DETR's (torchvision)")
    from detection_fixtures import read_fixture
    from transformers import AutoModelForObjectDetection

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "detection" / "dino_internimage_t.safetensors"
    tensors, _ = read_fixture(fixture)
    head = {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")}
    head = {k: v for k, v in head.items() if not k.startswith("backbone.")}
    backbone = official_backbone_weights(FlashInternImageConfig.from_preset("t", layer_scale=1.0))
    name = "dino_4scale_flash_internimage_t_1x_coco"
    checkpoint = tmp_path / f"{name}.pth"
    torch.save({"state_dict": {**{"backbone." + k: v for k, v in backbone.items()}, **head}}, checkpoint)
    result = convert_checkpoint(checkpoint, tmp_path / "out", verify=True, log=quiet)
    assert result.task == "dino" and result.max_abs_diff <= TOLERANCE
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["backbone_config"]["model_type"] == "flash_internimage" and config["num_denoising"] == 100
    assert config["backbone_config"]["out_features"] == ["stage2", "stage3", "stage4"]
    assert config["backbone_config"]["layer_scale"] == 1.0  # the detector's gammas
    detector = AutoModelForObjectDetection.from_pretrained(tmp_path / "out")
    assert type(detector.model.backbone) is FlashInternImageBackbone
    card = (tmp_path / "out" / "README.md").read_text()
    assert "54.7" in card and "FlashInternImage backbone" in card and "parameters (official README)" not in card
