"""Host memory of loading big InternImage checkpoints, sharded saving and `device_map` offloading.

Run as ``python -m measure_loading (from `tools/`) '<json>'`` (one fresh process per measurement, so the
resident-set high-water mark belongs to that measurement alone). The JSON names an ``action``:

* ``{"action": "write", "model": "h", "directory": ..., "dtype": "bfloat16", "max_shard_size": "500MB"}``:
  a randomly initialised classifier saved with `save_pretrained` as sharded safetensors;
* ``{"action": "load", "directory": ..., "dtype": "bfloat16"}``: only `from_pretrained`; reports the peak resident
  set above the one after the imports, and the checkpoint's size on disk;
* ``{"action": "offload", "directory": ..., "cpu_memory": "200MB", "offload_folder": ..., "image_size": 64}``:
  `from_pretrained(device_map="auto", max_memory={"cpu": ...}, offload_folder=...)` and a fully loaded copy;
  reports where the modules went and the largest output difference on a small input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SAFETENSORS_INDEX = "model.safetensors.index.json"


def checkpoint_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("*.safetensors"))


def checkpoint_bytes(directory: str | Path) -> int:
    return sum(path.stat().st_size for path in checkpoint_files(directory))


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def write_checkpoint(arguments: dict) -> dict:
    import torch

    from internimage_hf.models.internimage.modeling_internimage import InternImageForImageClassification
    from internimage_hf.training.models import preset_config

    torch.manual_seed(0)
    config = preset_config(arguments["model"], **arguments.get("overrides", {}))
    model = InternImageForImageClassification(config).to(_dtype(arguments.get("dtype", "float32")))
    model.save_pretrained(arguments["directory"], max_shard_size=arguments.get("max_shard_size", "500MB"))
    files = checkpoint_files(arguments["directory"])
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "shards": [path.name for path in files],
        "index": (Path(arguments["directory"]) / SAFETENSORS_INDEX).exists(),
        "checkpoint_bytes": checkpoint_bytes(arguments["directory"]),
    }


def _one_value_per_page(tensor):
    flat = tensor.detach().reshape(-1)
    return flat[:: max(4096 // flat.element_size(), 1)].float()


def load_checkpoint(arguments: dict) -> dict:
    import time

    import torch  # noqa: F401  (imported before the baseline: its libraries are no part of the load)
    from memory_measure import peak_resident_bytes, reset_peak, resident_bytes

    from internimage_hf.models.internimage.modeling_internimage import InternImageForImageClassification

    baseline = resident_bytes()
    reset_peak()
    start = time.perf_counter()
    model = InternImageForImageClassification.from_pretrained(
        arguments["directory"], dtype=_dtype(arguments.get("dtype", "float32"))
    )
    seconds = time.perf_counter() - start
    loaded_peak = peak_resident_bytes() - baseline
    # Transformers may leave weights backed by the memory-mapped files, whose pages only become resident when
    # read: read one value of every 4 KiB page of every weight, so the peak covers a model that is actually usable
    # (without the full-size temporaries a `float().sum()` would add).
    checksum = sum(float(_one_value_per_page(p).sum()) for p in model.parameters())
    peak = peak_resident_bytes() - baseline
    size = checkpoint_bytes(arguments["directory"])
    return {
        "peak_bytes": peak,
        "peak_bytes_before_reading": loaded_peak,
        "checksum": checksum,
        "after_bytes": resident_bytes() - baseline,
        "checkpoint_bytes": size,
        "peak_over_checkpoint": peak / size,
        "seconds": seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def offload_and_compare(arguments: dict) -> dict:
    import torch

    from internimage_hf.models.internimage.modeling_internimage import InternImageForImageClassification

    directory = arguments["directory"]
    offloaded = InternImageForImageClassification.from_pretrained(
        directory,
        device_map="auto",
        max_memory={"cpu": arguments["cpu_memory"]},
        offload_folder=arguments["offload_folder"],
    ).eval()
    full = InternImageForImageClassification.from_pretrained(directory).eval()
    torch.manual_seed(0)
    size = arguments.get("image_size", 64)
    pixel_values = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = full(pixel_values=pixel_values).logits
        actual = offloaded(pixel_values=pixel_values).logits
    placements = sorted({str(device) for device in offloaded.hf_device_map.values()})
    return {
        "hf_device_map": {name: str(device) for name, device in offloaded.hf_device_map.items()},
        "placements": placements,
        "max_abs_difference": (expected - actual).abs().max().item(),
        "offload_files": len(list(Path(arguments["offload_folder"]).iterdir())),
    }


ACTIONS = {"write": write_checkpoint, "load": load_checkpoint, "offload": offload_and_compare}


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    print(json.dumps(ACTIONS[request["action"]](request)))
