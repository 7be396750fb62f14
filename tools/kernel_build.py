"""Build the DCNv3 hub kernel (``kernel_src/``) for the installed torch without Nix.

This follows the kernel-builder conventions so that the result loads through the ``kernels`` resolver
exactly like a Hub build:

- output ``<out>/build/<variant>/`` with ``variant = torch{M}{m}-cxx11-{cu130|cpu}-{arch}-{os}``;
- the extension ``<ops_name>.abi3.so`` where ``ops_name = _dcnv3_<backend>_<7 hex of the git tree hash of
  kernel_src>`` (``_dirty`` appended when the sources differ from ``HEAD:kernel_src``);
- generated ``_ops.py`` / ``registration.h`` (never committed), the Python package files copied to the
  variant root, and ``metadata.json``.

Sources come from ``kernel_src/build.toml``: the ``[torch]`` sources plus every ``[kernel.*]`` section whose
``backend`` is the one being built. ``.cpp`` files go through the host compiler, ``.cu`` files through nvcc.
Such hand-rolled builds are for local use and tests; Hub-compliant multi-variant builds come from
kernel-builder (see ``kernel_src/flake.nix``).
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KERNEL_NAME = "dcnv3"
PYTHON_NAME = "dcnv3"
# kernel-builder's BUILD_ALL_SUPPORTED_ARCHS lists, by nvcc version.
CUDA_ARCHS_NVCC13 = "7.5;8.0;8.6;8.7;8.9;9.0;10.0;11.0;12.0;12.1+PTX"
CUDA_ARCHS_NVCC128 = "7.0;7.2;7.5;8.0;8.6;8.7;8.9;9.0;10.0;10.1;12.0+PTX"
CUDA_ARCHS_OLDER = "7.0;7.2;7.5;8.0;8.6;8.7;8.9;9.0+PTX"
_ARCH_RE = re.compile(r"^(\d+)\.(\d+)([af]?)(\+PTX)?$")


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """Where a build landed and what it cost."""

    variant_dir: Path
    ops_name: str
    backend: str
    seconds: float
    cuda_archs: tuple[str, ...] = ()


def default_kernel_src() -> Path:
    """``kernel_src/`` of the source checkout this module lives in (``<repo>/tools/..``)."""
    return Path(__file__).resolve().parents[1] / "kernel_src"


# --------------------------------------------------------------------------------------------------
# naming
# --------------------------------------------------------------------------------------------------


def _torch():
    import torch

    return torch


def torch_backend() -> str:
    """``cu{M}{m}`` for a CUDA torch build, else ``cpu`` (the variant backend, from the torch build)."""
    cuda = _torch().version.cuda
    if cuda:
        major, minor = cuda.split(".")[:2]
        return f"cu{major}{minor}"
    return "cpu"


def variant_name(backend: str) -> str:
    """Variant folder name for the installed torch, e.g. ``torch214-cxx11-cu130-x86_64-linux``.

    Args:
        backend: ``"cpu"`` or ``"cuda"``.
    """
    torch = _torch()
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    abi = "cxx11" if torch._C._GLIBCXX_USE_CXX11_ABI else "cxx98"
    if backend == "cuda":
        tag = torch_backend()
        if tag == "cpu":
            raise RuntimeError("building the CUDA variant needs a CUDA build of torch (torch.version.cuda is None)")
    elif backend == "cpu":
        tag = "cpu"
    else:
        raise ValueError(f"unsupported backend {backend!r}; expected 'cpu' or 'cuda'")
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    system = platform.system().lower()
    return f"torch{major}{minor}-{abi}-{tag}-{machine}-{system}"


def _git_object_hash(kind: str, payload: bytes) -> bytes:
    return hashlib.sha1(f"{kind} {len(payload)}\0".encode() + payload).digest()


def _skip_path(path: Path) -> bool:
    return path.name == "__pycache__" or path.suffix in {".pyc", ".pyo"} or path.name in {"result", ".direnv"}


def git_tree_hash(directory: Path) -> str:
    """Git tree hash of ``directory`` as ``git write-tree`` would store it, computed without touching git.

    Caches and build products (``__pycache__``, ``*.pyc``) are left out, as a ``.gitignore`` would.
    """
    entries = []
    for child in directory.iterdir():
        if _skip_path(child) or child.is_symlink():
            continue
        if child.is_dir():
            if not any(p.is_file() and not _skip_path(p) for p in child.rglob("*")):
                continue  # git does not track empty directories
            entries.append((child.name + "/", b"40000", child.name, bytes.fromhex(git_tree_hash(child))))
        else:
            mode = b"100755" if os.access(child, os.X_OK) else b"100644"
            entries.append((child.name, mode, child.name, _git_object_hash("blob", child.read_bytes())))
    # git sorts tree entries by name, with directories compared as if they ended in "/".
    entries.sort(key=lambda e: e[0].encode())
    payload = b"".join(mode + b" " + name.encode() + b"\0" + digest for _, mode, name, digest in entries)
    return _git_object_hash("tree", payload).hex()


def _committed_tree_hash(directory: Path) -> str | None:
    """``git rev-parse HEAD:<dir>`` (read-only); None when not in git or nothing committed."""
    try:
        top = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
        ).stdout.strip()
        rel = directory.resolve().relative_to(Path(top).resolve()).as_posix()
        return subprocess.run(
            ["git", "-C", top, "rev-parse", f"HEAD:{rel}"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None


def ops_name(src_dir: Path, backend: str) -> str:
    """``_dcnv3_<backend>_<hash7>[_dirty]``: the torch op namespace, extension name and ``metadata.id``.

    The hash is the git tree hash of ``src_dir``; ``_dirty`` marks sources that differ from the committed
    tree (as kernel-builder does), so two different builds never share an op namespace.
    """
    tree = git_tree_hash(src_dir)
    suffix = "" if _committed_tree_hash(src_dir) == tree else "_dirty"
    return f"_{PYTHON_NAME}_{backend}_{tree[:7]}{suffix}"


# --------------------------------------------------------------------------------------------------
# CUDA architectures
# --------------------------------------------------------------------------------------------------


def nvcc_path() -> str | None:
    """nvcc from ``$CUDA_HOME``/``$CUDA_PATH``, ``PATH`` or ``/usr/local/cuda``."""
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env) and Path(os.environ[env], "bin", "nvcc").exists():
            return str(Path(os.environ[env], "bin", "nvcc"))
    found = shutil.which("nvcc")
    if found:
        return found
    fallback = Path("/usr/local/cuda/bin/nvcc")
    return str(fallback) if fallback.exists() else None


def nvcc_version(nvcc: str) -> tuple[int, int]:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    if not match:
        raise RuntimeError(f"cannot parse the nvcc version from: {out!r}")
    return int(match.group(1)), int(match.group(2))


def default_cuda_archs(version: tuple[int, int]) -> str:
    """kernel-builder's full architecture list for this nvcc version."""
    if version >= (13, 0):
        return CUDA_ARCHS_NVCC13
    if version >= (12, 8):
        return CUDA_ARCHS_NVCC128
    return CUDA_ARCHS_OLDER


