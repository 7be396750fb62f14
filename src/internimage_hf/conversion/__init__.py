"""Converting official InternImage checkpoints into this package's Hugging Face format.

The key renames (`keys`, over the model's own `models.internimage.checkpoint_keys` rules) turn whole official state
dicts into this package's names; the rest is the checkpoint converter behind `scripts/convert_checkpoint.py`, one
module per step:

- `releases`: the table of official checkpoints (architecture, classes, resolution, published accuracy), the
  Mask2Former segmentation releases included;
- `mask2former`: the official Mask2Former head's names -> Transformers' Mask2Former, its config from the weights;
- `sources`: reading a ``.pth`` / hub directory / mmdet-mmseg checkpoint safely into official key names;
- `planning`: validating the configuration and deciding the task, labels and image size;
- `building`: checking the weights against the model, building it, and verifying the written result;
- `writing`: the files of a converted directory (weights, config, processor, model card);
- `output_dir`: where they go, so that nothing the converter did not write is ever deleted;
- `pipeline`: `convert_checkpoint`, which runs the steps in order;
- `cli`: the command line of `scripts/convert_checkpoint.py`.

Only the key renames are imported here (``import internimage_hf`` exports `convert_official_state_dict`); the
converter's steps import the modeling code.
"""

from .keys import (
    MMSEG_HEAD_RULES,
    convert_mmseg_head_key,
    convert_mmseg_upernet_state_dict,
    convert_official_backbone_key,
    convert_official_key,
    convert_official_state_dict,
    split_backbone_state_dict,
    strip_ddp_prefix,
)

__all__ = [
    "MMSEG_HEAD_RULES",
    "convert_mmseg_head_key",
    "convert_mmseg_upernet_state_dict",
    "convert_official_backbone_key",
    "convert_official_key",
    "convert_official_state_dict",
    "split_backbone_state_dict",
    "strip_ddp_prefix",
]
