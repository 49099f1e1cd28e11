"""Streaming pattern readers for ``.npy``, ``.npz`` and HDF5 files, in bounded memory.

:func:`iter_patterns` yields a dataset in chunks along its first axis, each
a fresh native-byte-order numpy array, so an :class:`~physscale.IntensityAccumulator`
can fold a file of any size in with a few chunks' worth of memory:

- ``.npy``: the header is parsed, then each chunk is a private memory map
  of its own slice of the file, released when the chunk is dropped. (One map
  of the whole file would keep every page it touched resident, counted in the
  process's memory, until the kernel evicts it; see docs/performance.md.)
- ``.npz``: the member ``<key>.npy`` is read from the zip as a stream
  (decompressed on the fly) and never loaded whole; its CRC is checked at the
  end. Object arrays are refused: they are pickles.
- HDF5 (optional extra ``hdf5``: ``pip install physscale[hdf5]``): the dataset
  at path ``key`` is read by slices, so only the HDF5 chunks a slice touches
  are decompressed.

Every problem raises :class:`physscale.DataFileError` naming the file, the
key and what is wrong.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from physscale.errors import DataFileError, UnsafeFileError

__all__ = [
    "CHUNK_BYTES",
    "EXAMPLE_DATASET",
    "ArrayInfo",
    "array_info",
    "example_dataset_path",
    "file_kind",
    "iter_patterns",
    "list_arrays",
    "read_npy_header",
]

FileKind = Literal["npy", "npz", "hdf5"]

#: Target size of one chunk when ``chunk_patterns`` is not given (16 MiB).
CHUNK_BYTES = 16 * 1024 * 1024

#: File name of the example dataset shipped in ``physscale/data``.
EXAMPLE_DATASET = "example_diffraction.npz"

_MAGIC = {b"\x93NUMPY": "npy", b"PK\x03\x04": "npz", b"PK\x05\x06": "npz", b"\x89HDF": "hdf5"}
_HDF5_HINT = "pip install physscale[hdf5]"

_ZIP_PIECE_BYTES = 1 << 20

#: What reading a damaged zip member can raise (CRC, inflate, short reads).
READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


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
    """Tell a ``.npy``, ``.npz`` or HDF5 file by its first bytes (not its name)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise DataFileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise DataFileError(f"{p}: is a directory, not a data file") from None
    except OSError as exc:
        raise DataFileError(f"{p}: cannot read ({exc.strerror or exc})") from None
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

    ``name`` is the returned ArrayInfo's name; ``where`` names the array in errors.
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except READ_ERRORS as exc:
        raise DataFileError(f"{where}: corrupt data ({exc})") from None
    except (ValueError, SyntaxError) as exc:
        raise DataFileError(f"{where}: not a valid .npy array header ({exc})") from None
    return ArrayInfo(name, tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran))


