"""The optional native kernel: one fused, multi-threaded pass on the CPU.

``native.c`` beside this file is compiled at install time when a C compiler
is available (the root ``hatch_build.py``) into ``_native_kernel.so``, also
beside it, and loaded here with `ctypes`. It computes the same float64
sum and minimum as the other paths (see
[`physscale.core.kernels.sums`][physscale.core.kernels.sums])
in one read of the data, so deriving a scale costs about as much as reading
the tensor once. Without the library (no compiler at install time, Windows,
or ``PHYSSCALE_NATIVE=0``) callers fall back to the BLAS and eager paths,
which give the same result to within float64 rounding.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

#: Must match PHYSSCALE_NATIVE_ABI in native.c: a stale build
#: from an older checkout is ignored rather than called with the wrong signature.
ABI_VERSION = 3

#: The kernels the library may hold, by id (bit k of physscale_native_kernels()):
#: a portable loop the compiler vectorizes, and hand-written x86-64 AVX2+FMA and
#: AVX-512F loops. Each CPU uses the last one it supports (see `kernel`).
KERNELS = ("portable", "avx2", "avx512")

#: The library's file name inside the package.
LIBRARY_NAME = "_native_kernel.so"

#: Below this many elements per thread, extra threads cost more than they save.
MIN_NUMEL_PER_THREAD = 1 << 21

#: Elements per work item handed to a thread (a multiple of 64).
PIECE_NUMEL = 1 << 20

_DOUBLE3 = ctypes.c_double * 3


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded native library, or None when it is absent or disabled (cached)."""
    if os.environ.get("PHYSSCALE_NATIVE", "1") == "0":
        return None
    return load(Path(__file__).with_name(LIBRARY_NAME))


