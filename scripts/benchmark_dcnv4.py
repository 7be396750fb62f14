#!/usr/bin/env python
"""Benchmark the DCNv4 kernel op against the DCNv3 kernel op and the portable DCNv4 core, in one process.

Shapes: the four InternImage-T stages at 224x224 (channels 64/128/256/512, groups 4/8/16/32, 16 channels per group,
56/28/14/7 px, 3x3 kernel). Times forward and forward+backward of

- ``dcnv3``: the DCNv3 kernel op as the model calls it (``dcnv3_softmax``: mask logits, softmax inside the op);
- ``dcnv4``: the DCNv4 kernel op (``dcnv4``: fused offsets and weights, no softmax; official padded width);
- ``dcnv4_pytorch``: the portable DCNv4 core (`internimage_hf.ops.dcnv4.dcnv4_core`),

and reports each as a ratio against ``dcnv3`` (``<name>_<fwd|fwdbwd>_speedup = dcnv3 time / its time``).

Usage:
    python scripts/benchmark_dcnv4.py --kernel DIR [--device cpu|cuda] [--dtype float32|bfloat16|float16]
        [--batch 1 8] [--iters N] [--threads N] [--json FILE]

DIR is a kernel repo root (with build/<variant>/) or a variant dir, e.g. from scripts/build_kernel.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from internimage_hf.ops.dcnv4 import dcnv4_core, dcnv4_offset_mask_channels

STAGES = [(64, 4, 56), (128, 8, 28), (256, 16, 14), (512, 32, 7)]  # (channels, groups, spatial) of T @ 224
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IMPLS = ("dcnv3", "dcnv4", "dcnv4_pytorch")
POINTS = 9  # 3x3


def load_kernel(path: Path):
    """The kernel module from a repo root or variant dir (a CPU variant needs backend="cpu" on CUDA torch)."""
    from kernels import get_local_kernel

    if (path / "metadata.json").exists():
        return get_local_kernel(path)
    try:
        return get_local_kernel(path)
    except FileNotFoundError:
        return get_local_kernel(path, backend="cpu")


def make_inputs(batch, channels, groups, size, dtype, device):
    """InternImage-like magnitudes: value (N,S,S,C); DCNv3 offset (N,S,S,G*18) and mask logits (N,S,S,G*9); the same
    offsets and the softmaxed logits as DCNv4's fused (N,S,S,D) (so both ops compute comparable outputs)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    value = torch.randn(batch, size, size, channels, generator=gen)
    offset = torch.randn(batch, size, size, groups, 2 * POINTS, generator=gen)
    logits = torch.randn(batch, size, size, groups, POINTS, generator=gen)
    fused = torch.cat([offset, logits.softmax(-1)], dim=-1).flatten(-2)
    padding = fused.new_zeros(*fused.shape[:3], dcnv4_offset_mask_channels(groups, POINTS) - fused.shape[-1])
    tensors = {
        "value": value,
        "offset": offset.flatten(-2),
        "mask_logits": logits.flatten(-2),
        "offset_mask": torch.cat([fused, padding], dim=-1),
    }
    return {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, iters: int) -> float:
    """Median milliseconds per call after one warm-up call (the median: a few slow calls on a shared machine must
    not decide)."""
    fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def stage_calls(kernel, inputs: dict, groups: int, channels: int) -> dict:
    """Each implementation as ``fn(tensors) -> output``, reading its inputs from ``tensors`` (a dict like `inputs`)."""
    params = (3, 3, 1, 1, 1, 1, 1, 1, groups, channels // groups, 1.0, False)
    return {
        "dcnv3": lambda t: kernel.dcnv3_softmax(t["value"], t["offset"], t["mask_logits"], *params),
        "dcnv4": lambda t: kernel.dcnv4(t["value"], t["offset_mask"], *params),
        "dcnv4_pytorch": lambda t: dcnv4_core(t["value"], t["offset_mask"], *params),
    }


def bench_stage(kernel, stage, batch, dtype, device, iters) -> dict:
    """One row: ``<impl>_fwd_ms``, ``<impl>_fwdbwd_ms`` and ``<impl>_<fwd|fwdbwd>_speedup`` (against dcnv3)."""
    channels, groups, size = stage
    inputs = make_inputs(batch, channels, groups, size, dtype, device)
    calls = stage_calls(kernel, inputs, groups, channels)
    row = {"channels": channels, "groups": groups, "size": size, "batch": batch}
    with torch.no_grad():
        for name, fn in calls.items():
            row[f"{name}_fwd_ms"] = timed(lambda f=fn: f(inputs), device, iters)
    leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}

    def step(fn):
        out = fn(leaves)
        out.backward(torch.ones_like(out))
        for leaf in leaves.values():
            leaf.grad = None

    for name, fn in calls.items():
        row[f"{name}_fwdbwd_ms"] = timed(lambda f=fn: step(f), device, max(1, iters // 2))
    for key in ("fwd", "fwdbwd"):
        for name in IMPLS:
            row[f"{name}_{key}_speedup"] = row[f"dcnv3_{key}_ms"] / row[f"{name}_{key}_ms"]
    return row


def run(kernel, batches=(1, 8), stages=STAGES, dtype=torch.float32, device="cpu", iters=5, report=print) -> list:
    """Benchmark every (batch, stage); `report` gets one formatted line per row. Returns the rows."""
    rows = []
    for batch in batches:
        for stage in stages:
            row = bench_stage(kernel, stage, batch, dtype, device, iters)
            rows.append(row)
            report(format_row(row))
    return rows


def format_row(row: dict) -> str:
    cells = [f"C={row['channels']:3d} G={row['groups']:2d} S={row['size']:2d} N={row['batch']:2d}"]
    for key, label in (("fwd", "fwd"), ("fwdbwd", "fwd+bwd")):
        times = " / ".join(f"{row[f'{name}_{key}_ms']:8.2f}" for name in IMPLS)
        ratios = " / ".join(f"x{row[f'{name}_{key}_speedup']:5.2f}" for name in IMPLS[1:])
        cells.append(f"{label} ms {times} (dcnv4, pytorch vs dcnv3: {ratios})")
    return " | ".join(cells)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", type=Path, required=True, help="kernel repo root or variant dir")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iters", type=int, default=None, help="default: 5 on CPU, 50 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    iters = args.iters or (50 if args.device == "cuda" else 5)
    kernel = load_kernel(args.kernel)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"# DCNv3 kernel (dcnv3_softmax) / DCNv4 kernel / DCNv4 PyTorch core (kernel {kernel.__name__}); "
          f"{device_name}; {args.dtype}; iters={iters}", flush=True)  # fmt: skip
    rows = run(kernel, args.batch, STAGES, DTYPES[args.dtype], args.device, iters, lambda line: print(line, flush=True))
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "dtype": args.dtype, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
