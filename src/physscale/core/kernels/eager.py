"""The eager path: float64 sums in blocks of plain PyTorch ops, on any device.

What runs when neither the native kernel, the fused device pass nor the
numpy path applies (masks, bfloat16, strided views with gaps, accelerators
for small or masked inputs, the device pass's fallback). Each block of at
most ``BLOCK_NUMEL`` elements is converted into one reused float64 buffer,
so the extra memory is bounded (8 MiB on the CPU, 64 MiB on accelerators)
whatever the input size, then reduced with a dot product (or a sum) and an
``amin``. Every square is exact (a float32 squared fits a float64); block
totals are added exactly by the caller (``math.fsum``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

#: Elements per block on the CPU: 8 MiB of float64, large enough to amortize
#: dispatch overhead and small enough to stay in a last-level cache.
BLOCK_NUMEL = 1 << 20

#: Blocks are this many times larger on accelerators (64 MiB of float64), where
#: kernel launches, not caches, set the cost. (Not measured: no GPU in CI.)
ACCELERATOR_BLOCK_FACTOR = 8

Index = tuple[int | slice, ...]


def accumulation_device(device: torch.device) -> torch.device:
    """Where the float64 buffer of data on ``device`` lives: the CPU for MPS (no float64)."""
    return torch.device("cpu") if device.type == "mps" else device


def blocks(shape: tuple[int, ...], limit: int, prefix: Index = ()) -> Iterator[Index]:
    """Index tuples cutting an array of ``shape`` into pieces of <= ``limit`` elements.

    Pieces are cut along the leading axis (recursing when one leading slice is
    itself too large), so they are views of any strided tensor.
    """
    numel = math.prod(shape)
    if numel <= limit or not shape:
        yield prefix
        return
    inner = numel // shape[0]
    if inner <= limit:
        step = limit // inner
        for start in range(0, shape[0], step):
            yield (*prefix, slice(start, min(start + step, shape[0])))
    else:
        for i in range(shape[0]):
            yield from blocks(shape[1:], limit, (*prefix, i))


def _block_limit(device: torch.device) -> int:
    return BLOCK_NUMEL * (1 if device.type == "cpu" else ACCELERATOR_BLOCK_FACTOR)


def block_sums(
    x: torch.Tensor, square: bool, mask: torch.Tensor | None
) -> tuple[list[float], float, list[float], int]:
    """Per-block float64 totals of ``x**2`` (or ``x``) and the minimum of ``x``.

    Args:
        x: real floating tensor, any shape and strides, any device.
        square: sum ``x**2`` (amplitudes) rather than ``x`` (intensities).
        mask: None, or a boolean tensor of ``x``'s shape; False pixels add nothing.

    Returns ``(totals, minimum, masked_totals, masked_pixels)``: the block
    totals (``math.fsum`` of them is the sum), the minimum of the (masked)
    data, and with a mask the per-block intensity of the excluded pixels
    (finite values >= 0 only) and the number of excluded pixels. The caller
    validates the result.
    """
    device = accumulation_device(x.device)
    limit = _block_limit(device)
    buffer = torch.empty(min(limit, x.numel()), dtype=torch.float64, device=device)
    # Per-block float64 totals and minima stay on the device until the end.
    totals: list[torch.Tensor] = []
    minima: list[torch.Tensor] = []
    dropped_totals: list[torch.Tensor] = []
    dropped_counts: list[torch.Tensor] = []
    for index in blocks(tuple(x.shape), limit):
        block = x[index]
        if mask is None and block.dtype == torch.float64 and block.is_contiguous() \
                and block.device == device:  # fmt: skip
            flat = block.view(-1)  # already float64: no copy needed
        else:
            view = buffer[: block.numel()].view(block.shape)
            view.copy_(block)
            if mask is not None:
                removed, count = _apply_mask(view, mask[index], square)
                dropped_totals.append(removed)
                dropped_counts.append(count)
            flat = view.view(-1)
        totals.append(torch.dot(flat, flat) if square else flat.sum())
        # Checked on the cached float64 block: measured faster than on the source.
        minima.append(flat.amin())
    # One device-to-host transfer for the whole pass.
    n = len(totals)
    stats = torch.stack(
        [torch.stack(minima).amin(), *totals, *dropped_totals, *dropped_counts]
    ).tolist()
    return stats[1 : 1 + n], stats[0], stats[1 + n : 1 + 2 * n], int(sum(stats[1 + 2 * n :]))


def _apply_mask(
    view: torch.Tensor, keep: torch.Tensor, square: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the excluded pixels of a float64 buffer in place.

    Returns (on the buffer's device) the intensity the mask took away, over
    finite values >= 0 only (dead pixels often hold NaN or negative flags),
    and the number of excluded pixels.
    """
    dropped = keep.to(view.device).logical_not()
    kept_out = torch.where(dropped & (view >= 0) & view.isfinite(), view, 0.0).view(-1)
    removed = torch.dot(kept_out, kept_out) if square else kept_out.sum()
    # masked_fill, not a multiply: a NaN in a dead pixel must not leak.
    view.masked_fill_(dropped, 0.0)
    return removed, dropped.sum(dtype=torch.float64)


