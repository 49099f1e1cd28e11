"""Fold a file's patterns into an accumulator in bounded memory, whatever the pattern size.

`fold_patterns` is what ``physscale derive`` runs: it reads a checked
`PatternSource` in pieces of at most
`CHUNK_BYTES` and hands them to an
[`IntensityAccumulator`][physscale.IntensityAccumulator]:

- pieces of whole first-axis entries go to ``update`` as they are (the
  ordinary case: many patterns per piece);
- an entry larger than a piece (one huge pattern) is folded with
  ``update_fragments``: the accumulator sums the entry's pieces one by one
  and counts its patterns once, when the entry is complete;
- when no first-axis entry holds whole patterns (the first axis is a
  spatial axis, as for a 3-D ``(H, W, C)`` file read as NHWC) or the file is
  stored column-major, the whole array is one batch folded from its pieces.

Only one piece is held at a time. The result equals one ``update`` with the
whole array, to float64 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from physscale.accumulator import IntensityAccumulator
from physscale.core.checks import spatial_axes
from physscale.io.readers import CHUNK_BYTES, Index, PatternSource

__all__ = ["fold_patterns"]

Pieces = Iterator[tuple[Index, np.ndarray]]


def fold_patterns(
    acc: IntensityAccumulator,
    source: PatternSource,
    *,
    mask: Any = None,
    chunk_patterns: int | None = None,
    max_bytes: int = CHUNK_BYTES,
    on_progress: Callable[[int], None] | None = None,
    name: str | None = None,
    scratch: np.ndarray | None = None,
) -> IntensityAccumulator:
    """Stream every pattern of ``source`` into ``acc``; returns ``acc``.

    Args:
        acc: the accumulator (its domain and spatial axes apply).
        source: a checked file array, from `physscale.io.readers.pattern_source`.
        mask: optional boolean valid-pixel mask, as for ``acc.update``
            (broadcastable to a chunk of whole entries, e.g. ``(H, W)``).
        chunk_patterns: most first-axis entries per piece (default: as many
            as fit in ``max_bytes``).
        max_bytes: most bytes per piece read (default 16 MiB); entries
            larger than this are read in pieces.
        on_progress: called with the number of first-axis entries each
            step completes (for a progress bar; approximate for
            column-major files, which are read across all entries at once).
        name: how error messages call the data (default: the source's
            ``where``, e.g. ``scan.npz:diffraction``).
        scratch: memory to read the pieces into (uint8, at least
            ``max_bytes``), kept by the caller across files; see
            `pieces`.

    Peak memory is about one piece (plus the accumulator's fixed buffers),
    whatever the size of the file or of one pattern.
    """
    info = source.info
    where = source.where if name is None else name
    n = info.shape[0]
    per_row = info.count // n
    done = [0, 0]  # elements read, entries reported

    def report(piece: np.ndarray) -> None:
        done[0] += piece.size
        rows = done[0] // per_row
        if on_progress is not None and rows > done[1]:
            on_progress(rows - done[1])
        done[1] = rows

    # One reused buffer: each piece is folded in before the next is read.
    pieces = source.pieces(chunk_patterns, max_bytes, reuse=True, scratch=scratch)
    first_spatial = min(spatial_axes(len(info.shape), acc.spatial_dims))
    if first_spatial == 0 or info.fortran_order:
        acc.update_fragments(info.shape, _reporting(pieces, report), mask, name=where)
        return acc
    row_shape = (1, *info.shape[1:])
    for index, piece in pieces:
        if len(index) == 1:  # whole entries
            acc.update_named(piece, mask, where)
            report(piece)
        else:  # the first piece of one entry: fold the entry piece by piece
            row = _row_fragments(index, piece, pieces, info.shape)
            acc.update_fragments(row_shape, _reporting(row, report), mask, name=where)
    return acc


def _reporting(pieces: Pieces, report: Callable[[np.ndarray], None]) -> Pieces:
    for index, piece in pieces:
        yield index, piece
        report(piece)


def _row_fragments(first: Index, piece: np.ndarray, rest: Pieces, shape: tuple[int, ...]) -> Pieces:
    """The pieces of one first-axis entry, indexed into a ``(1, *shape[1:])`` batch."""
    index = first
    while True:
        yield (0, *index[1:]), piece
        if _ends_entry(index, shape):
            return
        try:
            index, piece = next(rest)
        except StopIteration:  # pragma: no cover - the reader always completes an entry
            return


def _ends_entry(index: Index, shape: tuple[int, ...]) -> bool:
    """Whether the piece at ``index`` (ints, then one slice) is the last of its entry."""
    depth = len(index) - 1
    last = index[depth]
    if not isinstance(last, slice) or last.stop != shape[depth]:
        return False
    return all(index[axis] == shape[axis] - 1 for axis in range(1, depth))
