"""Converted UperNet == mmseg's own UperNet heads (`UPerHead` decode + `FCNHead` auxiliary), eval mode.

A synthetic checkpoint in the official mmseg key names (``backbone.*`` official InternImage weights of the T, S and
H styles, ``decode_head.*`` / ``auxiliary_head.*`` from mmseg's head modules with random weights and BatchNorm
statistics) goes through the converter (`convert_checkpoint`), and the converted
`UperNetForSemanticSegmentation` is compared with mmseg's heads holding the same weights:

- at the golden input (64x64), mmseg's heads get the official backbone's stage outputs (the golden files), so
  both sides are reference implementations end to end;
- at 96x128, mmseg's heads get the converted backbone's feature maps (the backbone itself is checked against the
  official one at 64x64 by the golden tests).

Compared: the decode logits at input size (Transformers' `logits` vs mmseg's `decode_head.predict`, which
resizes the 1/4-scale logits to the image shape as the segmentor does in whole-image inference), and both heads'
native outputs (decode at 1/4 scale, auxiliary at 1/16 scale; Transformers returns no auxiliary logits at
inference, so its `auxiliary_head` is called on the feature maps).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

pytest.importorskip("mmengine", reason="reference implementations not installed: bash scripts/make_reference_env.sh")

from mmseg.models.decode_heads import FCNHead, UPerHead  # noqa: E402
from transformers import UperNetForSemanticSegmentation  # noqa: E402

from internimage_hf.conversion.pipeline import convert_checkpoint  # noqa: E402

TOLERANCE = 1e-4
STYLES = ("tiny_t", "tiny_s", "tiny_h")
# The heads of the official InternImage UperNet configs (`_base_/models/upernet_r50.py` + the ADE20K overrides).
NUM_CLASSES = 150
DECODE_CHANNELS = 512
AUXILIARY_CHANNELS = 256
AUXILIARY_STAGE = 2
POOL_SCALES = (1, 2, 3, 6)
OTHER_SIZE = (96, 128)


def build_mmseg_heads(stage_widths: list[int], seed: int) -> tuple[UPerHead, FCNHead]:
    """mmseg's UPerHead and FCNHead as the official configs build them (BN for SyncBN), random weights, eval."""
    norm_cfg = dict(type="BN", requires_grad=True)
    decode_head = UPerHead(
        in_channels=stage_widths, in_index=[0, 1, 2, 3], pool_scales=POOL_SCALES, channels=DECODE_CHANNELS,
        dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=norm_cfg, align_corners=False,
    )  # fmt: skip
    auxiliary_head = FCNHead(
        in_channels=stage_widths[AUXILIARY_STAGE], in_index=AUXILIARY_STAGE, channels=AUXILIARY_CHANNELS,
        num_convs=1, concat_input=False, dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=norm_cfg,
        align_corners=False,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    for head in (decode_head, auxiliary_head):
        randomise(head, generator)
    return decode_head.eval(), auxiliary_head.eval()


def randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Random weights and BatchNorm statistics, scaled so activations stay O(1) through the 512-channel head.

    Every tensor differs from its default, so a swapped, missed or re-initialised tensor changes the logits.
    """
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "weight" and tensor.dim() == 4:  # convolutions: fan-in scaling
                fill = torch.randn(tensor.shape, generator=generator) / math.sqrt(tensor[0].numel())
            elif leaf in ("weight", "running_var"):  # BatchNorm scale and variance: positive, around 1
                fill = torch.rand(tensor.shape, generator=generator) + 0.5
            else:  # biases and running means
                fill = torch.randn(tensor.shape, generator=generator) * 0.1
            tensor.copy_(fill)


def mmseg_checkpoint(golden, decode_head: UPerHead, auxiliary_head: FCNHead) -> dict[str, torch.Tensor]:
    """The weights as an official mmseg UperNet checkpoint names them.

    Det/seg configs train T with ``layer_scale=1.0``, so its checkpoints hold ``gamma1/2``; ones keep the golden
    stage outputs valid. S has gammas already, H has none (its configs use no layer scale).
    """
    backbone = {k: v for k, v in golden.state_dict.items() if k.startswith(("patch_embed.", "levels."))}
    if golden.name == "tiny_t":
        widths = {k.rsplit(".", 1)[0]: v.shape[0] for k, v in backbone.items() if k.endswith(".dcn.output_proj.bias")}
        for block, width in widths.items():
            prefix = block.removesuffix(".dcn.output_proj")
            backbone[f"{prefix}.gamma1"] = torch.ones(width)
            backbone[f"{prefix}.gamma2"] = torch.ones(width)
    state = {"backbone." + k: v for k, v in backbone.items()}
    state.update({"decode_head." + k: v for k, v in decode_head.state_dict().items()})
    state.update({"auxiliary_head." + k: v for k, v in auxiliary_head.state_dict().items()})
    return state


@pytest.fixture(scope="module", params=STYLES)
def converted_case(request, golden_cases, tmp_path_factory):
    """(golden case, converted UperNet, mmseg decode head, mmseg auxiliary head) for one style."""
    golden = golden_cases[request.param]
    stage_widths = [golden.model_kwargs["channels"] * 2**i for i in range(4)]
    decode_head, auxiliary_head = build_mmseg_heads(stage_widths, seed=STYLES.index(request.param))
    directory = tmp_path_factory.mktemp(request.param)
    checkpoint = directory / "upernet.pth"
    torch.save({"state_dict": mmseg_checkpoint(golden, decode_head, auxiliary_head), "meta": {}}, checkpoint)
    config = directory / "config.json"
    config.write_text(json.dumps(golden.model_kwargs))
    convert_checkpoint(checkpoint, directory / "out", config_file=config, verify=True, verify_size=64, log=lambda m: m)
    model = UperNetForSemanticSegmentation.from_pretrained(directory / "out").eval()
    return golden, model, decode_head, auxiliary_head


def compare(model, decode_head, auxiliary_head, pixel_values, reference_features) -> dict[str, float]:
    """Max abs differences: input-size decode logits and both heads' native-scale outputs."""
    image_shape = tuple(pixel_values.shape[2:])
    with torch.no_grad():
        ours = model(pixel_values).logits
        features = model.backbone(pixel_values).feature_maps
        ours_decode, ours_auxiliary = model.decode_head(features), model.auxiliary_head(features)
        theirs = decode_head.predict(reference_features, [{"img_shape": image_shape}], test_cfg={})
        theirs_decode, theirs_auxiliary = decode_head(reference_features), auxiliary_head(reference_features)
    assert ours.shape == theirs.shape == (pixel_values.shape[0], NUM_CLASSES, *image_shape)
    assert ours_decode.shape == theirs_decode.shape and ours_decode.shape[2] == image_shape[0] // 4
    assert ours_auxiliary.shape == theirs_auxiliary.shape and ours_auxiliary.shape[2] == image_shape[0] // 16
    # Non-trivial outputs: the comparison would pass vacuously on constant logits.
    assert theirs.std() > 0.1 and theirs_auxiliary.std() > 0.1
    return {
        "logits": (ours - theirs).abs().max().item(),
        "decode_head": (ours_decode - theirs_decode).abs().max().item(),
        "auxiliary_head": (ours_auxiliary - theirs_auxiliary).abs().max().item(),
    }


def test_converted_upernet_matches_mmseg_on_official_stage_outputs(converted_case):
    golden, model, decode_head, auxiliary_head = converted_case
    official_features = [output.contiguous() for output in golden.stage_outputs]
    differences = compare(model, decode_head, auxiliary_head, golden.input, official_features)
    assert max(differences.values()) < TOLERANCE, differences


def test_converted_upernet_matches_mmseg_at_another_size(converted_case):
    _, model, decode_head, auxiliary_head = converted_case
    pixel_values = torch.randn(2, 3, *OTHER_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = list(model.backbone(pixel_values).feature_maps)
    differences = compare(model, decode_head, auxiliary_head, pixel_values, features)
    assert max(differences.values()) < TOLERANCE, differences


def test_a_swapped_head_tensor_is_detected(converted_case):
    """The comparison sees a single wrong tensor: swap two BatchNorm statistics of the decode head's bottleneck."""
    golden, model, decode_head, auxiliary_head = converted_case
    model = copy.deepcopy(model)
    batch_norm = model.decode_head.bottleneck.batch_norm
    with torch.no_grad():
        batch_norm.running_mean, batch_norm.running_var = batch_norm.running_var.clone(), batch_norm.running_mean.abs()
    official_features = [output.contiguous() for output in golden.stage_outputs]
    assert compare(model, decode_head, auxiliary_head, golden.input, official_features)["logits"] > 1e-2
