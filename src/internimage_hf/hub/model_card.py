"""Model-card (README.md) text for converted InternImage and FlashInternImage checkpoints.

The YAML front matter is written through `huggingface_hub.ModelCardData`: license, library, pipeline tag, tags,
datasets, `base_model` (the official hub repo holding the same weights, for a known release) and a `model-index`
with the official ImageNet-1k top-1 (`huggingface_hub.EvalResult`) where the official tables publish one.

Everything the card says comes from its caller in a `ModelCardInfo`; the official release the weights come from
(the converter looks it up in `internimage_hf.conversion.releases`) is one of those facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from huggingface_hub import EvalResult, ModelCardData

PAPER_URL = "https://arxiv.org/abs/2211.05778"
OFFICIAL_REPO_URL = "https://github.com/OpenGVLab/InternImage"
PACKAGE_NAME = "internimage_hf"

CITATION = """@inproceedings{wang2023internimage,
  title     = {InternImage: Exploring Large-Scale Vision Foundation Models with Deformable Convolutions},
  author    = {Wang, Wenhai and Dai, Jifeng and Chen, Zhe and Huang, Zhenhang and Li, Zhiqi and Zhu, Xizhou and
               Hu, Xiaowei and Lu, Tong and Lu, Lewei and Li, Hongsheng and Wang, Xiaogang and Qiao, Yu},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {14408--14419},
  year      = {2023}
}"""

# Where the top-1 values of the model-index come from (the converter's release table copies them).
OFFICIAL_RESULTS_SOURCE = "InternImage official results (classification/README.md)"

FLASH_CITATION = """@article{xiong2024efficient,
  title   = {Efficient Deformable ConvNets: Rethinking Dynamic and Sparse Operator for Vision Applications},
  author  = {Xiong, Yuwen and Li, Zhiqi and Chen, Yuntao and Wang, Feng and Zhu, Xizhou and Luo, Jiapeng and
             Wang, Wenhai and Lu, Tong and Li, Hongsheng and Qiao, Yu and Lu, Lewei and Zhou, Jie and Dai, Jifeng},
  journal = {arXiv preprint arXiv:2401.06197},
  year    = {2024}
}"""


@dataclass(frozen=True)
class CardFamily:
    """What the card says about a model family: its name, backbone class, operator sentence and official sources."""

    name: str
    backbone_class: str
    operator: str
    description: str
    paper_url: str
    official_repo_url: str
    citation: str
    results_source: str


CARD_FAMILIES = {
    "internimage": CardFamily(
        "InternImage", "InternImageBackbone", "DCNv3",
        "InternImage is a convolutional vision foundation model built on deformable convolution v3 (DCNv3): each "
        "block predicts per-pixel sampling offsets and softmax-normalised weights for groups of channels",
        PAPER_URL, OFFICIAL_REPO_URL, CITATION, OFFICIAL_RESULTS_SOURCE,
    ),
    "flash_internimage": CardFamily(
        "FlashInternImage", "FlashInternImageBackbone", "DCNv4",
        "FlashInternImage is InternImage built on deformable convolution v4 (DCNv4): each block predicts per-pixel "
        "sampling offsets and unnormalised weights for groups of channels with one fused projection",
        "https://arxiv.org/abs/2401.06197", "https://github.com/OpenGVLab/DCNv4", FLASH_CITATION,
        "FlashInternImage official results (README.md)",
    ),
}  # fmt: skip
# Key order of the front matter; ModelCardData appends the model-index last.
FRONT_MATTER_ORDER = ["license", "library_name", "pipeline_tag", "tags", "datasets", "base_model"]

TASK_PIPELINE_TAGS = {
    "classification": "image-classification",
    "backbone": "image-feature-extraction",
    "upernet": "image-segmentation",
    "mask2former": "image-segmentation",
    "dino": "object-detection",
}


class PublishedRelease(Protocol):
    """What the card reads of the official release the weights come from (`conversion.releases.Release` has it)."""

    @property
    def hub_repo(self) -> str | None:
        """The official hub repo holding the same weights."""

    @property
    def num_classes(self) -> int:
        """Classes of the release's own head."""

    @property
    def image_size(self) -> int:
        """Resolution of the published accuracy."""

    @property
    def top1(self) -> float | None:
        """Published ImageNet-1k top-1 (%), if any."""