@contextlib.contextmanager
def open_npz(path: Path) -> Iterator[zipfile.ZipFile]:
    """Open an ``.npz`` as a zip, turning zip errors into DataFileError."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataFileError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise DataFileError(
            f"{path}: not a readable .npz (zip) archive, probably truncated or corrupt ({exc})"
        ) from None
    with zf:
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
def open_hdf5(path: Path) -> Iterator[Any]:
    """Open an HDF5 file read-only with h5py (imported only now)."""
    h5py = _import_h5py(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataFileError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        yield f


def list_arrays(path: str | os.PathLike[str]) -> list[ArrayInfo]:
    """Every array in a file with its shape and dtype, from headers only.

    ``.npz`` members are listed in archive order (``_metadata`` included);
    HDF5 datasets by their full path.
    """
    p = Path(path)
    kind = file_kind(p)
    if kind == "npy":
        return [_npy_info(p)]
    if kind == "npz":
        with open_npz(p) as zf:
            return [_npz_info(zf, p, name) for name in zf.namelist()]
    with open_hdf5(p) as f:
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
            return _npz_info(zf, p, _npz_member(zf, p, key))
    with open_hdf5(p) as f:
        return _hdf5_info(f, p, key)


def _npy_info(path: Path) -> ArrayInfo:
    with open(path, "rb") as f:
        return read_npy_header(f, str(path), path.name)


def _npz_member(zf: zipfile.ZipFile, path: Path, key: str) -> str:
    """The member that holds array ``key``; a missing key lists the keys there are."""
    member = key + ".npy"
    names = zf.namelist()
    if member not in names:
        available = ", ".join(repr(n.removesuffix(".npy")) for n in names) or "none"
        raise DataFileError(
            f"{path}: has no array {key!r}; it holds {available}. Pick one with key= (--key)"
        )
    return member


def _npz_info(zf: zipfile.ZipFile, path: Path, member: str) -> ArrayInfo:
    """One ``.npz`` member's ArrayInfo, from its header only."""
    key = member.removesuffix(".npy")
    where = f"{path}:{key}"
    try:
        with zf.open(member) as stream:
            return read_npy_header(stream, where, key)
    except READ_ERRORS as exc:
        raise DataFileError(f"{where}: corrupt member ({exc})") from None


def _hdf5_datasets(f: Any, path: Path) -> list[ArrayInfo]:
    """Every dataset in an open HDF5 file, by its full path."""
    h5py = _import_h5py(path)
    found: list[ArrayInfo] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(ArrayInfo("/" + name, tuple(obj.shape), obj.dtype))

    f.visititems(visit)
    return found


def _hdf5_info(f: Any, path: Path, key: str) -> ArrayInfo:
    h5py = _import_h5py(path)

    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        what = "is a group, not a dataset" if obj is not None else "does not exist"
        available = ", ".join(repr(a.name) for a in _hdf5_datasets(f, path)) or "none"
        raise DataFileError(
            f"{path}: HDF5 path {key!r} {what}; datasets: {available}. Pick one with key= (--key)"
        )
    return ArrayInfo(key, tuple(obj.shape), obj.dtype)


def _check_patterns(info: ArrayInfo, where: str) -> None:
    """Refuse arrays that cannot be a stack of real-valued patterns."""
    if info.dtype.hasobject:
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


