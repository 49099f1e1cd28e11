"""The stored length of an HDF5 variable-length string, read before libhdf5 reads the string.

libhdf5 allocates a variable-length string from the 4-byte length stored
next to it, before it looks at the string's bytes: a 4 KB file claiming a
2 GiB string makes it allocate (and fill) 2 GiB before it fails. So before
h5py reads a variable-length ``_metadata``, physscale reads that length from
the file itself and refuses anything over the cap:

- a dataset: from its raw storage (contiguous: at its file offset; chunked:
  its one unfiltered chunk);
- an attribute: from the attribute message in the object header (versions
  1 and 2 of the header, attribute messages of versions 1-3). An attribute
  held in dense storage (a fractal heap: more than 8 attributes on a group
  written with ``libver="latest"`` or ``track_order=True``) or in a shared
  message table cannot be checked this way and is refused with
  [`physscale.errors.UnsafeFileError`][physscale.errors.UnsafeFileError]; store such metadata as a
  dataset.

On disk a variable-length element is its length (4 bytes, little-endian)
followed by a global heap ID (HDF5 file format specification, "Variable-length
Datatype" and "Attribute Message").
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import IO, Any

from physscale.errors import DataFileError, UnsafeFileError
from physscale.io._files import open_regular

__all__ = ["check_attribute_length", "check_dataset_length"]

_MSG_CONTINUATION = 0x10
_MSG_ATTRIBUTE = 0x0C
# Never walk more than this much object header (hostile continuation chains).
_MAX_HEADER_BYTES = 1 << 20
_MAX_CHUNKS = 64


def _too_long(where: str, length: int, cap: int) -> DataFileError:
    return DataFileError(
        f"{where}: metadata string of {length} bytes, more than the {cap} bytes metadata may "
        f"hold; refused before reading it"
    )


def _read_at(f: IO[bytes], offset: int, size: int, where: str) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise DataFileError(f"{where}: the HDF5 file is truncated (object header at {offset})")
    return data


def check_dataset_length(dset: Any, path: Path, where: str, cap: int) -> None:
    """Refuse a scalar variable-length string dataset whose stored length exceeds ``cap``."""
    import h5py  # type: ignore[import-untyped]  # the caller has imported it already

    layout = dset.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = dset.id.get_offset()
        if offset is None:  # never written: reads as an empty value
            return
        with open_regular(path) as f:
            raw = _read_at(f, offset, 4, where)
    elif layout == h5py.h5d.CHUNKED and dset.id.get_create_plist().get_nfilters() == 0:
        if dset.id.get_num_chunks() == 0:
            return
        _mask, raw = dset.id.read_direct_chunk((0,) * len(dset.shape))
    else:
        raise DataFileError(
            f"{where}: a variable-length metadata string stored compact or compressed, whose "
            f"size physscale cannot check before reading; store it as a plain (contiguous) "
            f"dataset or an attribute"
        )
    _check_length(raw, where, cap, "variable-length string")


def check_attribute_length(f: Any, path: Path, name: str, cap: int) -> None:
    """Refuse the root group's variable-length string attribute ``name`` if longer than ``cap``."""
    import h5py

    where = f"{path}:{name}"
    address = h5py.h5o.get_info(f.id).addr
    size_of_offsets, size_of_lengths = f.id.get_create_plist().get_sizes()
    with open_regular(path) as fh:
        raw = _attribute_data(fh, address, size_of_offsets, size_of_lengths, name.encode(), where)
    if raw is None:
        raise UnsafeFileError(
            f"{where}: the metadata attribute is kept where physscale cannot check its size "
            f"before reading it (dense or shared attribute storage); store the metadata as a "
            f"dataset named {name!r} instead"
        )
    _check_length(raw, where, cap, "variable-length string attribute")


def _check_length(raw: bytes, where: str, cap: int, what: str) -> None:
    """Refuse the string whose stored data ``raw`` starts with a length above ``cap``."""
    if len(raw) < 4:
        raise DataFileError(f"{where}: corrupt {what}")
    (length,) = struct.unpack_from("<I", raw)
    if length > cap:
        raise _too_long(where, length, cap)


def _attribute_data(
    fh: IO[bytes], address: int, so: int, sl: int, name: bytes, where: str
) -> bytes | None:
    """The raw data of the attribute ``name`` in the object header at ``address``, or None."""
    first = _read_at(fh, address, 16, where)
    # (start, length, is a version-2 continuation chunk)
    chunks: list[tuple[int, int, bool]] = []
    if first[:4] == b"OHDR":
        version = 2
        flags = first[5]
        pos = address + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 0x03)
        size = int.from_bytes(_read_at(fh, pos, width, where), "little")
        chunks.append((pos + width, size, False))
        track_order = bool(flags & 0x04)
    elif first[0] == 1:
        version = 1
        track_order = False
        (size,) = struct.unpack_from("<I", first, 8)
        chunks.append((address + 16, size, False))
    else:
        raise DataFileError(f"{where}: unknown HDF5 object header version")
    total = 0
    walked = 0
    while chunks:
        start, length, continued = chunks.pop(0)
        total += length
        walked += 1
        if total > _MAX_HEADER_BYTES or walked > _MAX_CHUNKS:
            raise DataFileError(f"{where}: implausible HDF5 object header")
        block = _read_at(fh, start, length, where)
        pos = 0
        if continued:
            if block[:4] != b"OCHK":
                raise DataFileError(f"{where}: corrupt HDF5 object header continuation")
            pos = 4
        while pos < len(block):
            if version == 1:
                if pos + 8 > len(block):
                    break
                kind, msize, _mflags = struct.unpack_from("<HHB", block, pos)
                data_at = pos + 8
            else:
                if pos + 4 > len(block):
                    break
                kind, msize, _mflags = struct.unpack_from("<BHB", block, pos)
                data_at = pos + 4 + (2 if track_order else 0)
            data = block[data_at : data_at + msize]
            pos = data_at + msize
            if kind == _MSG_CONTINUATION and len(data) >= so + sl:
                offset = int.from_bytes(data[:so], "little")
                clen = int.from_bytes(data[so : so + sl], "little")
                # A version-2 continuation chunk ends with a 4-byte checksum.
                chunks.append((offset, clen - 4 if version == 2 else clen, version == 2))
            elif kind == _MSG_ATTRIBUTE:
                found = _match_attribute(data, name)
                if found is not None:
                    return found
    return None


def _match_attribute(data: bytes, name: bytes) -> bytes | None:
    """The raw value of an attribute message if it is named ``name``."""
    if len(data) < 8:
        return None
    version = data[0]
    name_size, type_size, space_size = struct.unpack_from("<HHH", data, 2)
    if version == 1:

        def pad(n: int) -> int:
            return (n + 7) // 8 * 8

        pos = 8
        stored_name = data[pos : pos + name_size]
        pos += pad(name_size) + pad(type_size) + pad(space_size)
    elif version in (2, 3):
        pos = 8 + (1 if version == 3 else 0)
        stored_name = data[pos : pos + name_size]
        pos += name_size + type_size + space_size
    else:
        return None
    if stored_name.rstrip(b"\x00") != name:
        return None
    return data[pos:]
