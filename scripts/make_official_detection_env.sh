#!/usr/bin/env bash
# Build the environment that runs the official InternImage detection code (mmdet 2.28 + mmcv 1.7) on CPU, to write
# the DINO parity fixture (scripts/make_detection_fixtures.py) and run scripts/benchmark_detection.py. Test-only;
# never needed to use the package.
#   bash scripts/make_official_detection_env.sh [DIR]     (default .venv-official-det)
# torch 2.14.1 + torchvision 0.29.1 (the CUDA 13.0 builds, which run on CPU): timm and mmcv import torchvision, and
# PyPI's torchvision does not import beside a CPU build of torch. mmcv 1.7.2 is built without its compiled ops
# (MMCV_WITH_OPS=0); its setup.py needs pkg_resources, hence an older setuptools and no build isolation.
# tools/mmcv_ext_standin.py stands in for the missing extension at import time. numpy stays below 2 for mmcv 1.x.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.venv-official-det}
PY=${PYTHON:-python3}
rm -rf "$dir"
"$PY" -m venv "$dir"
"$dir/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 "numpy<2" wheel
# mmcv's setup.py only: torch wants setuptools >= 77 back afterwards (pip warns about the conflict in between)
"$dir/bin/pip" install -q "setuptools<70" 2>&1 | grep -v "dependency conflicts\|requires setuptools" || true
MMCV_WITH_OPS=0 "$dir/bin/pip" install -q --no-cache-dir --no-build-isolation mmcv==1.7.2 "numpy<2"
"$dir/bin/pip" install -q "setuptools>=77"
"$dir/bin/pip" install -q mmdet==2.28.2 timm==0.9.16 scipy pycocotools terminaltables safetensors "numpy<2"
"$dir/bin/python" -c "import mmcv, mmdet, torch, numpy; print('official detection env', '$dir', mmcv.__version__, mmdet.__version__, torch.__version__, numpy.__version__)"