def parse_cuda_archs(spec: str) -> tuple[str, ...]:
    """Split ``"8.0;9.0+PTX"`` (``;``, ``,`` or spaces) into validated arch strings."""
    archs = tuple(a for a in re.split(r"[;,\s]+", spec.strip()) if a)
    if not archs:
        raise ValueError("empty CUDA architecture list")
    for arch in archs:
        if not _ARCH_RE.match(arch):
            raise ValueError(f"bad CUDA architecture {arch!r}; expected e.g. 8.0, 9.0a or 12.1+PTX")
    return archs


def gencode_flags(archs: tuple[str, ...]) -> list[str]:
    """nvcc ``-gencode`` flags: SASS for every arch, plus PTX for the ones marked ``+PTX``."""
    flags = []
    for arch in archs:
        major, minor, suffix, ptx = _ARCH_RE.match(arch).groups()
        sm = f"{major}{minor}{suffix}"
        flags += ["-gencode", f"arch=compute_{sm},code=sm_{sm}"]
        if ptx:
            flags += ["-gencode", f"arch=compute_{sm},code=compute_{sm}"]
    return flags


def local_cuda_arch() -> str:
    """Compute capability of GPU 0, e.g. ``"9.0"`` (needs a visible GPU)."""
    torch = _torch()
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible; pass explicit --cuda-archs")
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


