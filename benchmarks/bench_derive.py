"""Benchmark derive_intensity_scale against the memory-read floor and the naive formula.

Prints, for a float32 tensor of about --gib GiB in memory:
- derive time / time of one ``x.sum()`` (the memory-read floor);
- speed-up over the naive ``sqrt(n / mean(sum(x**2, dim=(-2, -1))))``;
- extra peak memory of each (/proc high-water mark), and of derive's first call in a
  fresh interpreter, where no allocator cache can hide its buffer;
- the relative error of each against an exactly rounded float64 sum.

Run: python benchmarks/bench_derive.py [--gib 0.5] [--repeats 9]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys

import torch
from _common import median_seconds, peak_extra_mib

import physscale as ps

_FIRST_CALL = """
import sys, torch, physscale as ps
sys.path.insert(0, {bench!r})
from _common import peak_extra_mib
x = torch.rand({n}, 1, {side}, {side})
ps.derive_intensity_scale(x[:1], 1e9)  # import-time and first-dispatch costs out of the way
print(peak_extra_mib(lambda: ps.derive_intensity_scale(x, 1e9)))
"""


def first_call_extra_mib(n_patterns: int, side: int) -> float:
    """Peak extra memory of a first full-size call in a fresh interpreter (nothing recycled)."""
    import pathlib

    code = _FIRST_CALL.format(bench=str(pathlib.Path(__file__).parent), n=n_patterns, side=side)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gib", type=float, default=0.5, help="input size in GiB (float32)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--side", type=int, default=128, help="pattern side N")
    args = parser.parse_args()

    n_patterns = int(args.gib * 2**30 / 4 / args.side**2)
    torch.manual_seed(0)
    x = torch.rand(n_patterns, 1, args.side, args.side, dtype=torch.float32)
    nphotons = 1e9
    print(f"input: {tuple(x.shape)} float32, {x.numel() * 4 / 2**30:.3f} GiB, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip

    def floor() -> object:
        return x.sum()

    def derive() -> object:
        return ps.derive_intensity_scale(x, nphotons)

    def naive() -> object:
        return torch.sqrt(nphotons / torch.mean(torch.sum(x**2, dim=(-2, -1))))

    t_floor = median_seconds(floor, args.repeats)
    t_derive = median_seconds(derive, args.repeats)
    t_naive = median_seconds(naive, args.repeats)

    # Exactly rounded reference: float64 squares summed blockwise with fsum.
    blocks = [float(torch.dot(b.double(), b.double())) for b in x.view(-1).split(1 << 22)]
    exact = math.sqrt(nphotons / (math.fsum(blocks) / n_patterns))
    err_derive = abs(float(derive()) - exact) / exact  # type: ignore[arg-type]
    err_naive = abs(float(naive()) - exact) / exact  # type: ignore[arg-type]

    mem_floor = peak_extra_mib(floor)
    mem_derive = peak_extra_mib(derive)
    mem_naive = peak_extra_mib(naive)
    mem_first = first_call_extra_mib(n_patterns, args.side)

    print(f"{'':24}{'median s':>10}{'x floor':>10}{'extra MiB':>11}{'rel err':>10}")
    print(f"{'x.sum() (read floor)':24}{t_floor:10.4f}{1.0:10.2f}{mem_floor:11.1f}{'':>10}")
    print(f"{'derive_intensity_scale':24}{t_derive:10.4f}{t_derive / t_floor:10.2f}"
          f"{mem_derive:11.1f}{err_derive:10.1e}")  # fmt: skip
    print(f"{'naive formula':24}{t_naive:10.4f}{t_naive / t_floor:10.2f}"
          f"{mem_naive:11.1f}{err_naive:10.1e}")  # fmt: skip
    print(
        f"derive / read floor: {t_derive / t_floor:.2f}x   "
        f"speed-up over naive: {t_naive / t_derive:.2f}x   "
        f"extra peak memory: {mem_derive:.1f} MiB warm, {mem_first:.1f} MiB on a fresh "
        f"process's first call (naive {mem_naive:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
