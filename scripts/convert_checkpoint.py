#!/usr/bin/env python
"""Convert an official InternImage checkpoint into a Hugging Face directory.

    python scripts/convert_checkpoint.py SOURCE OUTPUT_DIR [--preset NAME | --config FILE] [--name RELEASE]
        [--task auto|classification|backbone|upernet] [--verify] [--push_to_hub REPO]

SOURCE is an official classification .pth, an official hub repo directory or an mmdet/mmseg checkpoint; see
`internimage_hf.conversion.cli` for the details and `--help` for every option.
"""

import sys

from internimage_hf.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main())
