"""DinoDetrForObjectDetection against the official InternImage DINO detector (mmdet 2.28 + `mmdet_custom`).

The fixture `tests/fixtures/detection/dino_internimage_t.safetensors` was written by
`scripts/make_detection_fixtures.py` from the official code (commit in its metadata): the official InternImage-T DINO
configuration with grid weights, its eval-mode outputs for three cases, its losses for fixed targets, and its losses
with its own denoising queries, all in float64. Our model runs on the converted weights in float64 too.

The query selection ranks ~1,700 proposal scores and keeps 900; at random weights some neighbours lie closer
(down to 1e-7) than the two implementations agree (about 1e-5: both compute the DCNv3 sampling grid and the position
embeddings with float32 steps, differently), and two swapped neighbours pair with different content queries. So
every test first checks that our ranking is the official one up to such near-ties (equal sorted scores within
`RANK_NOISE`, our scores at the official indices equal to the official scores), then follows the official order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from detection_fixtures import read_fixture

from internimage_hf import DinoDetrConfig, DinoDetrForObjectDetection
from internimage_hf.conversion.dino_detr import convert_official_dino_state_dict
from internimage_hf.models.dino_detr.loss_dino_detr import (
    DenoisingQueries,
    _group_attention_mask,
    denoising_groups,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "detection" / "dino_internimage_t.safetensors"
TOLERANCE = 1e-4  # the project's fp32 parity bound; float64 runs measure about 1e-6 (float32 steps inside both)
LOSS_RTOL = 1e-5
RANK_NOISE = 1e-4  # the implementations agree to ~1.2e-5 on these scores


@pytest.fixture(scope="module")
def reference():
    return read_fixture(FIXTURE)


@pytest.fixture(scope="module")
def model(reference):
    tensors, metadata = reference
    official = {key.removeprefix("state_dict."): value for key, value in tensors.items() if key.startswith("state_")}
    # The official code runs a padded batch through its backbone at once (`padding_invariant=False`).
    config = DinoDetrConfig(num_denoising=metadata["num_denoising"], padding_invariant=False)
    detector = DinoDetrForObjectDetection(config)
    detector.load_state_dict(convert_official_dino_state_dict(official), strict=True)
    return detector.double().eval()


def pixel_mask(metadata: dict, case: str, images: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)
    for index, (height, width) in enumerate(metadata["inputs"][case]["sizes"]):
        mask[index, :height, :width] = 1
    return mask


@pytest.fixture
def follow_official_ranking(model, reference, monkeypatch):
    """Make the model rank proposals as the official code did for a case, after checking ours agrees with it up
    to near-ties; returns a function of the case name."""
    tensors, _ = reference
    original = model.model.rank_proposals

    def follow(case: str) -> None:
        expected = tensors[f"cases.{case}.proposal_ranking"]
        expected_scores = tensors[f"cases.{case}.proposal_scores"]

        def rank(logits: torch.Tensor) -> torch.Tensor:
            ours = original(logits)
            scores = logits.max(-1)[0]
            torch.testing.assert_close(torch.gather(scores, 1, ours), expected_scores, atol=RANK_NOISE, rtol=0)
            torch.testing.assert_close(torch.gather(scores, 1, expected), expected_scores, atol=RANK_NOISE, rtol=0)
            return expected

        monkeypatch.setattr(model.model, "rank_proposals", rank)

    return follow


def labels(metadata: dict) -> list[dict[str, torch.Tensor]]:
    """The fixture's targets (pixel corners of the unpadded images) as normalised (cx, cy, w, h)."""
    targets = []
    for (classes, corners), (height, width) in zip(
        metadata["targets"], metadata["inputs"]["batch"]["sizes"], strict=True
    ):
        corners = torch.tensor(corners, dtype=torch.float64) / torch.tensor([width, height, width, height])
        boxes = torch.cat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], -1)
        targets.append({"class_labels": torch.tensor(classes), "boxes": boxes})
    return targets


def weighted(term: str, value: torch.Tensor, config) -> torch.Tensor:
    """Our unweighted term times its loss weight: the official head reports weighted terms."""
    weights = {
        "loss_ce": config.class_loss_coefficient,
        "loss_bbox": config.bbox_loss_coefficient,
        "loss_giou": config.giou_loss_coefficient,
    }
    return value * next(weight for base, weight in weights.items() if term.startswith(base))


def official_name(term: str) -> str:
    """Our loss term -> the official head's name (`loss_ce_dn_2` -> `d2.dn_loss_cls`)."""
    base, _, stage = term.partition("_")[2].partition("_")
    kind = {"ce": "cls", "bbox": "bbox", "giou": "iou"}[base]
    if stage == "enc":
        return f"interm_loss_{kind}"
    if stage.startswith("dn"):
        layer = stage.removeprefix("dn").lstrip("_")
        return f"d{layer}.dn_loss_{kind}" if layer else f"dn_loss_{kind}"
    return f"d{stage}.loss_{kind}" if stage else f"loss_{kind}"


def test_parameter_count_equals_the_official_detector(reference, model):
    tensors, _ = reference
    official = sum(value.numel() for key, value in tensors.items() if key.startswith("state_dict."))
    assert sum(parameter.numel() for parameter in model.parameters()) == official == 48_736_828


