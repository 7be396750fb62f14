#!/usr/bin/env python
"""GPU benchmark of DCNv3 with softmax-normalised masks (what InternImage runs), for scripts/gpu_check.sh.

Implementations, each timed forward and forward+backward on InternImage-T's four stage shapes (224x224 input):
- ``pytorch``: ``torch.softmax`` over each group's points, then ``internimage_hf.ops.dcnv3.dcnv3_core``;
- ``kernel``: the hub kernel's ``dcnv3_softmax`` (one launch forward, one backward);
- ``official``: ``torch.softmax`` then the official InternImage DCNv3 CUDA op, when ``--official-src`` points at its
  ``ops_dcnv3`` folder (compiled here with ``torch.utils.cpp_extension``; supplied by whoever runs the check,
  never part of this repository). It has no bfloat16 path.

Times are CUDA-event medians over repetitions, with the L2 cache flushed (a 512 MiB buffer written) before each.
Bytes moved are the minimum each pass must read and write (inputs and outputs once), reported as GB/s and as a
fraction of a measured device-to-device copy. Each result is appended to ``--summary`` (JSON lines) as soon as it
is measured; ``--budget-s`` stops cleanly before the time runs out. ``--smoke`` runs a tiny version on the CPU
(wall-clock timing) to check the plumbing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from internimage_hf.ops.dcnv3 import dcnv3_core

STAGES = [(64, 4, 56), (128, 8, 28), (256, 16, 14), (512, 32, 7)]  # (channels, groups, size) of T @ 224
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
POINTS = 9
FLUSH_BYTES = 512 * 2**20


@dataclasses.dataclass
class Case:
    batch: int
    channels: int
    groups: int
    size: int
    dtype: str

    @property
    def params(self) -> tuple:
        return (3, 3, 1, 1, 1, 1, 1, 1, self.groups, self.channels // self.groups, 1.0, False)


def load_kernel(path: Path, device: str):
    """The kernel module of a variant dir, or of the build root's variant for ``device``; `kernels` if installed."""
    if (path / "metadata.json").exists():
        variant = path
    else:
        found = sorted(m.parent for m in path.glob("build/*/metadata.json"))
        matching = [v for v in found if ("-cu" in v.name) == (device == "cuda")]
        if not matching:
            sys.exit(f"benchmark: no {device} variant under {path}/build")
        variant = matching[0]
    try:
        from kernels import get_local_kernel
    except ImportError:  # import it the way the kernels loader does (module named after the build id)
        name = json.loads((variant / "metadata.json").read_text())["id"]
        spec = importlib.util.spec_from_file_location(name, variant / "__init__.py")
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return get_local_kernel(variant)


def load_official(src: Path):
    """The official DCNv3 op built from its ``ops_dcnv3`` folder (``src/vision.cpp`` and the CPU/CUDA sources)."""
    from torch.utils.cpp_extension import load

    root = src / "src" if (src / "src").is_dir() else src
    sources = [str(root / "vision.cpp"), *map(str, root.glob("cpu/*.cpp")), *map(str, root.glob("cuda/*.cu"))]
    return load(
        name="official_dcnv3",
        sources=sources,
        extra_include_paths=[str(root)],
        extra_cflags=["-O3", "-DWITH_CUDA"],
        extra_cuda_cflags=["-O3", "-DCUDA_HAS_FP16=1"],
        verbose=False,
    )


class OfficialFunction(torch.autograd.Function):
    """The official op with its own backward; im2col_step as the official module uses it (at most 256)."""

    @staticmethod
    def forward(ctx, op, value, offset, mask, params):
        step = min(value.shape[0], 256)
        ctx.op, ctx.params, ctx.step = op, params, step
        ctx.save_for_backward(value, offset, mask)
        return op.dcnv3_forward(value, offset, mask, *params[:-1], step, int(params[-1]))

    @staticmethod
    def backward(ctx, grad):
        value, offset, mask = ctx.saved_tensors
        p = ctx.params
        grads = ctx.op.dcnv3_backward(value, offset, mask, *p[:-1], grad.contiguous(), ctx.step, int(p[-1]))
        return (None, *grads, None)


def implementations(kernel, official) -> dict:
    def softmax(logits, groups):
        return logits.unflatten(-1, (groups, POINTS)).softmax(-1).flatten(-2)

    impls = {"pytorch": lambda v, o, m, p: dcnv3_core(v, o, softmax(m, p[8]), *p)}
    if kernel is not None:
        impls["kernel"] = lambda v, o, m, p: kernel.dcnv3_softmax(v, o, m, *p)
    if official is not None:
        impls["official"] = lambda v, o, m, p: OfficialFunction.apply(official, v, o, softmax(m, p[8]), p)
    return impls


