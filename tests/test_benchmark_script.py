"""scripts/benchmark.py in --smoke mode: every section runs and prints its rows (speed itself is never asserted)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
MODELS = ("convnext_t", "internimage_t_pytorch", "flash_internimage_t_pytorch")


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
        "training step (forward + backward + AdamW; stochastic depth 0.0 in both), batch 2",
        "torch.compile (eager, frozen weights, static shapes), batch 1",
        "torch.compile (eager, frozen weights, static shapes), batch 2",
        "torch.compile (eager, frozen weights, dynamic batch after batch 1), batch 2",
    ]
    for section in sections[1:]:
        rows = {line.split()[0]: line.split() for line in section.splitlines()[2:] if line.strip()}
        assert set(rows) == set(MODELS), section
        assert "user CPU ms" in section.splitlines()[1]
        assert float(rows["convnext_t"][3]) == pytest.approx(1.0)
        # User CPU time ticks in 10 ms steps, so a smoke call may take none of it.
        assert all(float(row[1]) > 0 and float(row[4]) >= 0 for row in rows.values())
    assert "peak" in sections[1] and "x eager" in sections[-1]


def test_both_models_train_with_the_same_stochastic_depth():
    script = runpy.run_path(str(SCRIPT))
    args = script["parse_args"](["--smoke", "--no-kernel", "--drop-path-rate", "0.3"])
    models = script["build_models"](args, None, "training")
    rates = {name: model.config.drop_path_rate for name, model in models.items()}
    assert rates == dict.fromkeys(MODELS, 0.3)
    # The configs' own defaults differ (0.1 for InternImage-T, 0.0 for ConvNeXt-T): the default run sets both to 0.
    default = script["build_models"](script["parse_args"](["--smoke", "--no-kernel"]), None, "training")
    assert {model.config.drop_path_rate for model in default.values()} == {0.0}
    last_block = default["internimage_t_pytorch"].internimage.encoder.stages[-1].layers[-1]
    assert last_block.drop_path.drop_prob == 0.0


def test_detection_benchmark_imports_and_pads_like_the_official_pipeline():
    """The DINO benchmark needs the official code to run; here: it imports, and its input is mmdet's padded image."""
    module = runpy.run_path(str(SCRIPT.parent / "benchmark_detection.py"), run_name="benchmark_detection")
    pixels, mask = module["padded_input"](800, 1333)
    assert pixels.shape == (1, 3, 800, 1344) and mask.shape == (1, 800, 1344)
    assert mask.sum() == 800 * 1333 and (pixels[..., 1333:] == 0).all()
    with pytest.raises(SystemExit):
        module["parse_args"](["--size", "800"])  # --official is required
