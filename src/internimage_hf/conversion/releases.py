"""The official InternImage and FlashInternImage checkpoints: architecture, head, resolution and published accuracy."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RELEASE_BASE_URL = "https://huggingface.co/OpenGVLab/InternImage/resolve/main/"
FLASH_RELEASE_BASE_URL = "https://huggingface.co/OpenGVLab/DCNv4/resolve/main/"
HUB_BASE_URL = "https://huggingface.co/"


@dataclass(frozen=True)
class Release:
    """One official checkpoint: its architecture, head, resolution and published ImageNet-1k top-1.

    `pth_file` is the file under `base_url`; `hub_repo` the official remote-code repo holding the same
    weights. The hub-only names (``internimage_l_22k_384`` ...) point at the ``.pth`` of the same weights. `family` is
    the model family's `model_type` (FlashInternImage releases have no remote-code repo).
    """

    name: str
    preset: str
    num_classes: int
    image_size: int
    pretraining: str
    top1: float | None
    pth_file: str | None
    hub_repo: str | None
    family: str = "internimage"
    base_url: str = RELEASE_BASE_URL

    @property
    def pth_url(self) -> str | None:
        return self.base_url + self.pth_file if self.pth_file else None

    @property
    def hub_url(self) -> str | None:
        return HUB_BASE_URL + self.hub_repo if self.hub_repo else None

    @property
    def label_set(self) -> str:
        return "ImageNet-1k" if self.num_classes == 1000 else "ImageNet-22k"


def _in1k(name: str, preset: str, size: int, pretraining: str, top1: float) -> Release:
    return Release(name, preset, 1000, size, pretraining, top1, f"{name}.pth", f"OpenGVLab/{name}")


def _in22k(name: str, preset: str, pretraining: str, pth: str, hub: str) -> Release:
    """An ImageNet-22k (21841-class) 384-px checkpoint; `pth`/`hub` are names without the ``internimage_``."""
    return Release(
        name, preset, 21841, 384, pretraining, None, f"internimage_{pth}.pth", f"OpenGVLab/internimage_{hub}"
    )


def _flash(name: str, preset: str, classes: int, size: int, pretraining: str, top1: float | None) -> Release:
    return Release(
        name, preset, classes, size, pretraining, top1, f"{name}.pth", None, "flash_internimage", FLASH_RELEASE_BASE_URL
    )


_IN22K = "ImageNet-22k"
_JOINT = "joint 427M public images -> ImageNet-22k"
# Official README tables (classification/README.md): model, resolution, top-1; 22k names from its
# "ImageNet-22K pretrained" table, which pairs each .pth with the hub repo of the same weights.
RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        _in1k("internimage_t_1k_224", "t", 224, "ImageNet-1k", 83.5),
        _in1k("internimage_s_1k_224", "s", 224, "ImageNet-1k", 84.2),
        _in1k("internimage_b_1k_224", "b", 224, "ImageNet-1k", 84.9),
        _in1k("internimage_l_22kto1k_384", "l", 384, f"{_IN22K} -> ImageNet-1k", 87.7),
        _in1k("internimage_xl_22kto1k_384", "xl", 384, f"{_IN22K} -> ImageNet-1k", 88.0),
        _in1k("internimage_h_22kto1k_640", "h", 640, f"{_JOINT} -> ImageNet-1k", 89.6),
        _in1k("internimage_g_22kto1k_512", "g", 512, f"{_JOINT} -> ImageNet-1k", 90.1),
        _in22k("internimage_l_22k_192to384", "l", _IN22K, "l_22k_192to384", "l_22k_384"),
        _in22k("internimage_xl_22k_192to384", "xl", _IN22K, "xl_22k_192to384", "xl_22k_384"),
        _in22k("internimage_h_jointto22k_384", "h", _JOINT, "h_jointto22k_384", "h_jointto22k_384"),
        _in22k("internimage_g_pretrainto22k_384", "g", _JOINT, "g_pretrainto22k_384", "g_jointto22k_384"),
        # hub repo names of the 22k pre-trained weights (the same weights as the .pth above)
        _in22k("internimage_l_22k_384", "l", _IN22K, "l_22k_192to384", "l_22k_384"),
        _in22k("internimage_xl_22k_384", "xl", _IN22K, "xl_22k_192to384", "xl_22k_384"),
        _in22k("internimage_g_jointto22k_384", "g", _JOINT, "g_pretrainto22k_384", "g_jointto22k_384"),
        # FlashInternImage (OpenGVLab/DCNv4 README, "ImageNet-1K" table); L's 22k pre-training is the `pretrained`
        # of the official L segmentation configs.
        _flash("flash_intern_image_t_1k_224", "t", 1000, 224, "ImageNet-1k", 83.6),
        _flash("flash_intern_image_s_1k_224", "s", 1000, 224, "ImageNet-1k", 84.4),
        _flash("flash_intern_image_b_1k_224", "b", 1000, 224, "ImageNet-1k", 84.9),
        _flash("flash_internimage_l_22kto1k_384", "l", 1000, 384, f"{_IN22K} -> ImageNet-1k", 88.1),
        _flash("flash_intern_image_l_22k_384", "l", 21841, 384, _IN22K, None),
    )
}  # fmt: skip


# Official ADE20K UperNet results (segmentation/README.md): size -> (crop size, mIoU single-scale, multi-scale).
UPERNET_ADE20K: dict[str, tuple[int, float, float]] = {
    "t": (512, 47.9, 48.1),
    "s": (512, 50.1, 50.9),
    "b": (512, 50.8, 51.3),
    "l": (640, 53.9, 54.1),
    "xl": (640, 55.0, 55.3),
    "h": (896, 59.9, 60.3),
}
_MMSEG_NAME = re.compile(r"(?:upernet|mask2former)_(?:flash_)?internimage_(t|s|b|l|xl|h|g)_(\d+)(?:x\d+)?_")
# Dataset words of the official segmentation file names -> `data.labels.segmentation_id2label` sets. A name like
# ``..._cocostuff2ade20k`` names the fine-tuning chain, so the word found last is the model's own dataset.
_DATASET_WORDS = {"ade20k": "ade20k", "cityscapes": "cityscapes", "cocostuff": "coco_stuff"}


class _PthFile:
    """A release published as ``<name>.pth`` under its `base_url`."""

    name: str
    base_url: str

    @property
    def pth_file(self) -> str:
        return f"{self.name}.pth"

    @property
    def pth_url(self) -> str:
        return self.base_url + self.pth_file


@dataclass(frozen=True)
class SegmentationRelease(_PthFile):
    """One official Mask2Former semantic-segmentation checkpoint (segmentation/README.md and its config).

    `miou` is the published (single-scale, multi-scale) validation mIoU in % (multi-scale `None`: only single-scale
    published); `label_set` the `data.labels.segmentation_id2label` set whose names the head's classes are (`None`: no
    shipped names); `test_scale` the official test resize (long side, short side), whole-image inference unless
    `slide` gives the sliding-window crop; `num_queries`/`hidden_dim`/`num_heads` the head's size, checked against the
    weights; `reported_params` the README's parameter count (`None`: not published); `preset` the backbone's size and
    `family` its model family (FlashInternImage releases are under `FLASH_RELEASE_BASE_URL`).
    """

    name: str
    dataset: str
    label_set: str | None
    num_classes: int
    crop_size: int
    miou: tuple[float, float | None] | None
    pretraining: str
    num_queries: int
    hidden_dim: int
    num_heads: int
    test_scale: tuple[int, int]
    reduce_zero_label: bool
    reported_params: str | None
    config: str
    preset: str = "h"
    slide: int | None = None
    family: str = "internimage"
    base_url: str = RELEASE_BASE_URL


_H_BACKBONE = "InternImage-H (joint 427M images -> ImageNet-22k) backbone"
_LARGE_HEAD = dict(num_queries=200, hidden_dim=1024, num_heads=32)  # ADE20K / COCO-Stuff: 1024-d, 32 heads
_BASE_HEAD = dict(num_queries=100, hidden_dim=256, num_heads=8)  # the Mask2Former paper's head
# segmentation/README.md (method, backbone, resolution, mIoU ss/ms, #params, download) and the configs it links
# (num_classes, num_queries, widths, heads, test pipeline, reduce_zero_label, load_from): InternImage-H; then the
# FlashInternImage releases of OpenGVLab/DCNv4 (also in `FLASH_DENSE_RELEASES`, which names their backbones).
MASK2FORMER_RELEASES: dict[str, SegmentationRelease] = {
    r.name: r
    for r in (
        SegmentationRelease(
            "mask2former_internimage_h_896_80k_cocostuff2ade20k", "ADE20K", "ade20k", 150, 896, (62.6, 62.9),
            f"{_H_BACKBONE}; Mask2Former on COCO-Stuff-164K, then ADE20K", **_LARGE_HEAD, test_scale=(3584, 896),
            reduce_zero_label=True, reported_params="1.31B",
            config="ade20k/mask2former_internimage_h_896_80k_cocostuff2ade20k_ss.py",
        ),
        SegmentationRelease(
            "mask2former_internimage_h_1024x1024_80k_mapillary2cityscapes", "Cityscapes", "cityscapes", 19, 1024,
            (86.37, 86.96), f"{_H_BACKBONE}; Mask2Former on Mapillary Vistas, then Cityscapes", **_BASE_HEAD,
            test_scale=(2048, 1024), reduce_zero_label=False, reported_params="1094M", slide=1024,
            config="cityscapes/mask2former_internimage_h_1024x1024_80k_mapillary2cityscapes.py",
        ),
        SegmentationRelease(
            "mask2former_internimage_h_896_80k_cocostuff164k", "COCO-Stuff-164K", "coco_stuff", 171, 896, (52.6, 52.8),
            f"{_H_BACKBONE}; COCO-Stuff-164K", **_LARGE_HEAD, test_scale=(3584, 896), reduce_zero_label=False,
            reported_params="1.31B", config="coco_stuff164k/mask2former_internimage_h_896_80k_cocostuff164k.py",
        ),
        SegmentationRelease(
            "mask2former_internimage_h_512_40k_cocostuff164k_to_10k", "COCO-Stuff-10K", "coco_stuff", 171, 512,
            (59.2, 59.6), f"{_H_BACKBONE}; Mask2Former on COCO-Stuff-164K, then COCO-Stuff-10K", **_LARGE_HEAD,
            test_scale=(2048, 512), reduce_zero_label=True, reported_params="1.28B",
            config="coco_stuff10k/mask2former_internimage_h_512_40k_cocostuff164k_to_10k.py",
        ),
        SegmentationRelease(
            "mask2former_internimage_h_480_40k_pascal_context_59", "Pascal-Context-59", None, 59, 480, (69.7, 70.3),
            f"{_H_BACKBONE}; Pascal-Context-59", **_BASE_HEAD, test_scale=(4096, 520), reduce_zero_label=True,
            reported_params="1.07B", config="pascal_context/mask2former_internimage_h_480_40k_pascal_context_59.py",
        ),
        SegmentationRelease(
            "mask2former_internimage_h_480_40k_nyu", "NYU-Depth-V2", None, 40, 480, (67.1, 68.1),
            f"{_H_BACKBONE}; NYU-Depth-V2", **_BASE_HEAD, test_scale=(640, 480), reduce_zero_label=True,
            reported_params="1.07B", config="nyu_depth_v2/mask2former_internimage_h_480_40k_nyu.py",
        ),
        # Mapillary Vistas with the 19 Cityscapes classes (num_classes=19, validated on Cityscapes val in its
        # config): the pre-training of the Cityscapes model; no mIoU published.
        SegmentationRelease(
            "mask2former_internimage_h_896x896_80k_mapillary", "Mapillary Vistas", "cityscapes", 19, 896, None,
            f"{_H_BACKBONE}; Mapillary Vistas", **_BASE_HEAD, test_scale=(2048, 1024), reduce_zero_label=False,
            reported_params="1094M", slide=896, config="mapillary/mask2former_internimage_h_896x896_80k_mapillary.py",
        ),
        # FlashInternImage on ADE20K (OpenGVLab/DCNv4: README, "ADE20K Semantic Segmentation", Mask2Former rows, which
        # publish the single-scale mIoU only and no parameter count; the configs they link give 150 classes, the
        # queries, a 256-d head with 8 heads in the pixel decoder and the transformer decoder, whole-image testing at
        # img_scale (long, short), reduce_zero_label and the `pretrained` backbone).
        *(
            SegmentationRelease(
                f"mask2former_flash_internimage_{size}_{crop}_160k_ade20k_ss", "ADE20K", "ade20k", 150, crop,
                (miou, None), f"FlashInternImage-{size.upper()} ({pretraining}) backbone; ADE20K", queries, 256, 8,
                test_scale=test_scale, reduce_zero_label=True, reported_params=None,
                config=f"ade20k/mask2former_flash_internimage_{size}_{crop}_160k_ade20k_ss.py", preset=size,
                family="flash_internimage", base_url=FLASH_RELEASE_BASE_URL,
            )
            for size, crop, queries, test_scale, miou, pretraining in (
                ("t", 512, 100, (2048, 512), 51.2, "ImageNet-1k"),
                ("s", 640, 200, (2560, 640), 52.6, "ImageNet-1k"),
                ("b", 640, 200, (2560, 640), 53.4, "ImageNet-1k"),
                ("l", 640, 200, (2560, 640), 56.7, "ImageNet-22k"),
            )
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class DetectionRelease(_PthFile):
    """One official DINO detector (detection/README.md and the config it links).

    `box_ap` is the published COCO val box AP (%) and `reported_params` the README's parameter count (`None`: not
    published); `num_denoising` the config's `num_dn_queries`, `max_detections` its `test_cfg.max_per_img`.
    """

    name: str
    preset: str
    dataset: str
    num_classes: int
    box_ap: float
    reported_params: str | None
    pretraining: str
    num_denoising: int
    max_detections: int
    config: str
    family: str = "internimage"
    base_url: str = RELEASE_BASE_URL


_JOINT_H = "InternImage-H (joint 427M images -> ImageNet-22k) backbone; DINO on Objects365, then COCO"
# detection/README.md, "COCO" table (DINO rows), and the configs it links (num_dn_queries, max_per_img).
DINO_RELEASES: dict[str, DetectionRelease] = {
    r.name: r
    for r in (
        DetectionRelease(
            "dino_4scale_internimage_t_1x_coco", "t", "COCO", 80, 53.9, "49M", "InternImage-T (ImageNet-1k) backbone",
            100, 100, "coco/dino_4scale_internimage_t_1x_coco_layer_wise_lr.py",
        ),
        DetectionRelease(
            "dino_4scale_internimage_l_1x_coco_0.1x_backbone_lr", "l", "COCO", 80, 57.6, "241M",
            "InternImage-L (ImageNet-22k) backbone", 100, 300,
            "coco/dino_4scale_internimage_l_1x_coco_0.1x_backbone_lr.py",
        ),
        DetectionRelease(
            "dino_4scale_internimage_h_objects365_coco", "h", "COCO", 80, 63.4, "1.1B", _JOINT_H, 1000, 300,
            "coco/dino_4scale_internimage_h_objects365_coco_ss.py",
        ),
        DetectionRelease(
            "dino_4scale_internimage_g_objects365_coco", "g", "COCO", 80, 64.2, "3.1B",
            _JOINT_H.replace("InternImage-H", "InternImage-G"), 1000, 300,
            "coco/dino_4scale_internimage_g_objects365_coco_ss.py",
        ),
        # FlashInternImage (OpenGVLab/DCNv4 README "COCO" DINO rows; configs: 100 denoising queries, 300 detections)
        *(
            DetectionRelease(
                f"dino_4scale_flash_internimage_{size}_1x_coco", size, "COCO", 80, box_ap, None,
                f"FlashInternImage-{size.upper()} ({pretraining}) backbone", 100, 300,
                f"coco/dino_4scale_flash_internimage_{size}_1x_coco.py", "flash_internimage", FLASH_RELEASE_BASE_URL,
            )
            for size, box_ap, pretraining in (
                ("t", 54.7, "ImageNet-1k"), ("s", 55.3, "ImageNet-1k"), ("b", 56.0, "ImageNet-1k"),
                ("l", 58.8, "ImageNet-22k"),
            )
        ),
    )
}  # fmt: skip
# The CB-InternImage-H detectors (a composite backbone of two InternImage-H): not converted.
COMPOSITE_BACKBONE_RELEASES = (
    "dino_4scale_cbinternimage_h_objects365_coco",
    "dino_4scale_cbinternimage_h_objects365_lvis",
    "dino_4scale_cbinternimage_h_objects365_openimages",
    "dino_4scale_cbinternimage_h_objects365_voc0712",
)


@dataclass(frozen=True)
class BackboneRelease:
    """An official FlashInternImage detector or segmenter whose backbone (and UperNet/Mask2Former head) converts:
    the OpenGVLab/DCNv4 README's COCO and ADE20K tables (`metric`: its published numbers, as printed there)."""

    name: str
    preset: str
    method: str
    dataset: str
    metric: str
    family: str = "flash_internimage"
    base_url: str = FLASH_RELEASE_BASE_URL

    @property
    def pth_url(self) -> str:
        return f"{self.base_url}{self.name}.pth"


