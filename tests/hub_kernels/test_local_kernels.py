"""Loading the built kernel through the real `kernels` resolver, and `internimage_hf.hub_kernels`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import kernel_build
import pytest
import torch
from dcnv3_test_inputs import dcnv3_params, make_inputs, reference_core
from dcnv3_test_loader import load_variant
from tiny_dcnv3_module import TinyDCNv3

from internimage_hf import hub_kernels
from internimage_hf.hub_kernels import pin as kernel_pin

SRC_DIR = Path(__file__).resolve().parents[2] / "src"
SUPPORT_DIR = Path(__file__).resolve().parents[1] / "support"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
MOVED_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def cpu_backend_arg() -> str | None:
    """The resolver only accepts a CPU variant on a CUDA build of torch when asked for backend="cpu"."""
    return "cpu" if torch.version.cuda else None


def hub_cache_layout(
    cache: Path, build_root: Path, repo_id: str = hub_kernels.DCNV3_KERNEL_REPO_ID, commit: str = FAKE_COMMIT
) -> Path:
    """``$KERNELS_CACHE/kernels--org--name/{refs/v1, snapshots/<sha>/build/<variant>/...}``, files symlinked
    to ``build_root`` as in a real HF cache (where snapshot files link to blobs); branch ``v1`` points at it."""
    repo_dir = cache / ("kernels--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "v1").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    for path in (build_root / "build").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            target = snapshot / path.relative_to(build_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return snapshot


def marker_variant(variant_dir: Path, marker: Path) -> Path:
    """A loadable-looking kernel variant whose ``__init__`` writes ``marker``: proof that its code ran."""
    variant_dir.mkdir(parents=True)
    metadata = {"name": "dcnv3", "id": "_dcnv3_marker_0000001", "version": 1, "license": "MIT"}
    metadata.update({"python-depends": [], "backend": {"type": "cpu"}})
    (variant_dir / "metadata.json").write_text(json.dumps(metadata))
    (variant_dir / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return variant_dir


def write_pin(path: Path, commit: str | None) -> Path:
    path.write_text(json.dumps({"repo_id": hub_kernels.DCNV3_KERNEL_REPO_ID, "version": 1, "commit": commit}))
    return path


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
    import internimage_hf.hub_kernels.pin as kp
    from internimage_hf.ops.dcnv3 import dcnv3_core

    kp.PIN_PATH = kp.Path({pin!r})
    params = dcnv3_params(group=2, group_channels=4, offset_scale=1.5, remove_center=True)
    value, offset, mask = make_inputs(params)
    kernel = kernels.get_kernel(hk.DCNV3_KERNEL_REPO_ID, revision={commit!r}, backend={backend!r})
    direct = (kernel.dcnv3(value, offset, mask, **params) - dcnv3_core(value, offset, mask, **params)).abs().max()
    result = {{"direct": direct.item()}}
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
    """The default kernel is the pinned commit: it loads from an offline hub cache and kernelizes the module,
    while branch ``v1`` has moved to another commit whose code never runs."""
    pytest.importorskip("kernels")
    hub_cache_layout(tmp_path / "cache", resolver_kernel_build.root)
    moved = tmp_path / "moved"
    marker_variant(moved / "build" / resolver_kernel_build.variant_dir.name, tmp_path / "moved-code-ran")
    hub_cache_layout(tmp_path / "cache", moved, commit=MOVED_COMMIT)  # refs/v1 -> MOVED_COMMIT
    pin = write_pin(tmp_path / "pin.json", FAKE_COMMIT)
    tests = str(SUPPORT_DIR)
    script = _HUB_SCRIPT.format(src=str(SRC_DIR), tests=tests, backend=None, pin=str(pin), commit=FAKE_COMMIT)
    env = {**os.environ, "KERNELS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("INTERNIMAGE_DCNV3_KERNEL", None)
    env.pop("INTERNIMAGE_DCNV3_KERNEL_REVISION", None)
    env.pop("LOCAL_KERNELS", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["direct"] < 1e-5
    assert result["backend"] == f"hub:internimage-hf/dcnv3@{FAKE_COMMIT}"
    assert result["kernelized"] < 1e-5
    assert not (tmp_path / "moved-code-ran").exists()


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
def pinned(clean_env, tmp_path):
    """The package pin set to FAKE_COMMIT (the shipped file may be unpinned)."""
    clean_env.setattr(kernel_pin, "PIN_PATH", write_pin(tmp_path / "pin.json", FAKE_COMMIT))
    return clean_env


def test_resolve_kernel_source_rules(pinned, tmp_path):
    clean_env = pinned
    resolve = hub_kernels.resolve_kernel_source
    assert resolve().describe() == f"hub:internimage-hf/dcnv3@{FAKE_COMMIT}"
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
    """An uncached pinned commit while offline raises inside kernels; kernelize must keep PyTorch, in-process."""
    pytest.importorskip("kernels")
    pin = write_pin(tmp_path / "pin.json", FAKE_COMMIT)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(SRC_DIR)!r}, {str(SUPPORT_DIR)!r}]
        from dcnv3_test_inputs import dcnv3_params
        from tiny_dcnv3_module import TinyDCNv3
        import internimage_hf.hub_kernels as hk
        import internimage_hf.hub_kernels.pin as kp
        kp.PIN_PATH = kp.Path({str(pin)!r})
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
    assert f"could not load the kernel hub:internimage-hf/dcnv3@{FAKE_COMMIT}" in proc.stderr


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
    with kernels_module.use_kernel_mapping({}):  # a copy of the global mapping, dropped on exit
        source = hub_kernels.register_dcnv3_kernel_mapping(local_path=cpu_kernel_build.variant_dir)
        assert source.describe() == f"local:{cpu_kernel_build.variant_dir}"
        module, params, (value, offset, mask) = _module_and_inputs()
        kernels_module.kernelize(module, mode=kernels_module.Mode.INFERENCE, device="cpu")
        assert hub_kernels.dcnv3_backend(module).startswith("kernel:" + cpu_kernel_build.ops_name)
        torch.testing.assert_close(
            module(value, offset, mask), reference_core(value, offset, mask, params), atol=1e-5, rtol=0
        )
    module, _, _ = _module_and_inputs()
    kernels_module.kernelize(module, mode=kernels_module.Mode.INFERENCE, device="cpu")
    assert hub_kernels.dcnv3_backend(module) == "pytorch"


# --------------------------------------------------------------------------------------------------
# local kernels: the variant that fits this torch and device; hub ids vs local paths
# --------------------------------------------------------------------------------------------------


def _other_torch_variant_name(variant_name: str) -> tuple[str, str]:
    """``variant_name`` for the next torch minor, and that version as ``kernels`` prints it (``2.15``)."""
    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    own, other = f"torch{major}{minor}-", f"torch{major}{minor + 1}-"
    assert variant_name.startswith(own), variant_name
    return other + variant_name[len(own) :], f"{major}.{minor + 1}"


def test_kernelize_build_root_picks_the_cpu_variant(kernels_module, clean_env, cpu_kernel_build, tmp_path):
    """A build root picks the variant of this torch for the model's device: on a CUDA build of torch with the
    model on CPU, the CPU variant (not a CUDA one); variants for another torch are never imported."""
    root = tmp_path / "kernel_build"
    (root / "build").mkdir(parents=True)
    (root / "build" / cpu_kernel_build.variant_dir.name).symlink_to(cpu_kernel_build.variant_dir)
    other_torch, _ = _other_torch_variant_name(cpu_kernel_build.variant_dir.name)
    marker_variant(root / "build" / other_torch, tmp_path / "other-torch-ran")
    if torch.version.cuda:  # the variant the kernels resolver alone would pick on this torch
        cuda_tag = "cu" + "".join(torch.version.cuda.split(".")[:2])
        marker_variant(
            root / "build" / cpu_kernel_build.variant_dir.name.replace("-cpu-", f"-{cuda_tag}-"),
            tmp_path / "cuda-variant-ran",
        )
    module, params, (value, offset, mask) = _module_and_inputs()
    hub_kernels.kernelize(module, local_path=root)
    assert hub_kernels.dcnv3_backend(module) == f"local:{root / 'build' / cpu_kernel_build.variant_dir.name}"
    torch.testing.assert_close(
        module(value, offset, mask), reference_core(value, offset, mask, params), atol=1e-5, rtol=0
    )
    assert not (tmp_path / "other-torch-ran").exists() and not (tmp_path / "cuda-variant-ran").exists()


def test_variant_dir_for_another_torch_is_refused(kernels_module, clean_env, tmp_path, caplog):
    """A variant directory passed directly is checked against the running torch; its code never runs."""
    other_torch, other_version = _other_torch_variant_name(kernel_build.variant_name("cpu"))
    variant = marker_variant(tmp_path / other_torch, tmp_path / "ran")
    renamed = marker_variant(tmp_path / "my-dcnv3-kernel", tmp_path / "renamed-ran")
    module, params, (value, offset, mask) = _module_and_inputs()
    with caplog.at_level(logging.WARNING, logger=hub_kernels.__name__):
        hub_kernels.kernelize(module, local_path=variant)
        hub_kernels.kernelize(module, local_path=renamed)
    assert hub_kernels.dcnv3_backend(module) == "pytorch"
    messages = [r.getMessage() for r in caplog.records]
    running = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    expected = f"Torch version ({other_version}) does not match environment Torch version ({running})"
    assert any(f"local:{variant}" in m and expected in m for m in messages), messages
    assert any(f"local:{renamed}" in m and "cannot tell which torch" in m for m in messages), messages
    assert not (tmp_path / "ran").exists() and not (tmp_path / "renamed-ran").exists()
    torch.testing.assert_close(module(value, offset, mask), reference_core(value, offset, mask, params))


def test_kernel_env_hub_id_is_never_a_path(pinned, tmp_path):
    """``INTERNIMAGE_DCNV3_KERNEL=org/name`` is a hub id even when ./org/name exists; paths start with / . ~."""
    (tmp_path / "someone" / "dcnv3").mkdir(parents=True)
    pinned.chdir(tmp_path)
    resolve = hub_kernels.resolve_kernel_source
    pinned.setenv(hub_kernels.KERNEL_ENV, "someone/dcnv3")
    assert resolve().describe() == "hub:someone/dcnv3@v1"
    pinned.setenv(hub_kernels.KERNEL_ENV, "./someone/dcnv3")
    assert resolve().local_path == Path("someone/dcnv3")
    pinned.setenv(hub_kernels.KERNEL_ENV, "~/dcnv3")
    assert resolve().local_path == Path.home() / "dcnv3"
    pinned.setenv(hub_kernels.KERNEL_ENV, "kernel build")
    with pytest.raises(ValueError, match=f"{hub_kernels.KERNEL_ENV}='kernel build' is not a hub kernel repo id"):
        resolve()
    pinned.delenv(hub_kernels.KERNEL_ENV)
    with pytest.raises(ValueError, match="repo_id='./build' is not a hub kernel repo id.*local_path="):
        resolve(repo_id="./build")
    with pytest.raises(ValueError, match="repo_id='a/b/c'"):
        resolve(repo_id="a/b/c")