# --------------------------------------------------------------------------------------------------
# generated files
# --------------------------------------------------------------------------------------------------

_REGISTRATION_H = """\
// Generated by tools/kernel_build.py; do not edit or commit.
#pragma once

#include <Python.h>

#define _CONCAT(A, B) A##B
#define CONCAT(A, B) _CONCAT(A, B)
#define _STRINGIFY(A) #A
#define STRINGIFY(A) _STRINGIFY(A)

// TORCH_LIBRARY with the macro argument expanded first.
#define TORCH_LIBRARY_EXPAND(NAME, MODULE) TORCH_LIBRARY(NAME, MODULE)

// An importable (empty) Python module, so that `from . import <ops_name>` loads the library.
#define REGISTER_EXTENSION(NAME)                                                             \\
  PyMODINIT_FUNC CONCAT(PyInit_, NAME)() {                                                   \\
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, STRINGIFY(NAME), nullptr, 0,   \\
                                        nullptr};                                            \\
    return PyModule_Create(&module);                                                         \\
  }
"""

_OPS_PY = '''\
# Generated by tools/kernel_build.py; do not edit or commit.
import torch

from . import {ops}

ops = torch.ops.{ops}


def add_op_namespace_prefix(op_name: str) -> str:
    """Prefix an op name with this build's unique namespace."""
    return f"{ops}::{{op_name}}"
'''


def _metadata(build: dict, ops: str, backend: str, archs: tuple[str, ...]) -> dict:
    general = build["general"]
    backend_info: dict = {"type": backend}
    if backend == "cuda":
        backend_info["archs"] = list(archs)
    return {
        "name": general["name"],
        "id": ops,
        "version": int(general["version"]),
        "license": general.get("license", "MIT"),
        "python-depends": list(general.get("python-depends", [])),
        "backend": backend_info,
    }


# --------------------------------------------------------------------------------------------------
# compilation
# --------------------------------------------------------------------------------------------------


def _sources(build: dict, src_dir: Path, backend: str) -> list[Path]:
    files = list(build.get("torch", {}).get("src", []))
    for section in build.get("kernel", {}).values():
        if section.get("backend") == backend:
            files += section.get("src", [])
    paths = []
    for name in dict.fromkeys(files):  # keep order, drop duplicates
        path = src_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{name} listed in build.toml does not exist under {src_dir}")
        if path.suffix in {".cpp", ".cc", ".cu"}:
            paths.append(path)
    return paths


def _include_dirs(build: dict, src_dir: Path, backend: str) -> list[Path]:
    dirs = [src_dir, src_dir / "torch-ext"]
    dirs += [src_dir / d for d in build.get("torch", {}).get("include", [])]
    for section in build.get("kernel", {}).values():
        if section.get("backend") == backend:
            dirs += [src_dir / d for d in section.get("include", [])]
    return list(dict.fromkeys(dirs))


