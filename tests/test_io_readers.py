"""Streaming readers: every format yields exactly the stored array, in bounded chunks."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import physscale
from physscale.errors import DataFileError, UnsafeFileError
from physscale.io import (
    array_info,
    example_dataset_path,
    iter_patterns,
    list_arrays,
    read_metadata,
    readers,
)
from physscale.io.readers import CHUNK_BYTES


def _write(path: Path, fmt: str, x: np.ndarray, key: str = "diffraction") -> Path:
    """Store `x` in one of the supported formats; returns the file path."""
    if fmt == "npy":
        np.save(path.with_suffix(".npy"), x)
        return path.with_suffix(".npy")
    if fmt == "npz":
        np.savez(path.with_suffix(".npz"), **{key: x})
        return path.with_suffix(".npz")
    if fmt == "npz-compressed":
        np.savez_compressed(path.with_suffix(".npz"), **{key: x})
        return path.with_suffix(".npz")
    h5 = pytest.importorskip("h5py")
    with h5.File(path.with_suffix(".h5"), "w") as f:
        if x.ndim == 0:  # scalars cannot be chunked
            f.create_dataset(key, data=x)
        else:
            f.create_dataset(key, data=x, chunks=(1, *x.shape[1:]), compression="gzip")
    return path.with_suffix(".h5")


FORMATS = ["npy", "npz", "npz-compressed", "hdf5"]


@given(
    n=st.integers(1, 13),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    chunk=st.one_of(st.none(), st.integers(1, 15)),
    dtype=st.sampled_from(["<f2", "<f4", ">f4", "<f8", ">f8"]),
    fmt=st.sampled_from(FORMATS),
)
def test_streamed_chunks_concatenate_to_the_stored_array(
    n: int, h: int, w: int, chunk: int | None, dtype: str, fmt: str
) -> None:
    rng = np.random.default_rng(n * 100 + h * 10 + w)
    x = rng.random((n, h, w)).astype(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "data", fmt, x)
        chunks = list(iter_patterns(path, chunk_patterns=chunk))
    step = chunk or n
    assert [c.shape[0] for c in chunks] == [min(step, n - s) for s in range(0, n, step)]
    assert all(c.dtype.isnative and c.dtype == np.dtype(dtype).newbyteorder("=") for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), x)


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_derivation_equals_the_fsum_reference(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.gamma(2.0, 1.0, size=(37, 2, 8, 8)).astype(np.float32)  # (n, C, H, W)
    path = _write(tmp_path / "d", fmt, x)
    acc = physscale.IntensityAccumulator()
    for chunk in iter_patterns(path, chunk_patterns=5):
        acc.update(chunk)
    total = math.fsum(float(v) ** 2 for v in x.astype(np.float64).ravel())
    reference = math.sqrt(1e6 * (37 * 2) / total)
    assert acc.n_patterns == 37 * 2
    assert float(acc.intensity_scale(1e6)) == pytest.approx(reference, rel=1e-12)


def test_the_zip_member_is_never_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = np.ones((64, 32, 32), np.float32)  # 256 KiB of data
    path = _write(tmp_path / "big", "npz-compressed", x)
    requested: list[int] = []
    original = zipfile.ZipExtFile.read

    def spy(self: Any, n: int = -1) -> bytes:
        requested.append(n)
        return original(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", spy)
    chunks = iter_patterns(path, chunk_patterns=4)
    first = next(chunks)
    assert first.shape == (4, 32, 32)
    rest = list(chunks)
    assert sum(c.shape[0] for c in rest) == 60
    chunk_bytes = 4 * 32 * 32 * 4
    assert requested, "the reader should read the member through zipfile"
    assert all(0 <= r <= chunk_bytes for r in requested), max(requested)


def test_default_chunks_stay_within_the_byte_budget(tmp_path: Path) -> None:
    entry = 8 * 128 * 128 * 8  # 1 MiB per first-axis entry
    x = np.zeros((40, 8, 128, 128), np.float64)
    path = _write(tmp_path / "budget", "npy", x)
    sizes = [c.nbytes for c in iter_patterns(path)]
    assert sum(sizes) == x.nbytes
    assert max(sizes) <= max(CHUNK_BYTES, entry)
    assert len(sizes) > 1


def test_chunks_are_independent_arrays(tmp_path: Path) -> None:
    x = np.arange(6 * 2 * 2, dtype=np.float32).reshape(6, 2, 2)
    path = _write(tmp_path / "own", "npy", x)
    chunks = list(iter_patterns(path, chunk_patterns=2))
    chunks[0][...] = -1.0  # writable and not shared with later chunks
    np.testing.assert_array_equal(np.concatenate(chunks[1:]), x[2:])


def test_fortran_ordered_npy_is_read_correctly(tmp_path: Path) -> None:
    x = np.asfortranarray(np.random.default_rng(1).random((9, 4, 5)))
    np.save(tmp_path / "f.npy", x)
    np.testing.assert_array_equal(
        np.concatenate(list(iter_patterns(tmp_path / "f.npy", chunk_patterns=4))), x
    )


def test_fortran_ordered_npz_member_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "f.npz", diffraction=np.asfortranarray(np.ones((3, 4, 5))))
    with pytest.raises(DataFileError, match=r"f\.npz:diffraction: stored in Fortran"):
        list(iter_patterns(tmp_path / "f.npz"))


def test_custom_keys_and_hdf5_dataset_paths(tmp_path: Path) -> None:
    h5 = pytest.importorskip("h5py")
    x = np.ones((3, 4, 4), np.float32)
    np.savez(tmp_path / "k.npz", amplitudes=x)
    with h5.File(tmp_path / "k.h5", "w") as f:
        f.create_dataset("entry/data/amplitudes", data=x)
    assert sum(c.shape[0] for c in iter_patterns(tmp_path / "k.npz", key="amplitudes")) == 3
    got = list(iter_patterns(tmp_path / "k.h5", key="/entry/data/amplitudes"))
    np.testing.assert_array_equal(np.concatenate(got), x)


def test_list_arrays_and_array_info_read_headers(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", diffraction=np.ones((3, 4, 5), ">f4"), probe=np.ones((4, 5)))
    infos = {a.name: a for a in list_arrays(tmp_path / "a.npz")}
    assert infos["diffraction"].shape == (3, 4, 5)
    assert infos["diffraction"].dtype == np.dtype(">f4")
    assert infos["probe"].shape == (4, 5)
    info = array_info(tmp_path / "a.npz", "diffraction")
    assert (info.count, info.nbytes) == (60, 240)


# ----------------------------------------------------------------- the shipped example
def test_the_example_dataset_is_normalized_and_carries_nphotons() -> None:
    path = example_dataset_path()
    assert path.is_file()
    assert path.stat().st_size < 2_000_000
    meta = read_metadata(path)
    assert meta is not None
    assert meta["physics_parameters"]["nphotons"] > 0
    with np.load(path, allow_pickle=False) as data:
        x = data["diffraction"]
    assert x.dtype == np.float32 and x.ndim == 3 and x.shape[1] == x.shape[2]
    n_side = x.shape[1]
    per_pattern = [math.fsum(float(v) ** 2 for v in p.ravel()) for p in x.astype(np.float64)]
    assert math.fsum(per_pattern) / len(per_pattern) == pytest.approx((n_side / 2) ** 2, rel=1e-6)


# ----------------------------------------------------------------- bad files
@pytest.mark.parametrize(
    ("dtype", "match"),
    [
        (np.int32, "must be real floating point .* got dtype int32"),
        (np.complex64, "got dtype complex64"),
        (np.bool_, "got dtype bool"),
    ],
)
@pytest.mark.parametrize("fmt", ["npy", "npz", "hdf5"])
def test_wrong_dtype_is_refused_naming_the_file(
    tmp_path: Path, fmt: str, dtype: Any, match: str
) -> None:
    path = _write(tmp_path / "wrong", fmt, np.ones((2, 3, 3), dtype))
    with pytest.raises(DataFileError, match=f"wrong.*{match}"):
        list(iter_patterns(path))


@pytest.mark.skipif(
    np.dtype(np.longdouble).itemsize in (2, 4, 8), reason="longdouble is a plain float here"
)
@pytest.mark.parametrize("fmt", ["npy", "npz", "hdf5"])
def test_extended_precision_floats_are_refused_naming_file_and_dtype(
    tmp_path: Path, fmt: str
) -> None:
    x = np.ones((2, 3, 3), np.longdouble)
    path = _write(tmp_path / "xld", fmt, x)
    assert array_info(path).dtype == x.dtype  # the header is still listed, for inspect
    bits = 8 * x.dtype.itemsize
    with pytest.raises(
        DataFileError, match=rf"xld.*float16, float32 or float64, got the {bits}-bit .*{x.dtype}"
    ):
        list(iter_patterns(path))


def test_object_arrays_are_refused_as_unsafe(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", diffraction=np.array([[[1.0]]], dtype=object))
    with pytest.raises(UnsafeFileError, match=r"obj\.npz:diffraction: dtype object"):
        list(iter_patterns(tmp_path / "obj.npz"))


@pytest.mark.parametrize("fmt", ["npy", "npz", "hdf5"])
@pytest.mark.parametrize("shape", [(), (5,), (4, 4)])
def test_wrong_rank_is_refused(tmp_path: Path, fmt: str, shape: tuple[int, ...]) -> None:
    path = _write(tmp_path / "rank", fmt, np.ones(shape, np.float32))
    with pytest.raises(DataFileError, match=r"at least 3 axes, e\.g\. \(n, H, W\), got shape"):
        list(iter_patterns(path))


def test_no_patterns_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty", "npy", np.ones((0, 4, 4), np.float32))
    with pytest.raises(DataFileError, match=r"holds no patterns \(shape \(0, 4, 4\)\)"):
        list(iter_patterns(path))


def test_missing_file_empty_file_and_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match=r"nope\.npz: no such file"):
        list(iter_patterns(tmp_path / "nope.npz"))
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(DataFileError, match=r"empty\.npy: the file is empty"):
        list(iter_patterns(tmp_path / "empty.npy"))
    (tmp_path / "notes.npz").write_text("hello")
    with pytest.raises(DataFileError, match=r"notes\.npz: not a \.npy, \.npz or HDF5 file"):
        list(iter_patterns(tmp_path / "notes.npz"))


def test_missing_key_lists_what_is_there(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", amplitudes=np.ones((2, 3, 3)), probe=np.ones((3, 3)))
    with pytest.raises(DataFileError, match=r"no array 'diffraction'; it holds 'amplitudes'"):
        list(iter_patterns(tmp_path / "k.npz"))


def test_missing_hdf5_dataset_or_group_key(tmp_path: Path) -> None:
    h5 = pytest.importorskip("h5py")
    with h5.File(tmp_path / "g.h5", "w") as f:
        f.create_dataset("entry/x", data=np.ones((2, 3, 3)))
    with pytest.raises(DataFileError, match=r"'diffraction' does not exist; datasets: '/entry/x'"):
        list(iter_patterns(tmp_path / "g.h5"))
    with pytest.raises(DataFileError, match=r"'entry' is a group, not a dataset"):
        list(iter_patterns(tmp_path / "g.h5", key="entry"))


def test_truncated_npy_reports_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "cut", "npy", np.ones((10, 8, 8), np.float32))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataFileError, match=r"cut\.npy: truncated: the header promises shape"):
        list(iter_patterns(path, chunk_patterns=3))


def test_truncated_npz_is_not_a_readable_archive(tmp_path: Path) -> None:
    path = _write(tmp_path / "cut", "npz-compressed", np.ones((10, 8, 8), np.float32))
    path.write_bytes(path.read_bytes()[:-60])
    with pytest.raises(DataFileError, match=r"cut\.npz: not a readable \.npz \(zip\) archive"):
        list(iter_patterns(path))


def test_corrupt_npz_data_fails_its_crc(tmp_path: Path) -> None:
    x = np.arange(10 * 8 * 8, dtype=np.float32).reshape(10, 8, 8)
    path = _write(tmp_path / "flip", "npz", x)  # stored: data bytes appear verbatim
    raw = bytearray(path.read_bytes())
    at = raw.index(x[5].tobytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFileError, match=r"flip\.npz:diffraction: corrupt data .*CRC"):
        list(iter_patterns(path))


def test_npz_member_shorter_than_its_header_is_truncated(tmp_path: Path) -> None:
    body = np.ones((4, 3, 3), np.float32)
    import io as _io

    buf = _io.BytesIO()
    np.lib.format.write_array(buf, body)
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as zf:
        zf.writestr("diffraction.npy", buf.getvalue()[:-36])
    with pytest.raises(DataFileError, match=r"short\.npz:diffraction: truncated"):
        list(iter_patterns(tmp_path / "short.npz"))


def test_bad_npy_header_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': oops }\n")
    with pytest.raises(DataFileError, match=r"bad\.npy: not a valid \.npy array header"):
        list(iter_patterns(tmp_path / "bad.npy"))


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_bad_chunk_sizes_are_refused(tmp_path: Path, chunk: Any) -> None:
    path = _write(tmp_path / "c", "npy", np.ones((2, 3, 3), np.float32))
    with pytest.raises(DataFileError, match="chunk_patterns must be a positive int"):
        list(iter_patterns(path, chunk_patterns=chunk))


def test_missing_h5py_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "x", "hdf5", np.ones((2, 3, 3), np.float32))
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(DataFileError, match=r"needs h5py.*pip install physscale\[hdf5\]"):
        list(iter_patterns(path))


def test_metadata_json_in_npz_does_not_disturb_reading(tmp_path: Path) -> None:
    x = np.ones((3, 4, 4), np.float32)
    np.savez(
        tmp_path / "m.npz",
        _metadata=np.array(json.dumps({"physics_parameters": {"nphotons": 5.0}}), dtype=object),
        diffraction=x,
    )
    np.testing.assert_array_equal(np.concatenate(list(iter_patterns(tmp_path / "m.npz"))), x)


def test_corrupt_compressed_npz_data_is_reported(tmp_path: Path) -> None:
    x = np.random.default_rng(3).random((20, 16, 16)).astype(np.float32)
    path = _write(tmp_path / "deflate", "npz-compressed", x)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2  # inside the deflated data of the only member
    raw[middle : middle + 8] = bytes(8)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFileError, match=r"deflate\.npz:diffraction: corrupt data"):
        list(iter_patterns(path))


def test_writing_into_a_chunk_never_changes_the_file(tmp_path: Path) -> None:
    x = np.arange(4 * 3 * 3, dtype=np.float32).reshape(4, 3, 3)
    path = _write(tmp_path / "cow", "npy", x)
    before = path.read_bytes()
    for chunk in iter_patterns(path, chunk_patterns=3):
        chunk *= 0.0
    assert path.read_bytes() == before
    np.testing.assert_array_equal(np.load(path), x)


def test_npy_chunks_start_at_unaligned_offsets(tmp_path: Path) -> None:
    # 7 x 5 float64 entries: chunk starts fall between mmap page boundaries.
    x = np.random.default_rng(9).random((301, 7, 5))
    path = _write(tmp_path / "odd", "npy", x)
    for step in (1, 3, 17, 300):
        np.testing.assert_array_equal(np.concatenate(list(iter_patterns(path, step))), x)


# ----------------------------------------------------------------- hostile headers (issue 11)
def _npy_bytes(header: dict[str, Any], data: bytes = b"", version: int = 1) -> bytes:
    """A .npy file with an arbitrary header dict (as numpy would write it) and data."""
    import io as _io

    buf = _io.BytesIO()
    write = np.lib.format.write_array_header_1_0 if version == 1 else (
        np.lib.format.write_array_header_2_0
    )  # fmt: skip
    write(buf, header)
    return buf.getvalue() + data


def _npz_bytes(
    path: Path, member: bytes, name: str = "diffraction.npy", deflate: bool = False
) -> Path:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr(name, member)
    return path


def test_a_header_length_that_lies_is_a_data_file_error(tmp_path: Path) -> None:
    # The length field cuts the header inside its dict: numpy's Python-2 fallback
    # re-tokenizes it and tokenize raises TokenError ("EOF in multi-line statement").
    raw = bytearray(_npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (2, 3, 3)}))
    raw[8:10] = (40).to_bytes(2, "little")
    path = tmp_path / "lies.npy"
    path.write_bytes(bytes(raw) + bytes(72))
    with pytest.raises(DataFileError, match=r"lies\.npy: not a valid \.npy array header"):
        list(iter_patterns(path))
    with pytest.raises(DataFileError, match=r"lies\.npy: not a valid \.npy array header"):
        list_arrays(path)


@pytest.mark.parametrize(
    "shape",
    [(2, -4, 4), (-1, 4, 4), (2, 4, -4), (2**62, 2**62, 4), (2**40, 2**40, 2**40)],
)
def test_negative_or_overflowing_dimensions_are_refused(
    tmp_path: Path, shape: tuple[int, ...]
) -> None:
    path = tmp_path / "dims.npy"
    path.write_bytes(
        _npy_bytes({"descr": "<f4", "fortran_order": False, "shape": shape}, bytes(64))
    )
    with pytest.raises(DataFileError, match=r"dims\.npy: .*(negative dimension|more bytes than)"):
        list(iter_patterns(path))
    member = _npy_bytes({"descr": "<f4", "fortran_order": False, "shape": shape}, bytes(64))
    npz = _npz_bytes(tmp_path / "dims.npz", member)
    with pytest.raises(DataFileError, match=r"dims\.npz:diffraction: .*(negative|more bytes than)"):
        list(iter_patterns(npz))


def test_an_npz_member_claiming_more_than_it_holds_is_refused_before_allocating(
    tmp_path: Path,
) -> None:
    # 225 bytes claiming one 74.5 GiB pattern: numpy raised MemoryError allocating it.
    header = {"descr": "<f8", "fortran_order": False, "shape": (1, 100_000, 100_000)}
    npz = _npz_bytes(tmp_path / "claim.npz", _npy_bytes(header, bytes(97)))
    with pytest.raises(DataFileError, match=r"claim\.npz:diffraction: truncated: the header"):
        pattern_source(npz)
    with pytest.raises(DataFileError, match=r"claim\.npz:diffraction: truncated"):
        next(iter_patterns(npz))


def test_an_npz_member_expanding_beyond_what_deflate_can_is_refused(tmp_path: Path) -> None:
    x = np.ones((4, 8, 8), np.float32)
    npz = _write(tmp_path / "ratio", "npz-compressed", x)
    raw = bytearray(npz.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (2**31).to_bytes(4, "little")  # uncompressed size
    npz.write_bytes(bytes(raw))
    with pytest.raises(DataFileError, match=r"ratio\.npz:diffraction: .*more than deflate"):
        list(iter_patterns(npz))


@pytest.mark.parametrize(
    ("flag", "method", "match"),
    [
        (0x1, zipfile.ZIP_STORED, "encrypted"),
        (0x20, zipfile.ZIP_STORED, "flag bits"),
        (0x40, zipfile.ZIP_STORED, "flag bits"),
        (0, 6, "compression method 6"),
        (0, 99, "compression method 99"),
    ],
)
def test_zip_features_numpy_never_writes_are_clean_errors(
    tmp_path: Path, flag: int, method: int, match: str
) -> None:
    # zipfile itself raised RuntimeError (encrypted) or NotImplementedError for these.
    npz = _write(tmp_path / "feat", "npz", np.ones((2, 3, 3), np.float32))
    raw = bytearray(npz.read_bytes())
    for header, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = raw.index(header)
        raw[at + flag_at : at + flag_at + 2] = flag.to_bytes(2, "little")
        raw[at + method_at : at + method_at + 2] = method.to_bytes(2, "little")
    npz.write_bytes(bytes(raw))
    for call in (lambda: list(iter_patterns(npz)), lambda: list_arrays(npz)):
        with pytest.raises(DataFileError, match=rf"feat\.npz:diffraction: .*{match}"):
            call()


def test_a_row_larger_than_a_piece_streams_in_pieces_of_bounded_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.random((3, 40, 50)).astype(np.float32)  # one entry: 8000 bytes
    for fmt in FORMATS:
        path = _write(tmp_path / f"big{fmt}", fmt, x)
        source = pattern_source(path)
        seen = np.zeros(x.shape, np.int64)
        rebuilt = np.empty_like(x)
        for index, piece in source.pieces(max_bytes=1000):
            assert piece.nbytes <= 1000
            rebuilt[index] = piece
            seen[index] += 1
        assert (seen == 1).all()
        np.testing.assert_array_equal(rebuilt, x)


def test_fortran_ordered_npy_streams_in_pieces_in_file_order(tmp_path: Path) -> None:
    x = np.asfortranarray(np.random.default_rng(2).random((6, 5, 4)))
    path = tmp_path / "f.npy"
    np.save(path, x)
    rebuilt = np.zeros_like(x)
    for index, piece in pattern_source(path).pieces(max_bytes=64):
        assert piece.nbytes <= 64
        rebuilt[index] = piece
    np.testing.assert_array_equal(rebuilt, x)
    np.testing.assert_array_equal(np.concatenate(list(iter_patterns(path, 4))), x)


# ----------------------------------------------------------------- HDF5 storage (issue 11)
def test_an_hdf5_dataset_that_was_never_written_is_refused(tmp_path: Path) -> None:
    # A 1.4 KB file declaring one 28000 x 28000 pattern was read whole (3.2 GB).
    h5 = pytest.importorskip("h5py")
    with h5.File(tmp_path / "sparse.h5", "w") as f:
        f.create_dataset("diffraction", shape=(1, 28000, 28000), dtype="<f4")
    assert (tmp_path / "sparse.h5").stat().st_size < 10_000
    with pytest.raises(DataFileError, match=r"sparse\.h5:diffraction: .*never written"):
        next(iter_patterns(tmp_path / "sparse.h5"))


def test_an_hdf5_dataset_with_unwritten_chunks_is_refused(tmp_path: Path) -> None:
    h5 = pytest.importorskip("h5py")
    with h5.File(tmp_path / "part.h5", "w") as f:
        d = f.create_dataset("diffraction", shape=(8, 4, 4), dtype="<f4", chunks=(2, 4, 4))
        d[:4] = 1.0  # chunks 0 and 1 of 4; the rest would read as zeros
    with pytest.raises(DataFileError, match=r"only 2 of the dataset's 4 chunks were ever written"):
        list(iter_patterns(tmp_path / "part.h5"))


def test_hdf5_data_outside_the_file_is_refused(tmp_path: Path) -> None:
    h5 = pytest.importorskip("h5py")
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.ones((2, 3, 3), "<f4").tobytes())
    other = _write(tmp_path / "other", "hdf5", np.ones((2, 3, 3), np.float32))
    with h5.File(tmp_path / "ext.h5", "w") as f:
        f.create_dataset("diffraction", shape=(2, 3, 3), dtype="<f4", external=[(raw, 0, 72)])
        f["linked"] = h5.ExternalLink(str(other), "/diffraction")
    with pytest.raises(UnsafeFileError, match=r"external raw file"):
        list(iter_patterns(tmp_path / "ext.h5"))
    with pytest.raises(UnsafeFileError, match=r"'/linked' is an external link"):
        list(iter_patterns(tmp_path / "ext.h5", key="linked"))


def test_compressed_hdf5_chunks_larger_than_the_limit_are_refused(tmp_path: Path) -> None:
    h5 = pytest.importorskip("h5py")
    from physscale.io.readers import MAX_HDF5_CHUNK_BYTES

    side = 4200  # one 4200 x 4200 float32 chunk: 70 MB, inflated whole by libhdf5
    assert side * side * 4 > MAX_HDF5_CHUNK_BYTES
    with h5.File(tmp_path / "fat.h5", "w") as f:
        d = f.create_dataset(
            "diffraction", shape=(1, side, side), dtype="<f4", chunks=(1, side, side),
            compression="gzip",
        )  # fmt: skip
        d[0, 0, :8] = 1.0
    with pytest.raises(DataFileError, match=r"compressed HDF5 chunks of shape \(1, 4200, 4200\)"):
        next(iter_patterns(tmp_path / "fat.h5"))


def test_an_hdf5_null_dataspace_is_a_data_file_error(tmp_path: Path) -> None:
    h5 = pytest.importorskip("h5py")
    with h5.File(tmp_path / "null.h5", "w") as f:
        f.create_dataset("diffraction", data=h5.Empty("<f4"))
    with pytest.raises(DataFileError, match=r"null\.h5: HDF5 dataset 'diffraction' has a null"):
        list(iter_patterns(tmp_path / "null.h5"))
    with pytest.raises(DataFileError, match="null dataspace"):
        array_info(tmp_path / "null.h5")
    assert list_arrays(tmp_path / "null.h5") == []


# ----------------------------------------------------------------- special files (issue 11)
def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.npy"
    os.mkfifo(path)
    return path


_ENTRY_POINTS = {
    "iter_patterns": lambda p: list(iter_patterns(p)),
    "array_info": array_info,
    "list_arrays": list_arrays,
    "read_metadata": read_metadata,
    "pattern_source": lambda p: pattern_source(p),
}


def pattern_source(path: Path, key: str = "diffraction") -> Any:
    # Looked up at call time, so this module still imports (and its other tests
    # run) against a physscale without it.
    return readers.pattern_source(path, key)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize("entry", sorted(_ENTRY_POINTS))
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, entry: str) -> None:
    from fuzz._harness import call_with_timeout

    fifo = _fifo(tmp_path)
    outcome = call_with_timeout(lambda: _ENTRY_POINTS[entry](fifo), seconds=10)
    assert outcome == ("DataFileError", f"{fifo}: is a FIFO (named pipe), not a regular file; "
                       "physscale reads data only from regular files (copy the data into one "
                       "first)")  # fmt: skip


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.parametrize("entry", sorted(_ENTRY_POINTS))
def test_a_character_device_is_refused(entry: str) -> None:
    with pytest.raises(DataFileError, match=r"/dev/zero: is a character device, not a regular"):
        _ENTRY_POINTS[entry](Path("/dev/zero"))


# ----------------------------------------------------------------- truncation while streaming
def test_a_npy_truncated_while_it_streams_is_a_data_file_error_not_sigbus(tmp_path: Path) -> None:
    # With one memory map per chunk, a truncation killed the process with SIGBUS.
    from fuzz._harness import run_python

    x = np.ones((64, 64, 64), np.float32)
    path = _write(tmp_path / "shrink", "npy", x)
    code = f"""
