"""How the native kernel's threads meet torch's OpenMP workers (CPU only).

1. CPU time torch's idle OpenMP workers burn while the process sleeps right
   after one parallel op (``x.sum()``): their spin-wait (libgomp's
   ``GOMP_SPINCOUNT``; 0 with ``OMP_WAIT_POLICY=PASSIVE``).
2. The native reduction on 2+ threads, run on torch's own OpenMP team (the
   default) or on new Python threads (0.1's way), each timed right after an
   ``x.sum()`` and after a rest, interleaved; ratios are medians of per-round
   ratios to a rested ``x.sum()``.

Run: python benchmarks/bench_native_threads.py [--gib 0.5] [--rounds 30] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch

from physscale.core.kernels import native as _native


def spin_ms(x: torch.Tensor, rounds: int = 8) -> list[float]:
    """CPU milliseconds the process burns in 100 ms of sleep after each ``x.sum()``."""
    out = []
    for _ in range(rounds):
        x.sum()
        start = time.process_time()
        time.sleep(0.1)
        out.append(round((time.process_time() - start) * 1e3, 2))
    return out


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not _native.available():
        sys.exit("bench_native_threads: the native kernel is not built")
    x = torch.rand(int(args.gib * 2**30 / 4))
    team = _native.openmp_parallel()
    load = os.getloadavg()
    print(f"{x.numel() * 4 / 2**30:.3f} GiB float32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, OpenMP team {'found' if team else 'NOT found'}, "
          f"load average {load[0]:.2f}")  # fmt: skip
    spins = spin_ms(x[: 1 << 24])
    print(f"CPU ms burnt in 100 ms of sleep after an x.sum(): {spins}")

    def on_team() -> object:
        return _native.reduce_dense(x, square=True)

    def on_python_threads() -> object:
        with mock.patch.object(_native, "openmp_parallel", return_value=None):
            return _native.reduce_dense(x, square=True)

    assert on_team() == on_python_threads()  # the same work items, the same bits
    times: dict[str, list[float]] = {
        k: [] for k in ("floor", "team_after_op", "python_after_op", "team_rested", "python_rested")
    }
    for _ in range(args.rounds):
        time.sleep(0.03)
        times["floor"].append(seconds(x.sum))
        x.sum()
        times["team_after_op"].append(seconds(on_team))
        x.sum()
        times["python_after_op"].append(seconds(on_python_threads))
        time.sleep(0.03)
        times["team_rested"].append(seconds(on_team))
        time.sleep(0.03)
        times["python_rested"].append(seconds(on_python_threads))
    floor = times["floor"]
    ratios = {
        k: round(statistics.median(a / b for a, b in zip(v, floor, strict=True)), 3)
        for k, v in times.items()
    }
    for k, v in times.items():
        print(f"{k:18} median {statistics.median(v) * 1e3:7.2f} ms  / rested x.sum() {ratios[k]}")
    print(json.dumps({"benchmark": "native_threads", "spin_cpu_ms": spins, "ratios": ratios,
                      "threads": torch.get_num_threads(), "load_average": load}))  # fmt: skip


if __name__ == "__main__":
    main()
