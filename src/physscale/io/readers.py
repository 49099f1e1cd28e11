"""Streaming pattern readers for ``.npy``, ``.npz`` and HDF5 files, in bounded memory.

This module picks a file's format by its first bytes and hands it to that
format's reader in `physscale.io.formats` (``npy``, ``npz``, ``hdf5``),
each behind the one `PatternSource` interface.

`pattern_source` opens nothing for long: it checks a file completely
before any data is read (a regular file, a valid header, a float dtype, at
least three axes, and every declared size backed by the container's real
size) and returns a `PatternSource`. That source streams the data in
two ways, each time re-checking that the file has not changed:

- `PatternSource.chunks` (what [`iter_patterns`][physscale.io.readers.iter_patterns] yields): whole
  entries of the first axis, ``chunk_patterns`` at a time (default: as many
  as fit in `CHUNK_BYTES`, at least one);
- `PatternSource.pieces`: pieces of at most ``max_bytes`` each, cut
  inside an entry when one entry is larger than that, each with its index
  into the stored array. Memory then stays bounded by the piece size
  whatever the pattern size; ``physscale derive`` reads this way (see
  `physscale.io.streaming.fold_patterns`).

How each format is read is told in its module: ``.npy`` by ``readinto``
after checking the header against the file size (no memory map);
``.npz`` members as checked streams from the zip, never loaded whole; HDF5
datasets (optional extra ``hdf5``) by slices, refusing data that is not
really in the file and compressed chunks larger than
`MAX_HDF5_CHUNK_BYTES`.

Every problem raises [`physscale.errors.DataFileError`][physscale.errors.DataFileError] naming the
file, the
key and what is wrong; no exception from numpy, zipfile or h5py escapes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import ModuleType

import numpy as np

from physscale.errors import DataFileError
from physscale.io.formats import hdf5, npy, npz
from physscale.io.formats.base import (
    CHUNK_BYTES,
    ArrayInfo,
    FileKind,
    Index,
    PatternSource,
    file_kind,
)
from physscale.io.formats.hdf5 import MAX_HDF5_CHUNK_BYTES
from physscale.io.formats.npy import read_mask, read_npy_header

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

EXAMPLE_DATASET = "example_diffraction.npz"
"""File name of the example dataset shipped in ``physscale/data``."""

# Each format module has list_arrays(path), array_info(path, key), open_source(path, key).
_FORMATS: dict[FileKind, ModuleType] = {"npy": npy, "npz": npz, "hdf5": hdf5}


def example_dataset_path() -> Path:
    """Path of the example dataset shipped inside the package.

    ``physscale/data/example_diffraction.npz``: simulated, normalized
    diffraction amplitudes with nphotons in its ``_metadata`` (see
    ``scripts/make_example_data.py``).

    Examples:
        >>> from physscale.io import example_dataset_path
        >>> example_dataset_path().name
        'example_diffraction.npz'
    """
    ref = resources.files("physscale").joinpath("data").joinpath(EXAMPLE_DATASET)
    path = Path(str(ref))
    if not path.is_file():
        raise DataFileError(
            f"the example dataset {EXAMPLE_DATASET} is missing from the installed package "
            f"(looked in {path}); reinstall physscale"
        )
    return path


def list_arrays(path: str | os.PathLike[str]) -> list[ArrayInfo]:
    """Every array in a file with its shape and dtype, from headers only.

    ``.npz`` members are listed in archive order (``_metadata`` included);
    HDF5 datasets by their full path (datasets with a null dataspace, which
    hold no array, are left out).

    Examples:
        >>> from physscale.io import example_dataset_path, list_arrays
        >>> [a.name for a in list_arrays(example_dataset_path())]
        ['_metadata', 'diffraction']
    """
    p = Path(path)
    found: list[ArrayInfo] = _FORMATS[file_kind(p)].list_arrays(p)
    return found


def array_info(path: str | os.PathLike[str], key: str = "diffraction") -> ArrayInfo:
    """Shape and dtype of the array ``key`` (ignored for ``.npy``), from its header.

    Examples:
        >>> from physscale.io import array_info, example_dataset_path
        >>> info = array_info(example_dataset_path())   # the 'diffraction' array, header only
        >>> info.shape, str(info.dtype)
        ((64, 64, 64), 'float32')
    """
    p = Path(path)
    info: ArrayInfo = _FORMATS[file_kind(p)].array_info(p, key)
    return info


def pattern_source(
    path: str | os.PathLike[str],
    key: str = "diffraction",
    *,
    counts: bool = False,
    follow_links: bool = False,
) -> PatternSource:
    """Check a file's stack of patterns completely, before reading any data.

    Args:
        path: a ``.npy``, ``.npz`` or HDF5 file (recognized by content; a
            regular file: FIFOs and devices are refused without waiting).
        key: the ``.npz`` key (member ``<key>.npy``) or HDF5 dataset path;
            ignored for ``.npy``. Default ``"diffraction"`` (PtychoPINN).
        counts: admit integer detector counts too (float only by default).
        follow_links: HDF5 only: follow an external link or a virtual dataset
            to files in the file's own folder (anything else is refused).

    Returns:
        A `PatternSource` to stream with ``.chunks()`` or ``.pieces()``.

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
    source: PatternSource
    if kind == "hdf5":
        source = hdf5.open_source(p, key, counts=counts, follow_links=follow_links)
    else:
        source = _FORMATS[kind].open_source(p, key, counts=counts)
    return source


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
            in `CHUNK_BYTES` (16 MiB), at least one.

    Yields:
        numpy arrays of shape ``(k, *shape[1:])`` in the stored float dtype,
        native byte order, each independent of the others and of the file
        (writable, safe to keep; writing never changes the file). Their
        concatenation is the stored array.

    Raises:
        DataFileError, UnsafeFileError: as `pattern_source`, before any
            data is read; DataFileError for data that turns out truncated or
            corrupt while streaming.

    The whole file is checked before the first chunk. Peak memory is a few
    chunks, whatever the file size; a chunk holds at least one first-axis
    entry, so for entries larger than `CHUNK_BYTES` use
    ``pattern_source(path, key).pieces()``, which cuts inside entries.

    Examples:
        >>> from physscale.io import example_dataset_path, iter_patterns
        >>> [chunk.shape for chunk in iter_patterns(example_dataset_path(), chunk_patterns=24)]
        [(24, 64, 64), (24, 64, 64), (16, 64, 64)]
    """
    yield from pattern_source(path, key).chunks(chunk_patterns)
