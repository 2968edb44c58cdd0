"""The benchmarks' timer of one call: milliseconds between CUDA events on the GPU,
``time.perf_counter`` on the CPU."""
from __future__ import annotations

import time

import torch


def time_ms(fn, cuda: bool, sync_first: bool = False) -> float:
    """Milliseconds of one call ``fn()``: on the GPU (``cuda``) between two CUDA events recorded
    around it (after a device synchronize when ``sync_first``), waited for; else wall time."""
    if not cuda:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if sync_first:
        torch.cuda.synchronize()
    begin.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end)
