"""Dataset metadata in PtychoPINN's NPZ schema, read without executing pickle code.

PtychoPINN stores a dataset's metadata as a JSON string under the NPZ key
``_metadata``, inside a 0-d **object** array. numpy saves object arrays as a
pickle, so ``np.load(..., allow_pickle=False)`` cannot read them and
``allow_pickle=True`` runs whatever code the pickle names. physscale reads the
member itself (``zipfile`` and the ``.npy`` header) and unpickles it with
physscale's one unpickler ([`physscale.io.pickles.load_pickle`][physscale.io.pickles.load_pickle])
under
rules that resolve no real global at all: the names a 0-d string array needs
map to inert stand-ins (``_codecs.encode``, which pickle protocols 0-2 use
for bytes, to one that only turns latin-1 text into bytes), everything else
is refused with [`physscale.errors.UnsafeFileError`][physscale.errors.UnsafeFileError]. Nothing
from the file runs.

`write_metadata` stores metadata as a plain unicode array instead, which
numpy reads without pickle and PtychoPINN reads as before (``.item()`` gives
the JSON string).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from physscale.errors import DataFileError, UnsafeFileError
from physscale.io import _hdf5_vlen
from physscale.io._atomic import TargetAppearedError, check_output, locked
from physscale.io._files import (
    ZIP_OPEN_ERRORS,
    check_depth,
    check_zip_member,
    describe,
    load_json,
    preview,
    zip_archive_size,
)
from physscale.io.archive import copy_members, member_info, new_archive
from physscale.io.formats.base import READ_ERRORS, file_kind
from physscale.io.formats.hdf5 import hdf5_errors, import_h5py, open_hdf5
from physscale.io.formats.npy import read_npy_header
from physscale.io.formats.npz import open_npz
from physscale.io.pickles import PickleRules, load_pickle

__all__ = ["METADATA_KEY", "metadata_from_npy_stream", "read_metadata", "write_metadata"]

#: The NPZ key PtychoPINN stores metadata under.
METADATA_KEY = "_metadata"

#: Stored metadata larger than this (4 MiB) is not metadata, and is not read: a
#: pickle, a string array or an HDF5 string, checked before it is read.
MAX_METADATA_BYTES = 4 * 1024 * 1024

# A pickled 0-d object array holding one string takes about 60 opcodes. The
# cap bounds what a pickle can make the unpickler allocate (each opcode makes
# at most one small object), and memo indices beyond it are refused before
# CPython's unpickler sizes its memo table from them (see physscale.io.pickles).
_MAX_PICKLE_OPCODES = 1000

# Attempts when other writers keep creating or replacing the file meanwhile.
_WRITE_ATTEMPTS = 10

# The globals a pickled 0-d object array references, by numpy generation.
_RECONSTRUCT = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}
_NDARRAY = {("numpy", "ndarray")}
_DTYPE = {("numpy", "dtype")}
_STR = {("builtins", "str"), ("__builtin__", "unicode")}
# Protocols 0-2 (old numpy's np.save) have no bytes opcode: bytes are pickled as
# _codecs.encode(text, "latin1"), here only for the array's byte-order argument.
_CODECS_ENCODE = ("_codecs", "encode")
_LATIN1 = ("latin1", "latin-1")
_OBJECT_DTYPE = re.compile(r"O\d*")


class _DtypeStub:
    """Stands in for ``numpy.dtype``; accepts only the object dtype."""

    def __init__(self, where: str, *args: Any) -> None:
        self.where = where
        if not args or not isinstance(args[0], str) or not _OBJECT_DTYPE.fullmatch(args[0]):
            raise UnsafeFileError(
                f"{where}: the pickled array has dtype {preview(args[:1])}; only an object "
                f"array holding one JSON string is accepted as metadata"
            )

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) < 8 or state[1] not in ("|", "<", ">", "="):
            raise UnsafeFileError(f"{self.where}: malformed dtype state {preview(state)} in pickle")


class _ArrayStub:
    """Stands in for the ``ndarray`` being reconstructed; keeps only its one string."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.value: str | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, raw list of elements)
        bad = UnsafeFileError(
            f"{self.where}: the pickled array is not a single-string object array"
        )
        if not isinstance(state, tuple) or len(state) != 5:
            raise bad
        _version, shape, dtype, _fortran, raw = state
        if not isinstance(dtype, _DtypeStub) or not isinstance(raw, list) or len(raw) != 1:
            raise bad
        if not isinstance(shape, tuple) or any(s != 1 for s in shape):
            raise bad
        if not isinstance(raw[0], str):
            raise UnsafeFileError(
                f"{self.where}: the pickled array holds a {type(raw[0]).__name__}, "
                f"not the JSON string metadata must be"
            )
        self.value = raw[0]


