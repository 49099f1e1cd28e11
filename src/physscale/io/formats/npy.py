"""``.npy`` files: the header parsed and checked against the file size, data read by ``readinto``.

Each chunk or piece is read into a fresh array (or the caller's buffer). No
memory map: a file truncated while it is mapped kills the process with
SIGBUS. Fortran-ordered files are gathered column by column for ``chunks``
and read in file order for ``pieces``.

`read_npy_header` is also how ``.npz`` members and metadata are read.
"""

from __future__ import annotations

import contextlib
import os
import tokenize
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

import numpy as np

from physscale.core.checks import mask_dtype_message
from physscale.errors import DataFileError, MaskError
from physscale.io._files import describe, open_regular
from physscale.io.formats.base import (
    MAX_ARRAY_BYTES,
    READ_ERRORS,
    ArrayInfo,
    FileKind,
    Index,
    PatternSource,
    check_patterns,
    file_kind,
    fresh,
    native,
    piece_indices,
    read_exact,
)

__all__ = [
    "NpySource",
    "array_info",
    "list_arrays",
    "open_source",
    "read_mask",
    "read_npy_header",
]


def read_npy_header(stream: IO[bytes], where: str, name: str) -> ArrayInfo:
    """Parse a ``.npy`` header from ``stream``, leaving it at the first data byte.

    ``name`` is the returned ArrayInfo's name; ``where`` names the array in
    errors. Every failure of numpy's parser on a hostile header (a lying
    length, a header that does not tokenize, deep nesting, a bad dtype, huge
    or negative dimensions) is a [`DataFileError`][physscale.errors.DataFileError].
    """
    fmt = np.lib.format
    try:
        with warnings.catch_warnings():
            # numpy warns when it has to re-tokenize a Python 2 header.
            warnings.simplefilter("ignore")
            version = fmt.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(stream)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = fmt.read_array_header_2_0(stream)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
    except READ_ERRORS as exc:
        raise DataFileError(f"{where}: corrupt data ({describe(exc)})") from None
    except (
        ValueError,
        SyntaxError,
        TypeError,
        tokenize.TokenError,
        OverflowError,
        RecursionError,
        MemoryError,
        KeyError,
        IndexError,
        AttributeError,
    ) as exc:
        raise DataFileError(f"{where}: not a valid .npy array header ({describe(exc)})") from None
    dims = tuple(int(s) for s in shape)
    if any(d < 0 for d in dims):
        raise DataFileError(f"{where}: the .npy header declares a negative dimension {dims}")
    info = ArrayInfo(name, dims, np.dtype(dtype), bool(fortran))
    if info.nbytes > MAX_ARRAY_BYTES:
        raise DataFileError(
            f"{where}: the .npy header declares shape {dims} of {info.dtype}, more bytes than "
            f"any file can hold"
        )
    return info


def array_info(path: Path, key: str = "") -> ArrayInfo:
    """The file's one array, from its header (``key`` is ignored: a .npy holds one)."""
    with open_regular(path) as f:
        return read_npy_header(f, str(path), path.name)


def list_arrays(path: Path) -> list[ArrayInfo]:
    """The file's one array."""
    return [array_info(path)]


def _validate(f: IO[bytes], path: Path, counts: bool = False) -> tuple[ArrayInfo, int]:
    where = str(path)
    info = read_npy_header(f, where, path.name)
    check_patterns(info, where, counts=counts)
    offset = f.tell()
    _check_size(f, info, offset, where)
    return info, offset


def _check_size(f: IO[bytes], info: ArrayInfo, offset: int, where: str) -> None:
    """The open file must hold the header's ``offset`` bytes plus the data it promises."""
    size = os.fstat(f.fileno()).st_size
    if size < offset + info.nbytes:
        raise DataFileError(
            f"{where}: truncated: the header promises shape {info.shape} "
            f"({info.nbytes} bytes of {info.dtype}) but the file holds "
            f"{max(size - offset, 0)} bytes of data"
        )


def open_source(path: Path, key: str = "", *, counts: bool = False) -> NpySource:
    """Check the file's stack of patterns completely (``key`` is ignored)."""
    with open_regular(path) as f:
        info, offset = _validate(f, path, counts)
        f.seek(0)
        header = f.read(offset)
    return NpySource(path, path.name, info, str(path), npy_header=header, counts=counts)


def _fortran_index(c_index: Index, ndim: int) -> Index:
    """Index into a Fortran-ordered array of the piece ``c_index`` of its C-ordered transpose."""
    out: list[int | slice] = []
    for axis in range(ndim):
        c_axis = ndim - 1 - axis
        out.append(c_index[c_axis] if c_axis < len(c_index) else slice(None))
    return tuple(out)