def pattern_block_sums(
    x: torch.Tensor, axes: tuple[int, ...], square: bool, mask: torch.Tensor | None
) -> tuple[list[float], float, list[float], int, torch.Tensor]:
    """`block_sums`, plus the float64 intensity of every pattern.

    Returns the same four values and a ``(n_patterns,)`` float64 tensor on the
    accumulation device, in pattern order (the non-spatial axes raveled in C
    order, e.g. ``(b, c)`` for ``(B, H, W, C)`` with spatial axes 1, 2). Each
    block is reduced over the spatial axes it holds; a pattern split across
    blocks (one pattern larger than a block) gets each part added, so memory
    stays bounded by the block whatever the pattern size.
    """
    device = accumulation_device(x.device)
    limit = _block_limit(device)
    buffer = torch.empty(min(limit, x.numel()), dtype=torch.float64, device=device)
    # Pattern ids laid out like x, with size 1 on the spatial axes (a broadcast view).
    id_shape = [1 if d in axes else n for d, n in enumerate(x.shape)]
    ids = torch.arange(math.prod(id_shape), device=device).view(id_shape)
    sums = torch.zeros(ids.numel(), dtype=torch.float64, device=device)
    totals: list[torch.Tensor] = []
    minima: list[torch.Tensor] = []
    dropped_totals: list[torch.Tensor] = []
    dropped_counts: list[torch.Tensor] = []
    for index in blocks(tuple(x.shape), limit):
        block = x[index]
        view = buffer[: block.numel()].view(block.shape)
        view.copy_(block)
        if mask is not None:
            removed, count = _apply_mask(view, mask[index], square)
            dropped_totals.append(removed)
            dropped_counts.append(count)
        minima.append(view.amin())
        if square:
            view.mul_(view)  # our own buffer: squaring in place is safe
        # The block's dimensions: x's, less those an integer index dropped.
        kept = [d for d in range(x.ndim) if d >= len(index) or not isinstance(index[d], int)]
        spatial = [i for i, d in enumerate(kept) if d in axes]
        per_pattern = view.sum(dim=spatial, keepdim=True) if spatial else view
        id_index = tuple(
            (0 if isinstance(i, int) else slice(None)) if d in axes else i
            for d, i in enumerate(index)
        )
        block_ids = ids[id_index].expand(per_pattern.shape)
        sums.index_add_(0, block_ids.reshape(-1), per_pattern.reshape(-1))
        totals.append(per_pattern.sum())
    n = len(totals)
    stats = torch.stack(
        [torch.stack(minima).amin(), *totals, *dropped_totals, *dropped_counts]
    ).tolist()
    dropped = int(sum(stats[1 + 2 * n :]))
    return stats[1 : 1 + n], stats[0], stats[1 + n : 1 + 2 * n], dropped, sums
