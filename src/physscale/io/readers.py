"""Streaming pattern readers for ``.npy``, ``.npz`` and HDF5 files, in bounded memory.

:func:`pattern_source` opens nothing for long: it checks a file completely
before any data is read (a regular file, a valid header, a float dtype, at
least three axes, and every declared size backed by the container's real
size) and returns a :class:`PatternSource`. That source streams the data in
two ways, each time re-checking that the file has not changed:

- :meth:`PatternSource.chunks` (what :func:`iter_patterns` yields): whole
  entries of the first axis, ``chunk_patterns`` at a time (default: as many
  as fit in :data:`CHUNK_BYTES`, at least one);
- :meth:`PatternSource.pieces`: pieces of at most ``max_bytes`` each, cut
  inside an entry when one entry is larger than that, each with its index
  into the stored array. Memory then stays bounded by the piece size
  whatever the pattern size; ``physscale derive`` reads this way (see
  :func:`physscale.io.streaming.fold_patterns`).

How each format is read:

- ``.npy``: the header is parsed and checked against the file size, then
  each chunk is read with ``readinto`` into a fresh array. (No memory map: a
  file truncated while it is mapped kills the process with SIGBUS.)
  Fortran-ordered files are gathered column by column for ``chunks`` and read
  in file order for ``pieces``.
- ``.npz``: the member ``<key>.npy`` is read from the zip as a stream
  (decompressed on the fly, 1 MiB at a time) and never loaded whole; its
  declared sizes are checked against the archive first (stored or deflated
  only, no encryption, no expansion beyond what deflate can produce, the
  ``.npy`` header matching the member's size) and its CRC at the end. Object
  arrays are refused: they are pickles.
- HDF5 (optional extra ``hdf5``: ``pip install physscale[hdf5]``): the dataset
  at path ``key`` is read by slices. Datasets whose storage was never written
  (they would read as the fill value), whose data lives in external or
  virtual files, or whose compressed chunks are larger than
  :data:`MAX_HDF5_CHUNK_BYTES` are refused.

Every problem raises :class:`physscale.DataFileError` naming the file, the
key and what is wrong; no exception from numpy, zipfile or h5py escapes.
"""

from __future__ import annotations

import contextlib
import math
import os
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from physscale.errors import DataFileError, MaskError, PhysscaleError, UnsafeFileError
from physscale.io._files import (
    ZIP_OPEN_ERRORS,
    check_zip_member,
    describe,
    open_regular,
    open_zip,
    require_regular,
    zip_archive_size,
)

__all__ = [
    "CHUNK_BYTES",
    "EXAMPLE_DATASET",
    "MAX_HDF5_CHUNK_BYTES",
    "ArrayInfo",
    "Index",
    "PatternSource",
    "array_info",
    "example_dataset_path",
    "file_kind",
    "iter_patterns",
    "list_arrays",
    "pattern_source",
    "read_mask",
    "read_npy_header",
]

FileKind = Literal["npy", "npz", "hdf5"]

#: An index into a stored array: integers for leading axes, then at most one slice.
Index = tuple[int | slice, ...]

#: Target size of one chunk when ``chunk_patterns`` is not given (16 MiB).
CHUNK_BYTES = 16 * 1024 * 1024

#: libhdf5 inflates a compressed chunk whole to read any part of it: larger
#: compressed chunks than this (64 MiB) are refused.
MAX_HDF5_CHUNK_BYTES = 64 * 1024 * 1024

#: File name of the example dataset shipped in ``physscale/data``.
EXAMPLE_DATASET = "example_diffraction.npz"

_MAGIC = {b"\x93NUMPY": "npy", b"PK\x03\x04": "npz", b"PK\x05\x06": "npz", b"\x89HDF": "hdf5"}
_HDF5_HINT = "pip install physscale[hdf5]"

_ZIP_PIECE_BYTES = 1 << 20
# No array may describe more bytes than a signed 64-bit offset can address.
_MAX_ARRAY_BYTES = (1 << 63) - 1

#: What reading a damaged zip member can raise (CRC, inflate, short reads,
#: encryption, unsupported compression).
READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
)