@dataclass(frozen=True)
class NpySource(PatternSource):
    """A checked ``.npy`` stack of patterns.

    Attributes:
        npy_header: the raw bytes of the checked header: a stream that finds
            them unchanged skips parsing them again.
    """

    npy_header: bytes | None = None

    kind: ClassVar[FileKind] = "npy"

    @contextlib.contextmanager
    def _open(self) -> Iterator[tuple[IO[bytes], int]]:
        with open_regular(self.path) as f:
            header = self.npy_header
            if header is not None and f.read(len(header)) == header:
                # The header checked before, byte for byte: only the size can have changed.
                offset = len(header)
                _check_size(f, self.info, offset, self.where)
            else:
                f.seek(0)
                info, offset = _validate(f, self.path, self.counts)
                self.same(info)
            yield f, offset

    def _chunks(self, step: int) -> Iterator[np.ndarray]:
        info = self.info
        n, rest = info.shape[0], info.shape[1:]
        with self._open() as (f, offset):
            row = self.row_bytes
            for start in range(0, n, step):
                k = min(step, n - start)
                chunk = np.empty((k, *rest), dtype=info.dtype)
                if info.fortran_order:
                    self._gather_fortran(f, offset, chunk, start)
                else:
                    f.seek(offset + start * row)
                    read_exact(f, chunk, self.where, info, start * row, piecewise=False)
                yield native(chunk)

    def _gather_fortran(self, f: IO[bytes], offset: int, chunk: np.ndarray, start: int) -> None:
        """Rows ``start:start+k`` of a column-major array: one contiguous run per column."""
        info = self.info
        n, k, itemsize = info.shape[0], chunk.shape[0], info.dtype.itemsize
        columns = info.count // n
        # Column-major: element (i, j...) sits at i + n * column(j...).
        buf = np.empty((columns, k), dtype=info.dtype)
        for c in range(columns):
            f.seek(offset + (c * n + start) * itemsize)
            read_exact(f, buf[c], self.where, info, (c * n + start) * itemsize, False)
        gathered = buf.reshape((*info.shape[:0:-1], k)).transpose()
        chunk[...] = gathered

    def _pieces(
        self, step: int, max_bytes: int | None, buffer: np.ndarray | None
    ) -> Iterator[tuple[Index, np.ndarray]]:
        info = self.info
        itemsize = info.dtype.itemsize
        limit = max_bytes if max_bytes is not None else max(self.row_bytes * step, itemsize)
        # A Fortran-ordered array is its reversed-shape C array, transposed.
        c_shape = info.shape[::-1] if info.fortran_order else info.shape
        rows = step if not info.fortran_order else c_shape[0]
        with self._open() as (f, offset):
            for index, flat, shape in piece_indices(c_shape, itemsize, rows, limit):
                piece = fresh(shape, info.dtype, buffer)
                f.seek(offset + flat * itemsize)
                read_exact(f, piece, self.where, info, flat * itemsize, piecewise=False)
                if info.fortran_order:
                    yield _fortran_index(index, len(c_shape)), native(piece).transpose()
                else:
                    yield index, native(piece)


def read_mask(path: str | os.PathLike[str], where: str, max_count: int) -> np.ndarray:
    """Read a boolean ``.npy`` mask after checking its header, never more than ``max_count`` values.

    Args:
        path: the ``.npy`` file.
        where: how errors name it (``"--mask m.npy"``).
        max_count: the most elements a mask may have (e.g. one pattern's pixels).

    Raises:
        MaskError: not a ``.npy`` file, not boolean, or more than ``max_count`` elements.
        DataFileError: a missing, special, damaged or truncated file.
    """
    p = Path(path)
    if file_kind(p) != "npy":
        raise MaskError(f"{where}: the mask must be a .npy file holding a boolean array")
    with open_regular(p) as f:
        info = read_npy_header(f, where, p.name)
        if info.dtype != np.bool_:
            raise MaskError(f"{where}: {mask_dtype_message(str(info.dtype))}")
        if info.count > max_count:
            raise MaskError(
                f"{where}: the mask has shape {info.shape} ({info.count} values), more than "
                f"the {max_count} pixels it can apply to; pass a mask of one pattern's "
                f"shape, e.g. (H, W)"
            )
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
        if size - offset < info.nbytes:
            raise DataFileError(
                f"{where}: truncated: the header promises shape {info.shape} but the file "
                f"holds {max(size - offset, 0)} bytes of data"
            )
        flat = np.empty(info.count, dtype=np.bool_)
        read_exact(f, flat, where, info, 0, piecewise=False)
    mask: np.ndarray = flat.reshape(info.shape, order="F" if info.fortran_order else "C")
    return mask
