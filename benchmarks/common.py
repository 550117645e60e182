"""What every benchmark module shares: the Case record, timing and peak-memory measurement.

A benchmark module ``benchmarks/bench_<family>.py`` exposes ``cases(device) -> list[Case]``.
``benchmarks/run.py`` measures every case's ``ours`` and ``eager`` in the same run and writes
the markdown table; ``benchmarks/test_bench.py`` runs the same cases under pytest-benchmark.
"""

from __future__ import annotations

import gc
import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Case:
    """One benchmark row: ``ours`` and ``eager`` both take the dict that ``setup`` builds.

    op: the op's name. shape: a human description of the shape ("N=2048 H=512 V=151936").
    eager: the authors' release's way of computing the same thing, in eager PyTorch.
    """

    op: str
    shape: str
    setup: Callable[[], dict[str, Any]]
    ours: Callable[[dict[str, Any]], Any]
    eager: Callable[[dict[str, Any]], Any]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], Any], device: str, *, warmup: int = 2, reps: int = 7) -> float:
    """Median wall time of ``fn()`` in milliseconds, device-synchronised."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_bytes(fn: Callable[[], Any], device: str) -> int:
    """Peak memory ``fn()`` allocates beyond what is alive before it.

    CUDA: torch.cuda.max_memory_allocated. CPU: the resident set sampled every 0.5 ms by a
    thread while ``fn`` runs (torch ops release the GIL), minus the resident set before."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _rss_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, _rss_bytes()) - before
