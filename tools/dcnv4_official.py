"""The official DCNv4 CUDA op (OpenGVLab/DCNv4), unchanged, run on the CPU under the project's CUDA emulation.

A test and fixture reference, never vendored: the official sources (``DCNv4_op/src/cuda/common.h``,
``dcnv4_im2col_cuda.cuh``, ``dcnv4_col2im_cuda.cuh``, and ``DCNv4_op/DCNv4/functions/table.py`` for the launch
tables) are read from a DCNv4 checkout or bare git mirror named by ``$INTERNIMAGE_DCNV4_SOURCE`` (default: the mirror
``/work/.mirror/OpenGVLab+DCNv4/repo`` when present), copied into a build directory outside the repository with only
their ``<<<...>>>`` launch syntax rewritten (scripts/cuda_emu/emulator.py), and compiled with the host compiler
against the emulated CUDA headers (scripts/cuda_emu/include) and stand-ins for the torch headers they include
(scripts/cuda_emu/official_include). scripts/cuda_emu/dcnv4_official_harness.cpp calls the official launch functions
``dcnv4_im2col_cuda<float>`` / ``dcnv4_col2im_cuda<float>``; this module does what the official host code
(``dcnv4_cuda.cu``) does around them: output allocation, the ``im2col_step`` batch chunks, its checks.

    import sys; sys.path.insert(0, "tools")
    import dcnv4_official
    out = dcnv4_official.official_dcnv4_forward(input, offset_mask, 3, 3, 1, 1, 1, 1, 1, 1, group, group_channels,
                                                1.0, 256, False, None, None, False)

`official_dcnv4_forward` / `official_dcnv4_backward` take the arguments of the official ``ext.dcnv4_forward`` /
``ext.dcnv4_backward`` (CPU float32 tensors, NHWC); a ``d_stride`` / ``block_thread`` of None is chosen by the
official ``findspec`` / ``find_spec_bwd`` rules (their tables first), as ``DCNv4Function`` does. A stand-in
``DCNv4.ext`` module can expose them under the official names to run the official FlashInternImage code on CPU.

Emulation notes: blocks run one at a time, so one global buffer serves as every block's dynamic shared memory; a
warp shuffle that reads a lane outside its mask (the official backward's half-warp reductions do, for lanes whose
result it then discards) reads NaN instead of failing the launch; ``1 << blockDim.x`` follows the GPU's shl.b32
(0 for 32). Raises `OfficialUnavailable` when no source is found.
"""

from __future__ import annotations

import ast
import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
EMU = REPO / "scripts" / "cuda_emu"
sys.path.insert(0, str(EMU))
from emulator import (  # noqa: E402
    COUNTING_FLAGS,
    EmulationError,
    compile_host,
    read_memory_stats,
    register_global_buffers,
    rewrite_launches,
)

SOURCE_ENV = "INTERNIMAGE_DCNV4_SOURCE"
DEFAULT_MIRROR = Path("/work/.mirror/OpenGVLab+DCNv4/repo")
CUDA_DIR = "DCNv4_op/src/cuda"
SOURCES = ("common.h", "dcnv4_im2col_cuda.cuh", "dcnv4_col2im_cuda.cuh")
TABLE_FILE = "DCNv4_op/DCNv4/functions/table.py"
HARNESS = EMU / "dcnv4_official_harness.cpp"
ARCH = 800


class OfficialUnavailable(RuntimeError):
    """No DCNv4 source (checkout or mirror) was found."""


def find_source() -> Path | None:
    """The DCNv4 checkout or bare mirror: ``$INTERNIMAGE_DCNV4_SOURCE`` when set (None if it does not exist), else
    the default mirror when present, else None."""
    candidate = Path(os.environ.get(SOURCE_ENV) or DEFAULT_MIRROR)
    return candidate if candidate.exists() else None


