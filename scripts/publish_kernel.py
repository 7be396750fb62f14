#!/usr/bin/env python
"""Upload built DCNv3 kernel variants to a Hugging Face kernel repo (branch ``v<version>``).

Usage: python scripts/publish_kernel.py BUILD_DIR --repo-id internimage-hf/dcnv3 [--version 1] [--dry-run]

BUILD_DIR is the output of build_kernel.py (it contains ``build/<variant>/``). Hand-rolled builds are not
manylinux_2_28-clean; publish kernel-builder (Nix) builds for a Hub-compliant release.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_TYPE = "kernel"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path, help="directory containing build/<variant>/")
    parser.add_argument("--repo-id", required=True, help="e.g. internimage-hf/dcnv3")
    parser.add_argument("--version", type=int, default=None, help="kernel version (default: from metadata.json)")
    parser.add_argument("--dry-run", action="store_true", help="validate and list what would be uploaded")
    args = parser.parse_args(argv)
    if args.repo_id.count("/") != 1 or not all(args.repo_id.split("/")):
        parser.error(f"--repo-id must look like 'org/name', got {args.repo_id!r}")
    return args


def find_variants(build_dir: Path) -> list[Path]:
    """Variant dirs under ``build_dir/build`` that contain a metadata.json; raises if there are none."""
    root = build_dir / "build"
    variants = sorted(p.parent for p in root.glob("*/metadata.json")) if root.is_dir() else []
    if not variants:
        raise SystemExit(f"error: no build/<variant>/metadata.json under {build_dir}")
    return variants


def kernel_version(variants: list[Path]) -> int:
    versions = {json.loads((v / "metadata.json").read_text())["version"] for v in variants}
    if len(versions) != 1:
        raise SystemExit(f"error: variants disagree on the kernel version: {sorted(versions)}")
    return versions.pop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = find_variants(args.build_dir)
    version = args.version if args.version is not None else kernel_version(variants)
    branch = f"v{version}"
    print(f"{args.repo_id}@{branch}: " + ", ".join(v.name for v in variants))
    if args.dry_run:
        return 0
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(args.repo_id, repo_type=REPO_TYPE, exist_ok=True)
    api.create_branch(args.repo_id, repo_type=REPO_TYPE, branch=branch, exist_ok=True)
    api.upload_folder(
        repo_id=args.repo_id,
        repo_type=REPO_TYPE,
        revision=branch,
        folder_path=str(args.build_dir / "build"),
        path_in_repo="build",
        allow_patterns=[f"{v.name}/**" for v in variants],
        ignore_patterns=["**/__pycache__/**", "**/*.pyc", "**/.obj-*/**"],
        commit_message=f"Upload DCNv3 kernel {branch}: {', '.join(v.name for v in variants)}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
