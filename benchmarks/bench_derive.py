"""Benchmark derive_intensity_scale against the memory-read floor and the naive formula.

Prints, for a float32 tensor of about --gib GiB in memory:
- derive time / time of one ``x.sum()`` (the memory-read floor), for the
  native kernel (when built) and the eager kernel it falls back to;
- speed-up over the naive ``sqrt(n / mean(sum(x**2, dim=(-2, -1))))``;
- extra peak memory of each (/proc high-water mark), and of derive's first call in a
  fresh interpreter, where no allocator cache can hide a buffer;
- the relative error of each against a float64 reference summed with ``math.fsum``.

All methods run interleaved, round after round; ratios are medians of per-round ratios.

Run: python benchmarks/bench_derive.py [--gib 0.5] [--repeats 15] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch
from _common import interleaved_seconds, median_ratio, peak_extra_mib

import physscale as ps
from physscale import _native

_FIRST_CALL = """
import sys, torch, physscale as ps
from physscale import _native
sys.path.insert(0, {bench!r})
from _common import peak_extra_mib
if {eager!r}:
    _native.reduce_dense = lambda x, *, square: None
x = torch.rand({n}, 1, {side}, {side})
ps.derive_intensity_scale(x[:1], 1e9)  # import-time and first-dispatch costs out of the way
print(peak_extra_mib(lambda: ps.derive_intensity_scale(x, 1e9)))
"""


def first_call_extra_mib(n_patterns: int, side: int, eager: bool) -> float:
    """Peak extra memory of a first full-size call in a fresh interpreter (nothing recycled)."""
    code = _FIRST_CALL.format(
        bench=str(pathlib.Path(__file__).parent), n=n_patterns, side=side, eager=eager
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def reference_scale(x: torch.Tensor, nphotons: float, n_patterns: int) -> float:
    """sqrt(n / mean sum x**2) from float64 squares: 4 Ki-element row sums, then fsum."""
    rows = []
    for block in x.reshape(-1).split(1 << 22):
        b = block.double().view(-1, 4096)
        rows.extend((b * b).sum(dim=1).tolist())
    return math.sqrt(nphotons / (math.fsum(rows) / n_patterns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gib", type=float, default=0.5, help="input size in GiB (float32)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--side", type=int, default=128, help="pattern side N")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    n_patterns = int(args.gib * 2**30 / 4 / args.side**2)
    torch.manual_seed(0)
    x = torch.rand(n_patterns, 1, args.side, args.side, dtype=torch.float32)
    nphotons = 1e9
    native = _native.available()
    print(f"input: {tuple(x.shape)} float32, {x.numel() * 4 / 2**30:.3f} GiB, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"native kernel {'built' if native else 'NOT built'}")  # fmt: skip

    def eager() -> object:
        with mock.patch.object(_native, "reduce_dense", return_value=None):
            return ps.derive_intensity_scale(x, nphotons)

    methods: dict[str, Callable[[], Any]] = {"floor": lambda: x.sum()}
    if native:
        methods["native"] = lambda: ps.derive_intensity_scale(x, nphotons)
    methods["eager"] = eager
    methods["naive"] = lambda: torch.sqrt(nphotons / torch.mean(torch.sum(x**2, dim=(-2, -1))))
    labels = {
        "floor": "x.sum() (read floor)",
        "native": "derive (native kernel)",
        "eager": "derive (eager kernel)",
        "naive": "naive formula",
    }

    times = interleaved_seconds(methods, args.repeats)
    exact = reference_scale(x, nphotons, n_patterns)
    print(f"\n{'':24}{'median ms':>10}{'x floor':>9}{'naive/it':>10}{'extra MiB':>11}"
          f"{'1st call':>10}{'rel err':>9}")  # fmt: skip
    for name, fn in methods.items():
        t = sorted(times[name])[len(times[name]) // 2]
        floor_ratio = median_ratio(times[name], times["floor"])
        speedup = median_ratio(times["naive"], times[name])
        mem = peak_extra_mib(fn)
        first = (
            f"{first_call_extra_mib(n_patterns, args.side, eager=name == 'eager'):10.1f}"
            if name in ("native", "eager")
            else f"{'':10}"
        )
        err = f"{abs(float(fn()) - exact) / exact:9.1e}" if name != "floor" else f"{'':9}"
        print(f"{labels[name]:24}{t * 1e3:10.1f}{floor_ratio:9.2f}{speedup:10.2f}"
              f"{mem:11.1f}{first}{err}")  # fmt: skip
    best = "native" if native else "eager"
    print(
        f"\nderive_intensity_scale ({best} kernel): "
        f"{median_ratio(times[best], times['floor']):.2f}x the read floor (target <= 1.5x), "
        f"{median_ratio(times['naive'], times[best]):.2f}x faster than naive (target >= 5x)"
    )


if __name__ == "__main__":
    main()
