"""The model documentation page (docs/model_doc/internimage.md) and the `Args:` docstrings of the public API."""

import ast
import inspect
import re
import textwrap
from pathlib import Path

import pytest

import internimage_hf
from internimage_hf.conversion.pipeline import convert_checkpoint
from internimage_hf.hub import model_card

DOC_PAGE = Path(__file__).resolve().parents[1] / "docs" / "model_doc" / "internimage.md"

# Modules whose public classes and functions must carry an `Args:` section naming each parameter. Owners add their
# module here once its docstrings have one (see the report of issue 13 for the names still missing).
ARGS_CHECKED_MODULES = {
    "internimage_hf.conversion.keys",
    "internimage_hf.ops.dcnv3",
    "internimage_hf.models.internimage.modeling_internimage",
    "internimage_hf.hub_kernels.kernelizing",
    "internimage_hf.models.internimage.image_processing_internimage",
    "internimage_hf.models.internimage.image_processing_pil_internimage",
    "internimage_hf.hub.model_card",
    "internimage_hf.models.dino_detr.modeling_dino_detr",
    "internimage_hf.conversion.dino_detr",
}

# Sections of the page (`## <title>`) and the callables whose parameters each must name.
SECTION_SIGNATURES = {
    "InternImageModel": [internimage_hf.InternImageModel.forward],
    "InternImageForImageClassification": [internimage_hf.InternImageForImageClassification.forward],
    "InternImageBackbone": [internimage_hf.InternImageBackbone.forward],
    "kernelize": [internimage_hf.kernelize, internimage_hf.register_dcnv3_kernel_mapping],
    "DCNv3 operator": [internimage_hf.DCNv3Core.forward, internimage_hf.dcnv3_core],
    "convert_checkpoint": [convert_checkpoint, internimage_hf.convert_official_state_dict],
    "DinoDetrForObjectDetection": [internimage_hf.DinoDetrForObjectDetection.forward],
}


def public_api(module) -> list[tuple[str, object]]:
    """(name, object) for every class or function in `module.__all__`."""
    objects = [(name, getattr(module, name)) for name in module.__all__]
    return [(name, obj) for name, obj in objects if inspect.isclass(obj) or inspect.isfunction(obj)]


def page_sections() -> dict[str, str]:
    """`## <title>` -> the text up to the next such heading."""
    parts = re.split(r"^## (.+)$", DOC_PAGE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def named_parameters(function) -> list[str]:
    """Parameters a caller names (no self, *args or **kwargs)."""
    skipped = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = inspect.signature(function).parameters.values()
    return [p.name for p in parameters if p.kind not in skipped and p.name != "self"]


def args_section(docstring: str | None) -> str | None:
    """The text after `Args:` up to the next Google-style section (Returns/Raises/...), or None without one."""
    match = re.search(r"^\s*Args:\s*$(.*?)(?=^\s*(?:Returns|Raises|Yields|Example|Examples):\s*$|\Z)",
                      inspect.cleandoc(docstring or ""), flags=re.MULTILINE | re.DOTALL)  # fmt: skip
    return match.group(1) if match else None


def test_every_public_class_and_function_is_on_the_doc_page():
    text = DOC_PAGE.read_text(encoding="utf-8")
    missing = [name for name, _ in public_api(internimage_hf) if not re.search(rf"\b{name}\b", text)]
    assert not missing, f"not mentioned in {DOC_PAGE.name}: {missing}"


def test_doc_page_has_a_section_per_main_class():
    expected = [
        "Overview", "Usage tips", "Resources", "InternImageConfig", "InternImageModel",
        "InternImageForImageClassification", "InternImageBackbone", "InternImageImageProcessor",
        "InternImageImageProcessorPil", "kernelize", "convert_checkpoint",
    ]  # fmt: skip
    assert not set(expected) - set(page_sections())
    assert "2211.05778" in page_sections()["Overview"] and "CVPR 2023" in page_sections()["Overview"]


def test_doc_page_lists_every_config_field():
    section = page_sections()["InternImageConfig"]
    fields = [name.lstrip("_") for name in internimage_hf.InternImageConfig.__annotations__]
    missing = [name for name in fields if f"`{name}`" not in section]
    assert not missing, f"InternImageConfig fields missing from the page: {missing}"


@pytest.mark.parametrize("section", sorted(SECTION_SIGNATURES))
def test_doc_page_names_every_parameter(section):
    text = page_sections()[section]
    missing = [
        f"{function.__qualname__}({name})"
        for function in SECTION_SIGNATURES[section]
        for name in named_parameters(function)
        if f"`{name}`" not in text and not re.search(rf"[(,]\s*{name}\b", text)
    ]
    assert not missing, f"section {section!r} does not name: {missing}"


def test_doc_page_python_blocks_parse():
    blocks = re.findall(r"```python\n(.*?)```", DOC_PAGE.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        ast.parse(textwrap.dedent(block))


def checked_api() -> list[tuple[str, object]]:
    api = public_api(internimage_hf) + public_api(model_card)
    return [(name, obj) for name, obj in api if obj.__module__ in ARGS_CHECKED_MODULES]


@pytest.mark.parametrize("name, obj", checked_api(), ids=[name for name, _ in checked_api()])
def test_public_docstrings_have_args(name, obj):
    """Every parameter of the class (constructor) or function is named under `Args:`; `**kwargs` alone needs one too."""
    if not inspect.signature(obj).parameters:
        return
    section = args_section(obj.__doc__)
    assert section is not None, f"{name} has no Args: section"
    undocumented = [p for p in named_parameters(obj) if not re.search(rf"\b{p}\b", section)]
    assert not undocumented, f"{name}: Args: does not name {undocumented}"
