#!/usr/bin/env python
"""Write tests/fixtures/detection/dino_internimage_t.safetensors by running the official InternImage DINO code.

    bash scripts/make_official_detection_env.sh .venv-official-det
    .venv-official-det/bin/python scripts/make_detection_fixtures.py --official /path/to/InternImage

See `tools/detection_fixtures.py` for what the fixture holds.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from detection_fixtures import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
