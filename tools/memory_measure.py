"""Measured host memory of processes, for checking `memory_plan` and big-model loading on CPU.

Linux only: reads the resident-set high-water mark (``VmHWM``) of ``/proc/self/status`` and resets it by writing
``5`` to ``/proc/self/clear_refs``. Large tensors are allocated with ``mmap`` (``MALLOC_MMAP_THRESHOLD_`` fixed
by the caller) so freed memory leaves the resident set and the high-water mark follows the live tensor bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# glibc's default mmap threshold grows after large frees, after which freed tensors stay in the heap and the
# resident set no longer shrinks; a fixed threshold keeps every tensor above 64 KiB in its own mapping.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def resident_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_resident_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def reset_peak() -> None:
    """Resets VmHWM to the current resident set (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def measurement_supported() -> bool:
    try:
        reset_peak()
        return peak_resident_bytes() > 0
    except OSError:
        return False


TOOLS_DIR = Path(__file__).resolve().parent


def run_isolated(module: str, arguments: dict, timeout: float = 600) -> dict:
    """Runs ``python -m module '<json arguments>'`` (a module of this `tools/` folder) in a fresh process (own
    allocator state) and returns its JSON."""
    path = os.pathsep.join(filter(None, [str(TOOLS_DIR), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **MALLOC_ENV, "PYTHONPATH": path}
    completed = subprocess.run(
        [sys.executable, "-m", module, json.dumps(arguments)],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"{module} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
