"""Shared test fixtures: reference outputs of the official implementation.

The golden files in `../shared/golden` (50 MB) when that folder is there; otherwise the compact fixtures in
`tests/fixtures/` (same layout, tiny models of the same six styles; `scripts/make_parity_fixtures.py`), so the
parity tests also run in a fresh clone.

The developer tools (`tools/`: parity fixtures, kernel builds) are not part of the package: this puts their folder on
`sys.path`, so the tests import them by name (`import kernel_build`); likewise `tests/support/` (helpers shared by
several test folders, and the kernel-build fixtures of `kernel_builds`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
from parity_fixtures import read_fixture  # noqa: E402

# The built kernels are used by tests/kernel (the kernel itself), tests/hub_kernels (loading it) and tests/tools.
pytest_plugins = ("kernel_builds",)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

GOLDEN_NAMES = ("tiny_t", "tiny_s", "tiny_l", "tiny_h", "tiny_g", "tiny_rc")
FIXTURES_DIR = Path(__file__).parent / "fixtures"


def find_shared_dir() -> Path | None:
    """`$INTERNIMAGE_SHARED_DIR`, else the first `shared/` next to this checkout or one of its parents."""
    env = os.environ.get("INTERNIMAGE_SHARED_DIR")
    if env:
        return Path(env) if Path(env, "golden").is_dir() else None
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared"
        if (candidate / "golden").is_dir():
            return candidate
    return None


def find_reference_dir() -> Path:
    """Where the golden outputs come from: `<shared>/golden` (see `find_shared_dir`), else `tests/fixtures`."""
    shared = find_shared_dir()
    return shared / "golden" if shared is not None else FIXTURES_DIR


class GoldenCase:
    """One golden or fixture file: official weights (float32), input, logits, NHWC stage outputs and op cases."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.stem
        tensors, self.metadata = read_fixture(path)
        prefix = "state_dict."
        self.state_dict = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        self.input = tensors["input"]
        self.logits = tensors["logits"]
        self.stage_outputs = [tensors[f"stage_outputs.{i}"].permute(0, 3, 1, 2) for i in range(4)]
        self.op_cases = [
            (params, tensors[f"op_cases.{j}.input"], tensors[f"op_cases.{j}.offset"], tensors[f"op_cases.{j}.mask"],
             tensors[f"op_cases.{j}.output"])
            for j, params in enumerate(self.metadata["op_cases"])
        ]  # fmt: skip

    @property
    def model_kwargs(self) -> dict:
        return dict(self.metadata["model_kwargs"])

    def hub_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights as the official hub repos name them: "model." + key, gamma -> layer_scale."""
        return {
            "model." + key.replace(".gamma1", ".layer_scale1").replace(".gamma2", ".layer_scale2"): value
            for key, value in self.state_dict.items()
        }

    def write_official_hub_dir(self, directory: Path) -> Path:
        """Lay out `directory` like an official remote-code hub repo: their config.json and "model."-keyed weights."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        config = {
            **self.model_kwargs,
            "model_type": "internimage",
            "architectures": ["InternImageModel"],
            "auto_map": {
                "AutoConfig": "configuration_internimage.InternImageConfig",
                "AutoModel": "modeling_internimage.InternImageModel",
                "AutoModelForImageClassification": "modeling_internimage.InternImageModelForImageClassification",
            },
            "act_layer": "GELU",
            "norm_layer": "LN",
            "cls_scale": 1.5,
            "drop_rate": 0.0,
            "drop_path_rate": 0.0,
            "drop_path_type": "linear",
            "torch_dtype": "float32",
            "transformers_version": "4.37.2",
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in self.hub_state_dict().items()}, str(directory / "model.safetensors"))
        return directory


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = find_shared_dir()
    if path is None:
        pytest.skip("reference data ../shared/golden not found (set INTERNIMAGE_SHARED_DIR)")
    return path


def load_cases(directory: Path) -> dict[str, GoldenCase]:
    return {name: GoldenCase(directory / f"{name}.safetensors") for name in GOLDEN_NAMES}


@pytest.fixture(scope="session")
def golden_cases() -> dict[str, GoldenCase]:
    """The six golden cases: `../shared/golden` when present, else the compact fixtures of this repository."""
    return load_cases(find_reference_dir())


@pytest.fixture
def reference_dir_finder():
    """`find_reference_dir`, for tests of where the golden cases come from."""
    return find_reference_dir


@pytest.fixture(scope="session")
def fixture_cases() -> dict[str, GoldenCase]:
    """The compact fixtures of this repository, whether or not `../shared` is present."""
    return load_cases(FIXTURES_DIR)


@pytest.fixture(params=GOLDEN_NAMES)
def golden(request, golden_cases) -> GoldenCase:
    return golden_cases[request.param]
