"""Model cards of converted checkpoints: front matter written through `huggingface_hub.ModelCardData`.

The cards are made the way the converter makes them (`conversion.writing.card_info` + `write_model_card`) and read
back with `huggingface_hub.ModelCard.load`, so the metadata is what the Hub would index.
"""

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from internimage_hf import InternImageConfig, InternImageForImageClassification
from internimage_hf.conversion.planning import ConversionPlan
from internimage_hf.conversion.releases import RELEASES
from internimage_hf.conversion.sources import Source
from internimage_hf.conversion.writing import card_info, write_model_card
from internimage_hf.hub.model_card import ModelCardInfo, model_card_data, render_model_card

TINY = {"channels": 16, "depths": [1, 1, 1, 1], "groups": [1, 2, 4, 8]}


def converted_card(tmp_path: Path, release_name: str, source_kind: str, task: str = "classification") -> ModelCard:
    """Write the README.md the converter writes for `release_name` read from a `.pth` or hub directory; load it."""
    release = RELEASES[release_name]
    config = InternImageConfig(**TINY, num_labels=release.num_classes)
    source_name = release.pth_file if source_kind == "classification" else release_name
    source = Source(path=tmp_path / source_name, kind=source_kind, state_dict={})
    plan = ConversionPlan(task=task, config=config, image_size=release.image_size, release=release)
    out = tmp_path / "out"
    out.mkdir()
    write_model_card(out, card_info(plan, InternImageForImageClassification(config), source, None, "me/converted"))
    return ModelCard.load(out / "README.md")


@pytest.mark.parametrize(
    "release_name, source_kind, base_model, top1",
    [
        ("internimage_t_1k_224", "classification", "OpenGVLab/internimage_t_1k_224", 83.5),
        ("internimage_l_22kto1k_384", "hub", "OpenGVLab/internimage_l_22kto1k_384", 87.7),
    ],
)
def test_converted_card_has_base_model_and_official_top1(tmp_path, release_name, source_kind, base_model, top1):
    card = converted_card(tmp_path, release_name, source_kind)
    assert card.data.base_model == base_model
    assert card.data.license == "mit" and card.data.pipeline_tag == "image-classification"
    [result] = card.data.eval_results
    assert (result.task_type, result.dataset_type, result.dataset_split) == (
        "image-classification", "imagenet-1k", "validation"
    )  # fmt: skip
    assert result.metric_type == "accuracy" and result.metric_value == top1
    assert card.data.model_name == release_name
    # the raw YAML is what the Hub reads: base_model and the model-index are in it
    assert f"base_model: {base_model}" in card.content and f"value: {top1}" in card.content


def test_22k_pretrained_card_has_base_model_but_no_model_index(tmp_path):
    card = converted_card(tmp_path, "internimage_l_22k_192to384", "classification")
    # the .pth name and the hub repo name of these weights differ; the card names the hub repo
    assert card.data.base_model == "OpenGVLab/internimage_l_22k_384"
    assert card.data.eval_results is None and "model-index" not in card.content
    assert card.data.datasets == ["imagenet-21k"]


def test_backbone_converted_from_a_release_keeps_base_model_without_top1(tmp_path):
    card = converted_card(tmp_path, "internimage_b_1k_224", "classification", task="backbone")
    assert card.data.base_model == "OpenGVLab/internimage_b_1k_224"
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert card.data.eval_results is None


def card_info_for(**overrides) -> ModelCardInfo:
    release = RELEASES["internimage_s_1k_224"]
    fields = dict(
        title=release.name, task="classification", variant="s", num_parameters=50_000_000, image_size=224,
        num_labels=1000, source=release.pth_file, source_url=release.pth_url, label_set="ImageNet-1k",
        release=release,
    )  # fmt: skip
    return ModelCardInfo(**{**fields, **overrides})


def test_card_metadata_rules():
    assert model_card_data(card_info_for()).eval_results[0].metric_value == 84.2
    # a new head: the published accuracy is not this model's, the weights still come from the release
    reheaded = model_card_data(card_info_for(num_labels=10, label_set=None))
    assert reheaded.base_model == "OpenGVLab/internimage_s_1k_224" and reheaded.eval_results is None
    # a checkpoint of no known release: neither
    custom = model_card_data(card_info_for(title="custom", source="mine.pth", source_url=None, release=None))
    assert custom.base_model is None and custom.eval_results is None
    # an explicit base model (e.g. the checkpoint a model was fine-tuned from) wins
    assert model_card_data(card_info_for(base_model="me/finetuned-from")).base_model == "me/finetuned-from"


def test_front_matter_keeps_license_first_and_parses():
    text = render_model_card(card_info_for())
    assert text.startswith("---\nlicense: mit\nlibrary_name: transformers\n")
    card = ModelCard(text)
    assert card.data.eval_results[0].metric_name == "Top-1 accuracy (%) at 224x224"
