#!/usr/bin/env python
"""DINO forward speed: `DinoDetrForObjectDetection` against the official InternImage DINO, same weights, one process.

Both detectors are the official InternImage-T DINO configuration with the official initialisation (ours gets the
official weights through the converter's key mapping) and run one padded 800x1333 image (the official test size,
padded to 800x1344 with its mask), the network only (no post-processing), taking turns over the rounds. Needs the
official detection environment (`scripts/make_official_detection_env.sh`) with this package installed in it
(`pip install -e .`)::

    python scripts/benchmark_detection.py --official /path/to/InternImage [--rounds 3] [--kernel-dir KERNEL_DIR]

`--kernel-dir` adds two rows for our detector `kernelize`d from a local kernel build: the InternImage backbone only,
and the whole detector (backbone plus Transformers' multi-scale deformable attention of the encoder and decoder).
Prints median wall and user CPU milliseconds and the ratio to the official detector.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from detection_fixtures import OfficialDetectionCode, image_metas  # noqa: E402
from profiling import Timing, median_times  # noqa: E402

from internimage_hf import DinoDetrConfig, DinoDetrForObjectDetection, kernelize  # noqa: E402
from internimage_hf.conversion.dino_detr import convert_official_dino_state_dict  # noqa: E402

BASELINE = "official"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="an OpenGVLab/InternImage git checkout")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), help="image height and width")
    parser.add_argument("--rounds", type=int, default=3, help="turns each detector takes")
    parser.add_argument("--iters", type=int, default=2, help="timed calls per turn")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per turn")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--kernel-dir", type=Path, default=None, help="a local DCNv3 kernel build for a kernel row")
    args = parser.parse_args(argv)
    args.device = "cpu"
    return args


def build_detectors(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    official_code = OfficialDetectionCode(args.official)
    official = official_code.build().float()
    official.init_weights()
    ours = DinoDetrForObjectDetection(DinoDetrConfig()).eval()
    ours.load_state_dict(convert_official_dino_state_dict(official.state_dict()), strict=True)
    detectors = {BASELINE: official, "internimage_hf": ours}
    if args.kernel_dir is not None:
        kernelized = DinoDetrForObjectDetection(DinoDetrConfig()).eval()
        kernelized.load_state_dict(ours.state_dict())
        kernelize(kernelized.model.backbone, local_path=args.kernel_dir)
        detectors["internimage_hf + kernel"] = kernelized
        whole = DinoDetrForObjectDetection(DinoDetrConfig()).eval()
        whole.load_state_dict(ours.state_dict())
        kernelize(whole, local_path=args.kernel_dir)
        detectors["internimage_hf + kernel + attention"] = whole
    return detectors


def padded_input(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    padded = (-(-height // 32) * 32, -(-width // 32) * 32)
    pixels = torch.zeros(1, 3, *padded)
    pixels[:, :, :height, :width] = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, *padded, dtype=torch.long)
    mask[:, :height, :width] = 1
    return pixels, mask


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = args.size
    pixels, mask = padded_input(height, width)
    metas = [{**image_metas([(height, width)])[0], "batch_input_shape": tuple(pixels.shape[-2:])}]
    detectors = build_detectors(args)
    official = detectors[BASELINE]
    calls = {BASELINE: lambda: official.bbox_head(official.extract_feat(pixels), metas)}
    for name, detector in detectors.items():
        if name != BASELINE:
            calls[name] = lambda detector=detector: detector(pixels, pixel_mask=mask)
    with torch.no_grad():
        seconds = median_times(calls, args)
    print(f"DINO InternImage-T forward, {height}x{width} (padded {tuple(pixels.shape[-2:])}), batch 1, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    base = seconds[BASELINE]
    for name, timing in seconds.items():
        print(f"  {name:36s} {timing.wall * 1e3:9.0f} ms wall {timing.user * 1e3:9.0f} ms CPU  {ratio(timing, base)}")


def ratio(timing: Timing, base: Timing) -> str:
    return f"x{timing.wall / base.wall:.2f} wall, x{timing.user / base.user:.2f} CPU of the official"


if __name__ == "__main__":
    main()