@dataclass
class ModelCardInfo:
    """What the card says about one converted checkpoint.

    Args:
        title: the card's heading (the release name for a known classification checkpoint).
        task: ``"classification"``, ``"backbone"`` (stage features for dense-prediction heads), ``"upernet"`` or
            ``"mask2former"``.
        variant: model size (``"t"`` ... ``"g"``, or ``"custom-<channels>"``).
        num_parameters: parameter count of the converted model.
        image_size: evaluation resolution (square).
        num_labels: classes of the head.
        source: file or directory name the weights were read from.
        source_url: download URL of a known release (its ``.pth`` or its official hub repo), else `None`.
        pretraining: pre-training / fine-tuning data, as the official tables state it.
        label_set: the dataset whose class names `config.id2label` holds (``"ImageNet-1k"``, ``"ImageNet-22k"``,
            ``"ADE20K"`` ...), else `None`.
        metrics: (name, value) pairs from the official result tables, shown in the card's results table.
        notes: extra sentences for the "Source" section.
        verification: a sentence on the numerical check run during conversion, or `None`.
        repo_id: hub repo the card is written for (used in the usage snippets).
        config_summary: config fields shown as a table.
        base_model: hub repo id the weights were converted or fine-tuned from; default: the official hub repo of
            `release`.
        release: the official release the weights come from, else `None`: the default `base_model`, and the
            published top-1 of the `model-index`.
        family: the model family's `model_type` (``"internimage"`` or ``"flash_internimage"``): the card's model
            name, operator, official sources and citation.
    """

    title: str
    task: str
    variant: str
    num_parameters: int
    image_size: int
    num_labels: int
    source: str
    source_url: str | None = None
    pretraining: str | None = None
    label_set: str | None = None
    metrics: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verification: str | None = None
    repo_id: str | None = None
    config_summary: dict[str, object] = field(default_factory=dict)
    base_model: str | None = None
    release: PublishedRelease | None = None
    family: str = "internimage"

    @property
    def card_family(self) -> CardFamily:
        return CARD_FAMILIES[self.family]


def imagenet_eval_results(info: ModelCardInfo) -> list[EvalResult]:
    """The official ImageNet-1k top-1 (in %) of a classifier with the release's own 1000-class head, else ``[]``.

    Args:
        info: the card facts (`release` holds the published accuracy; `task` and `num_labels` decide whether it is
            this model's).

    Returns:
        One `huggingface_hub.EvalResult` (task image-classification, dataset imagenet-1k, split validation, metric
        accuracy) or an empty list.
    """
    release = info.release
    if info.task != "classification" or release is None or release.top1 is None:
        return []
    if info.num_labels != release.num_classes:  # another head: the published accuracy is not this model's
        return []
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type="imagenet-1k",
            dataset_name="ImageNet-1k",
            dataset_split="validation",
            metric_type="accuracy",
            metric_name=f"Top-1 accuracy (%) at {release.image_size}x{release.image_size}",
            metric_value=release.top1,
            source_name=info.card_family.results_source,
            source_url=info.card_family.official_repo_url,
        )
    ]


