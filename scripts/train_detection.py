"""Fine-tune the DINO detector with an InternImage backbone, through Accelerate.

    python scripts/train_detection.py    # built-in synthetic task: tiny InternImage DINO, a few minutes on CPU
    accelerate launch scripts/train_detection.py --dataset HUB_ID_OR_DIR --model path/to/internimage --output_dir OUT
    accelerate launch scripts/train_detection.py --coco_train_json train.json --coco_train_images train/ \\
        --coco_eval_json val.json --coco_eval_images val/ --model path/to/dino --output_dir OUT

All logic lives in `internimage_hf.training.detection`; `--help` lists every option.
"""

import sys

from internimage_hf.training.detection import main

if __name__ == "__main__":
    sys.exit(main())
