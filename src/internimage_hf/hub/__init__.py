"""Sharing checkpoints: what goes next to the weights and how a model leaves PyTorch.

- `remote_code`: the modeling code and `auto_map` written into a checkpoint, so that it loads with
  ``trust_remote_code=True`` without this package;
- `model_card`: the README.md (front matter and text) of a converted checkpoint, from facts its caller passes;
- `export`: ``torch.export`` programs and ONNX files (``scripts/export_onnx.py``).
"""
