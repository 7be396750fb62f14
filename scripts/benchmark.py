"""Model-level benchmark: InternImage-T and FlashInternImage-T (PyTorch cores, and `kernelize`d) against ConvNeXt-T.

All models are built and timed in this one process and take turns over the rounds, so the printed ratios compare
like with like on a shared machine. One run prints every row of the README table:

- forward (eager, inference) at each `--batch`, with the peak extra memory of one forward;
- training step (forward + backward + fused AdamW) at `--train-batch`, both models with the same stochastic-depth
  rate (`--drop-path-rate`; the configs' defaults differ: 0.1 for InternImage-T, 0.0 for ConvNeXt-T);
- `torch.compile` (inductor; weights frozen for inference): compile time (from an empty inductor cache),
  steady-state time against the compiled ConvNeXt-T and against the same model in eager mode; each batch size
  compiled for its own shapes, and the later batch sizes also as the dynamic-batch recompile of the models compiled
  at the first one.

    python scripts/benchmark.py                          # CPU; builds the CPU kernel if needed
    python scripts/benchmark.py --kernel-dir KERNEL_DIR  # use an existing kernel build tree
    python scripts/benchmark.py --no-compile --no-train  # forward rows only (about a minute)
    python scripts/benchmark.py --device cuda --dtype bfloat16 --batch 1 32
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from transformers import ConvNextConfig, ConvNextForImageClassification

from internimage_hf import (
    FlashInternImageConfig,
    FlashInternImageForImageClassification,
    InternImageConfig,
    InternImageForImageClassification,
    kernelize,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from profiling import Timing, median_times, peak_memory_bytes, timed  # noqa: E402

BASELINE = "convnext_t"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="forward (and compiled) batch sizes")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--drop-path-rate", type=float, default=0.0, help="stochastic depth of both models in the training step"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, help="intra-op threads (torch.set_num_threads); default: torch's")
    parser.add_argument("--iters", type=int, default=5, help="timed calls per model and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which the models take turns")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model and round")
    parser.add_argument("--kernel-dir", type=Path, help="kernel build tree (default: build the kernel for this torch)")
    parser.add_argument("--no-kernel", action="store_true", help="skip the kernel path")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step rows")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--no-freezing", action="store_true", help="compile without inductor's weight freezing")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--smoke", action="store_true", help="tiny models of both families: checks the plumbing only")
    return parser.parse_args(argv)


def kernel_tree(args: argparse.Namespace) -> Path:
    if args.kernel_dir is not None:
        return args.kernel_dir
    from kernel_build import build_kernel

    out = Path(tempfile.mkdtemp(prefix="dcnv3-kernel-"))
    backend = "cuda" if args.device.startswith("cuda") else "cpu"
    print(f"building the {backend} kernel into {out} ...", flush=True)
    build_kernel(out_dir=out, backend=backend)
    return out


def build_models(args: argparse.Namespace, kernel_dir: Path | None, mode: str) -> dict[str, torch.nn.Module]:
    """ConvNeXt-T, InternImage-T and FlashInternImage-T with the PyTorch cores and (with a kernel) kernelized, same
    seed, in `mode`."""
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    if args.smoke:
        internimage_config = InternImageConfig(channels=16, depths=[1, 1, 1, 1], groups=[1, 2, 4, 8], num_labels=1000)
        flash_config = FlashInternImageConfig(channels=16, depths=[1, 1, 1, 1], groups=[1, 2, 4, 8], num_labels=1000)
        convnext_config = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=1000)
    else:
        internimage_config = InternImageConfig.from_preset("t", num_labels=1000)
        flash_config = FlashInternImageConfig.from_preset("t", num_labels=1000)
        convnext_config = ConvNextConfig(num_labels=1000)
    # Only the training step runs stochastic depth; like against like, whatever the configs' defaults.
    for config in (internimage_config, flash_config, convnext_config):
        config.drop_path_rate = args.drop_path_rate
    convnext = ConvNextForImageClassification(convnext_config)
    internimage = InternImageForImageClassification(internimage_config)
    flash = FlashInternImageForImageClassification(flash_config)
    models = {BASELINE: convnext, "internimage_t_pytorch": internimage, "flash_internimage_t_pytorch": flash}
    models = {name: model.to(args.device, dtype).train(mode == "training") for name, model in models.items()}
    if kernel_dir is not None:
        for family in ("internimage_t", "flash_internimage_t"):
            pytorch = models[f"{family}_pytorch"]
            models[f"{family}_kernel"] = kernelize(copy.deepcopy(pytorch), mode=mode, local_path=kernel_dir)
    return models


def pixels_for(args: argparse.Namespace, batch: int) -> torch.Tensor:
    size = (batch, 3, args.image_size, args.image_size)
    return torch.randn(size, device=args.device, dtype=getattr(torch, args.dtype))


def print_rows(title: str, batch: int, seconds: dict[str, Timing], extra: dict[str, str] | None = None) -> None:
    print(f"\n{title}, batch {batch}")
    header = f"{'model':<30}{'ms':>10}{'img/s':>9}{'x ConvNeXt-T':>14}{'user CPU ms':>13}{'x ConvNeXt-T':>14}"
    print(f"{header}  {'' if extra is None else 'notes'}")
    base = seconds[BASELINE]
    for name, value in seconds.items():
        note = (extra or {}).get(name, "")
        wall = f"{value.wall * 1e3:>10.1f}{batch / value.wall:>9.1f}{value.wall / base.wall:>14.2f}"
        user = f"{value.user * 1e3:>13.1f}{value.user / max(base.user, 1e-9):>14.2f}"
        print(f"{name:<30}{wall}{user}  {note}")


@torch.no_grad()
def forward_rows(args: argparse.Namespace, models: dict[str, torch.nn.Module]) -> dict[int, dict[str, float]]:
    eager = {}
    for batch in args.batch:
        pixels = pixels_for(args, batch)
        calls = {name: (lambda m=model, x=pixels: m(pixel_values=x)) for name, model in models.items()}
        eager[batch] = median_times(calls, args)
        peaks = {name: peak_memory_bytes(call, args.device) for name, call in calls.items()}
        print_rows("forward (eager)", batch, eager[batch], {n: f"peak {p / 2**20:.1f} MiB" for n, p in peaks.items()})
    return eager


def training_rows(args: argparse.Namespace, kernel_dir: Path | None) -> None:
    models = build_models(args, kernel_dir, "training")
    pixels = pixels_for(args, args.train_batch)
    labels = torch.randint(0, 1000, (args.train_batch,), device=args.device)
    calls = {}
    for name, model in models.items():
        # Fused, as Transformers' Trainer and this package's trainer run AdamW.
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

        def step(model=model, optimizer=optimizer):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        calls[name] = step
    title = f"training step (forward + backward + AdamW; stochastic depth {args.drop_path_rate} in both)"
    print_rows(title, args.train_batch, median_times(calls, args))


def compile_all(models: dict[str, torch.nn.Module], args, batch: int, dynamic: bool | None) -> tuple[dict, dict]:
    """`torch.compile` of every model and the seconds of its first call (the compile) at `batch`."""
    pixels = pixels_for(args, batch)
    compiled, seconds = {}, {}
    for name, model in models.items():
        compiled[name] = torch.compile(model, backend=args.compile_backend, dynamic=dynamic)
        seconds[name] = first_call_seconds(compiled[name], pixels, args.device)
    return compiled, seconds


def first_call_seconds(compiled: torch.nn.Module, pixels: torch.Tensor, device: str) -> float:
    """Seconds of a first call, i.e. the compile as a new user meets it: inductor's on-disk caches (compiled graphs
    and C++ kernels of earlier runs) would otherwise turn a repeated benchmark's compile into a cache lookup."""
    from torch._inductor.utils import fresh_cache

    with fresh_cache():
        return timed(lambda: compiled(pixel_values=pixels), device).wall


