"""scripts/gpu_check.sh and its benchmark in --smoke mode (the CPU run of the GPU check's plumbing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.cuda_host
def test_gpu_check_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--smoke"], cwd=REPO, env=env, capture_output=True, text=True
    )
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stderr[-2000:]
    assert "build: rc=0" in summary and "tests: rc=0" in summary and "bench rc=0" in summary
    # The DCNv4 op and model benchmarks: every stage's ratio, every kernelized model's row.
    assert "dcnv4_bench: rc=0" in summary and "model_bench: rc=0" in summary
    dcnv4_rows = json.loads((tmp_path / "out" / "dcnv4.json").read_text())["rows"]
    assert [row["size"] for row in dcnv4_rows] == [56, 28, 14, 7]
    assert all(row["dcnv4_fwd_speedup"] > 0 for row in dcnv4_rows)
    for model in ("convnext_t", "internimage_t_kernel", "flash_internimage_t_kernel"):
        assert model in summary, model
    rows = [r for r in _rows(tmp_path / "out" / "bench.jsonl") if "impl" in r]
    # 3 dtypes x 4 stages x {pytorch, kernel} x {fwd, fwd+bwd}, every one timed
    assert len(rows) == 48 and all(r["ms"] > 0 and r["fraction_of_copy"] > 0 for r in rows)
    diffs = [r["max_abs_diff_vs_pytorch"] for r in rows if r["impl"] == "kernel" and r["pass"] == "fwd"]
    fp32 = [
        r["max_abs_diff_vs_pytorch"]
        for r in rows
        if r["impl"] == "kernel" and r["dtype"] == "float32" and r["pass"] == "fwd"
    ]
    assert len(diffs) == 12 and max(fp32) < 1e-4


def test_benchmark_stops_cleanly_when_the_budget_is_spent(tmp_path):
    summary = tmp_path / "bench.jsonl"
    cmd = [sys.executable, "scripts/benchmark_dcnv3_gpu.py", "--smoke", "--budget-s", "0", "--summary", str(summary)]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _rows(summary)
    assert "copy_gbps" in rows[0] and rows[-1] == {"budget_exhausted": True, "skipped_cases": 12}
