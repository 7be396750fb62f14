"""`pipeline("image-segmentation")` on an UperNet with an InternImage backbone returns masks named by the dataset.

The model directories are a converted mmseg checkpoint (`convert_checkpoint`) and a random tiny model saved the way
the converter saves an UperNet: ADE20K `id2label` and the image processor of
`conversion.writing.make_image_processor` (shortest-edge resize, no crop; torchvision backend when installed,
else PIL).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from transformers import UperNetConfig, UperNetForSemanticSegmentation, pipeline

from internimage_hf import InternImageConfig
from internimage_hf.conversion.pipeline import convert_checkpoint
from internimage_hf.conversion.writing import make_image_processor
from internimage_hf.data.labels import segmentation_id2label

IMAGE_SIZE = 64
SKY = 2  # ADE20K class index of "sky"


def save_tiny_ade20k_upernet(directory, channels: int = 16) -> UperNetForSemanticSegmentation:
    """A random tiny UperNet (InternImage backbone) with the 150 ADE20K names, saved with its image processor."""
    id2label = segmentation_id2label("ade20k")
    backbone_config = InternImageConfig(
        channels=channels,
        depths=(1, 1, 1, 1),
        groups=(2, 2, 4, 4),
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = UperNetConfig(
        backbone_config=backbone_config, hidden_size=16, auxiliary_channels=8, num_labels=len(id2label),
        id2label=id2label, label2id={name: i for i, name in id2label.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(config).eval()
    model.save_pretrained(directory)
    make_image_processor(IMAGE_SIZE, center_crop=False).save_pretrained(directory)
    return model


def noise_image(width: int = 90, height: int = 70) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_masks_are_named_and_cover_the_image(tmp_path):
    model = save_tiny_ade20k_upernet(tmp_path)
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    assert type(segmenter.image_processor) is type(make_image_processor(IMAGE_SIZE))
    image = noise_image()
    masks = segmenter(image)
    assert len(masks) > 1

    # The expected class map: the model's logits resized to the image (what the pipeline should have computed).
    with torch.no_grad():
        logits = model(**segmenter.image_processor(image, return_tensors="pt")).logits
    resized = torch.nn.functional.interpolate(logits, size=(70, 90), mode="bilinear", align_corners=False)
    expected = resized[0].argmax(dim=0).numpy()
    names = segmentation_id2label("ade20k")
    assert [m["label"] for m in masks] == [names[int(c)] for c in np.unique(expected)]
    for mask in masks:
        assert mask["mask"].size == image.size and mask["score"] is None
    stacked = np.stack([np.asarray(m["mask"]) // 255 for m in masks])
    assert (stacked.sum(axis=0) == 1).all()  # every pixel in exactly one mask
    class_ids = {name: i for i, name in names.items()}
    for mask, layer in zip(masks, stacked, strict=True):
        assert (layer.astype(bool) == (expected == class_ids[mask["label"]])).all()


def test_converted_ade20k_checkpoint_gives_named_masks(golden_cases, tmp_path):
    """An mmseg UperNet checkpoint named like the official ADE20K releases converts with the ADE20K names.

    Its classifier is biased to "sky" (zero weights), so the pipeline must return exactly one mask, named "sky".
    """
    golden = golden_cases["tiny_t"]
    heads = save_tiny_ade20k_upernet(tmp_path / "heads", golden.model_kwargs["channels"]).state_dict()
    mmseg = {"backbone." + k: v for k, v in golden.state_dict.items() if k.startswith(("patch_embed.", "levels."))}
    for key, value in heads.items():
        if key.startswith(("decode_head.", "auxiliary_head.")):
            mmseg[key.replace(".batch_norm.", ".bn.").replace(".classifier.", ".conv_seg.")] = value
    mmseg["decode_head.conv_seg.weight"].zero_()
    mmseg["decode_head.conv_seg.bias"].zero_()[SKY] = 1.0
    checkpoint = tmp_path / "upernet_internimage_t_512_160k_ade20k.pth"
    torch.save({"state_dict": mmseg}, checkpoint)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(golden.model_kwargs))
    convert_checkpoint(checkpoint, tmp_path / "out", config_file=config, log=lambda message: None)

    segmenter = pipeline("image-segmentation", model=str(tmp_path / "out"))
    assert segmenter.model.config.id2label == segmentation_id2label("ade20k")
    masks = segmenter(noise_image())
    assert [m["label"] for m in masks] == ["sky"]
    assert np.asarray(masks[0]["mask"]).min() == 255
