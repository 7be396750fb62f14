#!/usr/bin/env bash
# Download the wheels that scripts/gpu_check.sh installs on the GPU machine (no network there) into .whl/.
# The GPU image has Python 3.12, torch 2.11+cu130, transformers, huggingface_hub, hypothesis, pyyaml,
# packaging, pytest and safetensors already; it lacks `kernels`.
# Run from the repository root; .whl/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude 2>/dev/null || true

download() {
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 \
    --platform any -d .whl "$@"
}

# kernels 0.17.2 (an abi3 Rust extension). Its import needs only huggingface_hub, packaging and pyyaml (all
# in the image); sigstore/tomlkit are used by the `kernels` CLI alone and are not needed by the tests.
download kernels==0.17.2
# hypothesis is in the image too, but pin the version the tests were written against (pure Python; its
# dependencies attrs and sortedcontainers are in the image).
download hypothesis==6.170.17
# ninja: torch.utils.cpp_extension needs it to build the official DCNv3 op when OFFICIAL_DCNV3_SRC is given.
download ninja
ls -la .whl
du -sh .whl
