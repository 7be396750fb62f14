"""The command line of ``scripts/convert_checkpoint.py``: official InternImage checkpoints -> Hugging Face format.

Sources (detected automatically):

- an official classification ``.pth`` (weights under ``"model"``), read with ``torch.load(weights_only=True)``;
- an official hub repo directory (remote-code format: ``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``, weights named ``"model." + official key`` with ``gamma`` -> ``layer_scale``);
- an mmdet / mmseg checkpoint (``"state_dict"``, backbone under ``backbone.``, optional ``module.`` prefix).
  With an UperNet decode head it becomes a `transformers.UperNetForSemanticSegmentation`, with the official
  repo's Mask2Former head a `transformers.Mask2FormerForUniversalSegmentation` (`conversion.mask2former`);
  otherwise only the backbone is converted (an `InternImageBackbone` checkpoint).

The output directory holds ``config.json`` (with ImageNet class names for 1000/21841-class heads, ADE20K /
Cityscapes / COCO-Stuff names for segmentation heads of those datasets),
``model.safetensors``, ``preprocessor_config.json`` and a model card ``README.md``; with ``--push_to_hub`` (or
``--remote_code``) also the modeling code and ``auto_map`` (`internimage_hf.hub.remote_code`), so that it loads
with ``trust_remote_code=True`` without ``internimage_hf``. The steps live in the other modules of
`internimage_hf.conversion` (the API: `conversion.pipeline.convert_checkpoint` and `conversion.pipeline.push_to_hub`).
"""

from __future__ import annotations

import argparse
import sys

from ..models.internimage.configuration_internimage import PRESETS
from .errors import ConversionError
from .pipeline import convert_checkpoint, push_to_hub
from .planning import TASKS
from .releases import RELEASES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_checkpoint.py",
        description="Convert an official InternImage checkpoint (.pth, official hub directory, or mmdet/mmseg "
        "checkpoint: UperNet, Mask2Former, or any detector's backbone) into a Hugging Face directory loadable with "
        "the Auto classes after `import internimage_hf`.",
        epilog=f"Known release names: {', '.join(sorted(RELEASES))}.",
    )
    parser.add_argument("source", help="official .pth/.bin/.safetensors file or official hub repo directory")
    parser.add_argument("output_dir", help="directory to create (must not exist unless --overwrite)")
    arch = parser.add_mutually_exclusive_group()
    arch.add_argument("--preset", help=f"model size: {', '.join(PRESETS)}")
    arch.add_argument("--config", dest="config_file", help="official-style config.json (official field names)")
    parser.add_argument(
        "--name", help="release name, classification or Mask2Former (default: the source's file name if known)"
    )
    parser.add_argument("--task", default="auto", choices=("auto", *TASKS), help="what to convert (default: auto)")
    parser.add_argument("--image_size", "--image-size", type=int, help="override the processor resolution")
    parser.add_argument("--verify", action="store_true", help="reload the output and compare with the source")
    parser.add_argument("--verify_size", "--verify-size", type=int, help="input size for --verify (default 224)")
    parser.add_argument("--push_to_hub", "--push-to-hub", metavar="REPO", help="upload the result to this repo")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    code = parser.add_mutually_exclusive_group()
    code.add_argument(
        "--remote_code",
        "--remote-code",
        action="store_true",
        default=None,
        help="also write the modeling code and auto_map, so the output loads with trust_remote_code=True where "
        "internimage_hf is not installed (default: on with --push_to_hub)",
    )
    code.add_argument(
        "--no_remote_code",
        "--no-remote-code",
        dest="remote_code",
        action="store_false",
        help="upload with --push_to_hub without the modeling code (loading then needs internimage_hf)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT_DIR if it holds a previous conversion (and nothing else)",
    )
    return parser


def main(argv: list[str] | None = None, api=None) -> int:
    """CLI entry point; returns the process exit code (2 for a conversion error, printed as one line)."""
    args = build_parser().parse_args(argv)
    try:
        result = convert_checkpoint(
            args.source, args.output_dir, name=args.name, preset=args.preset, config_file=args.config_file,
            task=args.task, image_size=args.image_size, verify=args.verify, verify_size=args.verify_size,
            repo_id=args.push_to_hub, remote_code=args.remote_code, overwrite=args.overwrite,
        )  # fmt: skip
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.push_to_hub:
        url = push_to_hub(result.output_dir, args.push_to_hub, private=args.private, api=api)
        print(f"uploaded to {args.push_to_hub}: {url}")
    return 0


__all__ = ["build_parser", "main"]
