"""How many intra-op threads CPU training uses.

Every operator of a small model on small images opens an OpenMP parallel region whose threads wait for each other
at its end. On an idle machine that costs little; when another CPU-bound process takes a core, one of the threads
is preempted and every region waits for its next time slice, so the built-in digits run took 30x longer with one
competing process on a 2-core machine. Single-threaded, the same run is about as fast idle and degrades gracefully
under load. Larger work per step (more pixels per batch) amortises the regions, and all cores pay off.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

# Pixels per micro-batch below which one thread is chosen: one 224x224 image. The digits run (32 x 32x32) is 0.65
# of it; InternImage-T at 224 px and batch 8 is 8 times it.
SMALL_STEP_PIXELS = 224 * 224
AUTO = 0


def choose_cpu_threads(requested: int, batch_size: int, image_size: int) -> int | None:
    """Intra-op threads for CPU training: `requested` when positive; for `AUTO` one thread for small steps
    (fewer than `SMALL_STEP_PIXELS` pixels per micro-batch), else None (keep torch's default, all cores).

    An explicit ``OMP_NUM_THREADS`` in the environment wins over `AUTO`: the user already chose.
    """
    if requested < 0:
        raise ValueError(f"`cpu_threads` must be >= 0 (0: automatic), got {requested}")
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return 1 if batch_size * image_size * image_size < SMALL_STEP_PIXELS else None


def apply_cpu_threads(requested: int, batch_size: int, image_size: int, device: torch.device) -> int:
    """Set torch's intra-op threads for training on `device` (CPU only) and return the count in use."""
    if device.type == "cpu":
        threads = choose_cpu_threads(requested, batch_size, image_size)
        if threads is not None and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            logger.info(
                "CPU training with %d intra-op thread(s) (%s)",
                threads,
                "--cpu_threads" if requested else f"small steps: {batch_size} images of {image_size}px",
            )
    return torch.get_num_threads()