@pytest.mark.parametrize("case", ["single_256x320", "single_320x224", "batch"])
def test_eval_outputs_match_the_official_detector(reference, model, follow_official_ranking, monkeypatch, case):
    tensors, metadata = reference
    # One image alone is the official result in the default, padding-invariant mode too.
    monkeypatch.setattr(model.config, "padding_invariant", case != "batch")
    follow_official_ranking(case)
    images = tensors[f"inputs.{case}"]
    with torch.no_grad():
        outputs = model(images, pixel_mask=pixel_mask(metadata, case, images))
    expected = {key.removeprefix(f"cases.{case}."): value for key, value in tensors.items() if case in key}
    stored = metadata["stored_queries"]
    produced = {
        "logits": outputs.logits[:, :stored],
        "boxes": outputs.pred_boxes,
        "first_layer_boxes": outputs.auxiliary_outputs[0]["pred_boxes"],
        "encoder_scores": outputs.encoder_topk_logits.max(-1)[0],
        "encoder_boxes": outputs.encoder_topk_boxes,
    }
    for name, value in produced.items():
        difference = (value - expected[name].double()).abs().max().item()
        assert difference <= TOLERANCE, f"{case}: {name} differs by {difference:.2e}"


def test_losses_without_denoising_match_the_official_head(reference, model, follow_official_ranking):
    tensors, metadata = reference
    follow_official_ranking("batch")
    images = tensors["inputs.batch"]
    with torch.no_grad():
        outputs = model(images, pixel_mask=pixel_mask(metadata, "batch", images), labels=labels(metadata))
    expected = {key.removeprefix("losses."): value for key, value in tensors.items() if key.startswith("losses.")}
    assert {official_name(term) for term in outputs.loss_dict} == set(expected)
    for term, value in outputs.loss_dict.items():
        produced = weighted(term, value, model.config).float()
        torch.testing.assert_close(produced, expected[official_name(term)], rtol=LOSS_RTOL, atol=0, msg=term)


def official_denoising(reference, model) -> DenoisingQueries:
    """The official generator's queries: its noisy labels through our (converted) label embedding, its boxes."""
    tensors, metadata = reference
    label_ids = tensors["denoising.label_ids"]
    embeddings = model.model.denoising_label_embeddings(label_ids.clamp(min=0))
    queries = embeddings * (label_ids >= 0)[..., None]
    meta = metadata["denoising_meta"]
    num_groups, group_size = meta["num_dn_group"], meta["pad_size"] // (2 * meta["num_dn_group"])
    mask = _group_attention_mask(meta["pad_size"], model.config.num_queries, group_size, num_groups, "cpu")
    return DenoisingQueries(queries, tensors["denoising.boxes"], mask, num_groups, group_size)


def test_denoising_layout_is_the_official_one(reference, model):
    """Our generator gives the official group count, padding slots and attention mask for the same targets."""
    tensors, metadata = reference
    ours = denoising_groups(
        labels(metadata), model.model.denoising_label_embeddings, metadata["num_denoising"], 900, 0.5, 1.0
    )
    meta = metadata["denoising_meta"]
    assert (ours.num_groups, ours.num_queries) == (meta["num_dn_group"], meta["pad_size"])
    assert torch.equal((ours.queries == 0).all(-1), tensors["denoising.label_ids"] < 0)
    mask_bytes = ours.attention_mask.numpy().tobytes()
    assert hashlib.sha256(mask_bytes).hexdigest() == metadata["denoising_mask_sha256"]


def test_losses_with_the_official_denoising_queries_match(reference, model, follow_official_ranking):
    tensors, metadata = reference
    follow_official_ranking("batch")
    images = tensors["inputs.batch"]
    targets = labels(metadata)
    denoising = official_denoising(reference, model)
    with torch.no_grad():
        outputs = model.model(images, pixel_mask=pixel_mask(metadata, "batch", images), denoising=denoising)
        _, terms = model.criterion(
            outputs.intermediate_logits,
            outputs.intermediate_pred_boxes,
            outputs.encoder_topk_logits,
            outputs.encoder_topk_boxes,
            targets,
            denoising,
        )
    expected = {k.removeprefix("denoising.losses."): v for k, v in tensors.items() if k.startswith("denoising.losses.")}
    assert {official_name(term) for term in terms} == set(expected)
    for term, value in terms.items():
        produced = weighted(term, value, model.config).float()
        torch.testing.assert_close(produced, expected[official_name(term)], rtol=LOSS_RTOL, atol=0, msg=term)


def test_float32_proposal_scores_match(reference, model):
    """In float32 the selected proposals' scores (sorted, so near-ties may swap) still match the official ones."""
    tensors, metadata = reference
    images = tensors["inputs.single_256x320"].float()
    with torch.no_grad():
        outputs = model.float()(images)
    model.double()
    expected = tensors["cases.single_256x320.encoder_scores"]
    torch.testing.assert_close(outputs.encoder_topk_logits.max(-1)[0], expected, atol=TOLERANCE, rtol=0)
