"""The BLAS path: float64 sums of dense CPU data by numpy when the native kernel is absent.

The data are cut into rows of ``ROW`` elements and blocks of ``BLOCK_NUMEL``.
Each block of float32 rows is converted into a small float64 buffer (1 MiB
of float32 in, 2 MiB out: both stay in cache) and each row's dot product with
itself taken by numpy's ``matmul``, which hands rows this short to a
single-threaded BLAS ``ddot``; float64 rows go to it directly. Intensities
(no squares) are summed by ``numpy.add.reduce(..., dtype=float64)``, which
widens in its own buffers. The minimum of a block is taken while the block is
in cache. Squares of float32 are exact in float64, and the row sums of a work
item are added with ``math.fsum``, so the error does not grow with the input
size. numpy releases the GIL in these calls: work items are shared by as many
threads as the native kernel would use (`native.thread_count`).

Measured (``benchmarks/bench_derive.py``, ``docs/performance.md``) against
``numpy.einsum('ij,ij->i', x, x, dtype=float64)`` as the row sum, which
widens in its buffers with no copy at all, and the eager PyTorch blocks:
einsum took about 1.6x the time of this path, and of the eager blocks, per
thread; this path matched the eager blocks on one thread and stayed within
3-5x the memory-read floor when other processes loaded the cores, where the
eager blocks went to 30x (on an idle 2-core box the eager blocks, whose two
threads scale better, were 1.3x faster). float16 is left to the eager path
(numpy converts it several times slower than torch), and bfloat16 too
(numpy has none).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from physscale.core.kernels import native

#: Elements per row: each row is summed in float64, then the rows exactly.
ROW = 4096

#: Elements per numpy call: 1 MiB of float32, in cache while converted,
#: summed and searched for its minimum.
BLOCK_NUMEL = 1 << 18

#: Elements per work item handed to a thread: at least one per thread
#: (each thread gets at least ``native.MIN_NUMEL_PER_THREAD``).
ITEM_NUMEL = 1 << 21

#: The dtypes read here.
DTYPES = (torch.float32, torch.float64)

#: Shortest row a long pattern is cut into (see `reduce_rows`).
MIN_SUB_ROW = ROW // 8

#: A work item: given a thread's float64 buffer, a partial total and a minimum.
Item = Callable[[np.ndarray], tuple[float, float]]


def _array(x: torch.Tensor, contiguous: bool) -> np.ndarray | None:
    """``x``'s elements in memory order as a 1-D numpy view, or None if not readable here."""
    if x.device.type != "cpu" or x.layout != torch.strided or x.dtype not in DTYPES:
        return None
    if x.is_neg() or not (x.is_contiguous() if contiguous else native.dense(x)):
        return None
    # Dense in some axis order: one run of memory from the storage offset.
    flat: np.ndarray = x.detach().as_strided((x.numel(),), (1,)).numpy()
    return flat


def row_sums(rows: np.ndarray, square: bool, buffer: np.ndarray) -> np.ndarray:
    """Float64 sum of ``rows**2`` (or ``rows``) along axis 1: the one numpy call per block.

    Args:
        rows: 2-D float32/float64 array, C-contiguous rows.
        square: sum ``rows**2`` (amplitudes) rather than ``rows`` (intensities).
        buffer: float64 scratch of at least ``rows.size`` elements.
    """
    sums: np.ndarray
    if not square:
        sums = np.add.reduce(rows, axis=1, dtype=np.float64)
        return sums
    if rows.dtype != np.float64:
        wide = buffer[: rows.size].reshape(rows.shape)
        np.copyto(wide, rows, casting="unsafe")
        rows = wide
    # A stack of (1, n) @ (n, 1) products: one BLAS ddot per row.
    sums = np.matmul(rows[:, None, :], rows[:, :, None]).reshape(-1)
    return sums


def _run(items: list[Item], numel: int) -> list[tuple[float, float]]:
    """Call ``items`` on the native kernel's number of threads for ``numel`` elements.

    Each thread takes the next item until none is left, with one float64
    buffer of its own for all of them (a fresh one per item measured slower:
    page faults, and unmapping it interrupts the other threads).
    """
    n_threads = min(native.thread_count(numel), len(items))
    results: list[tuple[float, float]] = [(0.0, 0.0)] * len(items)
    order = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        buffer = np.empty(max(BLOCK_NUMEL, ROW))
        # Overflow and NaN are the caller's to report (by name), not numpy's to warn of.
        with np.errstate(all="ignore"):
            while True:
                with lock:
                    k = next(order, None)
                if k is None:
                    return
                results[k] = items[k](buffer)

    if n_threads <= 1:
        worker()
        return results
    with ThreadPoolExecutor(n_threads - 1, thread_name_prefix="physscale-blas") as pool:
        helpers = [pool.submit(worker) for _ in range(n_threads - 1)]
        worker()
        for helper in helpers:
            helper.result()  # re-raises what a helper raised
    return results


