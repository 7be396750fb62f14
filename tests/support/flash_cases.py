"""The FlashInternImage parity fixtures (`tests/fixtures/flash_tiny_*.safetensors`, `tools/flash_parity_fixtures.py`):
official weights, input, official logits and stage outputs, and DCNv4 core calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from parity_fixtures import read_fixture

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
FLASH_NAMES = ("flash_tiny_t", "flash_tiny_s", "flash_tiny_b", "flash_tiny_l", "flash_tiny_h", "flash_tiny_g")
BACKBONE_PREFIXES = ("patch_embed.", "levels.")


@dataclass
class FlashCase:
    """One fixture, with its stage outputs channels-first as our models return them."""

    name: str
    metadata: dict
    state_dict: dict[str, torch.Tensor]
    input: torch.Tensor
    logits: torch.Tensor
    stage_outputs: list[torch.Tensor]
    op_cases: list[tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]]

    @classmethod
    def load(cls, name: str) -> FlashCase:
        tensors, metadata = read_fixture(FIXTURES_DIR / f"{name}.safetensors")
        prefix = "state_dict."
        op_cases = [
            (params, *(tensors[f"op_cases.{j}.{part}"] for part in ("input", "offset_mask", "output")))
            for j, params in enumerate(metadata["op_cases"])
        ]
        return cls(
            name=name,
            metadata=metadata,
            state_dict={k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)},
            input=tensors["input"],
            logits=tensors["logits"],
            stage_outputs=[tensors[f"stage_outputs.{i}"].permute(0, 3, 1, 2) for i in range(4)],
            op_cases=op_cases,
        )

    @property
    def config_kwargs(self) -> dict:
        """The official constructor kwargs as `FlashInternImageConfig` kwargs."""
        kwargs = dict(self.metadata["model_kwargs"])
        kwargs["num_labels"] = kwargs.pop("num_classes")
        return kwargs

    @property
    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict.items() if k.startswith(BACKBONE_PREFIXES)}


def load_flash_cases() -> dict[str, FlashCase]:
    return {name: FlashCase.load(name) for name in FLASH_NAMES}
