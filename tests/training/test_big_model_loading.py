"""Loading sharded checkpoints within ~1.2x their size, sharded saving and `device_map` offloading (scaled down)."""

from __future__ import annotations

import json

import pytest
from measure_loading import offload_and_compare, write_checkpoint
from memory_measure import measurement_supported, run_isolated

LOADING = "measure_loading"
MIB = 2**20


@pytest.fixture(scope="module")
def sharded_t(tmp_path_factory):
    """InternImage-T (29M parameters, 117 MB in fp32) saved in 30 MB shards."""
    directory = tmp_path_factory.mktemp("t_sharded")
    written = run_isolated(
        LOADING, {"action": "write", "model": "t", "directory": str(directory), "max_shard_size": "30MB"}
    )
    return directory, written


def test_save_pretrained_writes_shards_and_index(sharded_t):
    directory, written = sharded_t
    assert written["index"] and len(written["shards"]) >= 4
    assert written["shards"][0] == f"model-00001-of-{len(written['shards']):05d}.safetensors"
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(written["shards"])
    assert written["checkpoint_bytes"] > 4 * written["parameters"] * 0.99


@pytest.mark.skipif(not measurement_supported(), reason="needs Linux /proc/self/status VmHWM and clear_refs")
def test_loading_peak_stays_near_checkpoint_size(sharded_t):
    directory, written = sharded_t
    loaded = run_isolated(LOADING, {"action": "load", "directory": str(directory)})
    assert loaded["parameters"] == written["parameters"]
    # Every weight was read after loading, so the model itself is resident: at least the checkpoint's size.
    assert loaded["peak_bytes"] >= 0.95 * loaded["checkpoint_bytes"]
    assert loaded["peak_bytes"] <= 1.2 * loaded["checkpoint_bytes"] + 32 * MIB, loaded


def test_device_map_auto_offloads_to_disk_with_equal_outputs(tmp_path):
    checkpoint = tmp_path / "tiny"
    write_checkpoint({"model": "tiny", "directory": str(checkpoint), "max_shard_size": "500KB"})
    result = offload_and_compare(
        {
            "directory": str(checkpoint),
            "cpu_memory": "1MB",
            "offload_folder": str(tmp_path / "offload"),
            "image_size": 64,
        }
    )
    assert result["placements"] == ["cpu", "disk"], result["hf_device_map"]
    assert result["max_abs_difference"] == 0.0
