"""Model-card (README.md) text for converted InternImage checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

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

TASK_PIPELINE_TAGS = {
    "classification": "image-classification",
    "backbone": "image-feature-extraction",
    "upernet": "image-segmentation",
}


@dataclass
class ModelCardInfo:
    """What the card says about one converted checkpoint.

    `task` is ``"classification"``, ``"backbone"`` (stage features for dense-prediction heads) or ``"upernet"``.
    `metrics` are (name, value) pairs from the official result tables; `verification` is a sentence on the
    numerical check run during conversion (or `None`).
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


def _front_matter(info: ModelCardInfo) -> str:
    tags = ["internimage", "dcnv3", "vision", TASK_PIPELINE_TAGS[info.task]]
    lines = ["---", "license: mit", "library_name: transformers", f"pipeline_tag: {TASK_PIPELINE_TAGS[info.task]}"]
    lines += ["tags:"] + [f"- {tag}" for tag in tags]
    datasets = {"ImageNet-1k": "imagenet-1k", "ImageNet-22k": "imagenet-21k"}.get(info.label_set or "")
    if datasets:
        lines += ["datasets:", f"- {datasets}"]
    return "\n".join(lines + ["---"])


def _architecture(info: ModelCardInfo) -> str:
    head = {
        "classification": f"an image classifier with {info.num_labels} classes"
        + (f" ({info.label_set} class names in `config.id2label`)" if info.label_set else ""),
        "backbone": "a feature extractor returning the four stage outputs (strides 4, 8, 16, 32), the tensors "
        "the official detection/segmentation backbone feeds to FPN/UperNet",
        "upernet": f"an UperNet semantic-segmentation model with {info.num_labels} classes "
        "(`transformers.UperNetForSemanticSegmentation` with an InternImage backbone)",
    }[info.task]
    rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in info.config_summary.items())
    table = f"\n\n| config field | value |\n|---|---|\n{rows}" if rows else ""
    return (
        f"InternImage-{info.variant.upper()} ({info.num_parameters / 1e6:,.1f}M parameters) as {head}. "
        "InternImage is a convolutional vision foundation model built on deformable convolution v3 (DCNv3): each "
        "block predicts per-pixel sampling offsets and softmax-normalised weights for groups of channels "
        f"([paper]({PAPER_URL}), [official code]({OFFICIAL_REPO_URL})). Evaluation resolution: "
        f"{info.image_size}x{info.image_size}.{table}"
    )


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
    return f"Reported by the authors (official InternImage README):\n\n| metric | value |\n|---|---|\n{rows}"


def _usage(info: ModelCardInfo) -> str:
    repo = info.repo_id or "path/to/converted/checkpoint"
    if info.task == "classification":
        code = f"""import internimage_hf  # registers InternImage with the Auto classes
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
        code = f"""import internimage_hf  # registers InternImage with the Auto classes
from internimage_hf import InternImageBackbone
from transformers import AutoImageProcessor

processor = AutoImageProcessor.from_pretrained("{repo}")
backbone = InternImageBackbone.from_pretrained("{repo}").eval()
feature_maps = backbone(**processor(images=image, return_tensors="pt")).feature_maps  # 4 maps, NCHW"""
        model_var = "backbone"
    else:
        code = f"""import internimage_hf  # registers InternImage as a Transformers backbone (needed to load the config)
from transformers import UperNetForSemanticSegmentation

model = UperNetForSemanticSegmentation.from_pretrained("{repo}").eval()
logits = model(pixel_values).logits  # (batch, num_labels, height, width)"""
        model_var = "model"
    kernel = f"""import internimage_hf

{model_var} = internimage_hf.kernelize({model_var}.to("cuda"))  # DCNv3 CUDA kernel from the Hugging Face kernel hub"""
    return (
        f"```bash\npip install {PACKAGE_NAME}\n```\n\n```python\n{code}\n```\n\n"
        "The model runs everywhere with a pure-PyTorch DCNv3; on a GPU, swap in the compiled kernel:\n\n"
        f"```python\n{kernel}\n```"
    )


def render_model_card(info: ModelCardInfo) -> str:
    """The full README.md text: front matter, description, source, results, usage, license, citation."""
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
        "MIT, as the official InternImage weights and code.",
        "## Citation",
        f"```bibtex\n{CITATION}\n```",
    ]
    return "\n\n".join(sections) + "\n"


__all__ = ["ModelCardInfo", "render_model_card"]