def _latin1_encoder(where: str) -> Any:
    """Stands in for ``_codecs.encode``: only ``(str, "latin1")``, giving bytes."""

    def encode(*args: Any) -> bytes:
        if len(args) != 2 or not isinstance(args[0], str) or args[1] not in _LATIN1:
            raise UnsafeFileError(
                f"{where}: refused to unpickle metadata that calls _codecs.encode with "
                f"arguments {preview(args)}; only encode(<str>, 'latin1'), which old pickles "
                f"use for bytes, is accepted"
            )
        try:
            return args[0].encode("latin1")
        except UnicodeEncodeError:
            raise UnsafeFileError(
                f"{where}: the metadata pickle encodes non-latin-1 text as bytes; a pickle "
                f"written by numpy never does"
            ) from None

    return encode


def _str_standin(where: str) -> Any:
    """Stands in for ``str``: only ``str(<str>)``. The real ``str`` of a nested
    structure built by the pickle would format all of it (exponentially large)."""

    def make_str(*args: Any) -> str:
        if not args:
            return ""
        if len(args) == 1 and isinstance(args[0], str):
            return args[0]
        raise UnsafeFileError(
            f"{where}: refused to unpickle metadata that calls str with arguments "
            f"{preview(args)}; only a string is accepted"
        )

    return make_str


def _reconstruct(where: str) -> Any:
    """Stands in for ``numpy.core.multiarray._reconstruct``: an `_ArrayStub`."""

    def reconstruct(cls: Any, shape: Any, order: Any) -> _ArrayStub:
        if cls is not _NDARRAY_MARKER:
            raise UnsafeFileError(f"{where}: pickle reconstructs a non-ndarray class")
        return _ArrayStub(where)

    return reconstruct


_NDARRAY_MARKER = object()

# What a metadata pickle may name: no real global at all, only inert stand-ins.
_RULES = PickleRules(
    allowed={
        **dict.fromkeys(_RECONSTRUCT, _reconstruct),
        **dict.fromkeys(_NDARRAY, lambda where: _NDARRAY_MARKER),
        **dict.fromkeys(_DTYPE, lambda where: lambda *args: _DtypeStub(where, *args)),
        **dict.fromkeys(_STR, _str_standin),
        _CODECS_ENCODE: _latin1_encoder,
    },
    max_opcodes=_MAX_PICKLE_OPCODES,
    what="metadata",
    needs="a 0-d string array needs about 60",
    refusal=(
        "{where}: refused to unpickle metadata that references {module}.{name}; a "
        "metadata pickle may only rebuild a 0-d array holding a JSON string. This "
        "file tries to run code or holds other objects; do not open it with "
        "np.load(allow_pickle=True)"
    ),
    corrupt="{where}: corrupt metadata pickle",
)


def _unpickle_string(data: bytes, where: str) -> str:
    """The JSON string inside a pickled 0-d object array, with no code run."""
    obj = load_pickle(data, where, _RULES)
    if not isinstance(obj, _ArrayStub) or obj.value is None:
        raise UnsafeFileError(f"{where}: the metadata pickle is not a 0-d string array")
    return obj.value


def metadata_from_npy_stream(stream: IO[bytes], where: str) -> dict[str, Any]:
    """Parse one ``.npy`` stream holding metadata: a JSON string array, pickled or not.

    Args:
        stream: binary stream positioned at the start of the ``.npy`` data.
        where: text naming the member in messages (``"file.npz:_metadata"``).

    Returns:
        The decoded JSON object.
    """
    header = read_npy_header(stream, where, METADATA_KEY)
    if header.dtype.hasobject:
        data = stream.read(MAX_METADATA_BYTES + 1)
        if len(data) > MAX_METADATA_BYTES:
            raise DataFileError(
                f"{where}: metadata larger than {MAX_METADATA_BYTES} bytes; refused"
            )
        text = _unpickle_string(data, where)
    elif header.dtype.kind in "US":
        if header.count != 1:
            raise DataFileError(
                f"{where}: metadata must be a single string, got an array of shape {header.shape}"
            )
        size = header.dtype.itemsize
        if size > MAX_METADATA_BYTES:
            raise DataFileError(
                f"{where}: metadata string of {size} bytes ({header.dtype}), more than the "
                f"{MAX_METADATA_BYTES} bytes metadata may hold; refused before reading it"
            )
        raw = stream.read(size)
        if len(raw) != size:
            raise DataFileError(f"{where}: truncated metadata member")
        text = _string_value(raw, header.dtype, where)
    else:
        raise DataFileError(
            f"{where}: metadata must be a JSON string, got an array of dtype {header.dtype}"
        )
    return _decode_json(text, where)


