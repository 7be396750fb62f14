"""Loading the built kernel through the real `kernels` resolver, and `internimage_hf.hub_kernels`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from dcnv3_test_inputs import dcnv3_params, make_inputs, reference_core
from dcnv3_test_loader import load_variant
from tiny_dcnv3_module import TinyDCNv3

from internimage_hf import hub_kernels

SRC_DIR = Path(__file__).resolve().parents[2] / "src"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cpu_backend_arg() -> str | None:
    """The resolver only accepts a CPU variant on a CUDA build of torch when asked for backend="cpu"."""
    return "cpu" if torch.version.cuda else None


def hub_cache_layout(cache: Path, build_root: Path, repo_id: str = hub_kernels.DCNV3_KERNEL_REPO_ID) -> Path:
    """``$KERNELS_CACHE/kernels--org--name/{refs/v1, snapshots/<sha>/build/<variant>/...}``, files symlinked
    to ``build_root`` as in a real HF cache (where snapshot files link to blobs)."""
    repo_dir = cache / ("kernels--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "v1").write_text(FAKE_COMMIT)
    snapshot = repo_dir / "snapshots" / FAKE_COMMIT
    for path in (build_root / "build").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            target = snapshot / path.relative_to(build_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return snapshot


def test_metadata_and_layout(cpu_kernel_build):
    variant = cpu_kernel_build.variant_dir
    meta = json.loads((variant / "metadata.json").read_text())
    assert meta["name"] == "dcnv3" and meta["version"] == 1 and meta["license"] == "MIT"
    assert meta["backend"] == {"type": "cpu"} and meta["id"] == cpu_kernel_build.ops_name
    assert (variant / f"{meta['id']}.abi3.so").exists()
    assert {"__init__.py", "layers.py", "_ops.py", "_core.py"} <= {p.name for p in variant.glob("*.py")}


def test_metadata_parses_with_kernels(kernels_module, cpu_kernel_build):
    from kernels._rust import Metadata

    metadata = Metadata.read_from_file(cpu_kernel_build.variant_dir / "metadata.json")
    assert metadata.id == cpu_kernel_build.ops_name


def test_get_local_kernel_from_root_and_variant(kernels_module, cpu_kernel_build, dcnv3_kernel):
    from_root = kernels_module.get_local_kernel(cpu_kernel_build.root, backend=cpu_backend_arg())
    from_variant = kernels_module.get_local_kernel(cpu_kernel_build.variant_dir)
    assert from_root is from_variant is dcnv3_kernel
    assert from_root.__name__ == cpu_kernel_build.ops_name


_HUB_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import kernels
    sys.path[:0] = [{src!r}, {tests!r}]
    from dcnv3_test_inputs import dcnv3_params, make_inputs, reference_core
    from tiny_dcnv3_module import TinyDCNv3
    import internimage_hf.hub_kernels as hk
    from internimage_hf.dcnv3 import dcnv3_core

    params = dcnv3_params(group=2, group_channels=4, offset_scale=1.5, remove_center=True)
    value, offset, mask = make_inputs(params)
    kernel = kernels.get_kernel(hk.DCNV3_KERNEL_REPO_ID, version=1, backend={backend!r})
    direct = (kernel.dcnv3(value, offset, mask, **params) - dcnv3_core(value, offset, mask, **params)).abs().max()
    result = {{"direct": direct.item(), "has_kernel": kernels.has_kernel(hk.DCNV3_KERNEL_REPO_ID, version=1)}}
    module = TinyDCNv3(params).eval()
    hk.kernelize(module, device="cpu")
    result["backend"] = hk.dcnv3_backend(module)
    logits = make_inputs(params, mask_logits=True)[2]
    expected = reference_core(value, offset, logits, params)
    result["kernelized"] = (module(value, offset, logits) - expected).abs().max().item()
    print(json.dumps(result))
    """
)


