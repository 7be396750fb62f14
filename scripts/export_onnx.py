#!/usr/bin/env python
"""Export an InternImage or FlashInternImage model to ONNX with dynamic batch, height and width (the dynamo exporter).

    python scripts/export_onnx.py MODEL OUTPUT.onnx [--task classification|base|backbone] [--image-size N]
        [--static] [--torchscript] [--opset N] [--verify] [--overwrite]

MODEL is a checkpoint directory or hub id (`from_pretrained`; the family is read from its config), or `preset:t`
etc. (InternImage) / `preset:flash-t` etc. (FlashInternImage) for a randomly initialised model. `--verify` runs the
file with onnxruntime at 224x224, 256x320 and 32x32, batch 1 and 2, and prints the largest difference from PyTorch.
OUTPUT may not be a directory, an existing file (without `--overwrite`) or a file of the MODEL directory (never).
Needs `pip install onnx onnxruntime onnxscript` (the `dev` extra). All logic lives in `internimage_hf.hub.export`.
"""

import sys

from internimage_hf.hub.export import main

if __name__ == "__main__":
    sys.exit(main())
