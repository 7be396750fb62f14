"""Official InternImage and FlashInternImage Mask2Former checkpoints: key mapping, configuration, release table and
the converter.

The head weights are synthetic, in the official (mmcv 1.x) names of `official_mask2former`; the backbone is the
golden H-style one (the tiny FlashInternImage-T fixture for the FlashInternImage releases). Numerical equivalence
with mmdet's Mask2Former head is in `tests/reference/test_mask2former_reference.py` (reference environment only).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from flash_cases import FlashCase
from official_mask2former import CITYSCAPES_HEAD, SMALL_HEAD, official_head_shapes, random_official_head
from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation
from transformers.utils import is_torchvision_available

import internimage_hf  # noqa: F401  (registers InternImage as a backbone)
from internimage_hf import FlashInternImageBackbone, FlashInternImageConfig, InternImageConfig
from internimage_hf.conversion.cli import main
from internimage_hf.conversion.errors import ConversionError
from internimage_hf.conversion.mask2former import (
    build_mask2former_config,
    convert_mask2former_head_key,
    convert_mask2former_state_dict,
)
from internimage_hf.conversion.pipeline import convert_checkpoint
from internimage_hf.conversion.planning import plan_conversion
from internimage_hf.conversion.releases import (
    FLASH_DENSE_RELEASES,
    MASK2FORMER_RELEASES,
    dataset_label_set,
    find_segmentation_release,
    parse_mmseg_name,
)
from internimage_hf.conversion.sources import Source
from internimage_hf.data.labels import segmentation_id2label
from internimage_hf.models.flash_internimage.configuration_flash_internimage import FLASH_PRESETS
from internimage_hf.models.internimage.configuration_internimage import PRESETS

STAGES = ["stage1", "stage2", "stage3", "stage4"]
TOLERANCE = 1e-4
CITYSCAPES = "mask2former_internimage_h_1024x1024_80k_mapillary2cityscapes"
ADE20K = "mask2former_internimage_h_896_80k_cocostuff2ade20k"
FLASH_T = "mask2former_flash_internimage_t_512_160k_ade20k_ss"
# The FlashInternImage-T release's head (100 queries, 256-d, 8 heads, 150 classes; the official FFN widths) with
# fewer layers, which the release facts do not fix.
FLASH_T_HEAD = dict(dim=256, heads=8, enc_layers=2, dec_layers=3, enc_ffn=1024, dec_ffn=2048, queries=100, classes=150)


def backbone_config(golden) -> InternImageConfig:
    kwargs = {k: v for k, v in golden.model_kwargs.items() if k != "num_classes"}
    return InternImageConfig(**kwargs, out_features=STAGES)


def official_checkpoint(golden, seed: int = 0, **head) -> dict[str, torch.Tensor]:
    """Golden backbone under ``backbone.`` + a random official head (``decode_head.``)."""
    in_channels = [golden.model_kwargs["channels"] * 2**i for i in range(4)]
    weights = {"backbone." + k: v for k, v in golden.state_dict.items() if k.startswith(("patch_embed.", "levels."))}
    return {**weights, **random_official_head(seed, in_channels=in_channels, **head)}


@pytest.fixture(scope="module")
def tiny_h(golden_cases):
    return golden_cases["tiny_h"]


@pytest.fixture(scope="module")
def flash_t() -> FlashCase:
    return FlashCase.load("flash_tiny_t")


# --- key mapping


@pytest.mark.parametrize("head", [CITYSCAPES_HEAD, SMALL_HEAD], ids=["cityscapes_head", "small_head"])
def test_every_official_key_is_consumed_and_every_model_key_filled(head, tiny_h):
    official = official_checkpoint(tiny_h, **head)
    config = build_mask2former_config(backbone_config(tiny_h), official, num_heads=head["heads"])
    converted = convert_mask2former_state_dict(official)
    expected = {k: tuple(v.shape) for k, v in Mask2FormerForUniversalSegmentation(config).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    # one tensor per official key, except each self-attention in_proj (weight, bias) split into q, k, v
    assert len(converted) == len(official) + 2 * 2 * head["dec_layers"] + 1  # + criterion.empty_weight
    assert converted["criterion.empty_weight"].tolist() == [1.0] * head["classes"] + [pytest.approx(0.1)]


def test_config_read_off_the_weights(tiny_h):
    official = official_checkpoint(tiny_h, **CITYSCAPES_HEAD)
    config = build_mask2former_config(backbone_config(tiny_h), official)
    assert (config.feature_size, config.mask_feature_size, config.hidden_dim) == (256, 256, 256)
    assert (config.num_queries, config.num_labels, config.num_attention_heads) == (100, 19, 8)
    # 9 official decoder layers: Transformers counts the query initialisation as one more
    assert (config.encoder_layers, config.decoder_layers) == (6, 10)
    assert (config.encoder_feedforward_dim, config.dim_feedforward) == (1024, 2048)
    assert config.enforce_input_projection is False
    with pytest.raises(ConversionError, match="another number of sampling points"):
        build_mask2former_config(backbone_config(tiny_h), official, num_heads=16)


def test_self_attention_projection_is_split_into_query_key_value(tiny_h):
    official = official_checkpoint(tiny_h, **SMALL_HEAD)
    packed = official["decode_head.transformer_decoder.layers.3.attentions.1.attn.in_proj_weight"]
    converted = convert_mask2former_state_dict(official)
    prefix = "model.transformer_module.decoder.layers.3.self_attn."
    split = [converted[f"{prefix}{name}_proj.weight"] for name in ("q", "k", "v")]
    assert torch.equal(torch.cat(split), packed)
    # the cross-attention keeps PyTorch's packed projection
    cross = "model.transformer_module.decoder.layers.3.cross_attn.in_proj_weight"
    assert converted[cross] is official["decode_head.transformer_decoder.layers.3.attentions.0.attn.in_proj_weight"]


@pytest.mark.parametrize(
    ("official", "ours"),
    [
        (
            "decode_head.pixel_decoder.input_convs.0.gn.bias",
            "model.pixel_level_module.decoder.input_projections.0.1.bias",
        ),
        ("decode_head.pixel_decoder.level_encoding.weight", "model.pixel_level_module.decoder.level_embed"),
        (
            "decode_head.pixel_decoder.lateral_convs.0.conv.weight",
            "model.pixel_level_module.decoder.adapter_1.0.weight",
        ),
        ("decode_head.pixel_decoder.output_convs.0.gn.weight", "model.pixel_level_module.decoder.layer_1.1.weight"),
        (
            "decode_head.pixel_decoder.encoder.layers.5.norms.1.weight",
            "model.pixel_level_module.decoder.encoder.layers.5.final_layer_norm.weight",
        ),
        (
            "decode_head.transformer_decoder.layers.8.norms.0.bias",
            "model.transformer_module.decoder.layers.8.cross_attn_layer_norm.bias",
        ),
        ("decode_head.transformer_decoder.post_norm.weight", "model.transformer_module.decoder.layernorm.weight"),
        ("decode_head.query_embed.weight", "model.transformer_module.queries_embedder.weight"),
        ("decode_head.query_feat.weight", "model.transformer_module.queries_features.weight"),
        ("decode_head.mask_embed.4.bias", "model.transformer_module.decoder.mask_predictor.mask_embedder.2.0.bias"),
        ("decode_head.cls_embed.weight", "class_predictor.weight"),
    ],
)
def test_key_names(official, ours):
    assert convert_mask2former_head_key(official) == ours


@pytest.mark.parametrize("key", ["decode_head.conv_seg.weight", "decode_head.mask_embed.1.weight", "neck.x.weight"])
def test_keys_outside_the_official_head_are_refused(key):
    with pytest.raises(ValueError, match="not a weight of the official Mask2Former head|neither a backbone"):
        convert_mask2former_head_key(key)


def test_unsupported_layouts_are_named(tiny_h):
    official = official_checkpoint(tiny_h, **SMALL_HEAD)
    four_levels = {**official, "decode_head.pixel_decoder.level_encoding.weight": torch.zeros(4, 64)}
    with pytest.raises(ConversionError, match="4 feature levels; Transformers' Mask2Former always uses 3"):
        build_mask2former_config(backbone_config(tiny_h), four_levels)
    odd_offsets = {
        **official,
        "decode_head.pixel_decoder.encoder.layers.0.attentions.0.sampling_offsets.weight": torch.zeros(50, 64),
    }
    with pytest.raises(ConversionError, match="50 rows, not heads x 3 levels x 4 points x 2"):
        build_mask2former_config(backbone_config(tiny_h), odd_offsets)


# --- release table


def test_release_table_facts():
    assert len(MASK2FORMER_RELEASES) == 11
    ade = MASK2FORMER_RELEASES[ADE20K]
    assert (ade.dataset, ade.num_classes, ade.crop_size, ade.miou) == ("ADE20K", 150, 896, (62.6, 62.9))
    assert ade.pth_url == f"https://huggingface.co/OpenGVLab/InternImage/resolve/main/{ADE20K}.pth"
    city = MASK2FORMER_RELEASES[CITYSCAPES]
    assert (city.num_classes, city.crop_size, city.miou, city.slide) == (19, 1024, (86.37, 86.96), 1024)
    # OpenGVLab/DCNv4: README (single-scale mIoU) and segmentation/configs/ade20k/<name>.py
    flash = {name: r for name, r in MASK2FORMER_RELEASES.items() if r.family == "flash_internimage"}
    facts = {
        n: (r.preset, r.crop_size, r.num_queries, r.hidden_dim, r.num_heads, r.test_scale, r.miou)
        for n, r in flash.items()
    }
    assert facts == {
        FLASH_T: ("t", 512, 100, 256, 8, (2048, 512), (51.2, None)),
        "mask2former_flash_internimage_s_640_160k_ade20k_ss": ("s", 640, 200, 256, 8, (2560, 640), (52.6, None)),
        "mask2former_flash_internimage_b_640_160k_ade20k_ss": ("b", 640, 200, 256, 8, (2560, 640), (53.4, None)),
        "mask2former_flash_internimage_l_640_160k_ade20k_ss": ("l", 640, 200, 256, 8, (2560, 640), (56.7, None)),
    }
    assert flash[FLASH_T].pth_url == f"https://huggingface.co/OpenGVLab/DCNv4/resolve/main/{FLASH_T}.pth"
    # every Mask2Former of the FlashInternImage release table is here, with that table's facts
    flash_table = {name: r for name, r in FLASH_DENSE_RELEASES.items() if r.method == "Mask2Former"}
    assert set(flash) == set(flash_table)
    for name, release in flash.items():
        listed = flash_table[name]
        assert (release.preset, release.family, release.pth_url) == (listed.preset, listed.family, listed.pth_url)
        assert (release.dataset, f"mIoU {release.miou[0]}") == (listed.dataset, listed.metric)
    for release in MASK2FORMER_RELEASES.values():
        if release.family == "internimage":
            assert release.preset == "h" and release.name.startswith("mask2former_internimage_h_")
        else:
            assert release.preset in FLASH_PRESETS and release.reported_params is None
            assert release.name.startswith(f"mask2former_flash_internimage_{release.preset}_")
        assert parse_mmseg_name(release.pth_file) == (release.preset, release.crop_size)
        assert find_segmentation_release(f"/downloads/{release.pth_file}") is release
        if release.label_set is not None:  # the shipped names fit the head
            assert len(segmentation_id2label(release.label_set)) == release.num_classes


def test_dataset_of_a_file_name_is_the_last_one_named():
    assert dataset_label_set(f"{ADE20K}.pth") == "ade20k"  # COCO-Stuff -> ADE20K
    assert dataset_label_set("mask2former_internimage_h_512_40k_cocostuff164k_to_10k") == "coco_stuff"
    assert dataset_label_set("upernet_internimage_xl_512x1024_160k_mapillary2cityscapes.pth") == "cityscapes"
    assert dataset_label_set("mask2former_internimage_h_480_40k_nyu.pth") is None


# The README's #params column against the converted architecture at full size. Three entries disagree with their
# own configs, whose heads are those of the 1.31B / 1094M models (same queries, widths, depths; only the classes
# differ, a few thousand parameters).
README_INCONSISTENT = {
    "mask2former_internimage_h_512_40k_cocostuff164k_to_10k": 1313.5e6,  # README 1.28B
    "mask2former_internimage_h_480_40k_pascal_context_59": 1093.9e6,  # README 1.07B
    "mask2former_internimage_h_480_40k_nyu": 1093.9e6,  # README 1.07B
}


def _reported(text: str) -> float:
    return float(text[:-1]) * (1e9 if text.endswith("B") else 1e6)


@pytest.mark.parametrize("name", sorted(name for name, r in MASK2FORMER_RELEASES.items() if r.reported_params))
def test_release_architecture_has_the_reported_parameter_count(name):
    release = MASK2FORMER_RELEASES[name]
    backbone = InternImageConfig(**PRESETS["h"], out_features=STAGES)
    in_channels = [backbone.channels * 2**i for i in range(4)]
    decoder_ffn = 4 * release.hidden_dim if release.hidden_dim == 1024 else 8 * release.hidden_dim  # their configs
    shapes = official_head_shapes(
        in_channels, release.hidden_dim, release.num_heads, 6, 9, 4 * release.hidden_dim, decoder_ffn,
        release.num_queries, release.num_classes,
    )  # fmt: skip
    head = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
    with torch.device("meta"):
        model = Mask2FormerForUniversalSegmentation(build_mask2former_config(backbone, head, release.num_heads))
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(torch.Size(s).numel() for s in shapes.values()) + sum(
        p.numel() for p in model.model.pixel_level_module.encoder.parameters()
    )
    expected = README_INCONSISTENT.get(name, _reported(release.reported_params))
    assert abs(count - expected) / expected < 0.003


# --- converter


def write_checkpoint(directory: Path, name: str, golden, **head) -> tuple[Path, Path]:
    """A ``.pth`` in the official layout (``state_dict`` + ``meta``) and a config.json for the tiny backbone."""
    checkpoint = directory / f"{name}.pth"
    meta = {"CLASSES": [f"class {i}" for i in range(head["classes"])], "iter": 80000}
    torch.save({"meta": meta, "state_dict": official_checkpoint(golden, **head)}, checkpoint)
    config = directory / "config.json"
    config.write_text(json.dumps({k: v for k, v in golden.model_kwargs.items() if k != "num_classes"}))
    return checkpoint, config


def test_release_converts_with_verify(tiny_h, tmp_path, capsys):
    checkpoint, config = write_checkpoint(tmp_path, CITYSCAPES, tiny_h, **CITYSCAPES_HEAD)
    args = [checkpoint, tmp_path / "out", "--config", config, "--verify", "--verify_size", "64"]
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    assert "verify: max abs diff of logits = " in out and "mask2former: " in out

    model = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path / "out").eval()
    assert model.config.id2label == segmentation_id2label("cityscapes")
    assert (model.config.num_queries, model.config.backbone_config.out_features) == (100, STAGES)
    reference = Mask2FormerForUniversalSegmentation(model.config).eval()
    reference.load_state_dict(convert_mask2former_state_dict(official_checkpoint(tiny_h, **CITYSCAPES_HEAD)))
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(pixel_values), reference(pixel_values)
    # not bit-equal: the loaded backbone stores its conv weights channels-last, which changes the conv's rounding
    assert (ours.class_queries_logits - theirs.class_queries_logits).abs().max() < TOLERANCE
    assert (ours.masks_queries_logits - theirs.masks_queries_logits).abs().max() < TOLERANCE

    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "Mask2FormerImageProcessor"
    assert processor["size"] == {"shortest_edge": 1024, "longest_edge": 2048} and processor["size_divisor"] == 32
    assert (processor["num_labels"], processor["do_reduce_labels"], processor["ignore_index"]) == (19, False, 255)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| Cityscapes val mIoU (%), single / multi-scale | 86.37 / 86.96" in card
    assert f"[{CITYSCAPES}.pth](https://huggingface.co/OpenGVLab/InternImage/resolve/main/{CITYSCAPES}.pth)" in card
    assert "pipeline_tag: image-segmentation" in card and "slides a 1024x1024 window" in card


@pytest.mark.skipif(
    not is_torchvision_available(), reason="Transformers 5.4's Mask2Former image processors need torchvision"
)
def test_semantic_pipeline_names_the_masks(tiny_h, tmp_path):
    from PIL import Image
    from transformers import pipeline

    checkpoint, config = write_checkpoint(tmp_path, "mask2former_internimage_h_512_160k_ade20k", tiny_h, **SMALL_HEAD)
    result = convert_checkpoint(checkpoint, tmp_path / "out", config_file=config, log=lambda *_: None)
    assert result.task == "mask2former"  # found from the decode head, labels from the file name
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert type(processor).__name__.startswith("Mask2FormerImageProcessor") and processor.do_reduce_labels is False
    assert processor.size == {"shortest_edge": 512, "longest_edge": 2048}  # from the file name's 512
    processor.size = {"shortest_edge": 64, "longest_edge": 128}  # keep the CPU test small
    segmenter = pipeline("image-segmentation", model=str(tmp_path / "out"), image_processor=processor)
    image = Image.fromarray(torch.randint(0, 255, (48, 80, 3), dtype=torch.uint8).numpy())
    segments = segmenter(image, subtask="semantic")
    names = set(segmentation_id2label("ade20k").values())
    assert segments and all(s["label"] in names and s["mask"].size == (80, 48) for s in segments)


def write_flash_checkpoint(directory: Path, name: str, case: FlashCase, **head) -> tuple[Path, Path]:
    """An official-layout ``.pth`` of the tiny FlashInternImage backbone and `head`, and its backbone config.json."""
    in_channels = [case.metadata["model_kwargs"]["channels"] * 2**i for i in range(4)]
    weights = {"backbone." + k: v for k, v in case.backbone_state_dict.items()}
    weights |= random_official_head(0, in_channels=in_channels, **head)
    checkpoint = directory / f"{name}.pth"
    torch.save({"meta": {"iter": 160000}, "state_dict": weights}, checkpoint)
    config = directory / "config.json"
    config.write_text(json.dumps({k: v for k, v in case.metadata["model_kwargs"].items() if k != "num_classes"}))
    return checkpoint, config


def test_flash_release_converts_with_its_facts(flash_t, tmp_path):
    checkpoint, config = write_flash_checkpoint(tmp_path, FLASH_T, flash_t, **FLASH_T_HEAD)
    messages = []
    result = convert_checkpoint(
        checkpoint, tmp_path / "out", config_file=config, verify=True, verify_size=64, log=messages.append
    )
    assert result.task == "mask2former" and result.max_abs_diff <= TOLERANCE
    model = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path / "out").eval()
    assert type(model.model.pixel_level_module.encoder) is FlashInternImageBackbone
    assert type(model.config.backbone_config) is FlashInternImageConfig
    assert (model.config.num_queries, model.config.hidden_dim, model.config.num_attention_heads) == (100, 256, 8)
    assert model.config.id2label == segmentation_id2label("ade20k")
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 512, "longest_edge": 2048} and processor["do_reduce_labels"] is True
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| ADE20K val mIoU (%), single-scale | 51.2 (trained on 512-px crops) |" in card
    assert f"[{FLASH_T}.pth](https://huggingface.co/OpenGVLab/DCNv4/resolve/main/{FLASH_T}.pth)" in card
    assert "FlashInternImage-T (ImageNet-1k) backbone; ADE20K" in card and "slides" not in card
    # the same file under any name converts as that release with --name
    renamed = checkpoint.rename(tmp_path / "m2f.pth")
    result = convert_checkpoint(renamed, tmp_path / "named", config_file=config, name=FLASH_T, log=messages.append)
    assert json.loads((tmp_path / "named" / "preprocessor_config.json").read_text())["do_reduce_labels"] is True


@pytest.mark.parametrize("name", sorted(n for n, r in MASK2FORMER_RELEASES.items() if r.family == "flash_internimage"))
def test_flash_release_plans_its_flash_backbone(name):
    """Without a config file the release's FlashInternImage preset, crop size and ADE20K labels are used."""
    release = find_segmentation_release(name)
    preset = FLASH_PRESETS[release.preset]
    weights = {
        "backbone.patch_embed.conv2.weight": torch.zeros(preset["channels"], 1, 1, 1),
        "backbone.levels.0.blocks.0.dcn.offset_mask.weight": torch.zeros(1),
        "decode_head.transformer_decoder.post_norm.weight": torch.zeros(1),
    }
    plan = plan_conversion(Source(Path(f"{name}.pth"), "mmlab", weights), segmentation_release=release)
    assert plan.task == "mask2former" and type(plan.config) is FlashInternImageConfig
    expected = FlashInternImageConfig.from_preset(release.preset)
    for field in ("channels", "depths", "groups", "offset_scale", "post_norm", "dw_kernel_size", "mlp_fc2_bias"):
        assert getattr(plan.config, field) == getattr(expected, field), field
    assert (plan.image_size, plan.segmentation_labels) == (release.crop_size, "ade20k")
    assert f"architecture from FlashInternImage preset {release.preset!r}" in plan.notes


