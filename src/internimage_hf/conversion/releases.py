"""The official InternImage checkpoints: architecture, head, resolution and published accuracy of each."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RELEASE_BASE_URL = "https://huggingface.co/OpenGVLab/InternImage/resolve/main/"
HUB_BASE_URL = "https://huggingface.co/"


@dataclass(frozen=True)
class Release:
    """One official checkpoint: its architecture, head, resolution and published ImageNet-1k top-1.

    `pth_file` is the file under `RELEASE_BASE_URL`; `hub_repo` the official remote-code repo holding the same
    weights. The hub-only names (``internimage_l_22k_384`` ...) point at the ``.pth`` of the same weights.
    """

    name: str
    preset: str
    num_classes: int
    image_size: int
    pretraining: str
    top1: float | None
    pth_file: str | None
    hub_repo: str | None

    @property
    def pth_url(self) -> str | None:
        return RELEASE_BASE_URL + self.pth_file if self.pth_file else None

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
_MMSEG_NAME = re.compile(r"upernet_internimage_(t|s|b|l|xl|h|g)_(\d+)(?:x\d+)?_")


def parse_mmseg_name(name: str) -> tuple[str, int] | None:
    """``upernet_internimage_l_640_160k_ade20k.pth`` -> ("l", 640); cityscapes ``512x1024`` gives the short side."""
    match = _MMSEG_NAME.search(Path(name).name)
    return (match.group(1), int(match.group(2))) if match else None


def find_release(name: str | None) -> Release | None:
    """The release called `name` (a file stem, directory name or hub repo id also work), else `None`."""
    if not name:
        return None
    key = Path(str(name).rstrip("/")).name.removesuffix(".pth").lower()
    return RELEASES.get(key)


__all__ = ["RELEASES", "UPERNET_ADE20K", "Release", "find_release", "parse_mmseg_name"]
