"""Predict the per-device peak memory of training an InternImage preset before launching it.

    python scripts/plan_memory.py --model h --image_size 640 --batch_size 16 --precision bf16 \
        --sharding fsdp --gradient_checkpointing --num_devices 8 64 --device_gib 80

Activations are calibrated by two small CPU forwards (one block per stage); see
`internimage_hf.training.memory_plan` for what the prediction includes and leaves out.
"""

from __future__ import annotations

import argparse

from internimage_hf.training.memory_plan import (
    PRECISIONS,
    SHARDINGS,
    default_autocast_policy,
    measure_activation_profile,
    plan_memory,
)
from internimage_hf.training.models import preset_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="t", help="preset: tiny, t, s, b, l, xl, h, g")
    parser.add_argument("--image_size", type=int, default=None, help="default: the preset's size")
    parser.add_argument("--batch_size", type=int, required=True, help="per device")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16")
    parser.add_argument("--sharding", choices=SHARDINGS, default="ddp")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--num_devices", type=int, nargs="+", default=[1])
    parser.add_argument("--num_labels", type=int, default=1000)
    parser.add_argument("--device_gib", type=float, default=80.0, help="device memory to check the peak against")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    config = preset_config(args.model, num_labels=args.num_labels)
    image_size = args.image_size or config.image_size
    profile = measure_activation_profile(config, args.precision, default_autocast_policy(args.sharding))
    print(f"InternImage-{args.model.upper()} {image_size}px, batch {args.batch_size}/device, {args.precision}, "
          f"{args.sharding}, checkpointing {'on' if args.gradient_checkpointing else 'off'}")  # fmt: skip
    for devices in args.num_devices:
        plan = plan_memory(
            config, image_size, args.batch_size, args.precision, args.sharding, args.gradient_checkpointing,
            devices, profile=profile,
        )  # fmt: skip
        parts = ", ".join(f"{name} {value:.1f}" for name, value in plan.gib().items() if name != "peak")
        verdict = "fits" if plan.fits(args.device_gib) else "does NOT fit"
        print(f"  {devices} devices: peak {plan.gib()['peak']:.1f} GiB ({verdict} in {args.device_gib:g} GiB); "
              f"{plan.parameters / 1e9:.3f}B parameters; GiB: {parts}")  # fmt: skip


if __name__ == "__main__":
    main()
