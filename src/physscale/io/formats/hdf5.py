"""HDF5 files (optional extra ``hdf5``: ``pip install physscale[hdf5]``): a dataset read by slices.

h5py is imported only when an HDF5 file is read. Datasets whose storage was
never written (they would read as the fill value), whose data lives in
external or virtual files or behind an external link, or whose compressed
chunks are larger than `MAX_HDF5_CHUNK_BYTES` are refused; whatever
h5py raises on a damaged file becomes a [`DataFileError`][physscale.errors.DataFileError].
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from physscale.errors import DataFileError, PhysscaleError, UnsafeFileError, Wording
from physscale.io._files import describe, require_regular
from physscale.io.formats.base import (
    ArrayInfo,
    FileKind,
    Index,
    PatternSource,
    check_patterns,
    native,
    piece_indices,
)

__all__ = [
    "FILTER_NAMES",
    "MAX_HDF5_CHUNK_BYTES",
    "Hdf5Source",
    "array_info",
    "check_filters",
    "external_target",
    "hdf5_errors",
    "import_h5py",
    "inside_folder",
    "list_arrays",
    "open_hdf5",
    "open_source",
    "virtual_files",
]

MAX_HDF5_CHUNK_BYTES = 64 * 1024 * 1024
"""libhdf5 inflates a compressed chunk whole to read any part of it: larger compressed chunks than
this (64 MiB) are refused."""

_HDF5_HINT = "pip install physscale[hdf5]"

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

#: The option that follows links, as the Python API spells it (a front end renders its own).
FOLLOW_LINKS = {"follow_links": "follow_links=True"}


def import_h5py(path: Path) -> Any:
    """h5py, imported lazily: it is the optional extra ``hdf5``; ``path`` names the file.

    ``hdf5plugin`` (in the same extra) is imported too when installed, which
    registers the compression filters detector files use (bitshuffle/LZ4,
    Blosc, Zstd...) before any HDF5 read.
    """
    try:
        import h5py  # type: ignore[import-untyped]
    except ImportError:
        raise DataFileError(
            f"{path}: reading HDF5 files needs h5py, which is not installed; "
            f"install it with: {_HDF5_HINT}"
        ) from None
    with contextlib.suppress(ImportError):
        importlib.import_module("hdf5plugin")
    return h5py


FILTER_NAMES = {
    1: "deflate (gzip)",
    2: "shuffle",
    3: "fletcher32",
    4: "szip",
    307: "bzip2",
    32000: "LZF",
    32001: "Blosc",
    32004: "LZ4",
    32008: "bitshuffle (with LZ4, Dectris Eiger)",
    32013: "zfp",
    32015: "Zstandard",
    32017: "SZ",
    32026: "Blosc2",
}
"""HDF5 filters physscale can name (registered ids, https://github.com/HDFGroup/hdf5_plugins)."""


def check_filters(dcpl: Any, where: str) -> None:
    """Refuse, before reading, a dataset compressed with a filter libhdf5 does not have.

    Names the filter by id and name and gives the install line (``hdf5plugin``
    provides the filters of detector files).
    """
    h5py = import_h5py(Path(where))
    for i in range(dcpl.get_nfilters()):
        code = int(dcpl.get_filter(i)[0])
        if not h5py.h5z.filter_avail(code):
            name = FILTER_NAMES.get(code, "an unregistered filter")
            raise DataFileError(
                f"{where}: the data are compressed with HDF5 filter {code} ({name}), which "
                f"this HDF5 library does not have; install the detector filters with: "
                f"pip install hdf5plugin (part of {_HDF5_HINT}); physscale registers them "
                f"before reading"
            )


def inside_folder(master: Path, target: str, where: str) -> Path:
    """The file a link of ``master`` names, refused unless it stays in ``master``'s folder.

    Relative names are taken from the master's folder; symlinks (of the
    target and of the folder) are resolved before the test, so a link cannot
    leave the folder through one.
    """
    folder = master.resolve().parent
    raw = Path(target)
    candidate = raw if raw.is_absolute() else folder / raw
    resolved = candidate.resolve()
    if not resolved.is_relative_to(folder):
        raise UnsafeFileError(
            f"{where}: links to {target!r}, which resolves to {resolved}, outside the "
            f"master's folder {folder}; physscale follows links only to files beside the "
            f"master"
        )
    return resolved


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
    h5py = import_h5py(path)
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


def list_arrays(path: Path) -> list[ArrayInfo]:
    """Every dataset by its full path (those with a null dataspace hold no array: left out)."""
    with open_hdf5(path) as f, hdf5_errors(str(path)):
        return _datasets(f, path)


def array_info(path: Path, key: str) -> ArrayInfo:
    """The dataset at ``key``, from its description."""
    with open_hdf5(path) as f, hdf5_errors(f"{path}:{key}"):
        return _info(_dataset(f, path, key), key)


def _datasets(f: Any, path: Path) -> list[ArrayInfo]:
    """Every dataset in an open HDF5 file, by its full path (hard links only)."""
    h5py = import_h5py(path)
    found: list[ArrayInfo] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.shape is not None:
            found.append(ArrayInfo("/" + name, tuple(int(s) for s in obj.shape), obj.dtype))

    f.visititems(visit)
    return found


def external_target(f: Any, path: Path, key: str) -> tuple[str, str, str] | None:
    """The first external link on the way to ``key``: ``(link path, file, path in it + rest)``."""
    h5py = import_h5py(path)
    parts = [p for p in key.split("/") if p]
    prefix = ""
    for n, part in enumerate(parts):
        prefix += "/" + part
        link = f.get(prefix, getlink=True)
        if link is None:
            return None
        if isinstance(link, h5py.ExternalLink):
            rest = "/".join(parts[n + 1 :])
            inner = link.path.rstrip("/") + ("/" + rest if rest else "")
            return prefix, str(link.filename), inner or "/"
    return None


def _dataset(f: Any, path: Path, key: str) -> Any:
    """The dataset at ``key``, refusing links that leave the file."""
    h5py = import_h5py(path)
    parts = [p for p in key.split("/") if p]
    prefix = ""
    for part in parts:
        prefix += "/" + part
        link = f.get(prefix, getlink=True)
        if link is None:
            break
        if isinstance(link, h5py.ExternalLink):
            raise UnsafeFileError(
                Wording(
                    "{path}: HDF5 path {prefix} is an external link to {target}; physscale "
                    "reads only data stored inside the file it was given, unless asked to "
                    "follow links to files in the same folder: pass {follow_links}",
                    FOLLOW_LINKS,
                    path=path,
                    prefix=repr(prefix),
                    target=repr(link.filename),
                )
            )
    obj = f.get(key) if parts else None
    if not isinstance(obj, h5py.Dataset):
        what = "is a group, not a dataset" if obj is not None else "does not exist"
        names = [a.name for a in _datasets(f, path)]
        available = ", ".join(repr(n) for n in names[:20]) or "none"
        more = f" and {len(names) - 20} more" if len(names) > 20 else ""
        raise DataFileError(
            f"{path}: HDF5 path {key!r} {what}; datasets: {available}{more}. Pick one with "
            f"key= (--key)"
        )
    if obj.shape is None:
        raise DataFileError(f"{path}: HDF5 dataset {key!r} has a null dataspace: it holds no data")
    return obj


def _info(dset: Any, key: str) -> ArrayInfo:
    return ArrayInfo(key, tuple(int(s) for s in dset.shape), dset.dtype)


def virtual_files(dset: Any, path: Path, where: str) -> list[Path]:
    """The files a virtual dataset's sources live in, each checked to stay beside ``path``."""
    files: list[Path] = []
    for source in dset.virtual_sources():
        name = str(source.file_name)
        target = path.resolve() if name == "." else inside_folder(path, name, where)
        if target not in files:
            files.append(target)
    return files


def _check_storage(
    dset: Any, info: ArrayInfo, where: str, file_size: int, follow_links: bool = False
) -> None:
    """Refuse data that is not really in the file, or would be inflated whole."""
    h5py = import_h5py(Path(where))
    h5d = h5py.h5d
    if dset.is_virtual:
        if not follow_links:
            raise UnsafeFileError(
                Wording(
                    "{where}: a virtual HDF5 dataset, whose data lives in other files; "
                    "physscale reads only data stored inside the file it was given, unless "
                    "asked to follow links to files in the same folder: pass {follow_links}",
                    FOLLOW_LINKS,
                    where=where,
                )
            )
        return
    dcpl = dset.id.get_create_plist()
    check_filters(dcpl, where)
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


def _validate(
    f: Any, path: Path, key: str, counts: bool = False, follow_links: bool = False
) -> Any:
    where = f"{path}:{key}"
    dset = _dataset(f, path, key)
    info = _info(dset, key)
    check_patterns(info, where, "hdf5", counts=counts)
    if follow_links and dset.is_virtual:
        virtual_files(dset, path, where)
        dset = _virtual_dataset(f, path, key)
    _check_storage(dset, info, where, os.stat(path).st_size, follow_links)
    return dset


def _virtual_dataset(f: Any, path: Path, key: str) -> Any:
    """A virtual dataset opened so that its source files are looked up beside ``path`` only."""
    h5py = import_h5py(path)
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_virtual_prefix(os.fsencode(str(path.resolve().parent)))
    return h5py.Dataset(h5py.h5d.open(f.id, key.encode(), dapl=dapl))


def open_source(
    path: Path, key: str, *, counts: bool = False, follow_links: bool = False
) -> Hdf5Source:
    """Check the dataset ``key``'s stack of patterns completely.

    With ``follow_links``, an external link on the way to ``key`` is followed
    to a file in ``path``'s own folder (anything else is refused): the source
    is then that file's dataset; a virtual dataset whose sources all stay in
    that folder is read through.
    """
    where = f"{path}:{key}"
    if follow_links:
        with open_hdf5(path) as f, hdf5_errors(where):
            hop = external_target(f, path, key)
        if hop is not None:
            link, name, inner = hop
            target = inside_folder(path, name, f"{path}:{link}")
            return open_source(target, inner, counts=counts, follow_links=False)
    with open_hdf5(path) as f, hdf5_errors(where):
        info = _info(_validate(f, path, key, counts, follow_links), key)
    return Hdf5Source(path, key, info, where, counts=counts, follow_links=follow_links)


def _format_index(index: Index) -> str:
    parts = [
        str(i) if isinstance(i, int) else f"{i.start or 0}:{'' if i.stop is None else i.stop}"
        for i in index
    ]
    return f"[{', '.join(parts)}]"


@dataclass(frozen=True)
class Hdf5Source(PatternSource):
    """A checked HDF5 dataset holding a stack of patterns."""

    follow_links: bool = False

    kind: ClassVar[FileKind] = "hdf5"
    reads_into_buffer: ClassVar[bool] = False

    @contextlib.contextmanager
    def _open(self) -> Iterator[Any]:
        with open_hdf5(self.path) as f, hdf5_errors(self.where):
            dset = _validate(f, self.path, self.key, self.counts, self.follow_links)
            self.same(_info(dset, self.key))
            yield dset

    def _read(self, dset: Any, index: Index) -> np.ndarray:
        try:
            data = dset[index]
        except PhysscaleError:
            raise
        except _H5_ERRORS as exc:
            raise DataFileError(
                f"{self.where}: cannot read {_format_index(index)} ({describe(exc)})"
            ) from None
        return native(np.ascontiguousarray(data))

    def _chunks(self, step: int) -> Iterator[np.ndarray]:
        with self._open() as dset:
            for start in range(0, self.info.shape[0], step):
                yield self._read(dset, (slice(start, start + step),))

    def _pieces(
        self, step: int, max_bytes: int | None, buffer: np.ndarray | None
    ) -> Iterator[tuple[Index, np.ndarray]]:
        info = self.info
        limit = max_bytes if max_bytes is not None else max(self.row_bytes * step, 1)
        with self._open() as dset:
            for index, _, _ in piece_indices(info.shape, info.dtype.itemsize, step, limit):
                yield index, self._read(dset, index)
