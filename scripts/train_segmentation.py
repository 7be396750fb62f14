"""Fine-tune semantic segmentation (UperNet or Mask2Former) with an InternImage backbone, through Accelerate.

    python scripts/train_segmentation.py    # built-in synthetic task: tiny InternImage + UperNet, ~3 min on CPU
    python scripts/train_segmentation.py --architecture mask2former
    accelerate launch scripts/train_segmentation.py --dataset DIR_OR_HUB_ID --model path/to/internimage --output_dir OUT

All logic lives in `internimage_hf.training.segmentation`; `--help` lists every option.
"""

import sys

from internimage_hf.training.segmentation import main

if __name__ == "__main__":
    sys.exit(main())