def load(path: Path) -> ctypes.CDLL | None:
    """Load the library at ``path``: None if there is none, a warning if it is unusable."""
    if not path.is_file():
        return None
    try:
        lib = ctypes.CDLL(str(path))
        abi = int(lib.physscale_native_abi())
    except (OSError, AttributeError) as exc:
        warnings.warn(
            f"physscale's native kernel {path} could not be loaded ({exc}); "
            "using the eager kernel. Reinstall physscale to rebuild it",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    if abi != ABI_VERSION:
        warnings.warn(
            f"physscale's native kernel {path} is a stale build (ABI {abi}, expected "
            f"{ABI_VERSION}); using the eager kernel. Reinstall physscale to rebuild it",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    lib.physscale_native_kernels.restype = ctypes.c_int
    lib.physscale_native_kernels.argtypes = []
    lib.physscale_run_task.restype = None
    lib.physscale_run_task.argtypes = [ctypes.c_void_p]
    lib.physscale_task_size.restype = ctypes.c_int64
    lib.physscale_run_rows_task.restype = None
    lib.physscale_run_rows_task.argtypes = [ctypes.c_void_p]
    lib.physscale_rows_task_size.restype = ctypes.c_int64
    sizes = (lib.physscale_task_size(), lib.physscale_rows_task_size())
    if sizes != (ctypes.sizeof(_Task), ctypes.sizeof(_RowsTask)):
        warnings.warn(
            f"physscale's native kernel {path} does not match this Python module "
            "(task layout); using the eager kernel. Reinstall physscale to rebuild it",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    for name in ("physscale_reduce_f32", "physscale_reduce_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
        fn = getattr(lib, name + "_kernel")
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return lib


# A per-thread cap on the threads of native calls (see thread_limit).
_limit = threading.local()


@contextlib.contextmanager
def thread_limit(n: int) -> Iterator[None]:
    """Cap the threads of the native calls this thread makes at ``n``, within the block.

    For callers that already run several calls side by side (``derive_files``
    reads files concurrently): each call then uses its share of the cores
    instead of all of them.
    """
    old = getattr(_limit, "n", None)
    _limit.n = max(1, int(n))
    try:
        yield
    finally:
        _limit.n = old


def thread_count(numel: int) -> int:
    """Threads for ``numel`` elements: torch's intra-op setting, >= MIN_NUMEL_PER_THREAD each.

    At most the cap a surrounding `thread_limit` sets in this thread.
    """
    threads = torch.get_num_threads()
    cap = getattr(_limit, "n", None)
    if cap is not None:
        threads = min(threads, cap)
    return max(1, min(threads, numel // MIN_NUMEL_PER_THREAD))


def available() -> bool:
    """Whether the native kernel is built and loadable in this installation."""
    return library() is not None


def kernels() -> tuple[str, ...]:
    """Names of the kernels this build holds and this CPU can run (empty without the library)."""
    lib = library()
    if lib is None:
        return ()
    mask = int(lib.physscale_native_kernels())
    return tuple(name for k, name in enumerate(KERNELS) if mask & (1 << k))


def kernel() -> str | None:
    """The kernel `reduce_dense` uses by default here: the widest one this CPU runs."""
    usable = kernels()
    return usable[-1] if usable else None


@functools.cache
def _best() -> str:
    return kernel() or KERNELS[0]


def dense(x: torch.Tensor) -> bool:
    """Whether ``x`` covers one gap-free run of memory (any axis order, no overlap)."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(x.stride(), x.shape, strict=True) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def reduce_dense(
    x: torch.Tensor, *, square: bool, kernel: str | None = None
) -> tuple[list[float], float] | None:
    """Float64 partial sums of ``x**2`` (or ``x``) and the minimum of ``x``, natively.

    Args:
        x: any tensor; only dense CPU float32/float64 ones are read.
        square: sum ``x**2`` (amplitudes) rather than ``x`` (intensities).
        kernel: one of `kernels` to force (tests, benchmarks); default
            the widest this CPU runs.

    Returns ``(partials, minimum)``, with ``math.fsum(partials)`` the total, or
    None when the native kernel does not apply: library absent, not on the
    CPU, not float32/float64, or not one dense run of memory. The sum is over
    every element, in memory order; the caller validates the result.

    Raises:
        ValueError: ``kernel`` is not one this build and CPU can run.
    """
    lib = library()
    if kernel is not None and kernel not in kernels():
        raise ValueError(f"native kernel {kernel!r} is not available here; available: {kernels()}")
    if lib is None or x.device.type != "cpu" or x.layout != torch.strided:
        return None
    if x.is_neg() or not dense(x) or x.dtype not in (torch.float32, torch.float64):
        return None
    kernel_id = KERNELS.index(kernel if kernel is not None else _best())
    n = x.numel()
    if n == 0:
        return [0.0, 0.0], math.inf
    n_threads = thread_count(n)
    # Work items of PIECE_NUMEL elements, so for inputs large enough to be
    # threaded the result does not depend on the thread count; smaller ones
    # (thread_count patched in tests) are cut into one item per thread.
    piece = min(PIECE_NUMEL, -(-n // n_threads))
    piece += -piece % 64
    n_items = max(1, -(-n // piece))
    out = (ctypes.c_double * (3 * n_items))()
    task = _Task(
        x=x.data_ptr(),
        n=n,
        piece=piece,
        itemsize=x.element_size(),
        square=int(square),
        kernel=kernel_id,
        status=0,
        next=0,
        out=ctypes.addressof(out),
    )
    _run(lib, task, min(n_threads, n_items))
    if task.status != 0:  # pragma: no cover - the kernel id was checked above
        raise RuntimeError(f"the native kernel refused a work item (kernel id {task.kernel})")
    values = list(out)
    partials = values[0::3] + values[1::3]
    minimum = min(values[2::3])
    return partials, minimum


class _Task(ctypes.Structure):
    """``physscale_task`` in native.c (its size is checked at load time)."""

    _fields_ = [
        ("x", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("piece", ctypes.c_int64),
        ("itemsize", ctypes.c_int32),
        ("square", ctypes.c_int32),
        ("kernel", ctypes.c_int32),
        ("status", ctypes.c_int32),
        ("next", ctypes.c_int64),
        ("out", ctypes.c_void_p),
    ]


def _run(lib: ctypes.CDLL, task: _Task | _RowsTask, n_threads: int, rows: bool = False) -> None:
    """Run ``task`` on ``n_threads`` threads: torch's OpenMP team when it has one."""
    arg = ctypes.byref(task)
    run = lib.physscale_run_rows_task if rows else lib.physscale_run_task
    if n_threads <= 1:
        run(arg)
        return
    parallel = openmp_parallel()
    if parallel is not None:
        # The calling thread and n_threads - 1 of torch's own OpenMP workers;
        # ctypes releases the GIL, and the workers run only C.
        runner = ctypes.cast(run, ctypes.c_void_p)
        parallel(runner, arg, n_threads, 0)
        return
    workers = [threading.Thread(target=run, args=(arg,)) for _ in range(n_threads - 1)]
    for w in workers:
        w.start()
    run(arg)
    for w in workers:
        w.join()


# ------------------------------------------------------------ per-pattern sums
class _RowsTask(ctypes.Structure):
    """``physscale_rows_task`` in native.c (its size is checked at load time)."""

    _fields_ = [
        ("x", ctypes.c_void_p),
        ("rows", ctypes.c_int64),
        ("row_len", ctypes.c_int64),
        ("piece_rows", ctypes.c_int64),
        ("itemsize", ctypes.c_int32),
        ("square", ctypes.c_int32),
        ("kernel", ctypes.c_int32),
        ("status", ctypes.c_int32),
        ("next", ctypes.c_int64),
        ("row_out", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
    ]


def reduce_rows(
    x: torch.Tensor, row_len: int, *, square: bool, kernel: str | None = None
) -> tuple[list[float], float, torch.Tensor] | None:
    """`reduce_dense`, plus the float64 sum of every row of ``row_len`` elements.

    The per-pattern totals of a stack whose patterns are its last axes: ``x``
    in C order holds ``x.numel() // row_len`` patterns one after the other.

    Args:
        x: any tensor; only C-contiguous CPU float32/float64 ones are read.
        row_len: elements per row (one pattern's pixels); must divide ``x.numel()``.
        square: sum ``x**2`` (amplitudes) rather than ``x`` (intensities).
        kernel: one of `kernels` to force (tests, benchmarks).

    Returns ``(partials, minimum, rows)``: ``math.fsum(partials)`` is the total,
    ``rows`` a float64 CPU tensor of one sum per row, in memory order. None
    when the kernel does not apply (as for `reduce_dense`, or ``x`` not
    C-contiguous, or ``row_len`` not dividing its size). Each row is reduced by
    the same kernel as `reduce_dense` (exact squares, compensated chunk
    sums); the caller validates the result.

    Raises:
        ValueError: ``kernel`` is not one this build and CPU can run.
    """
    lib = library()
    if kernel is not None and kernel not in kernels():
        raise ValueError(f"native kernel {kernel!r} is not available here; available: {kernels()}")
    if lib is None or x.device.type != "cpu" or x.layout != torch.strided:
        return None
    if x.is_neg() or not x.is_contiguous() or x.dtype not in (torch.float32, torch.float64):
        return None
    n = x.numel()
    if row_len < 1 or n == 0 or n % row_len:
        return None
    kernel_id = KERNELS.index(kernel if kernel is not None else _best())
    rows = n // row_len
    n_threads = thread_count(n)
    # Work items of whole rows, about PIECE_NUMEL elements each (as reduce_dense's),
    # so for inputs large enough to be threaded the result does not depend on the
    # thread count; smaller ones are cut into one item per thread.
    piece_rows = max(1, min(PIECE_NUMEL // row_len, -(-rows // n_threads)))
    n_items = -(-rows // piece_rows)
    row_out = torch.empty(rows, dtype=torch.float64)
    out = (ctypes.c_double * (3 * n_items))()
    task = _RowsTask(
        x=x.data_ptr(),
        rows=rows,
        row_len=row_len,
        piece_rows=piece_rows,
        itemsize=x.element_size(),
        square=int(square),
        kernel=kernel_id,
        status=0,
        next=0,
        row_out=row_out.data_ptr(),
        out=ctypes.addressof(out),
    )
    _run(lib, task, min(n_threads, n_items), rows=True)
    if task.status != 0:  # pragma: no cover - the kernel id was checked above
        raise RuntimeError(f"the native kernel refused a row (kernel id {task.kernel})")
    values = list(out)
    return values[0::3] + values[1::3], min(values[2::3]), row_out


@functools.cache
def openmp_parallel() -> Any | None:
    """``GOMP_parallel`` of the OpenMP runtime torch runs on, or None (Python threads then).

    PyTorch's intra-op threads are an OpenMP team on most builds (libgomp on
    Linux, LLVM's libomp elsewhere; both export the GNU entry point). After each
    parallel op its idle workers spin for a few milliseconds (libgomp's
    GOMP_SPINCOUNT: measured 5.5 ms of CPU time on a 2-core EPYC); running the
    native kernel on that same team instead of on new threads keeps them from
    sharing a core with the spinner. ``PHYSSCALE_NATIVE_THREADS=python`` opts out.
    """
    if os.environ.get("PHYSSCALE_NATIVE_THREADS", "openmp") == "python":
        return None
    backend = next(
        (
            line.partition(":")[2].strip()
            for line in torch.__config__.parallel_info().splitlines()
            if "ATen parallel backend" in line
        ),
        "",
    )
    if backend != "OpenMP":
        return None
    try:
        # torch loads its OpenMP runtime into the global namespace (RTLD_GLOBAL).
        fn = ctypes.CDLL(None).GOMP_parallel
    except (OSError, AttributeError, TypeError):
        return None
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    return fn
