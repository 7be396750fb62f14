#!/usr/bin/env python
"""Benchmark the DCNv3 kernel against the PyTorch core (`internimage_hf.ops.dcnv3.dcnv3_core`) in one process.

Shapes: the four InternImage-T stages at 224x224 (channels 64/128/256/512, groups 4/8/16/32, 56/28/14/7 px,
3x3 kernel). Reports forward and forward+backward times, speed-ups, peak memory allocated by one call
(CUDA: torch.cuda.max_memory_allocated; CPU: torch.profiler memory events) and, on CUDA, effective bandwidth
(bytes of value + offset + mask + output per forward) as a fraction of the device peak.

Usage:
    python scripts/benchmark_dcnv3.py --kernel DIR [--device cpu|cuda] [--dtype float32|bfloat16|float16]
        [--batch 1 32] [--iters N] [--threads N] [--peak-gbps GBPS]

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

from internimage_hf.ops.dcnv3 import dcnv3_core, softmax_over_points

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from profiling import peak_memory_bytes  # noqa: E402

STAGES = [(64, 4, 56), (128, 8, 28), (256, 16, 14), (512, 32, 7)]  # (channels, groups, spatial) of T @ 224
PEAK_GBPS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L4": 300.0, "A10": 600.0}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_kernel(path: Path):
    """The kernel module from a repo root or variant dir (a CPU variant needs backend="cpu" on CUDA torch)."""
    from kernels import get_local_kernel

    if (path / "metadata.json").exists():
        return get_local_kernel(path)
    try:
        return get_local_kernel(path)
    except FileNotFoundError:
        return get_local_kernel(path, backend="cpu")


def make_inputs(batch, channels, groups, size, dtype, device, requires_grad):
    """value (N,S,S,C), offset (N,S,S,G*18), mask (N,S,S,G*9), InternImage-like magnitudes."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    value = torch.randn(batch, size, size, channels, generator=gen)
    offset = torch.randn(batch, size, size, groups * 18, generator=gen)
    mask = torch.randn(batch, size, size, groups, 9, generator=gen).softmax(-1).reshape(batch, size, size, -1)
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (value, offset, mask)]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, iters: int) -> tuple[float, float]:
    """(median seconds per call, peak memory allocated by one call in MiB), after one warm-up call.

    The median of single calls, not the mean: on shared machines a few slow calls would otherwise decide.
    """
    fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_memory_bytes(fn, device) / 2**20


def pytorch_softmax_core(value, offset, mask_logits, *params):
    """What the model's PyTorch `DCNv3Core` computes: the softmax over each group's points, then `dcnv3_core`."""
    return dcnv3_core(value, offset, softmax_over_points(mask_logits, params[8]), *params)


def bench_stage(kernel, stage, batch, dtype, device, iters, mask_logits=False) -> dict:
    channels, groups, size = stage
    params = (3, 3, 1, 1, 1, 1, 1, 1, groups, channels // groups, 1.0, False)
    if mask_logits:  # the mask arrives as logits (InternImage); the kernel fuses the softmax on CPU
        impls = {"pytorch": pytorch_softmax_core, "kernel": kernel.dcnv3_softmax}
    else:
        impls = {"pytorch": dcnv3_core, "kernel": kernel.dcnv3}
    row = {"channels": channels, "groups": groups, "size": size, "batch": batch}
    with torch.no_grad():
        value, offset, mask = make_inputs(batch, channels, groups, size, dtype, device, False)
        for name, fn in impls.items():
            row[f"{name}_fwd_ms"], row[f"{name}_fwd_mib"] = timed(
                lambda f=fn: f(value, offset, mask, *params), device, iters
            )
    leaves = make_inputs(batch, channels, groups, size, dtype, device, True)

    def step(fn):
        out = fn(*leaves, *params)
        out.backward(torch.ones_like(out))
        for leaf in leaves:
            leaf.grad = None

    for name, fn in impls.items():
        row[f"{name}_fwdbwd_ms"], row[f"{name}_fwdbwd_mib"] = timed(lambda f=fn: step(f), device, max(1, iters // 2))
    for key in ("fwd", "fwdbwd"):
        row[f"{key}_ms_pytorch"] = row.pop(f"pytorch_{key}_ms") * 1e3
        row[f"{key}_ms_kernel"] = row.pop(f"kernel_{key}_ms") * 1e3
        row[f"{key}_speedup"] = row[f"{key}_ms_pytorch"] / row[f"{key}_ms_kernel"]
    bytes_moved = sum(t.numel() * t.element_size() for t in (value, offset, mask)) * 1.0
    bytes_moved += value.numel() * value.element_size()  # output has value's shape (stride 1, pad 1)
    row["kernel_fwd_gbps"] = bytes_moved / (row["fwd_ms_kernel"] * 1e-3) / 1e9
    return row


def peak_gbps(args) -> float | None:
    if args.peak_gbps:
        return args.peak_gbps
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((gbps for key, gbps in PEAK_GBPS.items() if key in name), None)


def format_row(row: dict, peak: float | None) -> str:
    text = (
        f"C={row['channels']:3d} G={row['groups']:2d} S={row['size']:2d} N={row['batch']:3d} | "
        f"fwd {row['fwd_ms_pytorch']:9.2f} -> {row['fwd_ms_kernel']:8.2f} ms (x{row['fwd_speedup']:5.1f}) | "
        f"fwd+bwd {row['fwdbwd_ms_pytorch']:9.2f} -> {row['fwdbwd_ms_kernel']:8.2f} ms "
        f"(x{row['fwdbwd_speedup']:5.1f}) | "
        f"peak MiB fwd {row['pytorch_fwd_mib']:7.1f} -> {row['kernel_fwd_mib']:6.1f}, "
        f"fwd+bwd {row['pytorch_fwdbwd_mib']:7.1f} -> {row['kernel_fwdbwd_mib']:6.1f}"
    )
    if peak:
        text += f" | {row['kernel_fwd_gbps']:7.1f} GB/s = {row['kernel_fwd_gbps'] / peak:5.1%} of peak"
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", type=Path, required=True, help="kernel repo root or variant dir")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--iters", type=int, default=None, help="default: 3 on CPU, 50 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument(
        "--peak-gbps", type=float, default=None, help="device memory bandwidth (GB/s) for the %%-of-peak column"
    )
    parser.add_argument(
        "--mask-logits",
        action="store_true",
        help="time softmax + core (the model's DCNv3Core) against the kernel's dcnv3_softmax",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    iters = args.iters or (50 if args.device == "cuda" else 3)
    kernel = load_kernel(args.kernel)
    dtype = DTYPES[args.dtype]
    peak = peak_gbps(args)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    variant = "softmax + core -> dcnv3_softmax" if args.mask_logits else "core -> dcnv3"
    print(f"# DCNv3 PyTorch {variant} (kernel {kernel.__name__}); {device_name}; {args.dtype}; iters={iters}")
    rows = []
    for batch in args.batch:
        for stage in STAGES:
            row = bench_stage(kernel, stage, batch, dtype, args.device, iters, args.mask_logits)
            rows.append(row)
            print(format_row(row, peak), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "dtype": args.dtype, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