def _string_value(raw: bytes, dtype: np.dtype[Any], where: str) -> str:
    """The text of one stored ``U`` (UTF-32) or ``S`` (UTF-8 bytes) element.

    Decoded here, strictly: numpy's own conversion of a ``U`` element holding an
    invalid code point raises SystemError.
    """
    try:
        if dtype.kind == "S":
            return raw.rstrip(b"\x00").decode("utf-8")
        codec = "utf-32-be" if dtype.byteorder == ">" else "utf-32-le"
        return raw.decode(codec).rstrip("\x00")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{where}: metadata is not valid text ({describe(exc)})") from None


def _decode_json(text: str, where: str) -> dict[str, Any]:
    """The metadata JSON object in ``text``; ``where`` names it in errors."""
    decoded = load_json(text, where, what="metadata")
    if not isinstance(decoded, dict):
        raise DataFileError(
            f"{where}: metadata must be a JSON object, got {type(decoded).__name__}"
        )
    return decoded


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Read a dataset's metadata without executing any code from the file.

    Args:
        path: an ``.npz`` file (metadata under ``_metadata``, as PtychoPINN
            writes it: a JSON string in a 0-d object or unicode array), an
            HDF5 file (a ``_metadata`` string attribute on the root group or a
            scalar string dataset ``_metadata``), or a ``.npy`` file (which
            cannot hold metadata).

    Returns:
        The metadata as a dict, or None when the file has none.

    Raises:
        UnsafeFileError: the metadata pickle references anything beyond what a
            0-d string array needs (it would run code).
        DataFileError: a missing, corrupt or malformed file or metadata.

    Example:
        >>> import numpy as np
        >>> from physscale.io import read_metadata, write_metadata
        >>> write_metadata(tmp / "d.npz", {"physics_parameters": {"nphotons": 1e9}},
        ...                diffraction=np.zeros((2, 8, 8), np.float32))
        >>> read_metadata(tmp / "d.npz")
        {'physics_parameters': {'nphotons': 1000000000.0}}
    """
    p = Path(path)
    kind = file_kind(p)
    if kind == "npy":
        return None
    if kind == "hdf5":
        return _read_hdf5_metadata(p)
    where = f"{p}:{METADATA_KEY}"
    with open_npz(p) as zf:
        try:
            info = zf.getinfo(METADATA_KEY + ".npy")
        except KeyError:
            return None
        check_zip_member(
            info, where, archive_size=zip_archive_size(zf), max_bytes=MAX_METADATA_BYTES + 4096
        )
        try:
            stream = zf.open(info)
        except ZIP_OPEN_ERRORS as exc:
            raise DataFileError(f"{where}: corrupt metadata member ({describe(exc)})") from None
        try:
            with stream:
                return metadata_from_npy_stream(stream, where)
        except READ_ERRORS as exc:
            raise DataFileError(f"{where}: corrupt metadata member ({describe(exc)})") from None


def _read_hdf5_metadata(path: Path) -> dict[str, Any] | None:
    where = f"{path}:{METADATA_KEY}"
    with open_hdf5(path) as f, hdf5_errors(where):
        if METADATA_KEY in f.attrs:
            attr = f.attrs.get_id(METADATA_KEY)
            _check_hdf5_string(attr.shape, attr.dtype, where)
            if attr.dtype.kind == "O":
                _hdf5_vlen.check_attribute_length(f, path, METADATA_KEY, MAX_METADATA_BYTES)
            raw: Any = f.attrs[METADATA_KEY]
        elif METADATA_KEY in f:
            dset = f.get(METADATA_KEY)
            if not isinstance(dset, _h5py_dataset(path)):
                raise DataFileError(f"{where}: metadata must be a string dataset or attribute")
            if dset.shape is None:
                raise DataFileError(f"{where}: metadata dataset has a null dataspace")
            _check_hdf5_string(dset.shape, dset.dtype, where)
            if dset.dtype.kind == "O":
                _hdf5_vlen.check_dataset_length(dset, path, where, MAX_METADATA_BYTES)
            raw = dset[()]
        else:
            return None
    if isinstance(raw, np.ndarray):
        raw = raw.reshape(()).item()
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataFileError(f"{where}: metadata is not UTF-8 text ({describe(exc)})") from None
    if not isinstance(raw, str):
        raise DataFileError(f"{where}: metadata must be a JSON string, got {type(raw).__name__}")
    try:
        raw.encode("utf-8")  # h5py hands back undecodable bytes as lone surrogates
    except UnicodeEncodeError as exc:
        raise DataFileError(f"{where}: metadata is not UTF-8 text ({describe(exc)})") from None
    return _decode_json(raw, where)


def _h5py_dataset(path: Path) -> Any:
    return import_h5py(path).Dataset


def _check_hdf5_string(shape: Any, dtype: np.dtype[Any], where: str) -> None:
    """One string, of a declared size within the cap, before anything is read."""
    if shape is None:
        raise DataFileError(f"{where}: metadata has a null dataspace (no value)")
    count = 1
    for n in shape:
        count *= int(n)
    if count != 1:
        raise DataFileError(f"{where}: metadata must be a single string, got shape {tuple(shape)}")
    if dtype.kind not in "USO":
        raise DataFileError(f"{where}: metadata must be a JSON string, got dtype {dtype}")
    if dtype.kind == "O" and _string_info(dtype) is None:
        raise DataFileError(f"{where}: metadata must be a JSON string, got {dtype}")
    if dtype.kind in "US" and dtype.itemsize > MAX_METADATA_BYTES:
        raise DataFileError(
            f"{where}: metadata string of {dtype.itemsize} bytes, more than the "
            f"{MAX_METADATA_BYTES} bytes metadata may hold; refused before reading it"
        )


def _string_info(dtype: np.dtype[Any]) -> Any:
    return import_h5py(Path("hdf5")).check_string_dtype(dtype)


def write_metadata(
    path: str | os.PathLike[str], metadata: Mapping[str, Any], **arrays: Any
) -> None:
    """Write metadata into an ``.npz`` file as a plain unicode array (no pickle).

    If ``path`` exists, its other members are kept (copied in chunks, so a
    large file is never loaded whole) and ``_metadata`` is replaced; the file
    is replaced atomically. Otherwise a new compressed ``.npz`` is created.

    Args:
        path: the ``.npz`` file.
        metadata: a JSON-serializable mapping, e.g.
            ``{"physics_parameters": {"nphotons": 1e9}}``.
        **arrays: numeric arrays to store too (same as ``np.savez_compressed``
            keywords); they replace members of the same name. Object arrays
            are refused.

    PtychoPINN reads the result unchanged: ``np.load(f)["_metadata"].item()``
    is the JSON string.

    Example:
        >>> import json, numpy as np
        >>> from physscale.io import write_metadata
        >>> write_metadata(tmp / "d.npz", {"physics_parameters": {"nphotons": 1e9}},
        ...                diffraction=np.zeros((2, 8, 8), np.float32))
        >>> with np.load(tmp / "d.npz", allow_pickle=False) as z:  # no pickle needed
        ...     json.loads(z["_metadata"].item())["physics_parameters"]
        {'nphotons': 1000000000.0}
    """
    check_output(path)  # a valid name, not read-only: refused before any work
    if not isinstance(metadata, Mapping):
        raise DataFileError(f"metadata must be a mapping, got {type(metadata).__name__}")
    try:
        text = json.dumps(dict(metadata), allow_nan=False)
    except RecursionError:
        raise DataFileError(
            f"metadata for {os.fspath(path)} is nested too deeply to write as JSON"
        ) from None
    except (TypeError, ValueError) as exc:  # also a value that holds itself
        raise DataFileError(
            f"metadata for {os.fspath(path)} is not JSON-serializable: {describe(exc)}"
        ) from None
    check_depth(json.loads(text), f"metadata for {os.fspath(path)}")
    if METADATA_KEY in arrays:
        raise DataFileError(f"pass metadata as the metadata argument, not as {METADATA_KEY}=")
    new: dict[str, np.ndarray] = {METADATA_KEY: np.array(text, dtype=np.str_)}
    for name, value in arrays.items():
        arr = np.asanyarray(value)
        if arr.dtype.hasobject:
            raise DataFileError(f"array {name!r} has dtype object, which needs pickle; refused")
        new[name] = arr
    p = Path(path)
    skip = {name + ".npy" for name in new}
    for _ in range(_WRITE_ATTEMPTS):
        with locked(p) as current:
            try:
                with new_archive(p, create_only=current is None) as out:
                    if current is not None:
                        copy_members(current, p, out, skip, unchanged="metadata not written")
                    for name, arr in new.items():
                        with out.open(member_info(name + ".npy"), "w", force_zip64=True) as m:
                            np.lib.format.write_array(m, arr, allow_pickle=False)
            except TargetAppearedError:
                continue  # another writer created the file meanwhile: update theirs
            return
    raise DataFileError(  # pragma: no cover - needs a file replaced 10 times during one write
        f"{path}: kept being replaced by other writers; metadata not written"
    )
