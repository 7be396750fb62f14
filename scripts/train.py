"""Train or fine-tune InternImage with Accelerate.

    python scripts/train.py                       # built-in digits demo: tiny InternImage, ~2 min on CPU
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml scripts/train.py --dataset DIR_OR_HUB_ID ...

All logic lives in `internimage_hf.training`; `--help` lists every option.
"""

import sys

from internimage_hf.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