def test_offline_hub_cache_and_kernelize(tmp_path, resolver_kernel_build):
    """The default pinned repo (version 1) resolves from an offline hub cache and kernelizes the module."""
    pytest.importorskip("kernels")
    hub_cache_layout(tmp_path / "cache", resolver_kernel_build.root)
    script = _HUB_SCRIPT.format(src=str(SRC_DIR), tests=str(Path(__file__).parent), backend=None)
    env = {**os.environ, "KERNELS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("INTERNIMAGE_DCNV3_KERNEL", None)
    env.pop("INTERNIMAGE_DCNV3_KERNEL_REVISION", None)
    env.pop("LOCAL_KERNELS", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["direct"] < 1e-5
    assert result["has_kernel"] is True
    assert result["backend"] == "hub:internimage-hf/dcnv3@v1"
    assert result["kernelized"] < 1e-5


def test_cuda_variant_serves_cpu_tensors(cuda_kernel_build, golden_cases):
    """A CUDA build registers the CPU implementation too (the resolver loads it for CPU models)."""
    kernel = load_variant(cuda_kernel_build.variant_dir)
    meta = json.loads((cuda_kernel_build.variant_dir / "metadata.json").read_text())
    assert meta["backend"]["type"] == "cuda" and meta["backend"]["archs"]
    for golden in golden_cases.values():
        for params, value, offset, mask, expected in golden.op_cases:
            torch.testing.assert_close(kernel.dcnv3(value, offset, mask, **params), expected, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# internimage_hf.hub_kernels
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(hub_kernels.KERNEL_ENV, raising=False)
    monkeypatch.delenv(hub_kernels.REVISION_ENV, raising=False)
    hub_kernels._logged.clear()
    return monkeypatch


def test_resolve_kernel_source_rules(clean_env, tmp_path):
    resolve = hub_kernels.resolve_kernel_source
    assert resolve().describe() == "hub:internimage-hf/dcnv3@v1"
    assert resolve(revision="main").describe() == "hub:internimage-hf/dcnv3@main"
    assert resolve(repo_id="me/dcn", version=2).describe() == "hub:me/dcn@v2"
    assert resolve(local_path=tmp_path).describe() == f"local:{tmp_path}"
    clean_env.setenv(hub_kernels.KERNEL_ENV, "someone/dcnv3")
    clean_env.setenv(hub_kernels.REVISION_ENV, "abc123")
    assert resolve().describe() == "hub:someone/dcnv3@abc123"
    assert resolve(version=1).describe() == "hub:someone/dcnv3@v1"  # an explicit pin beats the env revision
    assert resolve(repo_id="x/y").describe() == "hub:x/y@abc123"
    clean_env.setenv(hub_kernels.KERNEL_ENV, str(tmp_path))
    assert resolve().local_path == tmp_path
    with pytest.raises(ValueError, match="either `revision` or `version`"):
        resolve(revision="main", version=1)


def _module_and_inputs():
    params = dcnv3_params(group=2, group_channels=4)
    return TinyDCNv3(params).eval(), params, make_inputs(params, mask_logits=True)


def test_kernelize_local_path(kernels_module, clean_env, cpu_kernel_build, caplog):
    module, params, (value, offset, mask) = _module_and_inputs()
    assert hub_kernels.dcnv3_backend(module) == "pytorch"
    with caplog.at_level(logging.INFO, logger=hub_kernels.__name__):
        hub_kernels.kernelize(module, local_path=cpu_kernel_build.variant_dir)
    backend = hub_kernels.dcnv3_backend(module)
    assert backend == f"local:{cpu_kernel_build.variant_dir}"
    assert any(backend in r.getMessage() for r in caplog.records)
    assert module.core.forward.__func__.__module__.startswith(cpu_kernel_build.ops_name)
    expected = reference_core(value, offset, mask, params)
    torch.testing.assert_close(module(value, offset, mask), expected, atol=1e-5, rtol=0)


def test_kernelize_training_mode_backward(kernels_module, clean_env, cpu_kernel_build):
    module, params, (value, offset, mask) = _module_and_inputs()
    module.train()
    hub_kernels.kernelize(module, local_path=cpu_kernel_build.variant_dir)
    assert hub_kernels.dcnv3_backend(module).startswith("local:")
    value.requires_grad_()
    module(value, offset, mask).sum().backward()
    assert value.grad is not None and module.scale.grad is not None


def test_kernelize_env_local_path(kernels_module, clean_env, cpu_kernel_build):
    clean_env.setenv(hub_kernels.KERNEL_ENV, str(cpu_kernel_build.variant_dir))
    module, _, _ = _module_and_inputs()
    hub_kernels.kernelize(module)
    assert hub_kernels.dcnv3_backend(module) == f"local:{cpu_kernel_build.variant_dir}"


def test_kernelize_falls_back_and_logs_once(kernels_module, clean_env, tmp_path, caplog):
    module, params, (value, offset, mask) = _module_and_inputs()
    missing = tmp_path / "no-kernel-here"
    with caplog.at_level(logging.WARNING, logger=hub_kernels.__name__):
        hub_kernels.kernelize(module, local_path=missing)
        hub_kernels.kernelize(module, local_path=missing)
    assert hub_kernels.dcnv3_backend(module) == "pytorch"
    warnings = [r for r in caplog.records if "could not load the kernel" in r.getMessage()]
    assert len(warnings) == 1 and "PyTorch" in warnings[0].getMessage()
    torch.testing.assert_close(module(value, offset, mask), reference_core(value, offset, mask, params))


def test_kernelize_offline_without_cache_keeps_pytorch(clean_env, tmp_path):
    """An uncached `version=` while offline raises inside kernels; kernelize must keep PyTorch, in-process."""
    pytest.importorskip("kernels")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(SRC_DIR)!r}, {str(Path(__file__).parent)!r}]
        from dcnv3_test_inputs import dcnv3_params
        from tiny_dcnv3_module import TinyDCNv3
        import internimage_hf.hub_kernels as hk
        module = TinyDCNv3(dcnv3_params())
        hk.kernelize(module)
        print(hk.dcnv3_backend(module))
        """
    )
    env = {**os.environ, "KERNELS_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    env.pop(hub_kernels.KERNEL_ENV, None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "pytorch"
    assert "could not load the kernel hub:internimage-hf/dcnv3@v1" in proc.stderr


def test_kernelize_unsupported_device_and_no_modules(kernels_module, clean_env, cpu_kernel_build):
    module, _, _ = _module_and_inputs()
    hub_kernels.kernelize(module, device="mps", local_path=cpu_kernel_build.variant_dir)
    assert hub_kernels.dcnv3_backend(module) == "pytorch"
    plain = torch.nn.Linear(2, 2)
    assert hub_kernels.kernelize(plain) is plain
    assert hub_kernels.dcnv3_backend(plain) == "pytorch"
    with pytest.raises(ValueError, match="unknown kernelize mode"):
        hub_kernels.kernelize(module, mode="fastest", local_path=cpu_kernel_build.variant_dir)


def test_kernelize_without_kernels_package(clean_env, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "kernels", None)  # makes `import kernels` raise ImportError
    module, _, _ = _module_and_inputs()
    with caplog.at_level(logging.WARNING, logger=hub_kernels.__name__):
        hub_kernels.kernelize(module)
    assert hub_kernels.dcnv3_backend(module) == "pytorch"
    assert any("not installed" in r.getMessage() for r in caplog.records)
    with pytest.raises(ImportError, match="pip install kernels"):
        hub_kernels.register_dcnv3_kernel_mapping()


def test_register_mapping(kernels_module, clean_env, cpu_kernel_build):
    from kernels.layer.globals import _KERNEL_MAPPING

    token = _KERNEL_MAPPING.set(dict(_KERNEL_MAPPING.get()))
    try:
        source = hub_kernels.register_dcnv3_kernel_mapping(local_path=cpu_kernel_build.variant_dir)
        assert source.describe() == f"local:{cpu_kernel_build.variant_dir}"
        assert hub_kernels.DCNV3_LAYER_NAME in _KERNEL_MAPPING.get()
        module, params, (value, offset, mask) = _module_and_inputs()
        kernels_module.kernelize(module, mode=kernels_module.Mode.INFERENCE, device="cpu")
        assert hub_kernels.dcnv3_backend(module).startswith("kernel:" + cpu_kernel_build.ops_name)
    finally:
        _KERNEL_MAPPING.reset(token)