# What h5py and libhdf5 raise on damaged or hostile files (h5py's own errors
# are OSError, RuntimeError "Object visitation failed", KeyError, TypeError...).
_H5_ERRORS = (
    OSError,
    RuntimeError,
    KeyError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    NotImplementedError,
    SystemError,
)


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


def example_dataset_path() -> Path:
    """Path of the example dataset shipped inside the package.

    ``physscale/data/example_diffraction.npz``: simulated, normalized
    diffraction amplitudes with nphotons in its ``_metadata`` (see
    ``scripts/make_example_data.py``).
    """
    ref = resources.files("physscale").joinpath("data").joinpath(EXAMPLE_DATASET)
    path = Path(str(ref))
    if not path.is_file():
        raise DataFileError(
            f"the example dataset {EXAMPLE_DATASET} is missing from the installed package "
            f"(looked in {path}); reinstall physscale"
        )
    return path


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


def read_npy_header(stream: IO[bytes], where: str, name: str) -> ArrayInfo:
    """Parse a ``.npy`` header from ``stream``, leaving it at the first data byte.

    ``name`` is the returned ArrayInfo's name; ``where`` names the array in
    errors. Every failure of numpy's parser on a hostile header (a lying
    length, a header that does not tokenize, deep nesting, a bad dtype, huge
    or negative dimensions) is a :class:`DataFileError`.
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
    if info.nbytes > _MAX_ARRAY_BYTES:
        raise DataFileError(
            f"{where}: the .npy header declares shape {dims} of {info.dtype}, more bytes than "
            f"any file can hold"
        )
    return info


@contextlib.contextmanager
def open_npz(path: Path) -> Iterator[zipfile.ZipFile]:
    """Open an ``.npz`` (a regular file) as a zip, turning zip errors into DataFileError."""
    with open_zip(path, ".npz (zip) archive") as zf:
        yield zf


def _import_h5py(path: Path) -> Any:
    """h5py, imported lazily: it is the optional extra ``hdf5``."""
    try:
        import h5py  # type: ignore[import-untyped]
    except ImportError:
        raise DataFileError(
            f"{path}: reading HDF5 files needs h5py, which is not installed; "
            f"install it with: {_HDF5_HINT}"
        ) from None
    return h5py


@contextlib.contextmanager
def hdf5_errors(where: str) -> Iterator[None]:
    """Turn whatever h5py raises on a damaged file into DataFileError naming ``where``."""
    try:
        yield
    except PhysscaleError:
        raise
    except _H5_ERRORS as exc:
        raise DataFileError(f"{where}: damaged or unreadable HDF5 data ({describe(exc)})") from None


@contextlib.contextmanager
def open_hdf5(path: Path) -> Iterator[Any]:
    """Open a regular file read-only with h5py (imported only now)."""
    h5py = _import_h5py(path)
    require_regular(path)
    try:
        f = h5py.File(path, "r")
    except _H5_ERRORS as exc:
        raise DataFileError(f"{path}: not a readable HDF5 file ({describe(exc)})") from None
    try:
        yield f
    finally:
        with contextlib.suppress(*_H5_ERRORS):
            f.close()


def list_arrays(path: str | os.PathLike[str]) -> list[ArrayInfo]:
    """Every array in a file with its shape and dtype, from headers only.

    ``.npz`` members are listed in archive order (``_metadata`` included);
    HDF5 datasets by their full path (datasets with a null dataspace, which
    hold no array, are left out).
    """
    p = Path(path)
    kind = file_kind(p)
    if kind == "npy":
        return [_npy_info(p)]
    if kind == "npz":
        with open_npz(p) as zf:
            size = zip_archive_size(zf)
            return [_npz_info(zf, p, info, size) for info in zf.infolist()]
    with open_hdf5(p) as f, hdf5_errors(str(p)):
        return _hdf5_datasets(f, p)


def array_info(path: str | os.PathLike[str], key: str = "diffraction") -> ArrayInfo:
    """Shape and dtype of the array ``key`` (ignored for ``.npy``), from its header."""
    p = Path(path)
    kind = file_kind(p)
    if kind == "npy":
        return _npy_info(p)
    if kind == "npz":
        # Only this member's header: the others are not needed, nor read.
        with open_npz(p) as zf:
            return _npz_info(zf, p, _npz_member(zf, p, key), zip_archive_size(zf))
    with open_hdf5(p) as f, hdf5_errors(f"{p}:{key}"):
        return _hdf5_info(_hdf5_dataset(f, p, key), key)


def _npy_info(path: Path) -> ArrayInfo:
    with open_regular(path) as f:
        return read_npy_header(f, str(path), path.name)


def _npz_member(zf: zipfile.ZipFile, path: Path, key: str) -> zipfile.ZipInfo:
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


def _npz_open_member(
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


def _npz_info(
    zf: zipfile.ZipFile, path: Path, info: zipfile.ZipInfo, archive_size: int
) -> ArrayInfo:
    """One ``.npz`` member's ArrayInfo, from its header only."""
    stream, header, _ = _npz_open_member(zf, path, info, archive_size)
    with contextlib.suppress(*READ_ERRORS):
        stream.close()
    return header


