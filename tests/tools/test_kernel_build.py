"""The kernel build tooling: naming, hashing, arch lists, build.toml, CLIs, and an opt-in full CUDA compile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import kernel_build
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
KERNEL_SRC = REPO / "kernel_src"


def test_variant_names():
    major, minor = torch.__version__.split(".")[:2]
    assert kernel_build.variant_name("cpu").startswith(f"torch{major}{minor}-cxx11-cpu-")
    if torch.version.cuda:
        cu = "cu" + "".join(torch.version.cuda.split(".")[:2])
        assert kernel_build.variant_name("cuda") == kernel_build.variant_name("cpu").replace("-cpu-", f"-{cu}-")
    else:
        with pytest.raises(RuntimeError, match="CUDA build of torch"):
            kernel_build.variant_name("cuda")
    with pytest.raises(ValueError, match="unsupported backend"):
        kernel_build.variant_name("rocm")


def test_git_tree_hash_matches_git(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    tree = tmp_path / "repo" / "k"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.cu").write_text("// b\n")
    (tree / "sub" / "deeper" / "c.py").write_text("print(1)\n")
    (tree / "sub-file").write_text("sorting: '-' sorts before '/'\n")
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "x.pyc").write_bytes(b"junk")
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / ".gitignore").write_text("__pycache__/\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    expected = subprocess.run([*git, "rev-parse", "HEAD:k"], capture_output=True, text=True, check=True).stdout.strip()
    assert kernel_build.git_tree_hash(tree) == expected
    assert kernel_build.ops_name(tree, "cpu") == f"_dcnv3_cpu_{expected[:7]}"
    (tree / "a.txt").write_text("changed\n")
    assert kernel_build.ops_name(tree, "cpu").endswith("_dirty")


def test_cuda_arch_lists():
    assert kernel_build.default_cuda_archs((13, 0)) == "7.5;8.0;8.6;8.7;8.9;9.0;10.0;11.0;12.0;12.1+PTX"
    assert kernel_build.default_cuda_archs((12, 8)).endswith("12.0+PTX")
    assert kernel_build.parse_cuda_archs("8.0;9.0a, 12.1+PTX") == ("8.0", "9.0a", "12.1+PTX")
    flags = kernel_build.gencode_flags(("8.0", "12.1+PTX"))
    assert flags == [
        "-gencode", "arch=compute_80,code=sm_80",
        "-gencode", "arch=compute_121,code=sm_121",
        "-gencode", "arch=compute_121,code=compute_121",
    ]  # fmt: skip
    for bad in ("", "sm_80", "8", "8.0+ptx"):
        with pytest.raises(ValueError):
            kernel_build.parse_cuda_archs(bad)


def test_build_toml_is_valid_for_kernel_builder():
    pytest.importorskip("kernels")
    from kernels._rust import Build

    build = Build.open(KERNEL_SRC)
    assert sorted(str(b).lower() for b in build.general.backends) == ["cpu", "cuda"]


def test_build_sources_per_backend():
    build = kernel_build.tomllib.loads((KERNEL_SRC / "build.toml").read_text())
    cpu = {p.name for p in kernel_build._sources(build, KERNEL_SRC, "cpu")}
    cuda = {p.name for p in kernel_build._sources(build, KERNEL_SRC, "cuda")}
    assert cpu == {"torch_binding.cpp", "msda_binding.cpp", "dcnv4_binding.cpp", "dcnv3_cpu.cpp",
                   "depthwise_norm_act.cpp", "msda_cpu.cpp", "dcnv4_cpu.cpp"}  # fmt: skip
    # CUDA variants serve CPU tensors too
    assert cuda == cpu | {"dcnv3_cuda.cpp", "dcnv3_kernels.cu", "msda_cuda.cpp", "msda_kernels.cu", "dcnv4_cuda.cpp",
                          "dcnv4_kernels.cu"}  # fmt: skip


def test_cuda_sources_avoid_heavy_headers():
    for path in (KERNEL_SRC / "dcnv3_cuda").iterdir():
        text = path.read_text()
        assert "ATen/cuda/CUDAContext.h" not in text and "torch/all.h" not in text, path.name
    assert "torch/" not in (KERNEL_SRC / "dcnv3_cuda" / "dcnv3_kernels.cu").read_text()


def test_build_cli_argument_errors(tmp_path):
    script = REPO / "scripts" / "build_kernel.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode == 2 and "--out" in proc.stderr
    args = [sys.executable, str(script), "--backend", "cuda", "--cuda-archs", "sm80", "--out", str(tmp_path)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 2 and "bad CUDA architecture" in proc.stderr
    args = [sys.executable, str(script), "--backend", "cpu", "--cuda-archs", "8.0", "--out", str(tmp_path)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 2 and "only applies to --backend cuda" in proc.stderr


def test_publish_cli_argument_validation(tmp_path, cpu_kernel_build):
    script = REPO / "scripts" / "publish_kernel.py"
    run = lambda *a: subprocess.run([sys.executable, str(script), *map(str, a)], capture_output=True, text=True)  # noqa: E731
    proc = run(tmp_path, "--repo-id", "no-slash")
    assert proc.returncode == 2 and "org/name" in proc.stderr
    proc = run(tmp_path, "--repo-id", "org/name")
    assert proc.returncode != 0 and "no build/<variant>/metadata.json" in proc.stderr
    proc = run(cpu_kernel_build.root, "--repo-id", "org/name", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"org/name@v1: {cpu_kernel_build.variant_dir.name}" in proc.stdout


@pytest.mark.skipif(
    os.environ.get("INTERNIMAGE_TEST_CUDA_COMPILE") != "1", reason="set INTERNIMAGE_TEST_CUDA_COMPILE=1"
)
def test_cuda_compile_all_archs(tmp_path):
    """Compile-only: the CUDA variant for kernel-builder's full arch list as C++17 with nvcc warnings as errors
    (minutes on 2 cores)."""
    if not torch.version.cuda:
        pytest.skip("torch is a CPU build; the CUDA variant must be compiled against a CUDA torch")
    nvcc = kernel_build.nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found")
    torch_cuda = tuple(int(part) for part in torch.version.cuda.split(".")[:2])
    if kernel_build.nvcc_version(nvcc) != torch_cuda:
        pytest.skip(f"torch is built with CUDA {torch.version.cuda} but nvcc is {kernel_build.nvcc_version(nvcc)}")
    start = time.perf_counter()
    assert "-std=c++17" in kernel_build._nvcc_flags([], (), 1)
    result = kernel_build.build_kernel(tmp_path, backend="cuda", src_dir=KERNEL_SRC, strict_cuda=True)
    elapsed = time.perf_counter() - start
    print(f"\nCUDA compile ({';'.join(result.cuda_archs)}): {elapsed:.1f} s", file=sys.stderr)
    assert result.cuda_archs == kernel_build.parse_cuda_archs(
        kernel_build.default_cuda_archs(kernel_build.nvcc_version(nvcc))
    )
    assert (result.variant_dir / f"{result.ops_name}.abi3.so").stat().st_size > 0
    cuobjdump = Path(nvcc).parent / "cuobjdump"
    if shutil.which(str(cuobjdump)) or cuobjdump.exists():
        listing = subprocess.run(
            [str(cuobjdump), "--list-elf", str(result.variant_dir / f"{result.ops_name}.abi3.so")],
            capture_output=True,
            text=True,
        ).stdout
        assert "sm_90" in listing and "sm_75" in listing
