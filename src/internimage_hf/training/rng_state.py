"""Random-number-generator state of one process, saved as safetensors (no pickle).

Accelerate stores RNG states as a pickle (`random_states_<rank>.pkl`), and loading a pickle can run code that a
checkpoint's author chose. Here the Python, NumPy, torch CPU and CUDA generator states are tensors in
`rng_state_<rank>.safetensors`, with the few scalars of the Python and NumPy states in its JSON metadata.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

_METADATA_KEY = "scalars"


def rng_state_file(directory: Path, process_index: int) -> Path:
    return Path(directory) / f"rng_state_{process_index}.safetensors"


def save_rng_state(directory: Path, process_index: int) -> Path:
    """Write this process's generator states to `rng_state_<process_index>.safetensors`; returns the path."""
    from safetensors.torch import save_file

    python_version, python_words, python_gauss = random.getstate()
    numpy_name, numpy_words, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    tensors = {
        "torch": torch.get_rng_state(),
        # Mersenne-Twister words are uint32; int64 holds them exactly and every torch version can save it.
        "python": torch.tensor(python_words, dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(numpy_words, dtype=np.int64)),
    }
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    scalars = {
        "python": {"version": python_version, "gauss_next": python_gauss},
        "numpy": {"name": numpy_name, "pos": numpy_pos, "has_gauss": numpy_has_gauss, "cached_gaussian": numpy_gauss},
    }
    path = rng_state_file(directory, process_index)
    save_file(tensors, path, metadata={_METADATA_KEY: json.dumps(scalars)})
    return path


def load_rng_state(directory: Path, process_index: int) -> None:
    """Restore the generator states written by `save_rng_state` (raises `OSError`/`ValueError`/`KeyError`)."""
    from safetensors import safe_open

    path = rng_state_file(directory, process_index)
    with safe_open(str(path), framework="pt") as handle:
        scalars = json.loads(handle.metadata()[_METADATA_KEY])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    python = scalars["python"]
    random.setstate((python["version"], tuple(tensors["python"].tolist()), python["gauss_next"]))
    numpy = scalars["numpy"]
    words = tensors["numpy"].numpy().astype(np.uint32)
    np.random.set_state((numpy["name"], words, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(tensors["torch"])
    cuda = sorted((int(key.removeprefix("cuda.")), state) for key, state in tensors.items() if key.startswith("cuda."))
    if cuda and torch.cuda.is_available():  # a checkpoint written on GPU and resumed on CPU restores the CPU states
        torch.cuda.set_rng_state_all([state for _, state in cuda])