def _hdf5_datasets(f: Any, path: Path) -> list[ArrayInfo]:
    """Every dataset in an open HDF5 file, by its full path (hard links only)."""
    h5py = _import_h5py(path)
    found: list[ArrayInfo] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.shape is not None:
            found.append(ArrayInfo("/" + name, tuple(int(s) for s in obj.shape), obj.dtype))

    f.visititems(visit)
    return found


def _hdf5_dataset(f: Any, path: Path, key: str) -> Any:
    """The dataset at ``key``, refusing links that leave the file."""
    h5py = _import_h5py(path)
    parts = [p for p in key.split("/") if p]
    prefix = ""
    for part in parts:
        prefix += "/" + part
        link = f.get(prefix, getlink=True)
        if link is None:
            break
        if isinstance(link, h5py.ExternalLink):
            raise UnsafeFileError(
                f"{path}: HDF5 path {prefix!r} is an external link to {link.filename!r}; "
                f"physscale reads only data stored inside the file it was given"
            )
    obj = f.get(key) if parts else None
    if not isinstance(obj, h5py.Dataset):
        what = "is a group, not a dataset" if obj is not None else "does not exist"
        names = [a.name for a in _hdf5_datasets(f, path)]
        available = ", ".join(repr(n) for n in names[:20]) or "none"
        more = f" and {len(names) - 20} more" if len(names) > 20 else ""
        raise DataFileError(
            f"{path}: HDF5 path {key!r} {what}; datasets: {available}{more}. Pick one with "
            f"key= (--key)"
        )
    if obj.shape is None:
        raise DataFileError(f"{path}: HDF5 dataset {key!r} has a null dataspace: it holds no data")
    return obj


def _hdf5_info(dset: Any, key: str) -> ArrayInfo:
    return ArrayInfo(key, tuple(int(s) for s in dset.shape), dset.dtype)