def print_compiled(title: str, args, batch: int, compiled: dict, compile_seconds: dict, eager: dict) -> None:
    pixels = pixels_for(args, batch)
    calls = {name: (lambda m=model, x=pixels: m(pixel_values=x)) for name, model in compiled.items()}
    seconds = median_times(calls, args)
    speedup = {name: seconds[name].wall / eager[batch][name].wall for name in seconds}
    notes = {
        name: f"compile {compile_seconds[name]:.0f} s (first call), {speedup[name]:.2f}x eager" for name in seconds
    }
    print_rows(title, batch, seconds, notes)


@torch.no_grad()
def compiled_rows(args: argparse.Namespace, models: dict[str, torch.nn.Module], eager: dict[int, dict]) -> None:
    """Each batch size compiled for its own shapes (what a fixed-batch user gets); then the models compiled at the
    first batch size called at the others, which dynamo recompiles with a dynamic batch dimension (inductor then
    picks other linear kernels: oneDNN instead of MKL for frozen float32 weights). Dynamo's caches are shared by
    every `torch.compile` of the same code, so each experiment starts from `torch._dynamo.reset()`."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = not args.no_freezing
    freezing = "frozen weights" if not args.no_freezing else "no freezing"
    for batch in args.batch:
        torch._dynamo.reset()
        compiled, compile_seconds = compile_all(models, args, batch, dynamic=False)
        print_compiled(f"torch.compile ({args.compile_backend}, {freezing}, static shapes)", args, batch, compiled,
                       compile_seconds, eager)  # fmt: skip
    if len(args.batch) < 2:
        return
    torch._dynamo.reset()
    compiled, _ = compile_all(models, args, args.batch[0], dynamic=None)
    for batch in args.batch[1:]:
        pixels = pixels_for(args, batch)
        recompile = {name: first_call_seconds(model, pixels, args.device) for name, model in compiled.items()}
        title = f"torch.compile ({args.compile_backend}, {freezing}, dynamic batch after batch {args.batch[0]})"
        print_compiled(title, args, batch, compiled, recompile, eager)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kernel_dir = None if args.no_kernel else kernel_tree(args)
    models = build_models(args, kernel_dir, "inference")
    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}")
    for family in ("internimage_t", "flash_internimage_t"):
        backend = models[f"{family}_kernel"].dcnv3_backend if kernel_dir is not None else "none"
        print(f"{family} kernel path runs: {backend}")
    eager = forward_rows(args, models)
    if not args.no_train:
        training_rows(args, kernel_dir)
    if not args.no_compile:
        compiled_rows(args, models, eager)


if __name__ == "__main__":
    main()