def make_inputs(case: Case, device: str, requires_grad: bool):
    gen = torch.Generator().manual_seed(0)
    n, s, c, g = case.batch, case.size, case.channels, case.groups
    tensors = (
        torch.randn(n, s, s, c, generator=gen),
        torch.randn(n, s, s, g * POINTS * 2, generator=gen),
        torch.randn(n, s, s, g * POINTS, generator=gen),
    )
    dtype = DTYPES[case.dtype]
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in tensors]


def bytes_moved(case: Case, backward: bool) -> float:
    """Minimum traffic: forward reads value, offset, logits and writes the output; the backward also reads
    grad_output and the inputs and writes their three gradients."""
    element = torch.finfo(DTYPES[case.dtype]).bits // 8
    pixels = case.batch * case.size * case.size
    value = pixels * case.channels
    offset_and_mask = pixels * case.groups * POINTS * 3
    forward = 2 * value + offset_and_mask
    return float(element * (forward + (2 * forward if backward else 0)))


class Timer:
    """Median time of fn over repetitions: CUDA events with an L2 flush before each on GPU, wall clock on CPU."""

    def __init__(self, device: str, reps: int):
        self.device, self.reps = device, reps
        self.flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.float32, device=device) if device == "cuda" else None

    def __call__(self, fn, setup=lambda: None) -> float:
        setup()
        fn()  # warm-up (and lazy initialisation)
        times = []
        for _ in range(self.reps):
            setup()
            if self.device == "cuda":
                self.flush.fill_(1.0)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                begin = time.perf_counter()
                fn()
                times.append(time.perf_counter() - begin)
        return statistics.median(times)


def copy_bandwidth(device: str) -> float:
    """Measured device-to-device copy, GB/s of bytes read + written."""
    src = torch.empty(2**28, dtype=torch.float32, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    seconds = Timer(device, 10)(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / seconds / 1e9


def measure(case: Case, impls: dict, timer: Timer, device: str) -> list[dict]:
    rows = []
    with torch.no_grad():
        value, offset, logits = make_inputs(case, device, False)
        reference = None
        for name, fn in impls.items():
            row = {"impl": name, "pass": "fwd", **dataclasses.asdict(case)}
            try:
                out = fn(value, offset, logits, case.params)
                reference = out.float() if reference is None else reference
                row["max_abs_diff_vs_pytorch"] = float((out.float() - reference).abs().max())
                row["seconds"] = timer(lambda f=fn: f(value, offset, logits, case.params))
            except RuntimeError as err:  # e.g. the official op has no bfloat16 kernel
                row["error"] = str(err).splitlines()[0][:200]
            rows.append(row)
    leaves = make_inputs(case, device, True)
    grad = torch.randn_like(leaves[0])

    def clear():
        for leaf in leaves:
            leaf.grad = None

    for name, fn in impls.items():
        row = {"impl": name, "pass": "fwd+bwd", **dataclasses.asdict(case)}
        try:
            row["seconds"] = timer(lambda f=fn: f(*leaves, case.params).backward(grad), setup=clear)
        except RuntimeError as err:
            row["error"] = str(err).splitlines()[0][:200]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", type=Path, default=None, help="kernel build root or variant dir")
    parser.add_argument("--official-src", type=Path, default=None, help="official ops_dcnv3 folder (optional)")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--dtype", choices=sorted(DTYPES), nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop cleanly after this many seconds")
    parser.add_argument("--summary", type=Path, default=None, help="append results as JSON lines")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (batch 2, 1/7 spatial size, 2 reps)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device (use --smoke for the CPU plumbing check)")
    batches, reps = ([2], 2) if args.smoke else (args.batch, args.reps)
    out = args.summary.open("a") if args.summary else None

    def emit(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    kernel = load_kernel(args.kernel, device) if args.kernel else None
    official = None
    if args.official_src:
        try:
            official = load_official(args.official_src)
        except Exception as err:  # noqa: BLE001 - a failed build must not stop the benchmark
            emit({"official_build_error": str(err).splitlines()[-1][:300]})
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    copy = copy_bandwidth(device)
    emit(
        {
            "device": device_name,
            "torch": torch.__version__,
            "copy_gbps": copy,
            "kernel": getattr(kernel, "__name__", None),
        }
    )
    timer = Timer(device, reps)
    impls = implementations(kernel, official)
    cases = [
        Case(b, c, g, s if not args.smoke else max(s // 7, 2), dtype)
        for dtype in args.dtype
        for b in batches
        for c, g, s in STAGES
    ]
    for done, case in enumerate(cases):
        if time.monotonic() - start > args.budget_s:
            emit({"budget_exhausted": True, "skipped_cases": len(cases) - done})
            break
        for row in measure(case, impls, timer, device):
            if "seconds" in row:
                gbps = bytes_moved(case, row["pass"] == "fwd+bwd") / row["seconds"] / 1e9
                row.update(ms=row["seconds"] * 1e3, gbps=gbps, fraction_of_copy=gbps / copy)
            emit(row)
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
