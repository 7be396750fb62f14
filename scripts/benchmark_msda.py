#!/usr/bin/env python
"""Benchmark the kernel's multi-scale deformable attention (MSDA) against Transformers' PyTorch version (one
`grid_sample` per level) in one process, and optionally the whole DINO-T detector with and without it.

Op shapes: the DINO-T encoder at 800x1333 (levels 100x167, 50x84, 25x42, 13x21; 8 heads of 32 channels, 4 levels,
4 points; one query per level position, 22223 queries) and its decoder (900 queries on the same levels). Sampling
locations are the queries' reference points plus offsets of a few pixels, as a trained detector's are. Reports the
median forward (and with --backward forward+backward) time of each implementation and the ratio ours / theirs; the
implementations take turns over the rounds so that load drifts hit both alike.

--detector adds `DinoDetrForObjectDetection(DinoDetrConfig())` (random weights) at the same size: PyTorch, the
backbone kernelized, and backbone + deformable attention kernelized (`internimage_hf.kernelize(detector)`).

Usage:
    python scripts/benchmark_msda.py --kernel DIR [--device cpu|cuda] [--dtype float32|bfloat16|float16]
        [--threads N] [--rounds 3] [--iters 3] [--backward] [--detector]

DIR is a kernel repo root (with build/<variant>/) or a variant dir, e.g. from scripts/build_kernel.py.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from profiling import median_times  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STRIDES = (8, 16, 32, 64)  # the DINO-T levels: the backbone's strides 8-32 and one stride-2 extra level
HEADS, CHANNELS, POINTS = 8, 32, 4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", type=Path, required=True, help="kernel repo root or variant dir")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), help="image height and width")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each implementation takes")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per turn")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per turn")
    parser.add_argument("--backward", action="store_true", help="also time forward + backward")
    parser.add_argument("--detector", action="store_true", help="also time the whole DINO-T detector forward")
    return parser.parse_args(argv)


def load_kernel(path: Path):
    """The kernel module from a repo root or variant dir (a CPU variant needs backend="cpu" on CUDA torch)."""
    from kernels import get_local_kernel

    try:
        return get_local_kernel(path)
    except FileNotFoundError:
        return get_local_kernel(path, backend="cpu")


def level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    return [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]


def make_inputs(levels, queries: int | None, dtype, device, requires_grad=False, seed=0):
    """value (1, S, 8, 32), spatial_shapes, level_start_index, sampling_locations (1, Q, 8, 4, 4, 2), attention
    weights (softmax over the 16 samples of a head). Queries: every level position (the encoder) or `queries`
    random reference points (the decoder); each samples around its reference point, N(0, 2 px) per level."""
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.int64)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    if queries is None:
        refs = [
            torch.stack(torch.meshgrid((torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h, indexing="xy"), -1)
            for h, w in levels
        ]
        reference = torch.cat([r.reshape(-1, 2) for r in refs])
    else:
        reference = torch.rand(queries, 2, generator=gen)
    num_queries = reference.shape[0]
    normaliser = shapes.flip(1).double()  # (W, H) per level
    offsets = torch.randn(1, num_queries, HEADS, len(levels), POINTS, 2, generator=gen, dtype=torch.float64) * 2
    locations = reference[None, :, None, None, None, :] + offsets / normaliser[None, None, None, :, None, :]
    weights = torch.randn(1, num_queries, HEADS, len(levels) * POINTS, generator=gen).softmax(-1)
    weights = weights.view(1, num_queries, HEADS, len(levels), POINTS)
    value = torch.randn(1, int(sizes.sum()), HEADS, CHANNELS, generator=gen)
    floats = [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (value, locations, weights)]
    return floats[0], shapes.to(device), starts.to(device), floats[1], floats[2]


def op_calls(kernel, inputs, levels, backward: bool) -> dict:
    value, shapes, starts, locations, weights = inputs
    reference = MultiScaleDeformableAttention()

    def ours():
        return kernel.multi_scale_deformable_attention(value, shapes, starts, locations, weights)

    def theirs():
        return reference(value, shapes, levels, starts, locations, weights, 64)

    if not backward:
        return {"transformers": torch.no_grad()(theirs), "kernel": torch.no_grad()(ours)}
    return {"transformers": lambda: theirs().sum().backward(), "kernel": lambda: ours().sum().backward()}


def report(title: str, times: dict) -> None:
    base = times["transformers"] if "transformers" in times else next(iter(times.values()))
    print(f"{title}")
    for name, timing in times.items():
        print(
            f"  {name:<32} {timing.wall * 1e3:9.1f} ms wall {timing.user * 1e3:9.1f} ms user"
            f"   ratio {timing.wall / base.wall:.3f} (user {timing.user / max(base.user, 1e-9):.3f})"
        )


def detector_calls(kernel_dir: Path, height: int, width: int, device: str) -> dict:
    from internimage_hf import DinoDetrConfig, DinoDetrForObjectDetection, kernelize

    torch.manual_seed(0)
    plain = DinoDetrForObjectDetection(DinoDetrConfig()).eval().to(device)
    backbone = DinoDetrForObjectDetection(DinoDetrConfig()).eval().to(device)
    backbone.load_state_dict(plain.state_dict())
    kernelize(backbone.model.backbone, local_path=kernel_dir)
    full = DinoDetrForObjectDetection(DinoDetrConfig()).eval().to(device)
    full.load_state_dict(plain.state_dict())
    kernelize(full, local_path=kernel_dir)
    padded = (-(-height // 32) * 32, -(-width // 32) * 32)
    pixels = torch.zeros(1, 3, *padded, device=device)
    pixels[:, :, :height, :width] = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, *padded, dtype=torch.long, device=device)
    mask[:, :height, :width] = 1
    calls = {}
    for name, model in (("pytorch", plain), ("kernel: backbone", backbone), ("kernel: backbone + attention", full)):
        calls[name] = torch.no_grad()(lambda m=model: m(pixel_values=pixels, pixel_mask=mask))
    with torch.no_grad():
        expected, got = plain(pixel_values=pixels, pixel_mask=mask), full(pixel_values=pixels, pixel_mask=mask)
    difference = (got.logits - expected.logits).abs().max().item()
    print(f"detector: max |logits kernel - pytorch| = {difference:.2e}")
    return calls


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kernel = load_kernel(args.kernel)
    dtype = DTYPES[args.dtype]
    levels = level_sizes(*args.size)
    print(f"device {args.device}, {args.dtype}, threads {torch.get_num_threads()}, levels {levels}")
    for title, queries in (("encoder", None), ("decoder (900 queries)", 900)):
        inputs = make_inputs(levels, queries, dtype, args.device)
        out = op_calls(kernel, inputs, levels, False)
        with torch.no_grad():
            difference = (out["kernel"]().float() - out["transformers"]().float()).abs().max().item()
        report(f"{title} forward, Q={inputs[3].shape[1]} (max |difference| {difference:.1e})", median_times(out, args))
        if args.backward:
            inputs = make_inputs(levels, queries, dtype, args.device, requires_grad=True)
            report(f"{title} forward + backward", median_times(op_calls(kernel, inputs, levels, True), args))
    if args.detector:
        calls = detector_calls(args.kernel, *args.size, args.device)
        times = median_times(calls, args)
        print("DINO-T detector forward (network only, one image)")
        base = times["pytorch"]
        for name, timing in times.items():
            print(
                f"  {name:<32} {timing.wall:8.2f} s wall {timing.user:8.2f} s user"
                f"   ratio {timing.wall / base.wall:.3f}"
                f" (user {timing.user / base.user:.3f})"
            )


if __name__ == "__main__":
    main()