def _stream_chunks(
    stream: IO[bytes], info: ArrayInfo, step: int, where: str
) -> Iterator[np.ndarray]:
    """Read a C-ordered array's data from ``stream``, ``step`` first-axis entries at a time."""
    n, rest = info.shape[0], info.shape[1:]
    # zipfile's read(n) builds n-byte temporaries (several when inflating):
    # read a zip member in small pieces so only the chunk itself is large.
    piecewise = isinstance(stream, zipfile.ZipExtFile)
    for start in range(0, n, step):
        k = min(step, n - start)
        chunk = np.empty((k, *rest), dtype=info.dtype)
        view = chunk.data.cast("B")
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
                raise DataFileError(f"{where}: corrupt data ({exc})") from None
            if not got:
                expected = info.nbytes
                have = start * (info.nbytes // n) + filled
                raise DataFileError(
                    f"{where}: truncated: the header promises shape {info.shape} "
                    f"({expected} bytes of {info.dtype}) but the data ends after {have} bytes"
                )
            filled += got
        yield _native(chunk)


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
        DataFileError: missing file or key, truncated or corrupt data, a
            dtype that is not float16/32/64 (extended precision included), fewer than 3 axes, no
            patterns, Fortran-ordered ``.npz`` members, h5py missing.
        UnsafeFileError: an object (pickled) array.

    Peak memory is a few chunks, whatever the file size.
    """
    p = Path(path)
    kind = file_kind(p)
    if kind == "npy":
        yield from _iter_npy(p, chunk_patterns)
    elif kind == "npz":
        yield from _iter_npz(p, key, chunk_patterns)
    else:
        yield from _iter_hdf5(p, key, chunk_patterns)


def _iter_npy(path: Path, chunk_patterns: int | None) -> Iterator[np.ndarray]:
    where = str(path)
    with open(path, "rb") as f:
        info = read_npy_header(f, where, path.name)
        _check_patterns(info, where)
        step = _chunk_len(info, chunk_patterns)
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
        if size < offset + info.nbytes:
            raise DataFileError(
                f"{where}: truncated: the header promises shape {info.shape} "
                f"({info.nbytes} bytes of {info.dtype}) but the file holds "
                f"{max(size - offset, 0)} bytes of data"
            )
        if info.fortran_order:
            # Column-major data cannot be cut entry by entry: map the whole file
            # (pages stay resident, so memory is not bounded in this rare case).
            mm = np.memmap(f, dtype=info.dtype, mode="r", offset=offset, shape=info.shape,
                           order="F")  # fmt: skip
            for start in range(0, info.shape[0], step):
                yield _native(np.ascontiguousarray(mm[start : start + step]))
            return
        yield from _mapped_chunks(f, info, offset, step)


def _mapped_chunks(f: IO[bytes], info: ArrayInfo, offset: int, step: int) -> Iterator[np.ndarray]:
    """Each chunk is its own private (copy-on-write) memory map of the file.

    No copy is made, and a chunk's pages are released when the chunk is
    dropped, so resident memory stays at a few chunks even for huge files
    (one map of the whole file would keep every page it touched resident).
    Copy-on-write keeps chunks writable without ever touching the file.
    """
    n, rest = info.shape[0], info.shape[1:]
    entry_count = info.count // n
    entry_bytes = entry_count * info.dtype.itemsize
    for start in range(0, n, step):
        k = min(step, n - start)
        begin = offset + start * entry_bytes
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        region = mmap.mmap(
            f.fileno(), begin - aligned + k * entry_bytes, offset=aligned, access=mmap.ACCESS_COPY
        )
        chunk = np.frombuffer(region, info.dtype, k * entry_count, begin - aligned)
        yield _native(chunk.reshape(k, *rest))


def _iter_npz(path: Path, key: str, chunk_patterns: int | None) -> Iterator[np.ndarray]:
    where = f"{path}:{key}"
    with open_npz(path) as zf:
        member = _npz_member(zf, path, key)
        try:
            stream = zf.open(member)
        except READ_ERRORS as exc:
            raise DataFileError(f"{where}: corrupt member ({exc})") from None
        with stream:
            info = read_npy_header(stream, where, key)
            _check_patterns(info, where)
            if info.fortran_order:
                raise DataFileError(
                    f"{where}: stored in Fortran (column-major) order, which cannot be read "
                    f"pattern by pattern from a zip; re-save it with np.ascontiguousarray(x)"
                )
            yield from _stream_chunks(stream, info, _chunk_len(info, chunk_patterns), where)
            try:
                # Reading past the end makes zipfile verify the member's CRC-32.
                extra = stream.read(1)
            except READ_ERRORS as exc:
                raise DataFileError(f"{where}: corrupt data ({exc})") from None
            if extra:
                raise DataFileError(
                    f"{where}: corrupt: more data than the header's shape {info.shape} holds"
                )


def _iter_hdf5(path: Path, key: str, chunk_patterns: int | None) -> Iterator[np.ndarray]:
    where = f"{path}:{key}"
    with open_hdf5(path) as f:
        info = _hdf5_info(f, path, key)
        _check_patterns(info, where)
        dset = f[key]
        step = _chunk_len(info, chunk_patterns)
        for start in range(0, info.shape[0], step):
            try:
                chunk = dset[start : start + step]
            except (OSError, ValueError) as exc:
                raise DataFileError(f"{where}: cannot read rows {start}.. ({exc})") from None
            yield _native(np.ascontiguousarray(chunk))
