"""scripts/benchmark.py in --smoke mode: every section runs and prints its rows (speed itself is never asserted)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
MODELS = ("convnext_t", "internimage_t_pytorch")


def test_smoke_run_prints_forward_training_and_compiled_rows(capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["--smoke", "--no-kernel", "--image-size", "32", "--batch", "1", "2", "--train-batch", "2",
          "--iters", "1", "--rounds", "1", "--warmup", "0", "--compile-backend", "eager"])  # fmt: skip
    out = capsys.readouterr().out
    sections = re.split(r"\n(?=\S.*, batch \d+\n)", out)
    titles = [section.splitlines()[0] for section in sections[1:]]
    assert titles == [
        "forward (eager), batch 1",
        "forward (eager), batch 2",
        "training step (forward + backward + AdamW), batch 2",
        "torch.compile (eager, frozen weights, static shapes), batch 1",
        "torch.compile (eager, frozen weights, static shapes), batch 2",
        "torch.compile (eager, frozen weights, dynamic batch after batch 1), batch 2",
    ]
    for section in sections[1:]:
        rows = {line.split()[0]: line.split() for line in section.splitlines()[2:] if line.strip()}
        assert set(rows) == set(MODELS), section
        assert float(rows["convnext_t"][3]) == pytest.approx(1.0)
        assert all(float(row[1]) > 0 for row in rows.values())
    assert "peak" in sections[1] and "x eager" in sections[-1]
