"""Run the unchanged CUDA DCNv3 kernels on the CPU: build with the host compiler against a CUDA emulation, call.

``build_emulator`` copies ``dcnv3_cuda/dcnv3_kernels.cu``, rewrites only its launch syntax
(``kernel<<<grid, block, shared, stream>>>(args)`` -> ``::emu::launch(kernel, grid, block, shared, stream, args)``),
and compiles it with ``include/`` (the emulated CUDA headers), ``emu_runtime.cpp`` and ``harness.cpp`` into a
shared library for one ``__CUDA_ARCH__``. ``CudaEmulator`` calls the kernels' real launch functions through it on
CPU tensors: the launch code picks the vector width, lanes, index width and grid exactly as on a GPU, for the
emulated device's SM count and compute capability (``configure``).

Buffers are surrounded by guard zones: NaN before and after every input (an out-of-bounds read poisons the
result) and a sentinel around every output (an out-of-bounds write changes it); outputs start as NaN so that an
element the kernel never writes fails the comparison.

A counting build (``counting=True``, a separate library) also counts the kernels' global-memory traffic: the
translated kernel source is compiled with GCC's ``-fsanitize=kernel-address`` checks outlined into calls
(``--param asan-instrumentation-with-call-threshold=0``), which emu_runtime.cpp defines instead of a sanitizer
runtime, so every load and store of the kernel code reports its address, size and site; accesses inside the
launch's buffers (registered by the drivers below) are grouped into warp-wide instructions and their distinct
32-byte sectors (`memory_stats`, per buffer). The source stays unchanged; the instrumentation adds calls, not
arithmetic, so outputs are bitwise those of the plain build. Scalar replacement of aggregates and vectorisation are
off in that build so that the host compiler keeps each vector load (``Pack`` / ``uint4`` copies) one access and
does not merge scalar accesses into vectors, as the CUDA source wrote them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
KERNEL_FILE = Path("dcnv3_cuda") / "dcnv3_kernels.cu"
MSDA_KERNEL_FILE = Path("dcnv3_cuda") / "msda_kernels.cu"
DCNV4_KERNEL_FILE = Path("dcnv3_cuda") / "dcnv4_kernels.cu"
DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
GUARD = 64  # elements of guard zone on each side of a buffer
OUTPUT_SENTINEL = 1234.5
# The counting build's flags for the kernel code (see the module docstring): outlined address checks with no
# sanitizer runtime, no stack or global poisoning, one access per source-level load / store.
COUNTING_FLAGS = [
    "-fsanitize=kernel-address", "--param", "asan-instrumentation-with-call-threshold=0", "--param", "asan-stack=0",
    "--param", "asan-globals=0", "-fno-tree-sra", "-fno-tree-vectorize",
]  # fmt: skip
# kernel<T, ...><<<config>>>( : the name (optionally with template arguments), the configuration.
LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^<>;{}]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)


class EmulationError(RuntimeError):
    """A launch the emulation refused or a kernel that failed (message from the emulated runtime)."""


def rewrite_launches(source: str) -> tuple[str, int]:
    """The source with every ``<<<...>>>`` launch turned into an ``::emu::launch`` call; (text, launches)."""
    rewritten, count = LAUNCH.subn(lambda m: f"::emu::launch({m.group(1)}, {m.group(2)}, ", source)
    if "<<<" in rewritten or ">>>" in rewritten:
        raise EmulationError("a kernel launch was not rewritten; only `name<...><<<cfg>>>(` is supported")
    changed = [a for a, b in zip(source.splitlines(), rewritten.splitlines(), strict=True) if a != b]
    if any("<<<" not in line for line in changed):
        raise EmulationError("the rewrite touched a line without a launch")
    return rewritten, count


def _source_key(kernel_src: Path, arch: int, kernel: Path, harness: Path) -> str:
    digest = hashlib.sha256(f"arch={arch}".encode())
    files = [HERE / "include" / n for n in sorted(os.listdir(HERE / "include"))]
    files += [HERE / "emu_runtime.cpp", harness, kernel_src / kernel]
    files += sorted((kernel_src / "dcnv3_common").glob("*.h")) + sorted((kernel_src / "dcnv3_cuda").glob("*.h"))
    files += sorted((kernel_src / "dcnv3_cuda").glob("*.cuh"))
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def build_emulator(
    kernel_src: Path,
    build_dir: Path,
    arch: int = 800,
    kernel_file: Path | None = None,
    kernel: Path = KERNEL_FILE,
    harness: Path = HERE / "harness.cpp",
    counting: bool = False,
) -> Path:
    """Compile the emulated kernels for ``__CUDA_ARCH__ == arch`` into ``build_dir``; returns the library path.

    ``kernel`` (relative to ``kernel_src``) is the CUDA source and ``harness`` its C entry points: the DCNv3 kernels
    by default, `build_msda_emulator` for the multi-scale deformable attention ones. ``kernel_file`` replaces the
    kernel source (for self-checks of broken copies). ``counting`` makes the global-memory counting build (module
    docstring). Builds are cached by the hash of every input.
    """
    kernel_src = Path(kernel_src)
    source = (kernel_file or kernel_src / kernel).read_text()
    flavour = "count" if counting else "emu"
    extra_flags = " ".join(COUNTING_FLAGS) if counting else ""
    key_text = _source_key(kernel_src, arch, kernel, harness) + extra_flags + source
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    library = Path(build_dir) / f"{Path(kernel).stem}_{flavour}_sm{arch}_{key}.so"
    if library.exists():
        return library
    rewritten, launches = rewrite_launches(source)
    if launches == 0:
        raise EmulationError("no kernel launch found in the CUDA source")
    work = Path(build_dir) / f"src_{key}"
    shutil.rmtree(work, ignore_errors=True)
    translated = work / f"{kernel}.cpp"
    translated.parent.mkdir(parents=True)
    translated.write_text(rewritten)
    flags = [
        "-std=c++17", "-O2", "-g0", "-fPIC", "-fno-strict-aliasing", "-Wall", "-Wno-unknown-pragmas",
        "-Wno-unused-function", f"-D__CUDA_ARCH__={arch}", f"-I{HERE / 'include'}", f"-I{kernel_src}",
    ]  # fmt: skip
    sources = [str(translated), str(HERE / "emu_runtime.cpp"), str(harness)]
    if counting:
        # Only the kernel code is instrumented: the runtime's own accesses must not call its hooks.
        sources[0] = str(work / "kernel.o")
        compile_host([*flags, *COUNTING_FLAGS, "-c", str(translated), "-o", sources[0]])
    compile_host([*flags, "-shared", *sources, "-o", str(library.with_suffix(".tmp"))])
    os.replace(library.with_suffix(".tmp"), library)
    return library


def compile_host(arguments: list[str]) -> None:
    """Run the host C++ compiler ($CXX, default g++) with ``arguments``; EmulationError with its output on failure."""
    cmd = [os.environ.get("CXX", "g++"), *arguments]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EmulationError(f"emulator build failed:\n{' '.join(cmd)}\n{proc.stderr[-6000:]}")


def build_msda_emulator(kernel_src: Path, build_dir: Path, arch: int = 800, kernel_file: Path | None = None) -> Path:
    """`build_emulator` for the multi-scale deformable attention kernels (``dcnv3_cuda/msda_kernels.cu``)."""
    return build_emulator(kernel_src, build_dir, arch, kernel_file, MSDA_KERNEL_FILE, HERE / "msda_harness.cpp")


def build_dcnv4_emulator(
    kernel_src: Path, build_dir: Path, arch: int = 800, kernel_file: Path | None = None, counting: bool = False
) -> Path:
    """`build_emulator` for the DCNv4 kernels (``dcnv3_cuda/dcnv4_kernels.cu``, `Dcnv4Emulator`)."""
    harness = HERE / "dcnv4_harness.cpp"
    return build_emulator(kernel_src, build_dir, arch, kernel_file, DCNV4_KERNEL_FILE, harness, counting)


@dataclasses.dataclass
class LaunchShape:
    """What the launch code chose: vector width, threads per (pixel, group), blocks, 64-bit indices."""

    vec: int
    lanes: int
    blocks: int
    wide_index: bool


class Guarded:
    """A tensor inside a larger buffer with guard zones; ``misalign`` shifts it by one element."""

    def __init__(self, shape, dtype, fill, guard_fill, misalign=False):
        numel = 1
        for size in shape:
            numel *= size
        start = GUARD + (1 if misalign else 0)
        self.storage = torch.full((numel + 2 * GUARD + 1,), guard_fill, dtype=dtype)
        self.start, self.numel, self.guard_fill = start, numel, guard_fill
        self.tensor = self.storage[start : start + numel].view(shape)
        if isinstance(fill, torch.Tensor):
            self.tensor.copy_(fill)
        else:
            self.tensor.fill_(fill)

    def guards_intact(self) -> bool:
        outside = torch.cat([self.storage[: self.start], self.storage[self.start + self.numel :]])
        expected = torch.full_like(outside, self.guard_fill)
        return bool(
            torch.equal(outside.isnan(), expected.isnan()) and (outside.nan_to_num() == expected.nan_to_num()).all()
        )

    def ptr(self):
        return ctypes.c_void_p(self.tensor.data_ptr())


def register_global_buffers(lib: ctypes.CDLL, buffers: dict[str, torch.Tensor]) -> list[str]:
    """Make the storage of each named tensor (guard zones included) the global memory of the next launches and reset
    the counters; returns the names in the runtime's order. The counting build counts only accesses inside these
    buffers (the kernels' locals live on fiber stacks, which must not count)."""
    lib.emu_clear_global_ranges()
    for tensor in buffers.values():
        storage = tensor.untyped_storage()
        lib.emu_add_global_range(ctypes.c_void_p(storage.data_ptr()), ctypes.c_size_t(storage.nbytes()))
    return list(buffers)


MEMORY_STATS = ("load_sectors", "load_instructions", "load_lane_accesses", "store_sectors", "store_instructions",
                "store_lane_accesses")  # fmt: skip


def read_memory_stats(lib: ctypes.CDLL, names: list[str]) -> dict[str, dict[str, float]]:
    """Global-memory counters per buffer since their registration (zero in a plain build): per kind (load, store),
    the distinct 32-byte sectors summed over warp-wide instructions, the warp-wide instructions and the per-lane
    accesses."""
    result = {}
    for index, name in enumerate(names):
        out = (ctypes.c_double * len(MEMORY_STATS))()
        lib.emu_memory_stats(index, out)
        result[name] = dict(zip(MEMORY_STATS, out, strict=True))
    return result


def total_memory_stats(by_buffer: dict[str, dict[str, float]]) -> dict[str, float]:
    """`read_memory_stats` summed over the buffers."""
    return {key: sum(stats[key] for stats in by_buffer.values()) for key in MEMORY_STATS}


def _shape_array(value, offset, params, points) -> ctypes.Array:
    n, h, w, c = value.shape
    fields = [
        n, h, w, c, offset.shape[1], offset.shape[2], params["kernel_h"], params["kernel_w"], params["stride_h"],
        params["stride_w"], params["pad_h"], params["pad_w"], params["dilation_h"], params["dilation_w"],
        params["group"], params["group_channels"], points,
    ]  # fmt: skip
    return (ctypes.c_int64 * len(fields))(*fields)


class CudaEmulator:
    """The emulated kernels of one build. Inputs are CPU tensors; outputs are checked for guard-zone writes."""

    def __init__(self, library: Path):
        self.lib = ctypes.CDLL(str(library))
        self.lib.emu_last_message.restype = ctypes.c_char_p
        self.lib.emu_forward.restype = ctypes.c_int
        self.lib.emu_backward.restype = ctypes.c_int
        self.buffer_names: list[str] = []
        self.configure()

    def configure(self, sm_count: int = 2, compute_capability: tuple[int, int] = (8, 0)) -> None:
        """Properties of the emulated device, as the launch code reads them."""
        self.lib.emu_configure(sm_count, compute_capability[0], compute_capability[1])

    def atomic_stats(self) -> dict:
        out = (ctypes.c_double * 4)()
        self.lib.emu_atomic_stats(out)
        return {"floats": out[0], "sector_ops": out[1], "instructions": out[2], "lane_ops": out[3]}

    def reset_atomic_stats(self) -> None:
        self.lib.emu_reset_atomic_stats()

    def memory_stats(self) -> dict[str, dict[str, float]]:
        """`read_memory_stats` of the last call's buffers (named as its arguments; ``output`` for the result)."""
        return read_memory_stats(self.lib, self.buffer_names)

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            message = self.lib.emu_last_message().decode()
            self.lib.emu_clear_error()
            raise EmulationError(f"{what}: CUDA error {status}: {message}")

    @staticmethod
    def _inputs(tensors, misalign):
        return [Guarded(t.shape, t.dtype, t, float("nan"), misalign) for t in tensors]

    def forward(self, value, offset, mask, params: dict, mask_logits=False, misalign=False):
        """Output of the CUDA forward; returns (output, LaunchShape)."""
        points = offset.shape[-1] // (2 * params["group"])
        v, o, m = self._inputs((value, offset, mask), misalign)
        out_shape = (value.shape[0], offset.shape[1], offset.shape[2], value.shape[3])
        out = Guarded(out_shape, value.dtype, float("nan"), OUTPUT_SENTINEL, misalign)
        buffers = {"value": v, "offset": o, "mask": m, "output": out}
        self.buffer_names = register_global_buffers(self.lib, {k: b.storage for k, b in buffers.items()})
        shape = (ctypes.c_int64 * 4)()
        status = self.lib.emu_forward(
            DTYPES[value.dtype], v.ptr(), o.ptr(), m.ptr(), out.ptr(), _shape_array(value, offset, params, points),
            ctypes.c_double(params["offset_scale"]), int(bool(params["remove_center"])), int(mask_logits), shape,
        )  # fmt: skip
        self._check(status, "forward")
        if not out.guards_intact():
            raise EmulationError("forward wrote outside its output buffer")
        return out.tensor.clone(), LaunchShape(shape[0], shape[1], shape[2], bool(shape[3]))

    def backward(self, grad_output, value, offset, mask, params: dict, mask_logits=False, misalign=False):
        """(grad_value, grad_offset, grad_mask) of the CUDA backward in the input dtype; plus the LaunchShape."""
        points = offset.shape[-1] // (2 * params["group"])
        g, v, o, m = self._inputs((grad_output, value, offset, mask), misalign)
        acc_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
        # The launch contract: grad_value_acc zero-initialised; grad_offset / grad_mask fully overwritten.
        grad_value = Guarded(value.shape, acc_dtype, 0.0, OUTPUT_SENTINEL, misalign)
        grad_offset = Guarded(offset.shape, value.dtype, float("nan"), OUTPUT_SENTINEL, misalign)
        grad_mask = Guarded(mask.shape, value.dtype, float("nan"), OUTPUT_SENTINEL, misalign)
        buffers = {"grad_output": g, "value": v, "offset": o, "mask": m, "grad_value": grad_value,
                   "grad_offset": grad_offset, "grad_mask": grad_mask}  # fmt: skip
        self.buffer_names = register_global_buffers(self.lib, {k: b.storage for k, b in buffers.items()})
        shape = (ctypes.c_int64 * 4)()
        status = self.lib.emu_backward(
            DTYPES[value.dtype], g.ptr(), v.ptr(), o.ptr(), m.ptr(), grad_value.ptr(), grad_offset.ptr(),
            grad_mask.ptr(), _shape_array(value, offset, params, points), ctypes.c_double(params["offset_scale"]),
            int(bool(params["remove_center"])), int(mask_logits), shape,
        )  # fmt: skip
        self._check(status, "backward")
        for name, buffer in (("grad_value", grad_value), ("grad_offset", grad_offset), ("grad_mask", grad_mask)):
            if not buffer.guards_intact():
                raise EmulationError(f"backward wrote outside {name}")
        grads = (grad_value.tensor.to(value.dtype), grad_offset.tensor.clone(), grad_mask.tensor.clone())
        return grads, LaunchShape(shape[0], shape[1], shape[2], bool(shape[3]))


@dataclasses.dataclass
class MsdaLaunchShape:
    """What the MSDA launch code chose: channels per thread, threads per (image, query, head), blocks."""

    vec: int
    lanes: int
    blocks: int


class MsdaEmulator:
    """The emulated MSDA kernels of one build (`build_msda_emulator`), on CPU tensors with guard zones.

    Arguments as the op's: value (N, S, M, D), spatial_shapes (L, 2) and level_start_index (L,) int64,
    sampling_locations (N, Q, M, L, P, 2), attention_weights (N, Q, M, L, P).
    """

    def __init__(self, library: Path):
        self.lib = ctypes.CDLL(str(library))
        self.lib.emu_last_message.restype = ctypes.c_char_p
        self.lib.emu_msda_forward.restype = ctypes.c_int
        self.lib.emu_msda_backward.restype = ctypes.c_int
        self.configure()

    def configure(self, sm_count: int = 2, compute_capability: tuple[int, int] = (8, 0)) -> None:
        self.lib.emu_configure(sm_count, compute_capability[0], compute_capability[1])

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            message = self.lib.emu_last_message().decode()
            self.lib.emu_clear_error()
            raise EmulationError(f"{what}: CUDA error {status}: {message}")

    @staticmethod
    def _shape(value, sampling_locations) -> ctypes.Array:
        n, s, m, d = value.shape
        fields = [n, s, m, d, sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]]
        return (ctypes.c_int64 * len(fields))(*fields)

    @staticmethod
    def _levels(spatial_shapes, level_start_index):
        # Index tables get guard zones of a huge index: a read past them sends the kernel far outside its buffers.
        big = 1 << 40
        return (
            Guarded(spatial_shapes.shape, torch.int64, spatial_shapes, big),
            Guarded(level_start_index.shape, torch.int64, level_start_index, big),
        )

    def forward(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        """Output of the CUDA forward; returns (output, MsdaLaunchShape)."""
        shapes, starts = self._levels(spatial_shapes, level_start_index)
        v, loc, w = (Guarded(t.shape, t.dtype, t, float("nan")) for t in (value, sampling_locations, attention_weights))
        out_shape = (value.shape[0], sampling_locations.shape[1], value.shape[2] * value.shape[3])
        out = Guarded(out_shape, value.dtype, float("nan"), OUTPUT_SENTINEL)
        launch = (ctypes.c_int64 * 3)()
        status = self.lib.emu_msda_forward(
            DTYPES[value.dtype], v.ptr(), shapes.ptr(), starts.ptr(), loc.ptr(), w.ptr(), out.ptr(),
            self._shape(value, sampling_locations), launch,
        )  # fmt: skip
        self._check(status, "msda forward")
        if not out.guards_intact():
            raise EmulationError("msda forward wrote outside its output buffer")
        return out.tensor.clone(), MsdaLaunchShape(*launch)

    def backward(self, grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        """(grad_value, grad_sampling_locations, grad_attention_weights) in the input dtype; plus the launch shape."""
        shapes, starts = self._levels(spatial_shapes, level_start_index)
        inputs = (grad_output, value, sampling_locations, attention_weights)
        g, v, loc, w = (Guarded(t.shape, t.dtype, t, float("nan")) for t in inputs)
        acc_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
        # The launch contract: grad_value_acc zero-initialised; the other two fully overwritten.
        grad_value = Guarded(value.shape, acc_dtype, 0.0, OUTPUT_SENTINEL)
        grad_loc = Guarded(sampling_locations.shape, value.dtype, float("nan"), OUTPUT_SENTINEL)
        grad_w = Guarded(attention_weights.shape, value.dtype, float("nan"), OUTPUT_SENTINEL)
        launch = (ctypes.c_int64 * 3)()
        status = self.lib.emu_msda_backward(
            DTYPES[value.dtype], g.ptr(), v.ptr(), shapes.ptr(), starts.ptr(), loc.ptr(), w.ptr(), grad_value.ptr(),
            grad_loc.ptr(), grad_w.ptr(), self._shape(value, sampling_locations), launch,
        )  # fmt: skip
        self._check(status, "msda backward")
        for name, buffer in (("grad_value", grad_value), ("grad_locations", grad_loc), ("grad_weights", grad_w)):
            if not buffer.guards_intact():
                raise EmulationError(f"msda backward wrote outside {name}")
        grads = (grad_value.tensor.to(value.dtype), grad_loc.tensor.clone(), grad_w.tensor.clone())
        return grads, MsdaLaunchShape(*launch)


class Dcnv4Emulator:
    """The emulated DCNv4 kernels of one build (`build_dcnv4_emulator`), on CPU tensors with guard zones.

    Arguments as `internimage_hf.ops.dcnv4.dcnv4_core`'s: value (N, H, W, G * Cg), offset_mask (N, Ho, Wo, D) with
    D >= G * P * 3, and the hyper-parameters as a dict (kernel_h ... remove_center, as for `CudaEmulator`).
    """

    def __init__(self, library: Path):
        self.lib = ctypes.CDLL(str(library))
        self.lib.emu_last_message.restype = ctypes.c_char_p
        self.lib.emu_dcnv4_forward.restype = ctypes.c_int
        self.lib.emu_dcnv4_backward.restype = ctypes.c_int
        self.buffer_names: list[str] = []
        self.configure()

    configure = CudaEmulator.configure
    atomic_stats = CudaEmulator.atomic_stats
    reset_atomic_stats = CudaEmulator.reset_atomic_stats
    memory_stats = CudaEmulator.memory_stats
    _check = CudaEmulator._check

    @staticmethod
    def _shape(value, offset_mask, params) -> ctypes.Array:
        points = params["kernel_h"] * params["kernel_w"] - int(bool(params["remove_center"]))
        shape = list(_shape_array(value, offset_mask, params, points))
        return (ctypes.c_int64 * (len(shape) + 1))(*shape, offset_mask.shape[3])

    def forward(self, value, offset_mask, params: dict, misalign=False):
        """Output of the CUDA forward; returns (output, LaunchShape)."""
        v, om = (Guarded(t.shape, t.dtype, t, float("nan"), misalign) for t in (value, offset_mask))
        out_shape = (value.shape[0], offset_mask.shape[1], offset_mask.shape[2], value.shape[3])
        out = Guarded(out_shape, value.dtype, float("nan"), OUTPUT_SENTINEL, misalign)
        buffers = {"value": v, "offset_mask": om, "output": out}
        self.buffer_names = register_global_buffers(self.lib, {k: b.storage for k, b in buffers.items()})
        launch = (ctypes.c_int64 * 4)()
        status = self.lib.emu_dcnv4_forward(
            DTYPES[value.dtype], v.ptr(), om.ptr(), out.ptr(), self._shape(value, offset_mask, params),
            ctypes.c_double(params["offset_scale"]), int(bool(params["remove_center"])), launch,
        )  # fmt: skip
        self._check(status, "dcnv4 forward")
        if not out.guards_intact():
            raise EmulationError("dcnv4 forward wrote outside its output buffer")
        return out.tensor.clone(), LaunchShape(launch[0], launch[1], launch[2], bool(launch[3]))

    def backward(self, grad_output, value, offset_mask, params: dict, misalign=False):
        """(grad_value, grad_offset_mask) of the CUDA backward in the input dtype; plus the LaunchShape."""
        inputs = (grad_output, value, offset_mask)
        g, v, om = (Guarded(t.shape, t.dtype, t, float("nan"), misalign) for t in inputs)
        acc_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
        # The launch contract: grad_value_acc zero-initialised; grad_offset_mask fully overwritten.
        grad_value = Guarded(value.shape, acc_dtype, 0.0, OUTPUT_SENTINEL, misalign)
        grad_offset_mask = Guarded(offset_mask.shape, value.dtype, float("nan"), OUTPUT_SENTINEL, misalign)
        buffers = {"grad_output": g, "value": v, "offset_mask": om, "grad_value": grad_value,
                   "grad_offset_mask": grad_offset_mask}  # fmt: skip
        self.buffer_names = register_global_buffers(self.lib, {k: b.storage for k, b in buffers.items()})
        launch = (ctypes.c_int64 * 4)()
        status = self.lib.emu_dcnv4_backward(
            DTYPES[value.dtype], g.ptr(), v.ptr(), om.ptr(), grad_value.ptr(), grad_offset_mask.ptr(),
            self._shape(value, offset_mask, params), ctypes.c_double(params["offset_scale"]),
            int(bool(params["remove_center"])), launch,
        )  # fmt: skip
        self._check(status, "dcnv4 backward")
        for name, buffer in (("grad_value", grad_value), ("grad_offset_mask", grad_offset_mask)):
            if not buffer.guards_intact():
                raise EmulationError(f"dcnv4 backward wrote outside {name}")
        grads = (grad_value.tensor.to(value.dtype), grad_offset_mask.tensor.clone())
        return grads, LaunchShape(launch[0], launch[1], launch[2], bool(launch[3]))
