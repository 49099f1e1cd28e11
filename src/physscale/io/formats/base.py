"""What every format reader shares: the array description, the pattern-source interface, checks.

A `PatternSource` is a stack of patterns in a file, checked completely
before any data is read (a regular file, a valid header, a float dtype, at
least three axes, and every declared size backed by the container's real
size). It streams the data in two ways, each time re-checking that the file
has not changed:

- `PatternSource.chunks`: whole entries of the first axis,
  ``chunk_patterns`` at a time (default: as many as fit in
  `CHUNK_BYTES`, at least one);
- `PatternSource.pieces`: pieces of at most ``max_bytes`` each, cut
  inside an entry when one entry is larger than that, each with its index
  into the stored array.

Each format module (``npy``, ``npz``, ``hdf5``) subclasses it with the two
reads, ``_chunks`` and ``_pieces``; everything else (argument checks, the
reusable buffer, the re-check of the description) lives here, once.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

import numpy as np

from physscale.core.checks import COUNTS_NEXT_STEP
from physscale.errors import DataFileError, UnsafeFileError, Wording
from physscale.io._files import describe, open_regular

__all__ = [
    "CHUNK_BYTES",
    "MAX_ARRAY_BYTES",
    "READ_ERRORS",
    "ArrayInfo",
    "FileKind",
    "Index",
    "PatternSource",
    "check_patterns",
    "chunk_len",
    "file_kind",
    "fresh",
    "native",
    "piece_indices",
    "read_exact",
]

FileKind = Literal["npy", "npz", "hdf5"]

Index = tuple[int | slice, ...]
"""An index into a stored array: integers for leading axes, then at most one slice."""

CHUNK_BYTES = 16 * 1024 * 1024
"""Target size of one chunk when ``chunk_patterns`` is not given (16 MiB)."""

MAX_ARRAY_BYTES = (1 << 63) - 1
"""No array may describe more bytes than a signed 64-bit offset can address."""

_MAGIC = {b"\x93NUMPY": "npy", b"PK\x03\x04": "npz", b"PK\x05\x06": "npz", b"\x89HDF": "hdf5"}

# A zip member is read 1 MiB at a time (zipfile has no readinto).
_ZIP_PIECE_BYTES = 1 << 20

READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
)
"""What reading a damaged zip member can raise (CRC, inflate, short reads, encryption, unsupported
compression)."""


@dataclass(frozen=True)
class ArrayInfo:
    """Shape and dtype of one array in a file, read from its header only.

    Attributes:
        name: the key (``.npz`` member without ``.npy``, HDF5 dataset path,
            or the file name for ``.npy``).
        shape: the array's shape.
        dtype: its numpy dtype (as stored; byte order included).
        fortran_order: whether the data is stored column-major.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran_order: bool = False

    @property
    def count(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the data in bytes."""
        return self.count * self.dtype.itemsize


def file_kind(path: str | os.PathLike[str]) -> FileKind:
    """Tell a ``.npy``, ``.npz`` or HDF5 file by its first bytes (not its name).

    Raises:
        DataFileError: a missing file, a directory, a FIFO or device (never
            read, never waited on), an empty file or another format.
    """
    p = Path(path)
    with open_regular(p) as f:
        try:
            head = f.read(8)
        except OSError as exc:
            raise DataFileError(f"{p}: cannot read ({exc.strerror or describe(exc)})") from None
    if not head:
        raise DataFileError(f"{p}: the file is empty")
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind  # type: ignore[return-value]
    raise DataFileError(
        f"{p}: not a .npy, .npz or HDF5 file (starts with {head[:8]!r}); physscale reads "
        f"those three formats"
    )


def check_patterns(
    info: ArrayInfo, where: str, kind: FileKind = "npy", *, counts: bool = False
) -> None:
    """Refuse arrays that cannot be a stack of real-valued patterns.

    ``counts``: the stack holds detector counts, so integer dtypes are
    admitted too ([`physscale.io.normalize_files`][physscale.io.normalize_files] reads them),
    and booleans (its per-frame pixel masks; it refuses boolean counts itself).
    """
    if info.dtype.hasobject:
        if kind == "hdf5":
            raise DataFileError(
                f"{where}: holds variable-length or string data ({info.dtype}), not patterns; "
                f"store the patterns as float32 or float64"
            )
        raise UnsafeFileError(
            f"{where}: dtype object arrays are pickles and are never loaded; store the "
            f"patterns as float32 or float64"
        )
    if counts and info.dtype.kind in "biu":
        pass
    elif info.dtype.kind != "f":
        if info.dtype.kind in "iu":
            # Integer data are detector counts: the one next step for counts, in
            # terms of files (the command line says `physscale normalize`).
            raise DataFileError(
                Wording(
                    "{where}: patterns must be real floating point (float16/32/64), got "
                    "dtype {dtype}: detector counts. " + COUNTS_NEXT_STEP.template,
                    {"normalize_counts": "physscale.io.normalize_files(paths, out)"},
                    where=where,
                    dtype=str(info.dtype),
                )
            )
        raise DataFileError(
            f"{where}: patterns must be real floating point (float16/32/64), got dtype {info.dtype}"
        )
    if info.dtype.kind == "f" and info.dtype.itemsize not in (2, 4, 8):
        # longdouble / float96 / float128: torch has no such dtype.
        raise DataFileError(
            f"{where}: patterns must be float16, float32 or float64, got the "
            f"{8 * info.dtype.itemsize}-bit extended-precision dtype {info.dtype}, which "
            f"torch cannot hold; save them with x.astype(np.float64)"
        )
    if len(info.shape) < 3:
        raise DataFileError(
            f"{where}: expected a stack of patterns with at least 3 axes, e.g. (n, H, W), "
            f"got shape {info.shape}"
        )
    if info.count == 0:
        raise DataFileError(f"{where}: holds no patterns (shape {info.shape})")


def chunk_len(info: ArrayInfo, chunk_patterns: int | None) -> int:
    """First-axis entries per chunk: ``chunk_patterns``, checked, or what fits in CHUNK_BYTES."""
    if chunk_patterns is None:
        entry_bytes = max(1, info.nbytes // info.shape[0])
        return max(1, CHUNK_BYTES // entry_bytes)
    is_int = isinstance(chunk_patterns, int | np.integer) and not isinstance(chunk_patterns, bool)
    if not is_int or chunk_patterns < 1:
        raise DataFileError(f"chunk_patterns must be a positive int, got {chunk_patterns!r}")
    return int(chunk_patterns)


def native(arr: np.ndarray) -> np.ndarray:
    """``arr`` in native byte order (swapped in place when it is not)."""
    if arr.dtype.isnative:
        return arr
    swapped: np.ndarray = arr.byteswap(inplace=True).view(arr.dtype.newbyteorder("="))
    return swapped


def fresh(shape: tuple[int, ...], dtype: np.dtype[Any], buffer: np.ndarray | None) -> np.ndarray:
    """A new array of ``shape``, or a view of ``buffer`` (large enough) when one is given."""
    if buffer is None:
        return np.empty(shape, dtype=dtype)
    view: np.ndarray = buffer[: math.prod(shape)].reshape(shape)
    return view


def piece_indices(
    shape: tuple[int, ...], itemsize: int, max_rows: int, max_bytes: int
) -> Iterator[tuple[Index, int, tuple[int, ...]]]:
    """Cut a C-ordered array into contiguous pieces, in storage order.

    Whole first-axis entries, at most ``max_rows`` at a time, while one entry
    fits in ``max_bytes``; otherwise each entry is cut along its next axes
    (recursively) into pieces of at most ``max_bytes``.

    Yields:
        ``(index, flat_start, piece_shape)``: the index of the piece (ints
        then one slice), its first element's flat (C-order) position, and
        its shape (``array[index].shape``).
    """
    limit = max(1, max_bytes // itemsize)

    def cut(
        sub: tuple[int, ...], prefix: Index, base: int
    ) -> Iterator[tuple[Index, int, tuple[int, ...]]]:
        inner = math.prod(sub[1:])
        if inner > limit:
            for i in range(sub[0]):
                yield from cut(sub[1:], (*prefix, i), base + i * inner)
            return
        step = min(max_rows, limit // inner) if not prefix else limit // inner
        for start in range(0, sub[0], step):
            stop = min(start + step, sub[0])
            yield (*prefix, slice(start, stop)), base + start * inner, (stop - start, *sub[1:])

    yield from cut(shape, (), 0)


def read_exact(
    stream: IO[bytes], out: np.ndarray, where: str, info: ArrayInfo, done: int, piecewise: bool
) -> None:
    """Fill ``out`` from ``stream``; a short read is a truncation error.

    ``piecewise`` reads 1 MiB at a time with ``read`` (zip members have no
    ``readinto``); ``done`` is how many bytes of the array came before, for
    the message.
    """
    view = out.data.cast("B")
    filled = 0
    while filled < len(view):
        try:
            if piecewise:
                piece = stream.read(min(len(view) - filled, _ZIP_PIECE_BYTES))
                got = len(piece)
                view[filled : filled + got] = piece
            else:
                got = stream.readinto(view[filled:])  # type: ignore[attr-defined]
        except READ_ERRORS as exc:
            raise DataFileError(f"{where}: corrupt data ({describe(exc)})") from None
        if not got:
            raise DataFileError(
                f"{where}: truncated: the header promises shape {info.shape} "
                f"({info.nbytes} bytes of {info.dtype}) but the data ends after "
                f"{done + filled} bytes"
            )
        filled += got


@dataclass(frozen=True)
class PatternSource:
    """A stack of patterns in a file, checked completely and ready to stream.

    Made by `physscale.io.readers.pattern_source` (one subclass per
    format); holds no open file. Each stream it starts re-opens the file and
    checks that the array is still the one described.

    Attributes:
        path: the file.
        key: the ``.npz`` key or HDF5 dataset path (the file name for ``.npy``).
        info: shape, dtype and order of the stored array (at least 3 axes,
            float16/32/64, at least one element).
        where: how errors name it (``"file.npz:diffraction"``).
        kind: ``"npy"``, ``"npz"`` or ``"hdf5"`` (fixed by the subclass).
    """

    path: Path
    key: str
    info: ArrayInfo
    where: str
    #: Integer detector counts admitted (see `check_patterns`).
    counts: bool = field(default=False, kw_only=True)

    kind: ClassVar[FileKind]
    #: Whether ``pieces(reuse=True)`` reads into one buffer (h5py allocates its own).
    reads_into_buffer: ClassVar[bool] = True

    @property
    def row_bytes(self) -> int:
        """Bytes in one entry of the first axis."""
        return self.info.nbytes // self.info.shape[0]

    def chunks(self, chunk_patterns: int | None = None) -> Iterator[np.ndarray]:
        """Whole first-axis entries, ``chunk_patterns`` at a time; see
        [`physscale.io.readers.iter_patterns`][physscale.io.readers.iter_patterns].

        Memory is one chunk, which is at least one entry: for bounded memory
        whatever the entry size, use `pieces`.
        """
        yield from self._chunks(chunk_len(self.info, chunk_patterns))

    def pieces(
        self,
        chunk_patterns: int | None = None,
        max_bytes: int = CHUNK_BYTES,
        *,
        reuse: bool = False,
        scratch: np.ndarray | None = None,
    ) -> Iterator[tuple[Index, np.ndarray]]:
        """The stored array in pieces of at most ``max_bytes``, each with its index.

        Args:
            chunk_patterns: most first-axis entries per piece (default: as
                many as fit in ``max_bytes``).
            max_bytes: most bytes per piece; an entry larger than this is
                cut along its next axes (default `CHUNK_BYTES`).
            reuse: read every ``.npy``/``.npz`` piece into one buffer, so a
                piece is valid only until the next one is asked for (no
                allocation per piece: for consumers that fold each piece
                in at once).
            scratch: with ``reuse``, the memory to read into: a C-contiguous
                uint8 array of at least ``max_bytes`` bytes, kept by the
                caller across files (no page faults on fresh memory per file).
                Default: a buffer allocated for this call.

        Yields:
            ``(index, piece)`` with ``piece`` equal to ``stored[index]``
            (native byte order; a fresh array unless ``reuse``); the pieces
            cover the array exactly once, in storage order. A piece whose
            index is a single slice holds whole entries.
        """
        if max_bytes < 1:
            raise DataFileError(f"max_bytes must be positive, got {max_bytes!r}")
        step = chunk_len(self.info, chunk_patterns)
        buffer = None
        if reuse and self.reads_into_buffer:
            itemsize = self.info.dtype.itemsize
            limit = min(max(1, max_bytes // itemsize), self.info.count)
            usable = (
                scratch is not None
                and scratch.dtype == np.uint8
                and scratch.flags.c_contiguous
                and scratch.size >= limit * itemsize
                and scratch.ctypes.data % itemsize == 0
            )
            if scratch is not None and usable:
                buffer = scratch[: limit * itemsize].view(self.info.dtype)
            else:
                buffer = np.empty(limit, dtype=self.info.dtype)
        yield from self._pieces(step, max_bytes, buffer)

    def _chunks(self, step: int) -> Iterator[np.ndarray]:
        """Whole entries, ``step`` at a time (default: the pieces of whole entries)."""
        for _, chunk in self._pieces(step, None, None):
            yield chunk

    def _pieces(
        self, step: int, max_bytes: int | None, buffer: np.ndarray | None
    ) -> Iterator[tuple[Index, np.ndarray]]:
        """The format's read: pieces of at most ``max_bytes`` (None: ``step`` whole entries)."""
        raise NotImplementedError  # pragma: no cover - every format defines it

    def same(self, info: ArrayInfo) -> None:
        """Refuse a file whose array is no longer the one checked (``info``: as read now)."""
        if (info.shape, info.dtype, info.fortran_order) != (
            self.info.shape,
            self.info.dtype,
            self.info.fortran_order,
        ):
            raise DataFileError(
                f"{self.where}: the file changed since it was checked (shape {self.info.shape} "
                f"{self.info.dtype}, now {info.shape} {info.dtype})"
            )
