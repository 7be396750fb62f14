"""Two-process CPU data parallelism through `accelerate launch` (gloo): both replicas end identical."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import requires_accelerate, run_args

REPO = Path(__file__).resolve().parents[2]
pytestmark = requires_accelerate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(script: str, args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch` of `scripts/<script>` on two CPU processes, each writing its weights' checksum."""
    # `--multi_gpu` selects torchrun-style launching; `--use_cpu` makes Accelerate use gloo on CPU.
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
    ]  # fmt: skip
    train = [str(REPO / "scripts" / script), "--use_cpu", "--write_replica_checksums"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(launch + train + args, capture_output=True, text=True, env=env, timeout=300)


def test_two_process_cpu_ddp_keeps_replicas_identical(imagefolder, tmp_path):
    extra = ("--max_steps", "4", "--drop_path_rate", "0.1", "--ema_decay", "0.9")
    completed = launch_two_processes("train.py", run_args(imagefolder, tmp_path, *extra))
    assert completed.returncode == 0, completed.stderr[-4000:]
    checksums = [(tmp_path / f"replica_checksum_{rank}.txt").read_text() for rank in range(2)]
    assert checksums[0] == checksums[1]
    # 24 images, 6 per process and batch, 2 processes: 2 steps per epoch, so 4 steps are 2 epochs.
    assert '"epoch": 2.0' in completed.stdout
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "online_model" / "model.safetensors").is_file()