@pytest.mark.parametrize(
    ("change", "fact"),
    [
        ({"queries": 200}, "queries 200 (the release has 100)"),
        ({"dim": 128}, "hidden_dim 128 (the release has 256)"),
        ({"heads": 4}, "heads 4 (the release has 8)"),
    ],
    ids=["queries", "hidden_dim", "heads"],
)
def test_flash_head_that_is_not_the_release_is_refused(flash_t, tmp_path, change, fact):
    checkpoint, config = write_flash_checkpoint(tmp_path, FLASH_T, flash_t, **{**FLASH_T_HEAD, **change})
    with pytest.raises(ConversionError, match=re.escape(f"is not that of {FLASH_T}: {fact};")):
        convert_checkpoint(checkpoint, tmp_path / "out", config_file=config, log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_head_that_is_not_the_release_is_refused(tiny_h, tmp_path):
    checkpoint, config = write_checkpoint(tmp_path, "m2f", tiny_h, **SMALL_HEAD)
    with pytest.raises(ConversionError, match=f"is not that of {ADE20K}"):
        convert_checkpoint(checkpoint, tmp_path / "out", config_file=config, name=ADE20K, log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_mask2former_release_name_for_another_task_is_refused(tiny_h, tmp_path):
    checkpoint = tmp_path / "backbone.pth"
    backbone = {"backbone." + k: v for k, v in tiny_h.state_dict.items() if k.startswith(("patch_embed.", "levels."))}
    torch.save({"state_dict": backbone}, checkpoint)
    with pytest.raises(ConversionError, match="is a Mask2Former release, but the task is backbone"):
        convert_checkpoint(checkpoint, tmp_path / "out", name=ADE20K, log=lambda *_: None)


def test_unknown_head_keys_are_one_clean_error(tiny_h, tmp_path, capsys):
    checkpoint, config = write_checkpoint(tmp_path, "m2f", tiny_h, **SMALL_HEAD)
    saved = torch.load(checkpoint, weights_only=True)
    saved["state_dict"]["decode_head.extra_branch.weight"] = torch.zeros(3)
    saved["state_dict"]["decode_head.extra_branch.bias"] = torch.zeros(3)
    torch.save(saved, checkpoint)
    assert main([str(checkpoint), str(tmp_path / "out"), "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        "error: 2 checkpoint key(s) are not weights of the official Mask2Former head: "
        "decode_head.extra_branch.bias, decode_head.extra_branch.weight"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["auto", "backbone"])
def test_classification_release_name_for_a_segmentation_checkpoint_is_refused(tiny_h, tmp_path, task):
    """The model card would name the ImageNet model and dataset for a segmentation model."""
    checkpoint, config = write_checkpoint(tmp_path, "m2f", tiny_h, **SMALL_HEAD)
    with pytest.raises(ConversionError, match="internimage_h_22kto1k_640 is an ImageNet classification release"):
        convert_checkpoint(
            checkpoint, tmp_path / "out", name="internimage_h_22kto1k_640", task=task, log=lambda *_: None
        )
    assert not (tmp_path / "out").exists()
