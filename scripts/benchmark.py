"""Model-level benchmark: InternImage-T forward (PyTorch DCNv3 core and DCNv3 kernel) against ConvNeXt-T.

All models are built and timed in this one process, so the printed ratios compare like with like.

    python scripts/benchmark.py                          # CPU, batch 1 and 8, builds the CPU kernel if needed
    python scripts/benchmark.py --kernel-dir KERNEL_DIR  # use an existing kernel build tree
    python scripts/benchmark.py --device cuda --dtype bfloat16 --batch 1 32
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import ConvNextConfig, ConvNextForImageClassification

from internimage_hf import InternImageConfig, InternImageForImageClassification, kernelize
from internimage_hf.profiling import peak_memory_bytes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--iters", type=int, default=5, help="timed forwards per model and round (3 rounds)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per model and round")
    parser.add_argument("--kernel-dir", type=Path, help="kernel build tree (default: build the kernel for this torch)")
    parser.add_argument("--no-kernel", action="store_true", help="skip the kernel path")
    return parser.parse_args(argv)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_forward(model: torch.nn.Module, pixels: torch.Tensor) -> float:
    start = time.perf_counter()
    model(pixel_values=pixels)
    synchronize(pixels.device.type)
    return time.perf_counter() - start


@torch.no_grad()
def measure_all(
    models: dict, pixels: torch.Tensor, iters: int, warmup: int, rounds: int = 3
) -> dict[str, tuple[float, float]]:
    """Median forward seconds and peak extra memory (bytes) of each model.

    Each model runs `iters` forwards back to back (its steady state); the models take turns over `rounds`, so
    drifts in machine load (shared VMs) hit them alike.
    """
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            for _ in range(warmup):
                model(pixel_values=pixels)
            times[name] += [time_forward(model, pixels) for _ in range(iters)]
    device = pixels.device.type
    return {
        name: (statistics.median(times[name]), peak_memory_bytes(lambda m=model: m(pixel_values=pixels), device))
        for name, model in models.items()
    }


def kernel_tree(args: argparse.Namespace) -> Path:
    if args.kernel_dir is not None:
        return args.kernel_dir
    from internimage_hf.kernel_build import build_kernel

    out = Path(tempfile.mkdtemp(prefix="dcnv3-kernel-"))
    backend = "cuda" if args.device.startswith("cuda") else "cpu"
    print(f"building the {backend} kernel into {out} ...", flush=True)
    build_kernel(out_dir=out, backend=backend)
    return out


def build_models(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    internimage = InternImageForImageClassification(InternImageConfig.from_preset("t", num_labels=1000))
    internimage = internimage.to(args.device, dtype).eval()
    models = {"convnext_t": ConvNextForImageClassification(ConvNextConfig()).to(args.device, dtype).eval()}
    models["internimage_t_pytorch"] = internimage
    if not args.no_kernel:
        kernel_model = kernelize(copy.deepcopy(internimage), mode="inference", local_path=kernel_tree(args))
        print(f"kernel path runs: {kernel_model.dcnv3_backend}")
        models["internimage_t_kernel"] = kernel_model
    return models


def main(argv=None) -> None:
    args = parse_args(argv)
    models = build_models(args)
    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}")
    for batch in args.batch:
        pixels = torch.randn(
            batch, 3, args.image_size, args.image_size, device=args.device, dtype=getattr(torch, args.dtype)
        )
        results = measure_all(models, pixels, args.iters, args.warmup)
        baseline = results["convnext_t"][0]
        print(f"\nbatch {batch} at {args.image_size}px")
        print(f"{'model':<24}{'ms/forward':>12}{'img/s':>10}{'x ConvNeXt-T':>14}{'peak MiB':>11}")
        for name, (seconds, peak) in results.items():
            ratio = seconds / baseline
            print(f"{name:<24}{seconds * 1e3:>12.1f}{batch / seconds:>10.1f}{ratio:>14.2f}{peak / 2**20:>11.1f}")
        if "internimage_t_kernel" in results:
            speedup = results["internimage_t_pytorch"][0] / results["internimage_t_kernel"][0]
            print(f"kernel speed-up over the PyTorch DCNv3 core (whole model): {speedup:.2f}x")


if __name__ == "__main__":
    main()
