"""Measurement helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import torch


def peak_memory_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak bytes that torch allocates above the starting point during one call of `fn`.

    CUDA reads the caching allocator's statistics. The CPU has no such counter, so the allocation and free
    events recorded by `torch.profiler` are replayed in time order.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timing(NamedTuple):
    """Seconds of one call: wall clock, and user CPU time of the whole process (all threads)."""

    wall: float
    user: float


def timed(fn: Callable[[], object], device: str) -> Timing:
    start, user = time.perf_counter(), os.times().user
    fn()
    synchronize(device)
    return Timing(time.perf_counter() - start, os.times().user - user)


def median_times(calls: dict[str, Callable[[], object]], args) -> dict[str, Timing]:
    """Median wall and user CPU seconds per call of each entry; each runs `iters` calls back to back (its steady
    state) and the entries take turns over `rounds`, so drifts in machine load hit them alike. User CPU time does not
    count waiting (page faults served from disk, another process holding a core), which wall time does."""
    times = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            for _ in range(args.warmup):
                call()
            times[name] += [timed(call, args.device) for _ in range(args.iters)]
    return {
        name: Timing(statistics.median(t.wall for t in values), statistics.median(t.user for t in values))
        for name, values in times.items()
    }
