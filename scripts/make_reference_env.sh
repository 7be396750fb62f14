#!/usr/bin/env bash
# Build the test-only environment with the reference segmentation implementations (mmsegmentation, mmdet) that
# tests/reference/ compares our converted Transformers heads against. Never needed to use the package.
#   bash scripts/make_reference_env.sh [DIR]      (default .venv-ref)
#   DIR/bin/python -m pytest tests/reference
# mmcv-lite is mmcv without its compiled ops; 2.1.0 because mmdet 3.3.0 and mmseg 1.2.2 refuse mmcv >= 2.2.
# tools/mmcv_ext_standin.py stands in for the compiled extension at import time.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.venv-ref}
PY=${PYTHON:-python3}
rm -rf "$dir"
"$PY" -m venv "$dir"
"$dir/bin/pip" install -q torch==2.13.0 -e . "transformers>=5.23,<6" "pytest>=8" "hypothesis>=6" scipy \
  mmengine==0.10.7 mmcv-lite==2.1.0 mmsegmentation==1.2.2 mmdet==3.3.0 ftfy regex 2>&1 | grep -v "^WARNING: Location" || true
"$dir/bin/python" -c "import mmseg, mmdet, internimage_hf; print('reference env', '$dir', mmseg.__version__, mmdet.__version__)"
