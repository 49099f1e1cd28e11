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

import ctypes
import functools
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

#: Must match PHYSSCALE_NATIVE_ABI in csrc/physscale_native.c: a stale build
#: from an older checkout is ignored rather than called with the wrong signature.
ABI_VERSION = 2

#: The kernels the library may hold, by id (bit k of physscale_native_kernels()):
#: a portable loop the compiler vectorizes, and hand-written x86-64 AVX2+FMA and
#: AVX-512F loops. Each CPU uses the last one it supports (see :func:`kernel`).
KERNELS = ("portable", "avx2", "avx512")

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
    lib.physscale_native_kernels.restype = ctypes.c_int
    lib.physscale_native_kernels.argtypes = []
    for name in ("physscale_reduce_f32", "physscale_reduce_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
        fn = getattr(lib, name + "_kernel")
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return lib


def thread_count(numel: int) -> int:
    """Threads for ``numel`` elements: torch's intra-op setting, >= MIN_NUMEL_PER_THREAD each."""
    return max(1, min(torch.get_num_threads(), numel // MIN_NUMEL_PER_THREAD))


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
    """The kernel :func:`reduce_dense` uses by default here: the widest one this CPU runs."""
    usable = kernels()
    return usable[-1] if usable else None


def _dense(x: torch.Tensor) -> bool:
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
        kernel: one of :func:`kernels` to force (tests, benchmarks); default
            the widest this CPU runs.

    Returns ``(partials, minimum)``, with ``math.fsum(partials)`` the total, or
    None when the native kernel does not apply: library absent, not on the
    CPU, not float32/float64, or not one dense run of memory. The sum is over
    every element, in memory order; the caller validates the result.

    Raises:
        ValueError: ``kernel`` is not one this build and CPU can run.
    """
    lib = library()
    kernel_id = -1
    if kernel is not None:
        if kernel not in kernels():
            raise ValueError(
                f"native kernel {kernel!r} is not available here; available: {kernels()}"
            )
        kernel_id = KERNELS.index(kernel)
    if lib is None or x.device.type != "cpu" or x.layout != torch.strided:
        return None
    if x.is_neg() or not _dense(x):
        return None
    if x.dtype == torch.float32:
        name = "physscale_reduce_f32"
    elif x.dtype == torch.float64:
        name = "physscale_reduce_f64"
    else:
        return None
    if kernel_id < 0:
        fn = getattr(lib, name)
    else:
        with_kernel = getattr(lib, name + "_kernel")
        fn = functools.partial(_call_kernel, with_kernel, kernel_id)
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


def _call_kernel(fn: Any, kernel_id: int, ptr: int, n: int, square: int, out: Any) -> None:
    """Call a ``physscale_reduce_*_kernel`` entry point; it refuses unusable kernels."""
    if fn(ptr, n, square, kernel_id, out) != 0:  # pragma: no cover - checked by reduce_dense
        raise RuntimeError(f"native kernel {KERNELS[kernel_id]!r} refused to run")
