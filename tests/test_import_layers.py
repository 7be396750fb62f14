"""Imports inside the package only go down: each folder imports its own modules and those of lower layers.

Every module under `src/internimage_hf/` is parsed with `ast`; every import counts, also those inside functions and
under ``if TYPE_CHECKING:``. The package's `__init__.py` (which exports the public names) is exempt; importing it
(``import internimage_hf``) places a module above everything the package root imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "internimage_hf"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Lowest first. A module may import from its own layer and the layers before it.
LAYERS = (
    "data",  # shipped class names
    "ops",  # the portable DCNv3 operator
    "hub_kernels",  # the compiled kernel in place of the PyTorch modules
    "models",  # InternImage (configuration, modeling, image processors)
    "hub",  # remote code, model cards, export
    "conversion",  # official checkpoints -> this package's format
    PACKAGE,  # the package root: exports the public names, registers the Auto classes
    "training",  # the training loops
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """The layer of a package module: its first folder (``internimage_hf.ops.dcnv3`` -> ``ops``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def is_module(module: str) -> bool:
    path = PACKAGE_DIR.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(module: str, source: str) -> list[tuple[int, str]]:
    """(line, package module) of every import of the package in `source`, the source of `module`."""
    package = module if is_module(module + ".__init__") else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            for alias in node.names:  # `from x import y` imports the module x.y when there is one
                found.append((node.lineno, f"{target}.{alias.name}" if is_module(f"{target}.{alias.name}") else target))
    return [(line, name) for line, name in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def layer_violations(module: str, source: str) -> list[str]:
    """The imports in `source` (the source of `module`) that reach a higher layer or outside `LAYERS`."""
    if module == PACKAGE:
        return []
    rank = {name: index for index, name in enumerate(LAYERS)}
    own = layer(module)
    if own not in rank:
        return [f"{module} is in no layer: add `{own}` to LAYERS"]
    return [
        f"{module} line {line} imports {target} ({layer(target)} is above {own})"
        for line, target in imported_modules(module, source)
        if rank.get(layer(target), len(LAYERS)) > rank[own]
    ]


def package_modules() -> list[tuple[str, Path]]:
    return sorted((module_name(path), path) for path in PACKAGE_DIR.rglob("*.py"))


def test_every_module_imports_only_its_own_and_lower_layers():
    violations = [
        violation
        for module, path in package_modules()
        for violation in layer_violations(module, path.read_text(encoding="utf-8"))
    ]
    assert not violations, "\n".join(violations)


def test_the_layers_cover_the_package():
    folders = {path.name for path in PACKAGE_DIR.iterdir() if (path / "__init__.py").is_file()}
    assert folders == set(LAYERS) - {PACKAGE}
    assert [path.name for path in PACKAGE_DIR.glob("*.py")] == ["__init__.py"]  # no module outside a folder


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("internimage_hf.ops.dcnv3", "from ..models.internimage.configuration_internimage import InternImageConfig\n"),
        (
            "internimage_hf.ops.dcnv3",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..hub_kernels import x\n",
        ),
        (
            "internimage_hf.hub_kernels.kernelizing",
            "def f():\n    from ..models.internimage import modeling_internimage\n",
        ),
        ("internimage_hf.models.internimage.modeling_internimage", "from ...conversion import keys\n"),
        ("internimage_hf.models.internimage.modeling_internimage", "import internimage_hf.hub.remote_code\n"),
        ("internimage_hf.hub.model_card", "from ..conversion.releases import Release\n"),
        ("internimage_hf.conversion.pipeline", "import internimage_hf\n"),
        ("internimage_hf.conversion.pipeline", "from .. import training\n"),
    ],
)
def test_an_import_going_up_is_found(module, source):
    assert layer_violations(module, source)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        (
            "internimage_hf.models.internimage.modeling_internimage",
            "def f():\n    from ...hub_kernels import kernelize\n",
        ),
        ("internimage_hf.models.internimage.modeling_internimage", "from .checkpoint_keys import HUB_PREFIX\n"),
        ("internimage_hf.conversion.keys", "from ..models.internimage.checkpoint_keys import HUB_PREFIX\n"),
        ("internimage_hf.training.hub", "import internimage_hf\nfrom ..hub.remote_code import add_remote_code\n"),
    ],
)
def test_an_import_going_down_is_allowed(module, source):
    assert not layer_violations(module, source)
