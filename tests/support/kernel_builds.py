"""Fixtures for the DCNv3 kernel tests (a pytest plugin loaded by tests/conftest.py): build the kernel once per
session (optionally cached) and load it.

``INTERNIMAGE_KERNEL_BUILD_CACHE=<dir>`` keeps builds across runs, keyed by variant, torch version and the
source tree hash (so an edited kernel_src is rebuilt). ``INTERNIMAGE_KERNEL_PREBUILT=<root>`` uses a build root
made by scripts/build_kernel.py for every variant it holds (scripts/gpu_check.sh builds once for its tests and
benchmark). ``INTERNIMAGE_KERNEL_CUDA_ARCHS`` sets the archs of the single-arch CUDA build used by the resolver
tests (default: the visible GPU, else 8.0).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import kernel_build
import pytest
import torch
from dcnv3_test_loader import load_variant

from internimage_hf import hub_kernels
from internimage_hf.hub_kernels import kernelizing

KERNEL_SRC = Path(__file__).resolve().parents[2] / "kernel_src"


@dataclasses.dataclass(frozen=True)
class BuiltKernel:
    """A kernel repo root holding one variant: ``root/build/<variant>/``."""

    root: Path
    variant_dir: Path
    backend: str
    ops_name: str


def _cache_key(backend: str) -> str:
    variant = kernel_build.variant_name(backend)
    torch_version = torch.__version__.replace("+", "_")
    return f"{variant}-torch{torch_version}-{kernel_build.ops_name(KERNEL_SRC, backend).lstrip('_')}"


def _build(tmp_path_factory, backend: str, cuda_archs: str | None = None) -> BuiltKernel:
    cache = os.environ.get("INTERNIMAGE_KERNEL_BUILD_CACHE")
    prebuilt = os.environ.get("INTERNIMAGE_KERNEL_PREBUILT")
    variant = kernel_build.variant_name(backend)
    if prebuilt and (Path(prebuilt) / "build" / variant / "metadata.json").exists():
        root = Path(prebuilt)
    elif cache:
        root = Path(cache) / _cache_key(backend)
        if not (root / "build" / variant / "metadata.json").exists():
            # Build next to the final place and rename, so concurrent sessions never see half a build.
            scratch = Path(cache) / f".tmp-{os.getpid()}-{backend}"
            shutil.rmtree(scratch, ignore_errors=True)
            result = kernel_build.build_kernel(scratch, backend=backend, src_dir=KERNEL_SRC, cuda_archs=cuda_archs)
            print(f"\nbuilt {result.ops_name} in {result.seconds:.1f} s", file=sys.stderr)
            root.parent.mkdir(parents=True, exist_ok=True)
            try:
                scratch.rename(root)
            except OSError:  # another session won the race
                shutil.rmtree(scratch, ignore_errors=True)
    else:
        root = tmp_path_factory.mktemp(f"dcnv3_{backend}")
        result = kernel_build.build_kernel(root, backend=backend, src_dir=KERNEL_SRC, cuda_archs=cuda_archs)
        print(f"\nbuilt {result.ops_name} in {result.seconds:.1f} s", file=sys.stderr)
    variant_dir = root / "build" / variant
    ops = json.loads((variant_dir / "metadata.json").read_text())["id"]
    return BuiltKernel(root, variant_dir, backend, ops)


@pytest.fixture(scope="session")
def cpu_kernel_build(tmp_path_factory) -> BuiltKernel:
    """The CPU variant of kernel_src for the installed torch (built once per session or cached)."""
    return _build(tmp_path_factory, "cpu")


@pytest.fixture(scope="session")
def dcnv3_kernel(cpu_kernel_build):
    """The imported CPU kernel module (``dcnv3``, ``layers``, ``dcnv3_forward``, ``dcnv3_backward``)."""
    return load_variant(cpu_kernel_build.variant_dir)


@pytest.fixture(scope="session")
def cuda_kernel_build(tmp_path_factory) -> BuiltKernel:
    """A single-arch CUDA variant; the one the ``kernels`` resolver picks on a CUDA build of torch."""
    if kernel_build.torch_backend() == "cpu":
        pytest.skip("torch is a CPU build: the resolver never selects a CUDA variant")
    if kernel_build.nvcc_path() is None:
        pytest.skip("nvcc not found: cannot build the CUDA variant")
    archs = os.environ.get("INTERNIMAGE_KERNEL_CUDA_ARCHS")
    if archs is None:
        archs = "native" if torch.cuda.is_available() else "8.0"
    return _build(tmp_path_factory, "cuda", cuda_archs=archs)


@pytest.fixture(scope="session")
def resolver_kernel_build(request) -> BuiltKernel:
    """The build the ``kernels`` resolver selects for this torch (CPU torch: cpu; CUDA torch: cuda)."""
    if kernel_build.torch_backend() == "cpu":
        return request.getfixturevalue("cpu_kernel_build")
    return request.getfixturevalue("cuda_kernel_build")


@pytest.fixture
def kernels_module():
    return pytest.importorskip("kernels", reason="the `kernels` package is not installed")


@pytest.fixture
def clean_env(monkeypatch):
    """No kernel-selecting environment variables and a fresh once-only log; returns the monkeypatch."""
    monkeypatch.delenv(hub_kernels.KERNEL_ENV, raising=False)
    monkeypatch.delenv(hub_kernels.REVISION_ENV, raising=False)
    kernelizing._logged.clear()
    return monkeypatch