def _check_hdf5_storage(dset: Any, info: ArrayInfo, where: str, file_size: int) -> None:
    """Refuse data that is not really in the file, or would be inflated whole."""
    h5py = _import_h5py(Path(where))
    h5d = h5py.h5d
    if dset.is_virtual:
        raise UnsafeFileError(
            f"{where}: a virtual HDF5 dataset, whose data lives in other files; physscale "
            f"reads only data stored inside the file it was given"
        )
    dcpl = dset.id.get_create_plist()
    if dcpl.get_external_count() > 0:
        raise UnsafeFileError(
            f"{where}: the dataset's data lives in external raw file(s); physscale reads "
            f"only data stored inside the file it was given"
        )
    layout = dcpl.get_layout()
    if info.nbytes == 0 or layout == h5d.COMPACT:
        return
    unwritten = (
        f"{where}: the dataset's storage was never written, so it would read as its fill "
        f"value (not data); write the patterns before deriving from them"
    )
    if layout == h5d.CONTIGUOUS:
        offset = dset.id.get_offset()
        if offset is None or dset.id.get_storage_size() < info.nbytes:
            raise DataFileError(unwritten)
        if offset + info.nbytes > file_size:
            raise DataFileError(
                f"{where}: the dataset claims {info.nbytes} bytes at offset {offset} but the "
                f"file holds {file_size}; it is truncated or corrupt"
            )
        return
    chunks = dset.chunks
    if chunks is None:  # pragma: no cover - chunked layout always has a chunk shape
        return
    chunk_bytes = math.prod(chunks) * info.dtype.itemsize
    if dcpl.get_nfilters() > 0 and chunk_bytes > MAX_HDF5_CHUNK_BYTES:
        raise DataFileError(
            f"{where}: compressed HDF5 chunks of shape {tuple(chunks)} ({chunk_bytes} bytes), "
            f"which libhdf5 inflates whole to read any part; physscale reads compressed "
            f"chunks of at most {MAX_HDF5_CHUNK_BYTES} bytes (re-chunk, e.g. one pattern "
            f"per chunk)"
        )
    expected = math.prod(-(-n // c) for n, c in zip(info.shape, chunks, strict=True))
    written = dset.id.get_num_chunks()
    if written < expected:
        raise DataFileError(
            f"{where}: only {written} of the dataset's {expected} chunks were ever written; "
            f"the rest would read as the fill value (not data). Write every pattern before "
            f"deriving from them"
        )


def _check_patterns(info: ArrayInfo, where: str, kind: FileKind = "npy") -> None:
    """Refuse arrays that cannot be a stack of real-valued patterns."""
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
    if info.dtype.kind != "f":
        raise DataFileError(
            f"{where}: patterns must be real floating point (float16/32/64), got dtype "
            f"{info.dtype}; convert integer counts to normalized float amplitudes first"
        )
    if info.dtype.itemsize not in (2, 4, 8):
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


def _chunk_len(info: ArrayInfo, chunk_patterns: int | None) -> int:
    if chunk_patterns is None:
        entry_bytes = max(1, info.nbytes // info.shape[0])
        return max(1, CHUNK_BYTES // entry_bytes)
    is_int = isinstance(chunk_patterns, int | np.integer) and not isinstance(chunk_patterns, bool)
    if not is_int or chunk_patterns < 1:
        raise DataFileError(f"chunk_patterns must be a positive int, got {chunk_patterns!r}")
    return int(chunk_patterns)


def _native(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.isnative:
        return arr
    swapped: np.ndarray = arr.byteswap(inplace=True).view(arr.dtype.newbyteorder("="))
    return swapped


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


def _fortran_index(c_index: Index, ndim: int) -> Index:
    """Index into a Fortran-ordered array of the piece ``c_index`` of its C-ordered transpose."""
    out: list[int | slice] = []
    for axis in range(ndim):
        c_axis = ndim - 1 - axis
        out.append(c_index[c_axis] if c_axis < len(c_index) else slice(None))
    return tuple(out)


def _read_exact(
    stream: IO[bytes], out: np.ndarray, where: str, info: ArrayInfo, done: int, piecewise: bool
) -> None:
    """Fill ``out`` from ``stream``; a short read is a truncation error."""
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

    Made by :func:`pattern_source`; holds no open file. Each stream it starts
    re-opens the file and checks that the array is still the one described.

    Attributes:
        path: the file.
        key: the ``.npz`` key or HDF5 dataset path (the file name for ``.npy``).
        kind: ``"npy"``, ``"npz"`` or ``"hdf5"``.
        info: shape, dtype and order of the stored array (at least 3 axes,
            float16/32/64, at least one element).
        where: how errors name it (``"file.npz:diffraction"``).
        npy_header: for ``.npy``, the raw bytes of the checked header: a
            stream that finds them unchanged skips parsing them again.
    """

    path: Path
    key: str
    kind: FileKind
    info: ArrayInfo
    where: str
    npy_header: bytes | None = None

    @property
    def row_bytes(self) -> int:
        """Bytes in one entry of the first axis."""
        return self.info.nbytes // self.info.shape[0]

    def chunks(self, chunk_patterns: int | None = None) -> Iterator[np.ndarray]:
        """Whole first-axis entries, ``chunk_patterns`` at a time; see :func:`iter_patterns`.

        Memory is one chunk, which is at least one entry: for bounded memory
        whatever the entry size, use :meth:`pieces`.
        """
        step = _chunk_len(self.info, chunk_patterns)
        if self.kind == "npy":
            yield from self._npy_chunks(step)
        elif self.kind == "npz":
            for _, chunk in self._npz_pieces(step, None):
                yield chunk
        else:
            yield from self._hdf5_chunks(step)

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
                cut along its next axes (default :data:`CHUNK_BYTES`).
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
        step = _chunk_len(self.info, chunk_patterns)
        buffer = None
        if reuse and self.kind != "hdf5":
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
        if self.kind == "npy":
            yield from self._npy_pieces(step, max_bytes, buffer)
        elif self.kind == "npz":
            yield from self._npz_pieces(step, max_bytes, buffer)
        else:
            yield from self._hdf5_pieces(step, max_bytes)

    # ------------------------------------------------------------------ .npy
    @contextlib.contextmanager
    def _open_npy(self) -> Iterator[tuple[IO[bytes], int]]:
        with open_regular(self.path) as f:
            header = self.npy_header
            if header is not None and f.read(len(header)) == header:
                # The header checked before, byte for byte: only the size can have changed.
                offset = len(header)
                _check_npy_size(f, self.info, offset, self.where)
            else:
                f.seek(0)
                info, offset = _validate_npy(f, self.path)
                self._same(info)
            yield f, offset

    def _npy_chunks(self, step: int) -> Iterator[np.ndarray]:
        info = self.info
        n, rest = info.shape[0], info.shape[1:]
        with self._open_npy() as (f, offset):
            row = self.row_bytes
            for start in range(0, n, step):
                k = min(step, n - start)
                chunk = np.empty((k, *rest), dtype=info.dtype)
                if info.fortran_order:
                    self._gather_fortran(f, offset, chunk, start)
                else:
                    f.seek(offset + start * row)
                    _read_exact(f, chunk, self.where, info, start * row, piecewise=False)
                yield _native(chunk)

    def _gather_fortran(self, f: IO[bytes], offset: int, chunk: np.ndarray, start: int) -> None:
        """Rows ``start:start+k`` of a column-major array: one contiguous run per column."""
        info = self.info
        n, k, itemsize = info.shape[0], chunk.shape[0], info.dtype.itemsize
        columns = info.count // n
        # Column-major: element (i, j...) sits at i + n * column(j...).
        buf = np.empty((columns, k), dtype=info.dtype)
        for c in range(columns):
            f.seek(offset + (c * n + start) * itemsize)
            _read_exact(f, buf[c], self.where, info, (c * n + start) * itemsize, False)
        gathered = buf.reshape((*info.shape[:0:-1], k)).transpose()
        chunk[...] = gathered

    def _npy_pieces(
        self, step: int, max_bytes: int, buffer: np.ndarray | None = None
    ) -> Iterator[tuple[Index, np.ndarray]]:
        info = self.info
        itemsize = info.dtype.itemsize
        # A Fortran-ordered array is its reversed-shape C array, transposed.
        c_shape = info.shape[::-1] if info.fortran_order else info.shape
        rows = step if not info.fortran_order else c_shape[0]
        with self._open_npy() as (f, offset):
            for index, flat, shape in piece_indices(c_shape, itemsize, rows, max_bytes):
                piece = _fresh(shape, info.dtype, buffer)
                f.seek(offset + flat * itemsize)
                _read_exact(f, piece, self.where, info, flat * itemsize, piecewise=False)
                if info.fortran_order:
                    yield _fortran_index(index, len(c_shape)), _native(piece).transpose()
                else:
                    yield index, _native(piece)

    # ------------------------------------------------------------------ .npz
    def _npz_pieces(
        self, step: int, max_bytes: int | None, buffer: np.ndarray | None = None
    ) -> Iterator[tuple[Index, np.ndarray]]:
        info = self.info
        with open_npz(self.path) as zf:
            member = _npz_member(zf, self.path, self.key)
            stream, header, offset = _npz_open_member(zf, self.path, member, zip_archive_size(zf))
            with stream:
                self._same(header)
                _check_npz_sizes(header, member, offset, self.where)
                itemsize = info.dtype.itemsize
                limit = max_bytes if max_bytes is not None else max(self.row_bytes * step, itemsize)
                for index, flat, shape in piece_indices(info.shape, itemsize, step, limit):
                    piece = _fresh(shape, info.dtype, buffer)
                    _read_exact(stream, piece, self.where, info, flat * itemsize, piecewise=True)
                    yield index, _native(piece)
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

    # ------------------------------------------------------------------ HDF5
    @contextlib.contextmanager
    def _open_hdf5(self) -> Iterator[Any]:
        with open_hdf5(self.path) as f, hdf5_errors(self.where):
            dset = _validate_hdf5(f, self.path, self.key)
            self._same(_hdf5_info(dset, self.key))
            yield dset

    def _hdf5_read(self, dset: Any, index: Index) -> np.ndarray:
        try:
            data = dset[index]
        except PhysscaleError:
            raise
        except _H5_ERRORS as exc:
            raise DataFileError(
                f"{self.where}: cannot read {_format_index(index)} ({describe(exc)})"
            ) from None
        return _native(np.ascontiguousarray(data))

    def _hdf5_chunks(self, step: int) -> Iterator[np.ndarray]:
        with self._open_hdf5() as dset:
            for start in range(0, self.info.shape[0], step):
                yield self._hdf5_read(dset, (slice(start, start + step),))

    def _hdf5_pieces(self, step: int, max_bytes: int) -> Iterator[tuple[Index, np.ndarray]]:
        info = self.info
        with self._open_hdf5() as dset:
            for index, _, _ in piece_indices(info.shape, info.dtype.itemsize, step, max_bytes):
                yield index, self._hdf5_read(dset, index)

    def _same(self, info: ArrayInfo) -> None:
        if (info.shape, info.dtype, info.fortran_order) != (
            self.info.shape,
            self.info.dtype,
            self.info.fortran_order,
        ):
            raise DataFileError(
                f"{self.where}: the file changed since it was checked (shape {self.info.shape} "
                f"{self.info.dtype}, now {info.shape} {info.dtype})"
            )


def _fresh(shape: tuple[int, ...], dtype: np.dtype[Any], buffer: np.ndarray | None) -> np.ndarray:
    """A new array of ``shape``, or a view of ``buffer`` (large enough) when one is given."""
    if buffer is None:
        return np.empty(shape, dtype=dtype)
    view: np.ndarray = buffer[: math.prod(shape)].reshape(shape)
    return view


def _format_index(index: Index) -> str:
    parts = [
        str(i) if isinstance(i, int) else f"{i.start or 0}:{'' if i.stop is None else i.stop}"
        for i in index
    ]
    return f"[{', '.join(parts)}]"


def _validate_npy(f: IO[bytes], path: Path) -> tuple[ArrayInfo, int]:
    where = str(path)
    info = read_npy_header(f, where, path.name)
    _check_patterns(info, where)
    offset = f.tell()
    _check_npy_size(f, info, offset, where)
    return info, offset


def _check_npy_size(f: IO[bytes], info: ArrayInfo, offset: int, where: str) -> None:
    """The open file must hold the header's ``offset`` bytes plus the data it promises."""
    size = os.fstat(f.fileno()).st_size
    if size < offset + info.nbytes:
        raise DataFileError(
            f"{where}: truncated: the header promises shape {info.shape} "
            f"({info.nbytes} bytes of {info.dtype}) but the file holds "
            f"{max(size - offset, 0)} bytes of data"
        )


def _check_npz_sizes(info: ArrayInfo, member: zipfile.ZipInfo, offset: int, where: str) -> None:
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


def _validate_hdf5(f: Any, path: Path, key: str) -> Any:
    where = f"{path}:{key}"
    dset = _hdf5_dataset(f, path, key)
    info = _hdf5_info(dset, key)
    _check_patterns(info, where, "hdf5")
    _check_hdf5_storage(dset, info, where, os.stat(path).st_size)
    return dset


def pattern_source(path: str | os.PathLike[str], key: str = "diffraction") -> PatternSource:
    """Check a file's stack of patterns completely, before reading any data.

    Args:
        path: a ``.npy``, ``.npz`` or HDF5 file (recognized by content; a
            regular file: FIFOs and devices are refused without waiting).
        key: the ``.npz`` key (member ``<key>.npy``) or HDF5 dataset path;
            ignored for ``.npy``. Default ``"diffraction"`` (PtychoPINN).

    Returns:
        A :class:`PatternSource` to stream with ``.chunks()`` or ``.pieces()``.

    Raises:
        DataFileError: missing or special file, missing key, a damaged or
            lying header, a declared size the file does not back (truncated,
            never-written HDF5 storage, a zip member expanding beyond what
            deflate can produce), a dtype that is not float16/32/64, fewer
            than 3 axes, no patterns, Fortran-ordered ``.npz`` members, h5py
            missing.
        UnsafeFileError: an object (pickled) array; HDF5 data in external
            or virtual files, or behind an external link.
    """
    p = Path(path)
    kind = file_kind(p)
    if kind == "npy":
        with open_regular(p) as f:
            info, offset = _validate_npy(f, p)
            f.seek(0)
            header = f.read(offset)
        return PatternSource(p, p.name, kind, info, str(p), npy_header=header)
    where = f"{p}:{key}"
    if kind == "npz":
        with open_npz(p) as zf:
            member = _npz_member(zf, p, key)
            stream, info, offset = _npz_open_member(zf, p, member, zip_archive_size(zf))
            with contextlib.suppress(*READ_ERRORS):
                stream.close()
        _check_patterns(info, where)
        if info.fortran_order:
            raise DataFileError(
                f"{where}: stored in Fortran (column-major) order, which cannot be read "
                f"pattern by pattern from a zip; re-save it with np.ascontiguousarray(x)"
            )
        _check_npz_sizes(info, member, offset, where)
        return PatternSource(p, key, kind, info, where)
    with open_hdf5(p) as f, hdf5_errors(where):
        info = _hdf5_info(_validate_hdf5(f, p, key), key)
    return PatternSource(p, key, kind, info, where)


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
            raise MaskError(
                f"{where}: the mask must be boolean (True = valid pixel), got dtype "
                f"{info.dtype}; save it with mask.astype(bool)"
            )
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
        _read_exact(f, flat, where, info, 0, piecewise=False)
    mask: np.ndarray = flat.reshape(info.shape, order="F" if info.fortran_order else "C")
    return mask


def iter_patterns(
    path: str | os.PathLike[str],
    key: str = "diffraction",
    chunk_patterns: int | None = None,
) -> Iterator[np.ndarray]:
    """Stream a stack of patterns from a file in chunks along its first axis.

    Args:
        path: a ``.npy``, ``.npz`` or HDF5 file (recognized by content).
        key: the ``.npz`` key (member ``<key>.npy``) or HDF5 dataset path;
            ignored for ``.npy``. Default ``"diffraction"`` (PtychoPINN).
        chunk_patterns: first-axis entries per chunk; default: as many as fit
            in :data:`CHUNK_BYTES` (16 MiB), at least one.

    Yields:
        numpy arrays of shape ``(k, *shape[1:])`` in the stored float dtype,
        native byte order, each independent of the others and of the file
        (writable, safe to keep; writing never changes the file). Their
        concatenation is the stored array.

    Raises:
        DataFileError, UnsafeFileError: as :func:`pattern_source`, before any
            data is read; DataFileError for data that turns out truncated or
            corrupt while streaming.

    The whole file is checked before the first chunk. Peak memory is a few
    chunks, whatever the file size; a chunk holds at least one first-axis
    entry, so for entries larger than :data:`CHUNK_BYTES` use
    ``pattern_source(path, key).pieces()``, which cuts inside entries.
    """
    yield from pattern_source(path, key).chunks(chunk_patterns)
