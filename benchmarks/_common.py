"""Shared helpers for the benchmark scripts: medians of repeats, peak extra memory."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved_seconds(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Per-round wall times of each of ``fns``, run interleaved in a rotating order.

    Interleaving exposes every method to the same background noise, so the
    per-round ratios are steadier than ratios of separately timed medians.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios ``num[i] / den[i]``."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn: Callable[[], Any]) -> float:
    """Peak resident memory ``fn()`` adds, in MiB, above the RSS before the call.

    Resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``)
    first, so earlier allocations do not count. Linux only. (A forked child
    would be simpler but deadlocks torch's OpenMP thread pool.)
    """
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024.0


def synchronized(fns: dict[str, Callable[[], Any]], device: str) -> dict[str, Callable[[], Any]]:
    """``fns`` wrapped to wait for the device at the end of each call (CUDA is asynchronous).

    Pass the result to :func:`interleaved_seconds`: each timed call then covers the
    kernels it launched, not only their launch. On the CPU the functions are unchanged.
    """
    if not device.startswith("cuda"):
        return dict(fns)
    import torch

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            out = fn()
            torch.cuda.synchronize()
            return out

        return call

    return {name: wrap(fn) for name, fn in fns.items()}


def shuffled_seconds(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, seed: int = 0
) -> dict[str, list[float]]:
    """Like :func:`interleaved_seconds`, with a fresh random order every round.

    A rotating order keeps each method's predecessor fixed (method i always runs
    right after method i - 1, whose cache and allocator state it inherits); a
    random order varies the neighbours too, so that state averages out.
    """
    import random

    rng = random.Random(seed)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times