# (name, preset, method, dataset, published metric: COCO box/mask AP, ADE20K mIoU single / multi-scale)
FLASH_DENSE_RELEASES: dict[str, BackboneRelease] = {
    row[0]: BackboneRelease(*row)
    for row in (
        ("mask_rcnn_flash_internimage_t_fpn_1x_coco", "t", "Mask R-CNN", "COCO", "AP 48.0/43.1"),
        ("mask_rcnn_flash_internimage_t_fpn_3x_coco", "t", "Mask R-CNN", "COCO", "AP 49.5/44.0"),
        ("mask_rcnn_flash_internimage_s_fpn_1x_coco", "s", "Mask R-CNN", "COCO", "AP 49.2/44.0"),
        ("mask_rcnn_flash_internimage_s_fpn_3x_coco", "s", "Mask R-CNN", "COCO", "AP 50.5/44.9"),
        ("mask_rcnn_flash_internimage_b_fpn_1x_coco", "b", "Mask R-CNN", "COCO", "AP 50.1/44.5"),
        ("mask_rcnn_flash_internimage_b_fpn_3x_coco", "b", "Mask R-CNN", "COCO", "AP 50.6/45.4"),
        ("cascade_flash_internimage_l_fpn_1x_coco", "l", "Cascade Mask R-CNN", "COCO", "AP 55.6/48.2"),
        ("cascade_flash_internimage_l_fpn_3x_coco", "l", "Cascade Mask R-CNN", "COCO", "AP 56.7/48.9"),
        ("upernet_flash_internimage_t_512_160k_ade20k", "t", "UperNet", "ADE20K", "mIoU 49.3 / 50.3"),
        ("upernet_flash_internimage_s_512_160k_ade20k", "s", "UperNet", "ADE20K", "mIoU 50.6 / 51.6"),
        ("upernet_flash_internimage_b_512_160k_ade20k", "b", "UperNet", "ADE20K", "mIoU 52.0 / 52.6"),
        ("upernet_flash_internimage_l_640_160k_ade20k", "l", "UperNet", "ADE20K", "mIoU 55.6 / 56.0"),
        ("mask2former_flash_internimage_t_512_160k_ade20k_ss", "t", "Mask2Former", "ADE20K", "mIoU 51.2"),
        ("mask2former_flash_internimage_s_640_160k_ade20k_ss", "s", "Mask2Former", "ADE20K", "mIoU 52.6"),
        ("mask2former_flash_internimage_b_640_160k_ade20k_ss", "b", "Mask2Former", "ADE20K", "mIoU 53.4"),
        ("mask2former_flash_internimage_l_640_160k_ade20k_ss", "l", "Mask2Former", "ADE20K", "mIoU 56.7"),
    )
}  # fmt: skip


