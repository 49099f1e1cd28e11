"""The optional native kernel: one fused, multi-threaded pass on the CPU.

``csrc/physscale_native.c`` is compiled at install time when a C compiler is
available (see ``hatch_build.py``) into ``physscale/_native_kernel.so`` and
loaded here with :mod:`ctypes`. It computes the same float64 sum and minimum as
the eager kernel in :mod:`physscale._intensity_sum`, in one read of the data
instead of three passes per block, so deriving a scale costs about as much as
reading the tensor once. Without the library (no compiler at install time,
an unsupported platform, or ``PHYSSCALE_NATIVE=0``) every caller falls back to
the eager kernel, which gives the same result to within float64 rounding.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

#: Must match PHYSSCALE_NATIVE_ABI in csrc/physscale_native.c: a stale build
#: from an older checkout is ignored rather than called with the wrong signature.
ABI_VERSION = 1

#: The library's file name inside the package.
LIBRARY_NAME = "_native_kernel.so"

#: Below this many elements per thread, extra threads cost more than they save.
MIN_NUMEL_PER_THREAD = 1 << 21

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
    for name in ("physscale_reduce_f32", "physscale_reduce_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
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

    At most the cap a surrounding :func:`thread_limit` sets in this thread.
    """
    threads = torch.get_num_threads()
    cap = getattr(_limit, "n", None)
    if cap is not None:
        threads = min(threads, cap)
    return max(1, min(threads, numel // MIN_NUMEL_PER_THREAD))


def available() -> bool:
    """Whether the native kernel is built and loadable in this installation."""
    return library() is not None


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x`` covers one gap-free run of memory (any axis order, no overlap)."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(x.stride(), x.shape, strict=True) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def reduce_dense(x: torch.Tensor, *, square: bool) -> tuple[list[float], float] | None:
    """Float64 partial sums of ``x**2`` (or ``x``) and the minimum of ``x``, natively.

    Returns ``(partials, minimum)``, with ``math.fsum(partials)`` the total, or
    None when the native kernel does not apply: library absent, not on the
    CPU, not float32/float64, or not one dense run of memory. The sum is over
    every element, in memory order; the caller validates the result.
    """
    lib = library()
    if lib is None or x.device.type != "cpu" or x.layout != torch.strided:
        return None
    if x.is_neg() or not _dense(x):
        return None
    if x.dtype == torch.float32:
        fn = lib.physscale_reduce_f32
    elif x.dtype == torch.float64:
        fn = lib.physscale_reduce_f64
    else:
        return None
    n = x.numel()
    n_threads = thread_count(n)
    step = -(-n // n_threads)
    step += -step % 64  # whole 64-element (cache-line multiple) slices
    itemsize = x.element_size()
    base = x.data_ptr()
    outs = [_DOUBLE3() for _ in range(n_threads)]

    def work(k: int) -> None:
        start = k * step
        fn(base + start * itemsize, max(0, min(step, n - start)), int(square), outs[k])

    # ctypes releases the GIL for the duration of each call.
    workers = [threading.Thread(target=work, args=(k,)) for k in range(1, n_threads)]
    for w in workers:
        w.start()
    work(0)
    for w in workers:
        w.join()
    partials = [v for out in outs for v in (out[0], out[1])]
    minimum = min(out[2] for out in outs)
    return partials, minimum