def model_card_data(info: ModelCardInfo) -> ModelCardData:
    """The card's metadata: license, pipeline tag, tags, datasets, `base_model` and the `model-index`.

    Args:
        info: the facts of the converted checkpoint.

    Returns:
        A `huggingface_hub.ModelCardData`; `base_model` is `info.base_model`, else the official hub repo of
        `info.release` (same weights), else absent. `model-index` holds the official ImageNet-1k top-1 when
        `imagenet_eval_results` finds one.
    """
    release = info.release
    eval_results = imagenet_eval_results(info)
    return ModelCardData(
        license="mit",
        library_name="transformers",
        pipeline_tag=TASK_PIPELINE_TAGS[info.task],
        tags=[info.family, info.card_family.operator.lower(), "vision", TASK_PIPELINE_TAGS[info.task]],
        datasets=[{"ImageNet-1k": "imagenet-1k", "ImageNet-22k": "imagenet-21k"}[info.label_set]]
        if info.label_set in ("ImageNet-1k", "ImageNet-22k")
        else None,
        base_model=info.base_model or (release.hub_repo if release else None),
        model_name=info.title if eval_results else None,
        eval_results=eval_results or None,
    )


def _front_matter(info: ModelCardInfo) -> str:
    return f"---\n{model_card_data(info).to_yaml(original_order=FRONT_MATTER_ORDER)}\n---"


def _architecture(info: ModelCardInfo) -> str:
    family = info.card_family
    head = {
        "classification": f"an image classifier with {info.num_labels} classes"
        + (f" ({info.label_set} class names in `config.id2label`)" if info.label_set else ""),
        "backbone": "a feature extractor returning the four stage outputs (strides 4, 8, 16, 32), the tensors "
        "the official detection/segmentation backbone feeds to FPN/UperNet",
        "upernet": f"an UperNet semantic-segmentation model with {info.num_labels} classes "
        f"(`transformers.UperNetForSemanticSegmentation`, {family.name} backbone)",
        "mask2former": f"a Mask2Former segmentation model with {info.num_labels} classes "
        f"(`transformers.Mask2FormerForUniversalSegmentation`, {family.name} backbone)",
        "dino": f"a DINO object detector with {info.num_labels} classes (`internimage_hf.DinoDetrForObjectDetection`, "
        f"{family.name} backbone)",
    }[info.task]
    if info.task in ("upernet", "mask2former", "dino") and info.label_set:
        head += f" ({info.label_set} class names in `config.id2label`)"
    rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in info.config_summary.items())
    table = f"\n\n| config field | value |\n|---|---|\n{rows}" if rows else ""
    return (
        f"{family.name}-{info.variant.upper()} ({info.num_parameters / 1e6:,.1f}M parameters) as {head}. "
        f"{family.description} ([paper]({family.paper_url}), [official code]({family.official_repo_url})). "
        "Evaluation resolution: "
        f"{_resolution(info)}.{table}"
    )


def _resolution(info: ModelCardInfo) -> str:
    if info.task == "dino":
        return f"shorter side {info.image_size}, longer side at most 1333 (the official test resize)"
    return f"{info.image_size}x{info.image_size}"


def _source(info: ModelCardInfo) -> str:
    where = f"[{info.source}]({info.source_url})" if info.source_url else f"`{info.source}`"
    lines = [
        f"Converted from the official checkpoint {where} with `scripts/convert_checkpoint.py` of `{PACKAGE_NAME}`."
    ]
    if info.pretraining:
        lines.append(f"Pre-training / fine-tuning: {info.pretraining}.")
    if info.verification:
        lines.append(info.verification)
    lines.extend(info.notes)
    return "\n\n".join(lines)


def _results(info: ModelCardInfo) -> str:
    if not info.metrics:
        return "The official tables publish no evaluation result for this checkpoint."
    rows = "\n".join(f"| {name} | {value} |" for name, value in info.metrics)
    name = info.card_family.name
    return f"Reported by the authors (official {name} README):\n\n| metric | value |\n|---|---|\n{rows}"