def _lowest(minima: list[float]) -> float:
    """The smallest of ``minima``, NaN if any is NaN (Python's ``min`` may skip it)."""
    return float(np.min(minima))


def _rows_item(
    rows: np.ndarray, start: int, stop: int, square: bool, out: np.ndarray, buffer: np.ndarray
) -> tuple[float, float]:
    """Sum rows ``start:stop`` into ``out[start:stop]``; their exact total and minimum.

    ``buffer``: float64 scratch of at least ``max(BLOCK_NUMEL, rows.shape[1])`` elements.
    """
    step = max(1, BLOCK_NUMEL // rows.shape[1])
    minima = []
    for s in range(start, stop, step):
        block = rows[s : min(s + step, stop)]
        out[s : s + len(block)] = row_sums(block, square, buffer)
        minima.append(float(block.min()))
    return math.fsum(out[start:stop].tolist()), _lowest(minima)


def _reduce(
    rows: np.ndarray, square: bool, numel: int, extra: list[Item]
) -> tuple[list[float], float, np.ndarray]:
    """Every row's float64 sum, the exact partial totals and the minimum."""
    out = np.empty(len(rows), dtype=np.float64)
    item_rows = max(1, ITEM_NUMEL // rows.shape[1])
    items: list[Item] = [
        functools.partial(_rows_item, rows, s, min(s + item_rows, len(rows)), square, out)
        for s in range(0, len(rows), item_rows)
    ]
    results = _run(items + extra, numel)
    return [r[0] for r in results], _lowest([r[1] for r in results]), out


def reduce_dense(x: torch.Tensor, *, square: bool) -> tuple[list[float], float] | None:
    """Float64 partial sums of ``x**2`` (or ``x``) and the minimum of ``x``, with numpy.

    Args:
        x: any tensor; only dense CPU float32/float64 ones are read.
        square: sum ``x**2`` (amplitudes) rather than ``x`` (intensities).

    Returns ``(partials, minimum)``, with ``math.fsum(partials)`` the total
    (one partial per work item, and one for the tail shorter than a row), or
    None when ``x`` is not one dense run of memory of a dtype read here. The
    sum is over every element, in memory order; a NaN anywhere makes the
    minimum NaN. The caller validates the result.
    """
    flat = _array(x, contiguous=False)
    if flat is None:
        return None
    n = flat.size
    if n == 0:
        return [0.0], math.inf
    body = n - n % ROW
    tail = flat[body:].reshape(1, -1)
    extra: list[Item] = []
    if tail.size:
        extra.append(
            functools.partial(_rows_item, tail, 0, 1, square, np.empty(1, dtype=np.float64))
        )
    partials, minimum, _ = _reduce(flat[:body].reshape(-1, ROW), square, n, extra)
    return partials, minimum


def _sub_row(row_len: int) -> int | None:
    """The row length a pattern of ``row_len`` elements is summed in: itself when short,
    else the longest divisor of at most ``ROW`` (None if that is below ``MIN_SUB_ROW``)."""
    if row_len <= ROW:
        return row_len
    for sub in range(ROW, MIN_SUB_ROW - 1, -1):
        if row_len % sub == 0:
            return sub
    return None


def reduce_rows(
    x: torch.Tensor, row_len: int, *, square: bool
) -> tuple[list[float], float, torch.Tensor] | None:
    """`reduce_dense`, plus the float64 sum of every row of ``row_len`` elements.

    The per-pattern totals of a stack whose patterns are its last axes: ``x``
    in C order holds ``x.numel() // row_len`` patterns one after the other. A
    pattern longer than ``ROW`` is summed in rows of a divisor of its length
    (at most ``ROW``, at least ``MIN_SUB_ROW``), then those sums pairwise.

    Returns ``(partials, minimum, rows)``: ``math.fsum(partials)`` is the
    total, ``rows`` a float64 CPU tensor of one sum per row, in memory order.
    None when this path does not apply (as for `reduce_dense`, or ``x``
    not C-contiguous, ``row_len`` not dividing its size, or a long row
    length with no divisor in range).
    """
    flat = _array(x, contiguous=True)
    n = x.numel()
    if flat is None or row_len < 1 or n == 0 or n % row_len:
        return None
    sub = _sub_row(row_len)
    if sub is None:
        return None
    partials, minimum, sums = _reduce(flat.reshape(-1, sub), square, n, [])
    if sub != row_len:
        with np.errstate(all="ignore"):
            sums = np.add.reduce(sums.reshape(-1, row_len // sub), axis=1)
    return partials, minimum, torch.from_numpy(sums)