def _cuda_home(nvcc: str) -> Path:
    """Toolkit root holding ``include/cuda_runtime.h`` (nvcc may be a wrapper script outside it)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), Path(nvcc).resolve().parent.parent]
    probe = [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull]
    dryrun = subprocess.run(probe, capture_output=True, text=True)
    match = re.search(r"TOP=(\S+)", dryrun.stdout + dryrun.stderr)
    if match:
        candidates.append(Path(match.group(1)).resolve())
    candidates.append("/usr/local/cuda")
    for candidate in candidates:
        if candidate and (Path(candidate) / "include" / "cuda_runtime.h").exists():
            return Path(candidate)
    raise RuntimeError(f"cannot find the CUDA toolkit of {nvcc} (set CUDA_HOME)")


def _host_flags(ops: str, backend: str, includes: list[Path], cuda_home: Path | None) -> list[str]:
    torch_dir = Path(_torch().__file__).parent
    flags = [
        "-O3",
        "-std=c++20",
        "-fPIC",
        "-fno-gnu-unique",
        # ATen's parallel_for is an inline OpenMP region; without -fopenmp it silently runs serially.
        "-fopenmp",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(_torch()._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-DTORCH_EXTENSION_NAME={ops}",
        "-DPy_LIMITED_API=0x03090000",
        "-DCUDA_KERNEL" if backend == "cuda" else "-DCPU_KERNEL",
    ]
    flags += [f"-I{d}" for d in includes]
    flags += [f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}"]
    flags.append(f"-I{sysconfig.get_paths()['include']}")
    if cuda_home is not None:
        flags.append(f"-I{cuda_home / 'include'}")
    return flags


def _nvcc_flags(includes: list[Path], archs: tuple[str, ...], threads: int, strict: bool = False) -> list[str]:
    # The .cu files include no torch headers, so no torch include paths and a fast nvcc pass. C++17 because
    # kernel-builder compiles CUDA sources as C++17.
    return [
        "-O3",
        "-std=c++17",
        *(["-Werror", "all-warnings"] if strict else []),
        "--expt-relaxed-constexpr",
        "-Xcompiler",
        "-fPIC,-fno-gnu-unique",
        f"--threads={threads}",
        *[f"-I{d}" for d in includes],
        *gencode_flags(archs),
    ]


def _run(cmd: list[str], verbose: bool) -> None:
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")


def _link_flags(backend: str, cuda_home: Path | None) -> list[str]:
    torch_lib = Path(_torch().__file__).parent / "lib"
    flags = ["-shared", f"-L{torch_lib}", "-lc10", "-ltorch", "-ltorch_cpu"]
    # Link torch's own OpenMP runtime (same soname as the one torch loads) rather than the system one.
    gomp = sorted(torch_lib.glob("libgomp*.so*"))
    flags += [f"-l:{gomp[0].name}"] if gomp else ["-lgomp"]
    if backend == "cuda":
        flags += ["-lc10_cuda", "-ltorch_cuda", f"-L{cuda_home / 'lib64'}", "-lcudart"]
    flags += [f"-Wl,-rpath,{torch_lib}"]
    return flags


def build_kernel(
    out_dir: Path | str,
    *,
    backend: str = "cpu",
    src_dir: Path | str | None = None,
    cuda_archs: str | None = None,
    jobs: int | None = None,
    verbose: bool = False,
    strict_cuda: bool = False,
) -> BuildResult:
    """Compile ``kernel_src`` for the installed torch into ``<out_dir>/build/<variant>/``.

    Args:
        out_dir: kernel repo root to write (``build/<variant>`` is created under it).
        backend: ``"cpu"`` or ``"cuda"``.
        src_dir: kernel source tree (default: ``kernel_src/`` of this checkout).
        cuda_archs: ``"8.0;9.0+PTX"``-style list, ``"native"`` for the visible GPU; default kernel-builder's
            full list for the installed nvcc.
        jobs: parallel compile jobs (default: CPU count).
        verbose: echo the compiler commands.
        strict_cuda: turn every nvcc warning into an error (CI's check that the CUDA code is clean C++17).

    Returns:
        The `BuildResult` (variant dir, ops name, wall time in seconds).
    """
    start = time.perf_counter()
    src_dir = Path(src_dir) if src_dir is not None else default_kernel_src()
    build = tomllib.loads((src_dir / "build.toml").read_text())
    if backend not in build["general"].get("backends", []):
        raise ValueError(f"backend {backend!r} is not listed in {src_dir / 'build.toml'}")
    variant = variant_name(backend)
    ops = ops_name(src_dir, backend)
    jobs = jobs or os.cpu_count() or 1

    nvcc = cuda_home = None
    archs: tuple[str, ...] = ()
    if backend == "cuda":
        nvcc = nvcc_path()
        if nvcc is None:
            raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
        cuda_home = _cuda_home(nvcc)
        if cuda_archs == "native":
            cuda_archs = local_cuda_arch()
        archs = parse_cuda_archs(cuda_archs or default_cuda_archs(nvcc_version(nvcc)))

    variant_dir = Path(out_dir) / "build" / variant
    if variant_dir.exists():
        shutil.rmtree(variant_dir)
    variant_dir.mkdir(parents=True)
    work = variant_dir.parent.parent / f".obj-{variant}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "registration.h").write_text(_REGISTRATION_H)

    includes = [work, *_include_dirs(build, src_dir, backend)]
    host = _host_flags(ops, backend, includes, cuda_home)
    sources = _sources(build, src_dir, backend)
    objects = []
    commands = []
    for i, source in enumerate(sources):
        obj = work / f"{i:02d}_{source.stem}.o"
        objects.append(obj)
        if source.suffix == ".cu":
            commands.append(
                [nvcc, *_nvcc_flags(includes, archs, max(1, jobs), strict_cuda), "-c", str(source), "-o", str(obj)]
            )
        else:
            commands.append([os.environ.get("CXX", "g++"), *host, "-c", str(source), "-o", str(obj)])
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(_run, cmd, verbose) for cmd in commands]:
            future.result()

    library = variant_dir / f"{ops}.abi3.so"
    link = [os.environ.get("CXX", "g++"), *map(str, objects), *_link_flags(backend, cuda_home), "-o", str(library)]
    _run(link, verbose)
    _install_python(build, src_dir, variant_dir, ops, backend, archs)
    shutil.rmtree(work, ignore_errors=True)
    return BuildResult(variant_dir, ops, backend, time.perf_counter() - start, archs)


def _install_python(build: dict, src_dir: Path, variant_dir: Path, ops: str, backend: str, archs) -> None:
    package = src_dir / "torch-ext" / PYTHON_NAME
    for path in sorted(package.glob("*.py")):
        if path.name != "_ops.py":
            shutil.copy2(path, variant_dir / path.name)
    (variant_dir / "_ops.py").write_text(_OPS_PY.format(ops=ops))
    metadata = {**_metadata(build, ops, backend, archs), "digest": variant_digest(variant_dir)}
    (variant_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


def variant_digest(variant_dir: Path) -> dict:
    """``metadata.json``'s ``digest``: the SHA-256 (base64) of every file of the variant but the metadata itself.

    ``kernels`` >= 0.19 checks the files against it before importing a variant (and warns when it is missing);
    earlier releases ignore it. The format is the one ``kernels`` parses (``{"algorithm", "files"}``).
    """
    files = {}
    for path in sorted(variant_dir.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.name != "metadata.json":
            digest = hashlib.sha256(path.read_bytes()).digest()
            files[path.relative_to(variant_dir).as_posix()] = base64.b64encode(digest).decode()
    return {"algorithm": "sha256", "files": files}


def main(argv: list[str] | None = None) -> int:
    """CLI: ``build_kernel.py [--backend cpu|cuda] [--cuda-archs LIST] --out DIR``."""
    import argparse

    parser = argparse.ArgumentParser(description="Build the DCNv3 hub kernel for the installed torch.")
    parser.add_argument("--backend", choices=["cpu", "cuda"], default=None, help="default: cuda if torch has CUDA")
    parser.add_argument("--cuda-archs", default=None, help='e.g. "8.0;9.0+PTX" or "native"; default: all')
    parser.add_argument("--src", type=Path, default=None, help="kernel source dir (default: kernel_src/)")
    parser.add_argument("--out", type=Path, required=True, help="output kernel repo root")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    backend = args.backend or ("cuda" if torch_backend() != "cpu" else "cpu")
    if args.cuda_archs and backend != "cuda":
        parser.error("--cuda-archs only applies to --backend cuda")
    if args.cuda_archs and args.cuda_archs != "native":
        try:
            parse_cuda_archs(args.cuda_archs)
        except ValueError as err:
            parser.error(str(err))
    result = build_kernel(
        args.out, backend=backend, src_dir=args.src, cuda_archs=args.cuda_archs, jobs=args.jobs, verbose=args.verbose
    )
    archs = f" archs={';'.join(result.cuda_archs)}" if result.cuda_archs else ""
    print(f"built {result.ops_name} -> {result.variant_dir}{archs}")
    print(f"compile time: {result.seconds:.1f} s")
    return 0