def _usage(info: ModelCardInfo) -> str:
    repo = info.repo_id or "path/to/converted/checkpoint"
    family = info.card_family
    if info.task == "classification":
        code = f"""import internimage_hf  # registers {family.name} with the Auto classes
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

processor = AutoImageProcessor.from_pretrained("{repo}")
model = AutoModelForImageClassification.from_pretrained("{repo}").eval()
image = Image.open("cat.jpg")
with torch.no_grad():
    logits = model(**processor(images=image, return_tensors="pt")).logits
print(model.config.id2label[logits.argmax(-1).item()])

# or in one line
print(pipeline("image-classification", model="{repo}")(image))"""
        model_var = "model"
    elif info.task == "backbone":
        code = f"""import internimage_hf  # registers {family.name} with the Auto classes
from internimage_hf import {family.backbone_class}
from transformers import AutoImageProcessor

processor = AutoImageProcessor.from_pretrained("{repo}")
backbone = {family.backbone_class}.from_pretrained("{repo}").eval()
feature_maps = backbone(**processor(images=image, return_tensors="pt")).feature_maps  # 4 maps, NCHW"""
        model_var = "backbone"
    elif info.task == "dino":
        code = f"""import internimage_hf  # registers DINO and {family.name} with the Auto classes
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForObjectDetection, pipeline

processor = AutoImageProcessor.from_pretrained("{repo}")
model = AutoModelForObjectDetection.from_pretrained("{repo}").eval()
image = Image.open("street.jpg")
with torch.no_grad():
    outputs = model(**processor(images=image, return_tensors="pt"))
detections = processor.post_process_object_detection(outputs, threshold=0.3, target_sizes=[image.size[::-1]])[0]

# or labelled boxes in one line
print(pipeline("object-detection", model="{repo}")(image, threshold=0.3))"""
        model_var = "model"
    elif info.task == "mask2former":
        code = f"""import internimage_hf  # registers {family.name} as a Transformers backbone (to load the config)
import torch
from PIL import Image
from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation, pipeline

processor = AutoImageProcessor.from_pretrained("{repo}")
model = Mask2FormerForUniversalSegmentation.from_pretrained("{repo}").eval()
image = Image.open("scene.jpg")
with torch.no_grad():
    outputs = model(**processor(images=image, return_tensors="pt"))
class_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]  # (H, W) ids

# or named masks, one per class present
segments = pipeline("image-segmentation", model="{repo}", subtask="semantic")(image)"""
        model_var = "model"
    else:
        code = f"""import internimage_hf  # registers {family.name} as a Transformers backbone (to load the config)
from transformers import UperNetForSemanticSegmentation

model = UperNetForSemanticSegmentation.from_pretrained("{repo}").eval()
logits = model(pixel_values).logits  # (batch, num_labels, height, width)"""
        model_var = "model"
    kernel = f"""import internimage_hf

{model_var} = internimage_hf.kernelize({model_var}.to("cuda"))  # {family.operator} CUDA kernel from the kernel hub"""
    return (
        f"```bash\npip install {PACKAGE_NAME}\n```\n\n```python\n{code}\n```\n\n"
        f"The model runs everywhere with a pure-PyTorch {family.operator}; on a GPU, swap in the compiled kernel:\n\n"
        f"```python\n{kernel}\n```"
    )


def render_model_card(info: ModelCardInfo) -> str:
    """The full README.md text: front matter, description, source, results, usage, license, citation.

    Args:
        info: the facts of the converted checkpoint.

    Returns:
        Markdown whose YAML front matter is `model_card_data(info)`; `huggingface_hub.ModelCard` parses it.
    """
    sections = [
        _front_matter(info),
        f"# {info.title}",
        _architecture(info),
        "## Source",
        _source(info),
        "## Results",
        _results(info),
        "## Usage",
        _usage(info),
        "## License",
        f"MIT, as the official {info.card_family.name} weights and code.",
        "## Citation",
        f"```bibtex\n{info.card_family.citation}\n```",
    ]
    return "\n\n".join(sections) + "\n"


__all__ = ["ModelCardInfo", "imagenet_eval_results", "model_card_data", "render_model_card"]
