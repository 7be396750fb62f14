"""DINO, the detector of InternImage's COCO record, named as in ``transformers.models``: `configuration_dino_detr`
and `modeling_dino_detr` (InternImage backbone by default, any `AutoBackbone` through `backbone_config`). The official
checkpoints' key names are read by `internimage_hf.conversion.dino_detr`."""
