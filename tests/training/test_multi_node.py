"""Two "machines" on one host: two `accelerate launch` launchers (`--num_machines 2`, machine ranks 0 and 1, one
CPU gloo process each) train one run together; the result equals a single-process run with the same global batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import TINY_MODEL, make_trainer, requires_accelerate
from test_distributed import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = requires_accelerate
LAUNCH_TIMEOUT_S = 300


def fit_args(imagefolder, output_dir, batch_size: int, *extra: str) -> list[str]:
    """A 3-step run without stochastic depth (its masks are drawn per process, so they would differ)."""
    return [
        "--dataset", str(imagefolder), "--output_dir", str(output_dir), *TINY_MODEL, "--use_cpu",
        "--per_device_train_batch_size", str(batch_size), "--per_device_eval_batch_size", "12",
        "--learning_rate", "3e-3", "--warmup_steps", "1", "--train_crop", "resize", "--drop_path_rate", "0",
        "--max_steps", "3", "--logging_steps", "1", "--num_predictions", "0", *extra,
    ]  # fmt: skip


def node_command(machine_rank: int, port: int, train_args: list[str]) -> list[str]:
    """The `accelerate launch` command of one machine of a 2-machine, 1-process-per-machine CPU run."""
    # `--num_processes` is the total over all machines; `--multi_gpu` selects the torchrun launcher, which the
    # script's `--use_cpu` turns into CPU processes on gloo.
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
        "--machine_rank", str(machine_rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
    ]  # fmt: skip
    return [*launch, str(REPO / "scripts" / "train.py"), *train_args]


def launch_two_machines(train_args: list[str]) -> list[tuple[int, str, str]]:
    """Run both machines' launchers at once; (returncode, stdout, stderr) per machine rank. Launchers that have
    not finished within LAUNCH_TIMEOUT_S are killed with their workers (each launcher leads its own process group),
    so a rendezvous that never completes fails the test instead of hanging it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    port = free_port()
    launchers = [
        subprocess.Popen(
            node_command(rank, port, train_args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )  # fmt: skip
        for rank in range(2)
    ]
    results = []
    try:
        for launcher in launchers:
            stdout, stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT_S)
            results.append((launcher.returncode, stdout, stderr))
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
    return results


def parameters(directory: Path) -> dict:
    """The trained parameters (not buffers) of the model saved in `directory`, loaded with `from_pretrained`."""
    from internimage_hf import InternImageForImageClassification

    model = InternImageForImageClassification.from_pretrained(directory)
    return {name: tensor.detach() for name, tensor in model.named_parameters()}


def test_two_machines_train_one_run_equal_to_one_process(imagefolder, tmp_path):
    two_machines = tmp_path / "two_machines"
    extra = ("--write_replica_checksums", "--save_steps", "2")
    results = launch_two_machines(fit_args(imagefolder, two_machines, 6, *extra))
    for rank, (returncode, _, stderr) in enumerate(results):
        assert returncode == 0, f"machine {rank}:\n{stderr[-4000:]}"
    assert '"global_step": 3' in results[0][1]
    checksums = [(two_machines / f"replica_checksum_{rank}.txt").read_text() for rank in range(2)]
    assert checksums[0] == checksums[1]
    checkpoint = two_machines / "checkpoints" / "step_00000002"
    assert sorted(p.name for p in checkpoint.glob("rng_state_*")) == [f"rng_state_{r}.safetensors" for r in (0, 1)]

    # Same global batch of 12 on one process: 2 micro-batches of 6 accumulated. The head's BatchNorm normalises
    # each process's (micro-)batch on its own, so the micro-batch must match the per-process batch for equal
    # gradients; its running statistics (buffers) differ (DDP keeps rank 0's), hence parameters only.
    one_process = tmp_path / "one_process"
    trainer = make_trainer(fit_args(imagefolder, one_process, 6, "--gradient_accumulation_steps", "2"))
    initial = {
        name: p.detach().clone() for name, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
    }
    trainer.run()
    expected, got = parameters(one_process), parameters(two_machines)
    assert expected.keys() == got.keys()
    worst = max((expected[name] - got[name]).abs().max().item() for name in expected)
    assert worst <= 1e-5, worst
    # Training moved the weights, so the comparison is not between two untouched initialisations.
    assert max((initial[name] - got[name]).abs().max().item() for name in got) > 1e-3