import os, physscale
from physscale.io import iter_patterns
it = iter_patterns({str(path)!r}, chunk_patterns=8)
first, second = next(it), next(it)
os.truncate({str(path)!r}, 128 + 8 * 64 * 64 * 4 + 100)
print(float(second.sum()))  # a chunk in hand stays readable
try:
    for _ in it:
        pass
except physscale.errors.DataFileError as exc:
    print("DataFileError", exc)
"""
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(8 * 64 * 64.0)
    assert re.match(r"DataFileError .*shrink\.npy: truncated", result.stdout.splitlines()[1])


@given(
    shape=st.sampled_from([(3, 5, 7), (2, 3, 4, 5), (4, 6, 5, 2), (1, 9, 8), (5, 4, 3, 2)]),
    layout=st.sampled_from([None, "NHWC"]),
    masked=st.booleans(),
    max_bytes=st.integers(4, 400),
    chunk=st.one_of(st.none(), st.integers(1, 4)),
    fmt=st.sampled_from(["npy", "npz", "hdf5", "npy-fortran"]),
)
def test_folding_a_file_in_pieces_equals_one_update_with_the_whole_array(
    shape: tuple[int, ...],
    layout: str | None,
    masked: bool,
    max_bytes: int,
    chunk: int | None,
    fmt: str,
) -> None:
    # Pieces smaller than one pattern go through IntensityAccumulator.update_fragments.
    from physscale.io.streaming import fold_patterns

    rng = np.random.default_rng(sum(shape) + max_bytes)
    x = rng.gamma(2.0, 0.5, size=shape).astype(np.float32)
    axes = (-3, -2) if layout == "NHWC" else (-2, -1)
    mask = rng.random(tuple(shape[a] for a in axes)) > 0.3 if masked else None
    with tempfile.TemporaryDirectory() as tmp:
        if fmt == "npy-fortran":
            path = Path(tmp) / "f.npy"
            np.save(path, np.asfortranarray(x))
        else:
            path = _write(Path(tmp) / "d", fmt, x)
        acc = fold_patterns(
            physscale.IntensityAccumulator(layout=layout),
            readers.pattern_source(path),
            mask=mask,
            chunk_patterns=chunk,
            max_bytes=max_bytes,
        )
    whole = physscale.IntensityAccumulator(layout=layout).update(x, mask=mask)
    assert (acc.n_patterns, acc.pattern_shape, acc.masked) == (
        whole.n_patterns,
        whole.pattern_shape,
        whole.masked,
    )
    # Reference: float64 squares of the unmasked pixels, added with math.fsum.
    x64 = x.astype(np.float64)
    if mask is not None:
        placed = mask.reshape((*mask.shape, 1)) if layout == "NHWC" else mask
        x64 = x64 * placed
    expected = math.fsum((x64 * x64).ravel().tolist())
    assert acc.total_intensity == pytest.approx(expected, rel=1e-13)


# ----------------------------------------------------------------- found by the long fuzz profile
def test_a_zip_entry_needing_a_newer_zip_version_is_a_data_file_error(tmp_path: Path) -> None:
    # zipfile raised NotImplementedError("zip file version 8.9") while opening the archive.
    npz = _write(tmp_path / "ver", "npz", np.ones((2, 3, 3), np.float32))
    raw = bytearray(npz.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 6 : central + 8] = (89).to_bytes(2, "little")  # version needed to extract
    npz.write_bytes(bytes(raw))
    for call in (
        lambda: list(iter_patterns(npz)),
        lambda: list_arrays(npz),
        lambda: read_metadata(npz),
    ):
        with pytest.raises(DataFileError, match=r"ver\.npz: not a readable \.npz"):
            call()


def test_a_member_name_that_is_not_utf8_is_a_data_file_error(tmp_path: Path) -> None:
    # The local header's name is decoded as UTF-8 when flag bit 11 says so: a
    # flipped byte there raised UnicodeDecodeError from ZipFile.open.
    npz = _write(tmp_path / "name", "npz", np.ones((2, 3, 3), np.float32))
    raw = bytearray(npz.read_bytes())
    local = raw.index(b"PK\x03\x04")
    raw[local + 6 : local + 8] = (1 << 11).to_bytes(2, "little")
    raw[local + 30] = 0x93  # the first byte of the local name
    npz.write_bytes(bytes(raw))
    with pytest.raises(DataFileError, match=r"name\.npz:diffraction: .*utf-8"):
        list(iter_patterns(npz))


@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_pieces_read_into_a_scratch_buffer_kept_across_files(tmp_path: Path, fmt: str) -> None:
    # derive_files keeps one buffer per reading thread across its files; a buffer
    # that is too small (or not bytes) is not used, and nothing else changes.
    scratch = np.zeros(4096, dtype=np.uint8)
    for i, dtype in enumerate((np.float32, ">f8")):
        x = np.random.default_rng(i).random((5, 6, 7)).astype(dtype)
        source = readers.pattern_source(_write(tmp_path / f"s{i}", fmt, x))
        for buf in (scratch, np.zeros(10, np.uint8), np.zeros(600, np.float64)):
            pieces = source.pieces(max_bytes=1000, reuse=True, scratch=buf)
            got = np.empty(x.shape, np.float64)
            for index, piece in pieces:
                if buf is scratch:
                    assert np.shares_memory(piece, scratch)
                got[index] = piece
            assert np.array_equal(got, x.astype(np.float64))


def test_a_npy_that_changes_after_its_check_is_refused_when_it_streams(tmp_path: Path) -> None:
    # The stream compares the checked header byte for byte instead of parsing it again:
    # a different header, or data truncated since, must still be an error naming the file.
    path = tmp_path / "scan.npy"
    np.save(path, np.ones((4, 8, 8), np.float32))
    source = pattern_source(path)
    assert source.npy_header is not None
    np.save(path, np.ones((4, 8, 9), np.float32))  # another shape
    with pytest.raises(DataFileError, match=r"changed since it was checked"):
        list(source.pieces())
    np.save(path, np.ones((4, 8, 8), np.float32))
    source = pattern_source(path)
    with open(path, "r+b") as f:
        f.truncate(len(source.npy_header) + 100)
    with pytest.raises(DataFileError, match=r"scan\.npy.*truncated"):
        list(source.pieces())
    np.save(path, np.full((4, 8, 8), 2.0, np.float32))  # same header, new data: fine
    chunks = [piece for _, piece in pattern_source(path).pieces()]
    assert float(np.concatenate(chunks).sum()) == 2.0 * 256
