"""The reference environment imports what the equivalence tests need, with compiled ops refused loudly."""

import pytest

pytest.importorskip("mmengine", reason="reference implementations not installed: bash scripts/make_reference_env.sh")


def test_reference_heads_import_and_compiled_ops_are_refused():
    import sys

    from mmdet.models.layers import MSDeformAttnPixelDecoder  # noqa: F401
    from mmseg.models.decode_heads import FCNHead, UPerHead  # noqa: F401

    with pytest.raises(RuntimeError, match="mmcv compiled op `nms` is not available"):
        sys.modules["mmcv._ext"].nms()
