"""Benchmark derive_intensity_scale against the memory-read floor and the naive formula.

Prints, for a tensor of about --gib GiB (float32 unless --dtype) on --device:
- derive time / time of one ``x.sum()`` (the memory-read floor), for the
  kernel derive uses there and the paths it falls back to without it: on
  the CPU numpy's BLAS (the default without the native kernel), the same
  path with ``numpy.einsum('ij,ij->i', x, x, dtype=float64)`` as its row
  sum (the alternative issue 18 asked to measure), and the eager PyTorch
  blocks, with the ratios between them in the same rounds;
- speed-up over the naive ``sqrt(n / mean(sum(x**2, dim=(-2, -1))))``;
- extra peak memory of each: on the CPU the /proc high-water mark (and, for
  derive, its first call in a fresh interpreter, where no allocator cache can
  hide a buffer); on CUDA ``torch.cuda.max_memory_allocated`` around the call;
- the relative error of each against a float64 reference summed with ``math.fsum``;
- on the CPU, each native SIMD kernel on its own (no derive overhead), so the
  kernels can be compared on the same data.

All methods run interleaved, round after round; ratios are medians of
per-round ratios. On CUDA every call is followed by a synchronize. The last
line of output is one JSON object with the figures (for benchmarks/gpu_check.py).

Run: python benchmarks/bench_derive.py [--device cpu|cuda] [--gib G] [--repeats R]
     [--threads N] [--dtype float32|float64|float16|bfloat16] [--quick] [--baseline-lib PATH]
Defaults: 0.5 GiB and 15 repeats on the CPU, 4 GiB and 20 repeats on CUDA;
--quick: 64 MiB (CPU) or 1 GiB (CUDA), 5 repeats, no fresh-interpreter run.
--baseline-lib: also time another build of the native library (say, the 0.1
commit's csrc/physscale_native.c) driven as 0.1 drove it (one slice per new
Python thread), e.g.

    git show 056912b:csrc/physscale_native.c > /tmp/old.c
    cc -O3 -shared -fPIC -DPHYSSCALE_TARGET_CLONES -o /tmp/old.so /tmp/old.c -lm
    python benchmarks/bench_derive.py --baseline-lib /tmp/old.so
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np
import torch
from _common import interleaved_seconds, median_ratio, peak_extra_mib

import physscale as ps
from physscale.core.kernels import blas as _blas
from physscale.core.kernels import device as _device_sum
from physscale.core.kernels import native as _native

#: Targets from issue 12 (CPU and GPU alike): derive <= 1.3x one x.sum(); extra
#: memory <= 64 MiB whatever the input size; >= 5x faster than the naive formula.
FLOOR_RATIO_TARGET = 1.3
EXTRA_MIB_TARGET = 64.0
NAIVE_SPEEDUP_TARGET = 5.0

_FIRST_CALL = """
import sys, torch, physscale as ps
from physscale.core.kernels import blas as _blas
from physscale.core.kernels import native as _native
sys.path.insert(0, {bench!r})
from _common import peak_extra_mib
from bench_derive import einsum_row_sums
if {path!r} in ("blas", "einsum", "eager"):
    _native.reduce_dense = lambda x, *, square, kernel=None: None
if {path!r} == "einsum":
    _blas.row_sums = einsum_row_sums
if {path!r} == "eager":
    _blas.reduce_dense = lambda x, *, square: None
x = torch.rand({n}, 1, {side}, {side}).to(torch.{dtype})
ps.derive_intensity_scale(x[:1], 1e9)  # import-time and first-dispatch costs out of the way
print(peak_extra_mib(lambda: ps.derive_intensity_scale(x, 1e9)))
"""


def einsum_row_sums(rows: np.ndarray, square: bool, buffer: np.ndarray) -> np.ndarray:
    """``numpy.einsum`` in place of ``physscale.core.kernels.blas.row_sums``, to compare them.

    einsum widens float32 to float64 in its own 8192-element buffers as it
    multiplies and adds (no temporary); ``buffer`` is not used.
    """
    if not square:
        return np.add.reduce(rows, axis=1, dtype=np.float64)
    return np.einsum("ij,ij->i", rows, rows, dtype=np.float64)


def first_call_extra_mib(n_patterns: int, side: int, path: str, dtype: torch.dtype) -> float:
    """Peak extra memory of a first full-size CPU call in a fresh interpreter (nothing recycled).

    ``path``: "derive" (the default dispatch), "blas", "einsum" or "eager" (forced).
    """
    code = _FIRST_CALL.format(
        bench=str(pathlib.Path(__file__).parent),
        n=n_patterns,
        side=side,
        path=path,
        dtype=str(dtype).removeprefix("torch."),
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def cuda_extra_mib(fn: Callable[[], Any]) -> float:
    """Peak CUDA memory ``fn()`` allocates above what was allocated before, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def reference_scale(x: torch.Tensor, nphotons: float, n_patterns: int) -> float:
    """sqrt(n / mean sum x**2) from float64 squares: 4 Ki-element row sums, then fsum."""
    rows: list[float] = []
    for block in x.reshape(-1).split(1 << 22):
        b = block.double().view(-1, 4096)
        rows.extend((b * b).sum(dim=1).tolist())
    return math.sqrt(nphotons / (math.fsum(rows) / n_patterns))


def synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` followed by a device synchronize, so wall time covers the device work."""
    if device.type != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def baseline_library(path: str) -> ctypes.CDLL:
    """Another build of the native library; only its 4-argument physscale_reduce_f32 is used."""
    lib = ctypes.CDLL(path)
    lib.physscale_reduce_f32.restype = None
    lib.physscale_reduce_f32.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    return lib


def static_split(lib: ctypes.CDLL, x: torch.Tensor) -> tuple[list[float], float]:
    """The 0.1 driver: one slice per thread, new Python threads, 4-argument entry point."""
    n, n_threads = x.numel(), _native.thread_count(x.numel())
    step = -(-n // n_threads)
    step += -step % 64
    outs = [(ctypes.c_double * 3)() for _ in range(n_threads)]

    def work(k: int) -> None:
        start = k * step
        lib.physscale_reduce_f32(x.data_ptr() + 4 * start, max(0, min(step, n - start)), 1, outs[k])

    workers = [threading.Thread(target=work, args=(k,)) for k in range(1, n_threads)]
    for w in workers:
        w.start()
    work(0)
    for w in workers:
        w.join()
    return [v for out in outs for v in out[:2]], min(out[2] for out in outs)


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    parser.add_argument("--gib", type=float, default=None, help="input size in GiB (float32)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--side", type=int, default=128, help="pattern side N")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"]
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds: small input")
    parser.add_argument("--baseline-lib", default=None, help="another native library build")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if on_cuda and not torch.cuda.is_available():
        sys.exit("bench_derive: --device cuda but torch.cuda.is_available() is False")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        gib, repeats = (1.0 if on_cuda else 1 / 16), 5
    else:
        gib, repeats = (4.0, 20) if on_cuda else (0.5, 15)
    gib = args.gib if args.gib is not None else gib
    repeats = args.repeats if args.repeats is not None else repeats

    dtype = getattr(torch, args.dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    n_patterns = max(1, int(gib * 2**30 / itemsize / args.side**2))
    torch.manual_seed(0)
    x = torch.rand(n_patterns, 1, args.side, args.side, device=device).to(dtype)
    nphotons = 1e9
    native = not on_cuda and _native.available()
    kernel = (
        ("fused (torch.compile)" if _device_sum.applies(x) else "blockwise")
        if on_cuda
        else (f"native {_native.kernel()}" if native else "eager")
    )
    load = os.getloadavg()
    size_gib = x.numel() * itemsize / 2**30
    print(f"input: {tuple(x.shape)} {args.dtype}, {size_gib:.3f} GiB on {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernel: {kernel}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    if on_cuda:
        print(f"device: {torch.cuda.get_device_name(device)}")

    def derive() -> object:
        return ps.derive_intensity_scale(x, nphotons)

    def eager() -> object:
        # The blockwise eager kernel: no native kernel, no fused device pass, no BLAS path.
        with (
            mock.patch.object(_native, "reduce_dense", return_value=None),
            mock.patch.object(_device_sum, "fused_sum", return_value=None),
            mock.patch.object(_blas, "reduce_dense", return_value=None),
        ):
            return ps.derive_intensity_scale(x, nphotons)

    def blas() -> object:
        # numpy's BLAS: derive's path on the CPU without the native kernel.
        with mock.patch.object(_native, "reduce_dense", return_value=None):
            return ps.derive_intensity_scale(x, nphotons)

    def einsum() -> object:
        # The same path with einsum's buffered cast-multiply-add as the row sum.
        with (
            mock.patch.object(_native, "reduce_dense", return_value=None),
            mock.patch.object(_blas, "row_sums", einsum_row_sums),
        ):
            return ps.derive_intensity_scale(x, nphotons)

    first_call_s = None
    if on_cuda:  # the first fused call compiles: time it once, outside the rounds
        start = time.perf_counter()
        synced(derive, device)()
        first_call_s = time.perf_counter() - start

    methods: dict[str, Callable[[], Any]] = {"floor": lambda: x.sum()}
    methods["derive"] = derive
    methods["eager"] = eager
    fallbacks = ["eager"]
    if not on_cuda and _blas.reduce_dense(x[:1], square=True) is not None:
        methods["blas"] = blas
        methods["einsum"] = einsum
        fallbacks += ["blas", "einsum"]
    methods["naive"] = lambda: torch.sqrt(nphotons / torch.mean(torch.sum(x**2, dim=(-2, -1))))
    labels = {
        "floor": "x.sum() (read floor)",
        "derive": f"derive ({kernel})",
        "eager": "derive (eager blockwise)",
        "blas": "derive (numpy BLAS)",
        "einsum": "  with einsum row sums",
        "naive": "naive formula",
    }
    if native:  # each SIMD kernel alone, to compare them on the same data
        for k in _native.kernels():
            methods[f"kernel:{k}"] = lambda k=k: _native.reduce_dense(x, square=True, kernel=k)
            labels[f"kernel:{k}"] = f"  {k} kernel only"
    if args.baseline_lib is not None and native:
        old = baseline_library(args.baseline_lib)

        def baseline() -> object:
            return static_split(old, x)

        methods["kernel:baseline"] = baseline
        labels["kernel:baseline"] = "  baseline lib, 0.1 driver"
    timed = {name: synced(fn, device) for name, fn in methods.items()}

    times = interleaved_seconds(timed, repeats)
    exact = reference_scale(x, nphotons, n_patterns)
    result: dict[str, Any] = {
        "benchmark": "derive",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "gib": round(size_gib, 4),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "kernel": kernel,
        "repeats": repeats,
        "load_average": [round(v, 2) for v in load],
        "median_ms": {},
        "floor_ratio": {},
        "naive_speedup": {},
        "extra_mib": {},
        "rel_err": {},
    }
    if first_call_s is not None:
        result["first_call_s"] = round(first_call_s, 3)
    print(f"\n{'':26}{'median ms':>10}{'x floor':>9}{'naive/it':>10}{'extra MiB':>11}"
          f"{'1st call':>10}{'rel err':>9}")  # fmt: skip
    for name, fn in methods.items():
        t = median(times[name])
        floor_ratio = median_ratio(times[name], times["floor"])
        speedup = median_ratio(times["naive"], times[name])
        mem = cuda_extra_mib(fn) if on_cuda else peak_extra_mib(fn)
        first = (
            first_call_extra_mib(n_patterns, args.side, name, dtype)
            if name in ("derive", *fallbacks) and not on_cuda and not args.quick
            else None
        )
        err = None
        if name in ("derive", *fallbacks, "naive"):
            err = abs(float(fn()) - exact) / exact  # type: ignore[arg-type]
        print(f"{labels[name]:26}{t * 1e3:10.2f}{floor_ratio:9.2f}{speedup:10.2f}{mem:11.1f}"
              f"{'' if first is None else f'{first:.1f}':>10}"
              f"{'' if err is None else f'{err:.1e}':>9}")  # fmt: skip
        result["median_ms"][name] = round(t * 1e3, 3)
        result["floor_ratio"][name] = round(floor_ratio, 3)
        result["naive_speedup"][name] = round(speedup, 3)
        result["extra_mib"][name] = round(max(mem, first or 0.0), 2)
        if err is not None:
            result["rel_err"][name] = float(f"{err:.2e}")
    if "blas" in methods:
        print("\nwithout the native kernel (medians of per-round ratios):")
        for a, b in (("blas", "eager"), ("einsum", "eager"), ("blas", "einsum")):
            versus = median_ratio(times[a], times[b])
            result[f"{a}_over_{b}"] = round(versus, 3)
            print(f"  {labels[a].strip()} / {labels[b].strip()}: {versus:.2f}")
    ratio = result["floor_ratio"]["derive"]
    extra = result["extra_mib"]["derive"]
    speedup = result["naive_speedup"]["derive"]
    result["targets"] = {
        "floor_ratio_max": FLOOR_RATIO_TARGET,
        "extra_mib_max": EXTRA_MIB_TARGET,
        "naive_speedup_min": NAIVE_SPEEDUP_TARGET,
        "met": ratio <= FLOOR_RATIO_TARGET
        and extra <= EXTRA_MIB_TARGET
        and speedup >= NAIVE_SPEEDUP_TARGET,
    }
    print(
        f"\nderive_intensity_scale ({kernel}): {ratio:.2f}x the read floor "
        f"(target <= {FLOOR_RATIO_TARGET}x), {speedup:.2f}x faster than naive "
        f"(target >= {NAIVE_SPEEDUP_TARGET:g}x), {extra:.1f} MiB extra "
        f"(target <= {EXTRA_MIB_TARGET:g} MiB)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
