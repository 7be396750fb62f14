#!/usr/bin/env python
"""Upload built DCNv3 kernel variants to a Hugging Face kernel repo (branch ``v<version>``) and pin the commit.

Usage:
    python scripts/publish_kernel.py BUILD_DIR --repo-id internimage-hf/dcnv3 [--version 1] [--dry-run] [--no-pin]
    python scripts/publish_kernel.py --repo-id internimage-hf/dcnv3 --pin-revision REV   # pin an existing upload

BUILD_DIR is the output of build_kernel.py (it contains ``build/<variant>/``). Hand-rolled builds are not
manylinux_2_28-clean; publish kernel-builder (Nix) builds for a Hub-compliant release, then pin their commit
with ``--pin-revision``.

The pin: the package loads its default hub kernel only at the commit written in
``src/internimage_hf/hub_kernels/dcnv3_kernel_pin.json`` (a branch such as ``v1`` can be moved by anyone who can
push to it). After an upload this script writes the new commit there; commit that file and release the package. A
commit is the only thing pinned; review the uploaded code at that commit before releasing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

# Load the pin module by path: it needs only the standard library, so this CLI does not import the whole
# package (transformers), and it writes the pin file of this checkout, not of an installed copy.
_PATH = Path(__file__).resolve().parents[1] / "src" / "internimage_hf" / "hub_kernels" / "pin.py"
_SPEC = importlib.util.spec_from_file_location("internimage_hf_kernel_pin", _PATH)
kernel_pin = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = kernel_pin  # dataclasses look their module up in sys.modules
_SPEC.loader.exec_module(kernel_pin)

REPO_TYPE = "kernel"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path, nargs="?", help="directory containing build/<variant>/")
    parser.add_argument("--repo-id", required=True, help="e.g. internimage-hf/dcnv3")
    parser.add_argument("--version", type=int, default=None, help="kernel version (default: from metadata.json)")
    parser.add_argument("--dry-run", action="store_true", help="validate and list what would be uploaded")
    parser.add_argument("--no-pin", action="store_true", help="upload only; print how to pin the commit later")
    parser.add_argument("--pin-revision", help="upload nothing: pin this existing revision (resolved to its commit)")
    parser.add_argument("--pin-file", type=Path, default=kernel_pin.PIN_PATH, help="default: the package's pin file")
    args = parser.parse_args(argv)
    if args.repo_id.count("/") != 1 or not all(args.repo_id.split("/")):
        parser.error(f"--repo-id must look like 'org/name', got {args.repo_id!r}")
    if (args.build_dir is None) == (args.pin_revision is None):
        parser.error("pass BUILD_DIR (upload and pin) or --pin-revision (pin an existing upload), not both")
    if args.pin_revision is not None and (args.no_pin or args.dry_run):
        parser.error("--pin-revision only writes the pin: --no-pin and --dry-run do not apply")
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


def upload(api, repo_id: str, build_dir: Path, variants: list[Path], branch: str) -> str:
    """Upload the variants to ``branch`` of the kernel repo; returns the commit id the branch now points at."""
    api.create_repo(repo_id, repo_type=REPO_TYPE, exist_ok=True)
    api.create_branch(repo_id, repo_type=REPO_TYPE, branch=branch, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type=REPO_TYPE,
        revision=branch,
        folder_path=str(build_dir / "build"),
        path_in_repo="build",
        allow_patterns=[f"{v.name}/**" for v in variants],
        ignore_patterns=["**/__pycache__/**", "**/*.pyc", "**/.obj-*/**"],
        commit_message=f"Upload DCNv3 kernel {branch}: {', '.join(v.name for v in variants)}",
    )
    return info.oid


def resolve_commit(api, repo_id: str, revision: str) -> str:
    """The commit id a hub revision (branch, tag or commit) points at now."""
    return api.repo_info(repo_id, repo_type=REPO_TYPE, revision=revision).sha


def how_to_use(repo_id: str, commit: str) -> str:
    return (
        f"to run this commit before a release pins it:\n"
        f'    internimage_hf.kernelize(model, repo_id="{repo_id}", revision="{commit}", trust_remote_code=True)'
    )


def pin(repo_id: str, version: int, commit: str, pin_file: Path) -> None:
    """Write the pin and tell the maintainer what to do with it."""
    path = kernel_pin.write_kernel_pin(kernel_pin.KernelPin(repo_id, version, commit), pin_file)
    print(f"pinned {repo_id}@{commit} (v{version}) in {path}")
    print("commit that file and release the package: `internimage_hf.kernelize(model)` then loads exactly this commit")
    print(how_to_use(repo_id, commit))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from huggingface_hub import HfApi

    if args.pin_revision is not None:
        version = args.version if args.version is not None else kernel_pin.read_kernel_pin(args.pin_file).version
        pin(args.repo_id, version, resolve_commit(HfApi(), args.repo_id, args.pin_revision), args.pin_file)
        return 0
    variants = find_variants(args.build_dir)
    version = args.version if args.version is not None else kernel_version(variants)
    branch = f"v{version}"
    print(f"{args.repo_id}@{branch}: " + ", ".join(v.name for v in variants))
    if args.dry_run:
        print(f"dry run: nothing uploaded; an upload would pin its commit in {args.pin_file}")
        return 0
    commit = upload(HfApi(), args.repo_id, args.build_dir, variants, branch)
    print(f"uploaded {args.repo_id}@{branch} as commit {commit}")
    if args.no_pin:
        print(
            f"not pinned; to pin it: python scripts/publish_kernel.py --repo-id {args.repo_id} --pin-revision {commit}"
        )
        print(how_to_use(args.repo_id, commit))
        return 0
    pin(args.repo_id, version, commit, args.pin_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
