#!/usr/bin/env bash
# Build the environment that runs the official InternImage detection code (mmdet 2.28 + mmcv 1.7) on CPU, to write
# the DINO parity fixture (scripts/make_detection_fixtures.py). Test-only; never needed to use the package.
#   bash scripts/make_official_detection_env.sh [DIR]     (default .venv-official-det)
# mmcv 1.7.2 is built without its compiled ops (MMCV_WITH_OPS=0); its setup.py needs pkg_resources, hence an older
# setuptools and no build isolation. tools/mmcv_ext_standin.py stands in for the missing extension at import time.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.venv-official-det}
PY=${PYTHON:-python3}
rm -rf "$dir"
"$PY" -m venv "$dir"
"$dir/bin/pip" install -q torch==2.13.0 "numpy<2" "setuptools<70" wheel
MMCV_WITH_OPS=0 "$dir/bin/pip" install -q --no-build-isolation mmcv==1.7.2
"$dir/bin/pip" install -q mmdet==2.28.2 timm==0.9.16 scipy pycocotools terminaltables safetensors
"$dir/bin/python" -c "import mmcv, mmdet, torch; print('official detection env', '$dir', mmcv.__version__, mmdet.__version__, torch.__version__)"
