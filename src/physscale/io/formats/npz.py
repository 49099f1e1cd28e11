"""``.npz`` archives: the member ``<key>.npy`` streamed from the zip, never loaded whole.

The member is decompressed on the fly, 1 MiB at a time. Its declared sizes
are checked against the archive first (stored or deflated only, no
encryption, no expansion beyond what deflate can produce, the ``.npy``
header matching the member's size) and its CRC at the end. Object arrays are
refused: they are pickles. Fortran-ordered members are refused too: they
cannot be read pattern by pattern from a stream.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

import numpy as np

from physscale.errors import DataFileError
from physscale.io._files import (
    ZIP_OPEN_ERRORS,
    check_zip_member,
    describe,
    open_zip,
    zip_archive_size,
)
from physscale.io.formats.base import (
    READ_ERRORS,
    ArrayInfo,
    FileKind,
    Index,
    PatternSource,
    check_patterns,
    fresh,
    native,
    piece_indices,
    read_exact,
)
from physscale.io.formats.npy import read_npy_header

__all__ = ["NpzSource", "array_info", "list_arrays", "open_npz", "open_source"]


@contextlib.contextmanager
def open_npz(path: Path) -> Iterator[zipfile.ZipFile]:
    """Open an ``.npz`` (a regular file) as a zip, turning zip errors into DataFileError."""
    with open_zip(path, ".npz (zip) archive") as zf:
        yield zf


def list_arrays(path: Path) -> list[ArrayInfo]:
    """Every member's array, in archive order (``_metadata`` included), from headers only."""
    with open_npz(path) as zf:
        size = zip_archive_size(zf)
        return [_info(zf, path, info, size) for info in zf.infolist()]


def array_info(path: Path, key: str) -> ArrayInfo:
    """The array ``key``, from its header."""
    # Only this member's header: the others are not needed, nor read.
    with open_npz(path) as zf:
        return _info(zf, path, _member(zf, path, key), zip_archive_size(zf))


def _member(zf: zipfile.ZipFile, path: Path, key: str) -> zipfile.ZipInfo:
    """The member that holds array ``key``; a missing key lists the keys there are."""
    member = key + ".npy"
    try:
        return zf.getinfo(member)
    except KeyError:
        names = zf.namelist()
        shown = ", ".join(repr(n.removesuffix(".npy")) for n in names[:20]) or "none"
        more = f" and {len(names) - 20} more" if len(names) > 20 else ""
        raise DataFileError(
            f"{path}: has no array {key!r}; it holds {shown}{more}. Pick one with key= (--key)"
        ) from None


def _open_member(
    zf: zipfile.ZipFile, path: Path, info: zipfile.ZipInfo, archive_size: int
) -> tuple[IO[bytes], ArrayInfo, int]:
    """Open a member after checking it; return the stream (at the data), its header, offset."""
    key = info.filename.removesuffix(".npy")
    where = f"{path}:{key}"
    check_zip_member(info, where, archive_size=archive_size)
    try:
        stream = zf.open(info)
    except ZIP_OPEN_ERRORS as exc:
        raise DataFileError(f"{where}: corrupt member ({describe(exc)})") from None
    try:
        header = read_npy_header(stream, where, key)
        offset = stream.tell()
    except BaseException:
        stream.close()
        raise
    return stream, header, offset


def _info(zf: zipfile.ZipFile, path: Path, info: zipfile.ZipInfo, archive_size: int) -> ArrayInfo:
    """One member's ArrayInfo, from its header only."""
    stream, header, _ = _open_member(zf, path, info, archive_size)
    with contextlib.suppress(*READ_ERRORS):
        stream.close()
    return header


def _check_sizes(info: ArrayInfo, member: zipfile.ZipInfo, offset: int, where: str) -> None:
    """The member's size (from the zip directory) must be the header plus the data."""
    data_bytes = member.file_size - offset
    if data_bytes < info.nbytes:
        raise DataFileError(
            f"{where}: truncated: the header promises shape {info.shape} ({info.nbytes} bytes "
            f"of {info.dtype}) but the member holds {max(data_bytes, 0)} bytes of data"
        )
    if data_bytes > info.nbytes:
        raise DataFileError(
            f"{where}: corrupt: the member holds {data_bytes} bytes of data, more than the "
            f"header's shape {info.shape} of {info.dtype} ({info.nbytes} bytes)"
        )


def open_source(path: Path, key: str, *, counts: bool = False) -> NpzSource:
    """Check the member ``<key>.npy``'s stack of patterns completely."""
    where = f"{path}:{key}"
    with open_npz(path) as zf:
        member = _member(zf, path, key)
        stream, info, offset = _open_member(zf, path, member, zip_archive_size(zf))
        with contextlib.suppress(*READ_ERRORS):
            stream.close()
    check_patterns(info, where, counts=counts)
    if info.fortran_order:
        raise DataFileError(
            f"{where}: stored in Fortran (column-major) order, which cannot be read "
            f"pattern by pattern from a zip; re-save it with np.ascontiguousarray(x)"
        )
    _check_sizes(info, member, offset, where)
    return NpzSource(path, key, info, where, counts=counts)


@dataclass(frozen=True)
class NpzSource(PatternSource):
    """A checked ``.npz`` member holding a stack of patterns."""

    kind: ClassVar[FileKind] = "npz"

    def _pieces(
        self, step: int, max_bytes: int | None, buffer: np.ndarray | None
    ) -> Iterator[tuple[Index, np.ndarray]]:
        info = self.info
        with open_npz(self.path) as zf:
            member = _member(zf, self.path, self.key)
            stream, header, offset = _open_member(zf, self.path, member, zip_archive_size(zf))
            with stream:
                self.same(header)
                _check_sizes(header, member, offset, self.where)
                itemsize = info.dtype.itemsize
                limit = max_bytes if max_bytes is not None else max(self.row_bytes * step, itemsize)
                for index, flat, shape in piece_indices(info.shape, itemsize, step, limit):
                    piece = fresh(shape, info.dtype, buffer)
                    read_exact(stream, piece, self.where, info, flat * itemsize, piecewise=True)
                    yield index, native(piece)
                try:
                    # Reading past the end makes zipfile verify the member's CRC-32.
                    extra = stream.read(1)
                except READ_ERRORS as exc:
                    raise DataFileError(f"{self.where}: corrupt data ({describe(exc)})") from None
                if extra:
                    raise DataFileError(
                        f"{self.where}: corrupt: more data than the header's shape "
                        f"{info.shape} holds"
                    )
