"""Measurement helpers shared by the benchmark scripts."""

from __future__ import annotations

from collections.abc import Callable

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
