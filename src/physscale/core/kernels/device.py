"""One fused pass for float64 sums on accelerators, compiled with ``torch.compile``.

On a GPU the blockwise eager path (`eager.block_sums`) converts
each 64 MiB block into a float64 buffer and reads it twice more (dot, amin):
about 28 bytes of memory traffic per float32 element, where reading the input
once costs 4, plus four kernel launches per block. PyTorch has no eager
reduction that widens float32 to float64 on the fly: ``sum(dtype=float64)``
and ``linalg.vector_norm(dtype=float64)`` both convert the whole input first
(ATen's ``make_reduction`` calls ``self.to(dtype)``), a full float64 copy.

So this module compiles one reduction (Triton on CUDA, C++ on the CPU, where
the tests run it) that reads each element once, widens it to float64 in
registers, squares it (exact for float32, float16 and bfloat16 input), sums
4096-element rows in float64 and then the row sums. A negative element is
turned into NaN before the sum, so the same single reduction validates the
data: a finite total means every element was finite and >= 0 (``-0.0``
included). A non-finite total sends the caller back to the blockwise kernel,
which finds out exactly what was wrong.

Compiling takes seconds on the first large call of a process (less with
Inductor's on-disk cache), so it is used only above ``MIN_NUMEL`` elements,
and never where it could silently run uncompiled (Dynamo disabled, inside a
``torch.compile`` trace, recompile limit): uncompiled, the same code would
materialize a float64 copy of the input. ``PHYSSCALE_FUSED=0`` turns it off.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from physscale.core.kernels import native as _native

#: Elements per row: each row is summed in float64, then the row sums.
ROW = 4096

#: At most this many rows per compiled call (2**30 elements, 4 GiB of float32):
#: keeps indices within int32 and the row-sum buffer at 2 MiB.
PIECE_ROWS = 1 << 18

#: Smallest input the fused pass is used for: below it the blockwise kernel
#: needs a single block and compiling would cost more than it saves.
MIN_NUMEL = 1 << 23

#: Device types the fused pass runs on (the tests add "cpu").
DEVICE_TYPES = frozenset({"cuda"})

#: Inductor copies inputs that are not aligned to this many bytes.
_ALIGN = 16

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: Device types where compiling failed once: not retried in this process.
_failed: dict[str, str] = {}


def _row_total(rows: torch.Tensor, square: bool) -> torch.Tensor:
    """Float64 sum of ``rows**2`` (or ``rows``) by rows, NaN if any element is negative."""
    v = rows.to(torch.float64)
    if square:
        v = v * v
    return torch.where(rows < 0, math.nan, v).sum(dim=1).sum()


@functools.cache
def _compiled(square: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    # One function per domain, so dtypes and devices share neither guards nor
    # Dynamo's per-function recompile limit with the other domain.
    def square_total(rows: torch.Tensor) -> torch.Tensor:
        return _row_total(rows, True)

    def plain_total(rows: torch.Tensor) -> torch.Tensor:
        return _row_total(rows, False)

    fn = square_total if square else plain_total
    return torch.compile(fn, dynamic=True, fullgraph=True)


def _can_compile() -> bool:
    if os.environ.get("PHYSSCALE_FUSED", "1") == "0":
        return False
    import torch._dynamo

    # Uncompiled, _row_total would allocate a float64 copy of its input.
    return not torch._dynamo.config.disable and not torch.compiler.is_compiling()


def _no_silent_fallback() -> AbstractContextManager[Any]:
    """Make Dynamo raise, not run eagerly, when it hits its recompile limit."""
    import torch._dynamo

    config = torch._dynamo.config
    names = ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit")
    flags: dict[str, Any] = {name: True for name in names if hasattr(config, name)}
    return config.patch(flags) if flags else nullcontext()


def applies(x: torch.Tensor) -> bool:
    """Whether `fused_sum` would read ``x`` (device, dtype, size, dense layout)."""
    return (
        x.device.type in DEVICE_TYPES
        and x.device.type not in _failed
        and x.dtype in _DTYPES
        and x.layout == torch.strided
        and x.numel() >= max(MIN_NUMEL, 2 * ROW)
        and not x.is_neg()
        and _native.dense(x)
        and _can_compile()
    )


def _eager_total(part: torch.Tensor, square: bool) -> torch.Tensor:
    """The same total for a short piece (< 2 rows), in eager ops."""
    v = part.to(torch.float64)
    if square:
        v = v * v
    return torch.where(part < 0, math.nan, v).sum()


def fused_sum(x: torch.Tensor, square: bool) -> list[float] | None:
    """Float64 partial totals of ``x**2`` (or ``x``) in one compiled pass over ``x``.

    Args:
        x: any tensor; only dense floating tensors of at least ``MIN_NUMEL``
            elements on a device in ``DEVICE_TYPES`` are read.
        square: sum ``x**2`` (amplitudes) rather than ``x`` (intensities).

    Returns:
        The partial totals (``math.fsum`` of them is the sum, in the units of
        ``x**2`` or ``x``), or None when the fused pass does not apply or
        could not be compiled here (then it warns once per device type). A
        non-finite partial means a NaN, infinite or negative element, or a
        float64 overflow: the caller must find out which.
    """
    if not applies(x):
        return None
    n = x.numel()
    flat = x.as_strided((n,), (1,))  # dense in some axis order: one run of memory
    head = (-flat.data_ptr() % _ALIGN) // flat.element_size()
    n_rows = (n - head) // ROW
    body = flat[head : head + n_rows * ROW].view(n_rows, ROW)
    n_pieces = -(-n_rows // PIECE_ROWS)
    step = -(-n_rows // n_pieces)  # balanced: no piece of 1 row (Dynamo specializes 1)
    fn = _compiled(square)
    try:
        with _no_silent_fallback():
            totals = [fn(body[start : start + step]) for start in range(0, n_rows, step)]
    except Exception as exc:  # any compiler failure: use the blockwise kernel
        _failed[x.device.type] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        warnings.warn(
            f"physscale could not compile its fused float64 reduction for {x.device.type} "
            f"({_failed[x.device.type]}); deriving scales with the blockwise kernel "
            "instead (same results, several times slower). Set PHYSSCALE_FUSED=0 to "
            "skip the attempt",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    totals.append(_eager_total(flat[:head], square))
    totals.append(_eager_total(flat[head + n_rows * ROW :], square))
    # One device-to-host transfer for the whole pass.
    return [float(t) for t in torch.stack(totals).tolist()]