def read_official_file(source: Path, path: str) -> str:
    """A file of the official repository from a checkout (``source/path``) or a git mirror (``HEAD:path``)."""
    if (source / path).is_file():
        return (source / path).read_text()
    proc = subprocess.run(["git", "-C", str(source), "show", f"HEAD:{path}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OfficialUnavailable(f"{path} not found in {source}: {proc.stderr.strip()}")
    return proc.stdout


def launch_tables(source: Path) -> tuple[dict, dict]:
    """The official forward and backward launch tables (``TABLE``, ``BWDTABLE`` of table.py), read as literals."""
    tables = {}
    for node in ast.parse(read_official_file(source, TABLE_FILE)).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            tables[node.targets[0].id] = ast.literal_eval(node.value)
    return tables.get("TABLE", {}), tables.get("BWDTABLE", {})


def _largest_multiplier(rows: int, per_multiplier: int, limit: int) -> int:
    """The largest divisor m <= 64 of rows with m * per_multiplier <= limit (1 if none)."""
    best = 1
    for m in range(1, min(rows, 64) + 1):
        if rows % m == 0 and m * per_multiplier <= limit:
            best = m
    return best


def findspec(tables: tuple[dict, dict], batch: int, height: int, width: int, group: int, channels: int):
    """(d_stride, block_thread) of the official forward: its table entry, else d_stride 8 and the largest query
    multiplier m (a divisor of B*H*W, at most 64) with m * G * C / 8 <= 512 threads."""
    key = f"{batch}x{height}x{width}x{group}x{channels}"
    if key in tables[0]:
        return tables[0][key][0], tables[0][key][1]
    m = _largest_multiplier(batch * height * width, group * channels // 8, 512)
    return 8, m * group * channels // 8


def find_spec_bwd(tables: tuple[dict, dict], batch: int, height: int, width: int, group: int, channels: int):
    """(d_stride, block_thread) of the official backward: its table entry, else d_stride 2 from 64 channels (1 below)
    and the largest multiplier with at most 256 threads."""
    key = f"{batch}x{height}x{width}x{group}x{channels}"
    if key in tables[1]:
        return tables[1][key][0], tables[1][key][1]
    d_stride = 2 if channels >= 64 else 1
    m = _largest_multiplier(batch * height * width, group * channels // d_stride, 256)
    return d_stride, m * group * channels // d_stride


def _build_key(texts: dict[str, str]) -> str:
    digest = hashlib.sha256(f"arch={ARCH}".encode())
    for name in sorted(texts):
        digest.update(name.encode() + texts[name].encode())
    local = [HARNESS, EMU / "emu_runtime.cpp", *sorted((EMU / "include").rglob("*.h"))]
    local += sorted(p for p in (EMU / "official_include").rglob("*") if p.is_file())
    for path in local:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def build_official_emulator(source: Path, build_dir: Path, counting: bool = False) -> Path:
    """Compile the official kernels (launch syntax rewritten) with the harness into a library; cached by content.
    ``counting`` makes the global-memory counting build (scripts/cuda_emu/emulator.py): the harness, which includes
    the official kernels, is instrumented, the emulated runtime is not."""
    texts = {name: read_official_file(source, f"{CUDA_DIR}/{name}") for name in SOURCES}
    flavour = "count" if counting else "emu"
    key = _build_key({**texts, "counting flags": " ".join(COUNTING_FLAGS) if counting else ""})
    library = Path(build_dir) / f"dcnv4_official_{flavour}_sm{ARCH}_{key}.so"
    if library.exists():
        return library
    work = Path(build_dir) / f"official_src_{flavour}_{key}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name, text in texts.items():
        (work / name).write_text(rewrite_launches(text)[0] if name.endswith(".cuh") else text)
    flags = [
        "-std=c++17", "-O2", "-g0", "-fPIC", "-fno-strict-aliasing", "-w", f"-D__CUDA_ARCH__={ARCH}",
        f"-I{EMU / 'official_include'}", f"-I{EMU / 'include'}", f"-I{work}",
    ]  # fmt: skip
    harness = str(HARNESS)
    if counting:
        harness = str(work / "harness.o")
        compile_host([*flags, *COUNTING_FLAGS, "-c", str(HARNESS), "-o", harness])
    compile_host([*flags, "-shared", harness, str(EMU / "emu_runtime.cpp"), "-o", str(library.with_suffix(".tmp"))])
    os.replace(library.with_suffix(".tmp"), library)
    return library


def _default_build_dir() -> Path:
    cache = os.environ.get("INTERNIMAGE_KERNEL_BUILD_CACHE")
    return Path(cache) / "cuda_emu" if cache else Path(tempfile.gettempdir()) / "internimage_dcnv4_official"


def _output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


class OfficialDcnv4:
    """The emulated official op of one source; `forward` / `backward` mirror ``dcnv4_cuda_forward`` / ``_backward``."""

    def __init__(
        self, source: Path | None = None, build_dir: Path | None = None, sm_count: int = 4, counting: bool = False
    ):
        source = source or find_source()
        if source is None:
            raise OfficialUnavailable(f"no DCNv4 source: set {SOURCE_ENV} to a DCNv4 checkout or git mirror")
        self.tables = launch_tables(source)
        build_dir = Path(build_dir or _default_build_dir())
        build_dir.mkdir(parents=True, exist_ok=True)
        self.lib = ctypes.CDLL(str(build_official_emulator(source, build_dir, counting)))
        self.lib.emu_last_message.restype = ctypes.c_char_p
        self.lib.emu_official_host_error.restype = ctypes.c_char_p
        self.lib.emu_set_strict_shuffle_sources(0)
        self.lib.emu_configure(sm_count, ARCH // 100, 0)
        self.buffer_names: list[str] = []

    def atomic_stats(self) -> dict:
        out = (ctypes.c_double * 4)()
        self.lib.emu_atomic_stats(out)
        return {"floats": out[0], "sector_ops": out[1], "instructions": out[2], "lane_ops": out[3]}

    def reset_atomic_stats(self) -> None:
        self.lib.emu_reset_atomic_stats()

    def memory_stats(self) -> dict[str, dict[str, float]]:
        """`read_memory_stats` of the last call's buffers, named as our emulators name them."""
        return read_memory_stats(self.lib, self.buffer_names)

    def _check(self, status: int, what: str) -> None:
        if status == -1:
            raise EmulationError(f"official {what}: {self.lib.emu_official_host_error().decode()}")
        if status != 0:
            message = self.lib.emu_last_message().decode()
            self.lib.emu_clear_error()
            raise EmulationError(f"official {what}: CUDA error {status}: {message}")

    def _plan(self, value, offset_mask, geometry, group, group_channels, im2col_step, remove_center, d_stride,
              block_thread, backward):  # fmt: skip
        """(chunk batch, per-chunk int arguments) after the checks the official host code and launchers make
        (asserts there; ValueError here, since a failed assert would abort the process)."""
        for name, t in (("input", value), ("offset_mask", offset_mask)):
            if t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() != 4:
                raise TypeError(f"official_dcnv4: `{name}` must be a 4-D CPU float32 tensor")
        batch, height, width, channels = value.shape
        kh, kw, sh, sw, ph, pw, dh, dw = geometry
        out_h, out_w = _output_size(height, kh, sh, ph, dh), _output_size(width, kw, sw, pw, dw)
        padded = offset_mask.shape[3]
        chunk = min(batch, im2col_step)
        spec = (find_spec_bwd if backward else findspec)(self.tables, batch, height, width, group, group_channels)
        d_stride = spec[0] if d_stride is None else d_stride
        block_thread = spec[1] if block_thread is None else block_thread
        threads = group_channels // d_stride
        multiplier = block_thread // threads // group if threads else 0
        problems = [
            (padded % 8 != 0, f"offset_mask's last size ({padded}) must be a multiple of 8"),
            (batch % chunk != 0, f"batch ({batch}) must be divisible by im2col_step ({chunk})"),
            (channels != group * group_channels, "channels must equal group * group_channels"),
            (tuple(offset_mask.shape[1:3]) != (out_h, out_w), f"offset_mask must be (N, {out_h}, {out_w}, D)"),
            (group_channels % d_stride != 0, f"d_stride ({d_stride}) must divide group_channels"),
            (multiplier < 1, f"block_thread ({block_thread}) must cover group * group_channels / d_stride threads"),
        ]
        problems.append(
            (multiplier >= 1 and chunk * out_h * out_w % max(multiplier, 1) != 0,
             f"the block's query multiplier ({multiplier}) must divide the chunk's queries ({chunk * out_h * out_w})")
        )  # fmt: skip
        for failed, message in problems:
            if failed:
                raise ValueError(f"official_dcnv4: {message}")
        ints = [kh, kw, sh, sw, ph, pw, dh, dw, group, group_channels, chunk, height, width, out_h, out_w,
                int(bool(remove_center)), d_stride, block_thread, 0, padded]  # fmt: skip
        return chunk, (ctypes.c_int * len(ints))(*ints), (out_h, out_w)

    def forward(self, value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                dilation_w, group, group_channels, offset_scale, im2col_step, remove_center, d_stride=None,
                block_thread=None, softmax=False):  # fmt: skip
        if softmax:
            raise ValueError("official_dcnv4: only softmax=False (what DCNv4Function passes) is wired")
        geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
        value, offset_mask = value.contiguous(), offset_mask.contiguous()
        chunk, ints, (out_h, out_w) = self._plan(value, offset_mask, geometry, group, group_channels, im2col_step,
                                                 remove_center, d_stride, block_thread, backward=False)  # fmt: skip
        output = torch.zeros(value.shape[0], out_h, out_w, value.shape[3], dtype=torch.float32)
        buffers = {"value": value, "offset_mask": offset_mask, "output": output}
        self.buffer_names = register_global_buffers(self.lib, buffers)
        for start in range(0, value.shape[0], chunk):
            status = self.lib.emu_official_forward(
                _ptr(value[start]), _ptr(offset_mask[start]), _ptr(output[start]), ints, ctypes.c_float(offset_scale)
            )
            self._check(status, "forward")
        return output

    def backward(self, value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                 dilation_w, group, group_channels, offset_scale, im2col_step, grad_output, remove_center,
                 d_stride=None, block_thread=None, softmax=False):  # fmt: skip
        if softmax:
            raise ValueError("official_dcnv4: only softmax=False (what DCNv4Function passes) is wired")
        geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
        value, offset_mask = value.contiguous(), offset_mask.contiguous()
        grad_output = grad_output.contiguous().float()
        chunk, ints, _ = self._plan(value, offset_mask, geometry, group, group_channels, im2col_step, remove_center,
                                    d_stride, block_thread, backward=True)  # fmt: skip
        grad_input = torch.zeros_like(value)
        grad_offset_mask = torch.zeros_like(offset_mask)
        buffers = {"grad_output": grad_output, "value": value, "offset_mask": offset_mask, "grad_value": grad_input,
                   "grad_offset_mask": grad_offset_mask}  # fmt: skip
        self.buffer_names = register_global_buffers(self.lib, buffers)
        for start in range(0, value.shape[0], chunk):
            status = self.lib.emu_official_backward(
                _ptr(value[start]), _ptr(offset_mask[start]), _ptr(grad_output[start]), _ptr(grad_input[start]),
                _ptr(grad_offset_mask[start]), ints, ctypes.c_float(offset_scale),
            )  # fmt: skip
            self._check(status, "backward")
        return grad_input, grad_offset_mask


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


_DEFAULT: OfficialDcnv4 | None = None


def default_op() -> OfficialDcnv4:
    """The op of `find_source`, built once per process (raises `OfficialUnavailable` without a source)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = OfficialDcnv4()
    return _DEFAULT


def official_dcnv4_forward(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                           dilation_w, group, group_channels, offset_scale, im2col_step, remove_center,
                           d_stride=None, block_thread=None, softmax=False) -> torch.Tensor:  # fmt: skip
    """``ext.dcnv4_forward`` of the official op on CPU float32 tensors: (N, Ho, Wo, G * Cg)."""
    return default_op().forward(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                                dilation_w, group, group_channels, offset_scale, im2col_step, remove_center, d_stride,
                                block_thread, softmax)  # fmt: skip


def official_dcnv4_backward(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                            dilation_w, group, group_channels, offset_scale, im2col_step, grad_output, remove_center,
                            d_stride=None, block_thread=None, softmax=False):  # fmt: skip
    """``ext.dcnv4_backward`` of the official op on CPU float32 tensors: (grad_input, grad_offset_mask)."""
    return default_op().backward(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                 dilation_h, dilation_w, group, group_channels, offset_scale, im2col_step,
                                 grad_output, remove_center, d_stride, block_thread, softmax)  # fmt: skip


# Compact fixture of official op outputs (tests/fixtures/dcnv4_op/official_dcnv4_op.safetensors), so that the
# parity of our core and kernel with the official op is checked without the official source. Per case `name`:
# `{name}.{value,offset_mask,grad_output}` (inputs) and `{name}.{output,grad_value,grad_offset_mask}` (official
# results), float32; JSON metadata under "dcnv4_op": the source commit and each case's arguments and launch spec.
FIXTURE_CASES = {
    # FlashInternImage-T stage 1 (4 groups of 16 channels, D = 112 with 4 padding columns), findspec launch.
    "flash_t": dict(group=4, group_channels=16, stride=1, pad=1, dilation=1, remove_center=False, spec=None),
    "cg32_remove_center_dilation2": dict(
        group=2, group_channels=32, stride=1, pad=2, dilation=2, remove_center=True, spec=None
    ),  # fmt: skip
    # stride 2, pad 0, 64 channels: the backward's 32 lanes per group (a full-warp shuffle mask).
    "cg64_stride2_pad0": dict(
        group=1,
        group_channels=64,
        stride=2,
        pad=0,
        dilation=1,
        remove_center=False,
        spec={"forward": [8, 8], "backward": [2, 32]},
    ),  # fmt: skip
}


def fixture_inputs(case: dict, seed: int, height: int = 5, width: int = 6):
    """(value, offset_mask, grad_output) of a fixture case: sampling locations 0.25..0.75 px inside a bilinear cell
    (so float32 rounding never moves one across a pixel, where the offset gradient jumps), unnormalised weights,
    zero padding columns (the official backward leaves them as allocated)."""
    gen = torch.Generator().manual_seed(seed)
    group, cg, points = case["group"], case["group_channels"], 9 - int(case["remove_center"])
    out_h = _output_size(height, 3, case["stride"], case["pad"], case["dilation"])
    out_w = _output_size(width, 3, case["stride"], case["pad"], case["dilation"])
    value = torch.randn(1, height, width, group * cg, generator=gen)
    offsets = (torch.rand(1, out_h, out_w, group, 2 * points, generator=gen) * 4 - 2).round()
    offsets += 0.25 + 0.5 * torch.rand(offsets.shape, generator=gen)
    weights = torch.rand(1, out_h, out_w, group, points, generator=gen) * 2 - 1
    fused = torch.cat([offsets, weights], dim=-1).flatten(-2)
    columns = -(-fused.shape[-1] // 8) * 8
    offset_mask = torch.cat([fused, torch.zeros(1, out_h, out_w, columns - fused.shape[-1])], dim=-1).contiguous()
    grad_output = torch.randn(1, out_h, out_w, group * cg, generator=gen)
    return value, offset_mask, grad_output


def fixture_arguments(case: dict) -> tuple:
    """The official op's positional arguments from kernel_h to im2col_step for a fixture case."""
    s, p, d = case["stride"], case["pad"], case["dilation"]
    return 3, 3, s, s, p, p, d, d, case["group"], case["group_channels"], 1.0, 64


def _source_commit(source: Path) -> str:
    proc = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def make_op_fixture(path: Path, source: Path | None = None, build_dir: Path | None = None) -> Path:
    """Run the official op on every `FIXTURE_CASES` entry and write the fixture to `path`."""
    from safetensors.torch import save_file

    source = source or find_source()
    op = OfficialDcnv4(source, build_dir)
    tensors, cases = {}, {}
    for seed, (name, case) in enumerate(sorted(FIXTURE_CASES.items())):
        value, offset_mask, grad = fixture_inputs(case, seed)
        args, spec = fixture_arguments(case), case["spec"] or {}
        output = op.forward(value, offset_mask, *args, case["remove_center"], *spec.get("forward", (None, None)))
        grads = op.backward(value, offset_mask, *args, grad, case["remove_center"], *spec.get("backward", (None, None)))
        results = dict(value=value, offset_mask=offset_mask, grad_output=grad, output=output, grad_value=grads[0],
                       grad_offset_mask=grads[1])  # fmt: skip
        tensors |= {f"{name}.{key}": t.contiguous() for key, t in results.items()}
        cases[name] = case
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"dcnv4_op": json.dumps({"commit": _source_commit(source), "cases": cases})})
    return Path(path)


def read_op_fixture(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """({case: {tensor name: tensor}}, metadata) of a fixture written by `make_op_fixture`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    metadata = json.loads(safe_open(str(path), "pt").metadata()["dcnv4_op"])
    cases: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        name, field = key.split(".")
        cases.setdefault(name, {})[field] = tensor
    return cases, metadata