def _release_key(name: str) -> str:
    return Path(str(name).rstrip("/")).name.removesuffix(".pth").lower()


def find_segmentation_release(name: str | None) -> SegmentationRelease | None:
    """The Mask2Former release called `name` (file stem or file name), else `None`."""
    return MASK2FORMER_RELEASES.get(_release_key(name)) if name else None


def dataset_label_set(name: str) -> str | None:
    """The `data.labels.segmentation_id2label` set an official segmentation file name ends with, if any."""
    stem = _release_key(name)
    found = [(stem.rfind(word), label_set) for word, label_set in _DATASET_WORDS.items() if word in stem]
    return max(found)[1] if found else None


def parse_mmseg_name(name: str) -> tuple[str, int] | None:
    """``upernet_internimage_l_640_160k_ade20k.pth`` (or ``upernet_flash_internimage_...``) -> ("l", 640); cityscapes
    ``512x1024`` gives the short side."""
    match = _MMSEG_NAME.search(Path(name).name)
    return (match.group(1), int(match.group(2))) if match else None


def find_detection_release(name: str | None) -> DetectionRelease | None:
    """The DINO release called `name` (file stem or file name), else `None`."""
    return DINO_RELEASES.get(_release_key(name)) if name else None


def find_dense_release(name: str | None) -> BackboneRelease | None:
    """The FlashInternImage detection/segmentation release called `name` (file stem or file name), else `None`."""
    return FLASH_DENSE_RELEASES.get(_release_key(name)) if name else None


def find_release(name: str | None) -> Release | None:
    """The release called `name` (a file stem, directory name or hub repo id also work), else `None`."""
    return RELEASES.get(_release_key(name)) if name else None


__all__ = [
    "COMPOSITE_BACKBONE_RELEASES",
    "DINO_RELEASES",
    "FLASH_DENSE_RELEASES",
    "BackboneRelease",
    "MASK2FORMER_RELEASES",
    "RELEASES",
    "UPERNET_ADE20K",
    "DetectionRelease",
    "Release",
    "SegmentationRelease",
    "dataset_label_set",
    "find_dense_release",
    "find_detection_release",
    "find_release",
    "find_segmentation_release",
    "parse_mmseg_name",
]
