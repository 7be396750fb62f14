"""Checkpoint conversion: every source format built from the golden official weights, converted through the CLI
entry point, must reproduce the official logits / stage outputs; bad inputs fail cleanly and leave nothing behind.

UperNet: the mmseg head weights are synthetic (random, in mmseg names); the backbone is the golden one.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import internimage_hf  # noqa: F401  (registers the Auto classes)
from internimage_hf import InternImageBackbone, InternImageConfig
from internimage_hf.conversion import convert_mmseg_upernet_state_dict, convert_official_backbone_key
from internimage_hf.conversion.cli import main
from internimage_hf.conversion.errors import ConversionError
from internimage_hf.conversion.pipeline import convert_checkpoint
from internimage_hf.conversion.planning import plan_conversion
from internimage_hf.conversion.releases import RELEASES, find_release
from internimage_hf.conversion.sources import Source
from internimage_hf.data.labels import imagenet_id2label, segmentation_id2label
from internimage_hf.hub.model_card import ModelCardInfo, render_model_card

TOLERANCE = 1e-4
REPO_ROOT = Path(__file__).resolve().parents[2]
UPERNET_TEST_CASES = ("tiny_t", "tiny_s", "tiny_h")


class NotWeights:
    """Pickled into a checkpoint to make it non-weights-only."""

    def __init__(self) -> None:
        self.payload = "arbitrary object"


# --- helpers


def write_official_config(path: Path, golden, **extra) -> Path:
    """An official-style config.json from the golden constructor kwargs (official field names + num_classes)."""
    path.write_text(json.dumps({**golden.model_kwargs, **extra}))
    return path


def write_hub_dir(path: Path, golden) -> Path:
    """An official remote-code hub repo: their config.json (with auto_map) + model.safetensors in hub names."""
    path.mkdir()
    auto_map = {"AutoConfig": "configuration_internimage.InternImageConfig"}
    config = {**golden.model_kwargs, "model_type": "internimage", "architectures": ["InternImageModel"]}
    (path / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}))
    (path / "preprocessor_config.json").write_text(json.dumps({"crop_size": 64, "size": 64}))
    save_file(golden.hub_state_dict(), str(path / "model.safetensors"))
    return path


def backbone_weights(golden) -> dict[str, torch.Tensor]:
    return {k: v for k, v in golden.state_dict.items() if k.startswith(("patch_embed.", "levels."))}


def leftovers(parent: Path) -> list[str]:
    """Temporary directories the converter would leave in `parent` on failure."""
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def run_main(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def logits_of(model_dir: Path, pixel_values: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(pixel_values).logits


# --- classification


def test_official_pth_matches_golden_logits(golden, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": golden.state_dict, "epoch": 299, "max_accuracy": 83.5}, checkpoint)
    config = write_official_config(tmp_path / "config.json", golden)
    code, err = run_main([checkpoint, tmp_path / "out", "--config", config, "--verify", "--verify_size", "64"], capsys)
    assert code == 0, err
    assert (logits_of(tmp_path / "out", golden.input) - golden.logits).abs().max() < TOLERANCE
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
    assert leftovers(tmp_path) == []


def test_official_hub_directory_matches_golden_logits(golden, tmp_path, capsys):
    hub = write_hub_dir(tmp_path / "hub", golden)
    code, err = run_main([hub, tmp_path / "out"], capsys)
    assert code == 0, err
    assert (logits_of(tmp_path / "out", golden.input) - golden.logits).abs().max() < TOLERANCE
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 64, "width": 64}  # taken from the hub preprocessor_config.json


def test_ddp_prefixed_pth_and_inferred_num_classes(golden_cases, tmp_path, capsys):
    golden = golden_cases["tiny_s"]
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": {"module." + k: v for k, v in golden.state_dict.items()}}, checkpoint)
    kwargs = {k: v for k, v in golden.model_kwargs.items() if k != "num_classes"}  # classes from head.weight
    config = tmp_path / "config.json"
    config.write_text(json.dumps(kwargs))
    code, err = run_main([checkpoint, tmp_path / "out", "--config", config], capsys)
    assert code == 0, err
    assert (logits_of(tmp_path / "out", golden.input) - golden.logits).abs().max() < TOLERANCE


# --- backbone (mmdet / mmseg)


def test_mmdet_backbone_matches_golden_stage_outputs(golden, tmp_path, capsys):
    weights = {"module.backbone." + k: v for k, v in backbone_weights(golden).items()}
    weights["module.neck.fpn_convs.0.conv.weight"] = torch.zeros(4, 4, 3, 3)  # a detector part, not converted
    checkpoint = tmp_path / "det.pth"
    torch.save({"state_dict": weights, "meta": {"epoch": 12}}, checkpoint)
    config = write_official_config(tmp_path / "config.json", golden)
    code, err = run_main([checkpoint, tmp_path / "out", "--config", config, "--verify", "--verify_size", "64"], capsys)
    assert code == 0, err
    backbone = InternImageBackbone.from_pretrained(tmp_path / "out").eval()
    assert backbone.config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    with torch.no_grad():
        feature_maps = backbone(golden.input).feature_maps
    for ours, expected in zip(feature_maps, golden.stage_outputs, strict=True):
        assert (ours - expected).abs().max() < TOLERANCE


def test_segmentation_gammas_turn_on_layer_scale(golden_cases, tmp_path, capsys):
    """Det/seg configs train T with layer_scale=1.0: gammas appear in the checkpoint although T has none.

    With every gamma equal to 1 the network is the golden T network, so the stage outputs must not change.
    """
    golden = golden_cases["tiny_t"]
    weights = {"backbone." + k: v for k, v in backbone_weights(golden).items()}
    for key in list(weights):
        if key.endswith(".norm1.0.weight") and ".blocks." in key:
            block = key.removesuffix(".norm1.0.weight")
            weights[f"{block}.gamma1"] = torch.ones_like(weights[key])
            weights[f"{block}.gamma2"] = torch.ones_like(weights[key])
    checkpoint = tmp_path / "seg_backbone.pth"
    torch.save({"state_dict": weights}, checkpoint)
    config = write_official_config(tmp_path / "config.json", golden)
    code, err = run_main([checkpoint, tmp_path / "out", "--config", config], capsys)
    assert code == 0, err
    backbone = InternImageBackbone.from_pretrained(tmp_path / "out").eval()
    assert backbone.config.layer_scale == 1.0
    with torch.no_grad():
        feature_maps = backbone(golden.input).feature_maps
    for ours, expected in zip(feature_maps, golden.stage_outputs, strict=True):
        assert (ours - expected).abs().max() < TOLERANCE


# --- UperNet


def build_reference_upernet(golden, num_labels: int = 5):
    """UperNet built directly: golden backbone (our names) + random heads with non-trivial BatchNorm statistics."""
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    kwargs = {k: v for k, v in golden.model_kwargs.items() if k != "num_classes"}
    backbone_config = InternImageConfig(**kwargs, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(
        backbone_config=backbone_config, hidden_size=24, auxiliary_channels=16, num_labels=num_labels
    )
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(config).eval()
    state = model.state_dict()
    for key in state:
        if key.startswith(("decode_head.", "auxiliary_head.")) and state[key].is_floating_point():
            # Random values everywhere (BN stats included) so a swapped or missed tensor changes the output.
            fill = torch.rand_like(state[key]) + 0.5 if key.endswith("running_var") else torch.randn_like(state[key])
            state[key] = fill * 0.2
    state.update({"backbone." + convert_official_backbone_key(k): v for k, v in backbone_weights(golden).items()})
    model.load_state_dict(state, strict=True)
    return model


def to_mmseg_names(upernet_state: dict[str, torch.Tensor], golden) -> dict[str, torch.Tensor]:
    """Our UperNet heads renamed back to mmseg (`batch_norm` -> `bn`, `classifier` -> `conv_seg`) + golden backbone."""
    mmseg = {"backbone." + k: v for k, v in backbone_weights(golden).items()}
    for key, value in upernet_state.items():
        if key.startswith(("decode_head.", "auxiliary_head.")):
            key = re.sub(r"\.batch_norm\.", ".bn.", key)
            mmseg[re.sub(r"\.classifier\.", ".conv_seg.", key)] = value
    return mmseg


@pytest.mark.parametrize("case", UPERNET_TEST_CASES)
def test_upernet_conversion_is_exact(case, golden_cases, tmp_path, capsys):
    from transformers import UperNetForSemanticSegmentation

    golden = golden_cases[case]
    reference = build_reference_upernet(golden)
    mmseg = to_mmseg_names(reference.state_dict(), golden)
    assert any(".bn." in k for k in mmseg) and "decode_head.conv_seg.weight" in mmseg
    checkpoint = tmp_path / "upernet.pth"
    torch.save({"state_dict": mmseg, "meta": {"CLASSES": ["a", "b", "c", "d", "e"]}}, checkpoint)
    config = write_official_config(tmp_path / "config.json", golden)
    code, err = run_main([checkpoint, tmp_path / "out", "--config", config, "--verify", "--verify_size", "64"], capsys)
    assert code == 0, err

    converted = UperNetForSemanticSegmentation.from_pretrained(tmp_path / "out").eval()
    assert converted.config.hidden_size == 24 and converted.config.auxiliary_channels == 16
    ours, theirs = converted.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        out, expected = converted(golden.input), reference(golden.input)
        assert torch.equal(out.logits, expected.logits)
        feature_maps = converted.backbone(golden.input).feature_maps
    for mine, official in zip(feature_maps, golden.stage_outputs, strict=True):
        assert (mine - official).abs().max() < TOLERANCE


def test_mmseg_key_mapping_names():
    tensor = torch.zeros(1)
    converted = convert_mmseg_upernet_state_dict(
        {
            "module.backbone.levels.0.blocks.0.dcn.dw_conv.1.1.weight": tensor,
            "decode_head.psp_modules.3.1.bn.running_var": tensor,
            "decode_head.fpn_bottleneck.conv.weight": tensor,
            "decode_head.conv_seg.bias": tensor,
            "auxiliary_head.convs.0.bn.num_batches_tracked": tensor,
            "auxiliary_head.conv_seg.weight": tensor,
        }
    )
    assert sorted(converted) == [
        "auxiliary_head.classifier.weight",
        "auxiliary_head.convs.0.batch_norm.num_batches_tracked",
        "backbone.encoder.stages.0.layers.0.dcn.depthwise_norm.weight",
        "decode_head.classifier.bias",
        "decode_head.fpn_bottleneck.conv.weight",
        "decode_head.psp_modules.3.1.batch_norm.running_var",
    ]
    with pytest.raises(ValueError, match="neck"):
        convert_mmseg_upernet_state_dict({"neck.lateral_convs.0.conv.weight": tensor})


# --- bad inputs


def test_truncated_file_is_refused(golden_cases, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": golden_cases["tiny_t"].state_dict}, checkpoint)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    code, err = run_main([checkpoint, tmp_path / "out", "--preset", "t"], capsys)
    assert code == 2
    assert "truncated or corrupt" in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_checkpoint_of_another_size_lists_keys(golden_cases, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": golden_cases["tiny_t"].state_dict}, checkpoint)
    code, err = run_main([checkpoint, tmp_path / "out", "--preset", "s"], capsys)
    assert code == 2
    assert "does not match InternImageForImageClassification" in err
    assert "missing (" in err and "mismatched (" in err and "unexpected (" in err
    assert "patch_embed" in err or "internimage.embeddings" in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_pickle_that_is_not_weights_only_is_refused(golden_cases, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": golden_cases["tiny_t"].state_dict, "config": NotWeights()}, checkpoint)
    code, err = run_main([checkpoint, tmp_path / "out", "--preset", "t"], capsys)
    assert code == 2
    assert "not a weights-only checkpoint" in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_failure_after_writing_started_leaves_nothing(golden_cases, tmp_path, monkeypatch):
    """An OS error while writing (here: the model card on a full disk) is a `ConversionError`, and the staging
    directory is removed. The output-directory rules have their own tests in test_convert_output_dir.py."""
    import internimage_hf.conversion.writing as writing

    golden = golden_cases["tiny_t"]
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": golden.state_dict}, checkpoint)
    config = write_official_config(tmp_path / "config.json", golden)

    def broken_card(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writing, "render_model_card", broken_card)
    with pytest.raises(ConversionError, match="cannot write .*: No space left on device"):
        convert_checkpoint(checkpoint, tmp_path / "out", config_file=config, log=lambda *_: None)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# --- releases, labels, card


def test_releases_agree_with_official_hub_configs(shared_dir):
    """Each of the 11 official hub configs: our release entry has the same architecture, classes and size."""
    hub_dirs = sorted((shared_dir / "official_hub").iterdir())
    assert len(hub_dirs) == 11
    for hub_dir in hub_dirs:
        release = find_release(hub_dir.name)
        assert release is not None, hub_dir.name
        official = json.loads((hub_dir / "config.json").read_text())
        preprocessor = json.loads((hub_dir / "preprocessor_config.json").read_text())
        preset = InternImageConfig.from_preset(release.preset)
        ours = InternImageConfig(**{k: v for k, v in official.items() if k not in ("auto_map", "architectures")})
        for field in ("channels", "depths", "groups", "layer_scale", "offset_scale", "post_norm", "res_post_norm"):
            assert getattr(preset, field) == getattr(ours, field), (hub_dir.name, field)
        assert release.num_classes == official["num_classes"]
        assert release.image_size == preprocessor["crop_size"]
        assert release.hub_repo == f"OpenGVLab/{hub_dir.name}"
    internimage = [r for r in RELEASES.values() if r.family == "internimage"]
    assert len(internimage) == 14  # 11 .pth + 3 hub-only names (h_jointto22k_384 is both)
    assert sum(r.pth_file == f"{r.name}.pth" for r in internimage) == 11


def test_release_name_sets_preset_labels_and_size():
    source = Source(Path("internimage_xl_22k_384"), "hub", {})
    plan = plan_conversion(source, release=find_release("internimage_xl_22k_384"))
    assert plan.config.channels == 192 and plan.config.offset_scale == 2.0
    assert plan.config.num_labels == 21841 and plan.image_size == 384
    assert plan.config.id2label[0] == "organism, being"


def test_mmseg_file_name_sets_size_and_card_metrics(golden_cases, tmp_path):
    golden = golden_cases["tiny_t"]
    checkpoint = tmp_path / "upernet_internimage_t_512_160k_ade20k.pth"
    torch.save({"state_dict": to_mmseg_names(build_reference_upernet(golden).state_dict(), golden)}, checkpoint)
    config = write_official_config(tmp_path / "config.json", golden)
    convert_checkpoint(checkpoint, tmp_path / "out", config_file=config, log=lambda *_: None)
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 512} and processor["do_center_crop"] is False
    assert "47.9 / 48.1 at 512x512" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize(
    ("file_name", "num_labels", "label_set"),
    [
        ("upernet_internimage_t_512_160k_ade20k.pth", 150, "ade20k"),
        ("upernet_internimage_t_512x1024_160k_mapillary2cityscapes.pth", 19, "cityscapes"),
        ("upernet_internimage_t_512_160k_ade20k.pth", 7, None),  # a head of another size keeps generic names
    ],
)
def test_upernet_class_names_from_the_file_name(file_name, num_labels, label_set, golden_cases, tmp_path):
    from transformers import UperNetConfig

    golden = golden_cases["tiny_t"]
    checkpoint = tmp_path / file_name
    weights = to_mmseg_names(build_reference_upernet(golden, num_labels=num_labels).state_dict(), golden)
    torch.save({"state_dict": weights}, checkpoint)
    config = write_official_config(tmp_path / "config.json", golden)
    convert_checkpoint(checkpoint, tmp_path / "out", config_file=config, log=lambda *_: None)
    converted = UperNetConfig.from_pretrained(tmp_path / "out")
    expected = segmentation_id2label(label_set) if label_set else {i: f"LABEL_{i}" for i in range(num_labels)}
    assert converted.id2label == expected
    card = (tmp_path / "out" / "README.md").read_text()
    assert ("class names in `config.id2label`" in card) == (label_set is not None)


def test_shipped_imagenet_labels():
    one_k = imagenet_id2label(1000)
    assert len(one_k) == 1000 and one_k[0] == "tench, Tinca tinca" and one_k[999].startswith("toilet tissue")
    twenty_two_k = imagenet_id2label(21841)
    assert len(twenty_two_k) == 21841 and twenty_two_k[0] == "organism, being"
    with pytest.raises(ValueError, match="no ImageNet label names"):
        imagenet_id2label(10)


def test_model_card_text():
    release = RELEASES["internimage_t_1k_224"]
    card = render_model_card(
        ModelCardInfo(
            title=release.name, task="classification", variant="t", num_parameters=29_918_424, image_size=224,
            num_labels=1000, source=release.pth_file, source_url=release.pth_url, label_set="ImageNet-1k",
            metrics=[("ImageNet-1k top-1 (%)", "83.5 at 224x224")], repo_id="someone/internimage_t_1k_224",
        )
    )  # fmt: skip
    assert card.startswith("---\nlicense: mit\n")
    for text in ("83.5", "internimage_hf.kernelize", "AutoModelForImageClassification", "someone/internimage_t_1k_224",
                 release.pth_url, "29.9M parameters", "@inproceedings"):  # fmt: skip
        assert text in card, text


def test_push_to_hub_uses_hf_api(golden_cases, tmp_path, capsys):
    class FakeApi:
        calls = []

        def create_repo(self, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            self.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return "https://huggingface.co/me/tiny/commit/0"

    golden = golden_cases["tiny_t"]
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": golden.state_dict}, checkpoint)
    config = write_official_config(tmp_path / "config.json", golden)
    api = FakeApi()
    code = main([str(checkpoint), str(tmp_path / "out"), "--config", str(config), "--push_to_hub", "me/tiny"], api=api)
    assert code == 0
    assert api.calls[0][:2] == ("create_repo", "me/tiny")
    # Hub-bound output carries the modeling code (remote code) by default.
    assert api.calls[1] == ("upload_folder", "me/tiny", sorted(CONVERTED_FILES + REMOTE_CODE_FILES))
    assert "me/tiny" in (tmp_path / "out" / "README.md").read_text()


# --- remote code (the modeling code and auto_map, for loading without internimage_hf)

CONVERTED_FILES = ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
REMOTE_CODE_FILES = [
    "checkpoint_keys_hf.py",
    "configuration_internimage_hf.py",
    "dcnv3_hf.py",
    "image_processing_internimage_hf.py",
    "image_processing_pil_internimage_hf.py",
    "modeling_internimage_hf.py",
]


def test_remote_code_on_request_and_off_for_the_hub(golden_cases, tmp_path, capsys):
    golden = golden_cases["tiny_t"]
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": golden.state_dict}, checkpoint)
    config = write_official_config(tmp_path / "config.json", golden)
    code, err = run_main([checkpoint, tmp_path / "local", "--config", config, "--remote_code"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == sorted(CONVERTED_FILES + REMOTE_CODE_FILES)
    auto_map = json.loads((tmp_path / "local" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_internimage_hf.InternImageForImageClassification"
    processor_map = json.loads((tmp_path / "local" / "preprocessor_config.json").read_text())["auto_map"]
    assert set(processor_map["AutoImageProcessor"]) == {"torchvision", "pil"}
    # With the package imported its own classes still load the directory.
    assert (logits_of(tmp_path / "local", golden.input) - golden.logits).abs().max() < TOLERANCE
    # The generated code counts as the converter's own output: --overwrite replaces it, even without remote code.
    code, err = run_main([checkpoint, tmp_path / "local", "--config", config, "--remote_code", "--overwrite"], capsys)
    assert code == 0, err
    code, err = run_main([checkpoint, tmp_path / "local", "--config", config, "--overwrite"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == CONVERTED_FILES

    code, err = run_main([checkpoint, tmp_path / "plain", "--config", config], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == CONVERTED_FILES
    assert "auto_map" not in json.loads((tmp_path / "plain" / "config.json").read_text())

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            pass

        def upload_folder(self, folder_path, repo_id, **kwargs):
            self.uploaded = sorted(p.name for p in Path(folder_path).iterdir())

    api = FakeApi()
    argv = [checkpoint, tmp_path / "hub", "--config", config, "--push_to_hub", "me/tiny", "--no_remote_code"]
    assert main([str(a) for a in argv], api=api) == 0
    assert api.uploaded == CONVERTED_FILES


def test_upernet_output_has_no_remote_code(golden_cases, tmp_path, capsys):
    golden = golden_cases["tiny_t"]
    checkpoint = tmp_path / "upernet.pth"
    torch.save({"state_dict": to_mmseg_names(build_reference_upernet(golden).state_dict(), golden)}, checkpoint)
    config = write_official_config(tmp_path / "config.json", golden)
    code, err = run_main([checkpoint, tmp_path / "asked", "--config", config, "--remote_code"], capsys)
    assert code == 2
    assert "--remote_code covers InternImage classification and backbone" in err
    assert not (tmp_path / "asked").exists() and leftovers(tmp_path) == []

    messages = []
    convert_checkpoint(checkpoint, tmp_path / "seg", config_file=config, repo_id="me/seg", log=messages.append)
    assert "remote code: not included (a UperNet checkpoint loads with internimage_hf installed)" in messages
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == CONVERTED_FILES


# --- CLI script + fresh process


FRESH_PROCESS_CHECK = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from PIL import Image
    import internimage_hf
    from transformers import AutoModelForImageClassification, UperNetForSemanticSegmentation, pipeline
    # the top-level name is a placeholder without torchvision in transformers < 5.5; the module is always real
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    classifier_dir, upernet_dir = sys.argv[1], sys.argv[2]
    model = AutoModelForImageClassification.from_pretrained(classifier_dir)
    processor = AutoImageProcessor.from_pretrained(classifier_dir)
    image = Image.fromarray((np.random.default_rng(0).random((80, 96, 3)) * 255).astype("uint8"))
    predictions = pipeline("image-classification", model=classifier_dir)(image, top_k=3)
    segmenter = UperNetForSemanticSegmentation.from_pretrained(upernet_dir)
    print(json.dumps({
        "model": type(model).__name__,
        "processor": type(processor).__name__,
        "pixel_shape": list(processor(images=image, return_tensors="pt")["pixel_values"].shape),
        "labels": [p["label"] for p in predictions],
        "upernet_backbone": type(segmenter.backbone).__name__,
    }))
    """
)


