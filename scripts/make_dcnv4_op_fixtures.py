#!/usr/bin/env python
"""Write the compact fixture of official DCNv4 op outputs (tests/fixtures/dcnv4_op/official_dcnv4_op.safetensors).

    python scripts/make_dcnv4_op_fixtures.py [--source /path/to/DCNv4-checkout-or-mirror] [--out PATH]

Runs the official DCNv4 CUDA op, unchanged, on the CPU under the CUDA emulation (tools/dcnv4_official.py); the
official code is never copied into this repository, its commit is recorded in the fixture.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import dcnv4_official  # noqa: E402

DEFAULT_OUT = REPO / "tests" / "fixtures" / "dcnv4_op" / "official_dcnv4_op.safetensors"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=None, help=f"DCNv4 checkout or mirror (${dcnv4_official.SOURCE_ENV})"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    print(dcnv4_official.make_op_fixture(args.out, args.source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
