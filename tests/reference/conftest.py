"""Tests against the reference implementations (mmsegmentation, mmdet), run in the environment that
`scripts/make_reference_env.sh` builds; elsewhere each module skips with `REFERENCE_MISSING`."""

import importlib.util

import mmcv_ext_standin  # tools/, on sys.path from tests/conftest.py

if importlib.util.find_spec("mmcv") is not None:
    mmcv_ext_standin.install()