def test_cli_script_and_fresh_process_loading(golden_cases, tmp_path, monkeypatch):
    """Convert with scripts/convert_checkpoint.py, then load with the Auto classes and pipeline() in a new process."""
    golden = golden_cases["tiny_t"]
    # A 1000-class head on the tiny network: the converter must attach the ImageNet-1k names.
    weights = dict(golden.state_dict)
    generator = torch.Generator().manual_seed(0)
    weights["head.weight"] = torch.randn(1000, weights["head.weight"].shape[1], generator=generator) * 0.1
    weights["head.bias"] = torch.randn(1000, generator=generator) * 0.1
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": weights}, checkpoint)
    config = write_official_config(tmp_path / "config.json", golden, num_classes=1000)
    argv = [
        "convert_checkpoint.py",
        str(checkpoint),
        str(tmp_path / "cls"),
        "--config",
        str(config),
        "--image_size",
        "64",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "scripts" / "convert_checkpoint.py"), run_name="__main__")
    assert exit_info.value.code == 0
    saved = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert saved["id2label"]["0"] == "tench, Tinca tinca" and len(saved["id2label"]) == 1000

    reference = build_reference_upernet(golden)
    mmseg = tmp_path / "upernet.pth"
    torch.save({"state_dict": to_mmseg_names(reference.state_dict(), golden)}, mmseg)
    convert_checkpoint(mmseg, tmp_path / "seg", config_file=config, log=lambda *_: None)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_CHECK, str(tmp_path / "cls"), str(tmp_path / "seg")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"] == "InternImageForImageClassification"
    assert report["processor"].startswith("InternImageImageProcessor")
    assert report["pixel_shape"] == [1, 3, 64, 64]
    imagenet_names = set(imagenet_id2label(1000).values())
    assert len(report["labels"]) == 3 and all(label in imagenet_names for label in report["labels"])
    assert report["upernet_backbone"] == "InternImageBackbone"


def test_unknown_release_name_is_an_error(tmp_path):
    with pytest.raises(ConversionError, match="unknown release"):
        convert_checkpoint(tmp_path / "x.pth", tmp_path / "out", name="internimage_q_1k_224")
