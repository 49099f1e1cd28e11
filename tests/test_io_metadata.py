"""Safe metadata: PtychoPINN's pickled `_metadata`, plain unicode metadata, and refusals."""

from __future__ import annotations

import builtins
import codecs
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from physscale.errors import DataFileError, UnsafeFileError
from physscale.io import read_metadata, write_metadata

META = {"physics_parameters": {"nphotons": 1e9, "probe_energy_kev": 8.0}, "name": "run 7"}


def _npz_with_metadata_member(path: Path, payload: bytes, descr: str = "|O") -> None:
    """An npz whose `_metadata.npy` is a 0-d header of `descr` followed by `payload`."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": ()})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("_metadata.npy", buf.getvalue() + payload)
        data = io.BytesIO()
        np.lib.format.write_array(data, np.ones((2, 4, 4), np.float32))
        zf.writestr("diffraction.npy", data.getvalue())


# ----------------------------------------------------------------- reading the reference way
@pytest.mark.parametrize("saver", [np.savez_compressed, np.savez])
def test_reads_metadata_written_the_ptychopinn_way(tmp_path: Path, saver: Any) -> None:
    path = tmp_path / "ptycho.npz"
    saver(
        path,
        diffraction=np.ones((3, 8, 8), np.float32),
        _metadata=np.array(json.dumps(META), dtype=object),
    )
    assert read_metadata(path) == META


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_reads_pickles_from_either_numpy_generation(tmp_path: Path, module: str) -> None:
    # Protocol 3 (numpy 1.x np.save) names globals as text: write either module name in.
    pickled = pickle.dumps(np.array(json.dumps(META), dtype=object), protocol=3)
    for old in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        pickled = pickled.replace(old, module.encode())
    assert module.encode() in pickled
    path = tmp_path / "gen.npz"
    _npz_with_metadata_member(path, pickled)
    assert read_metadata(path) == META


@pytest.mark.parametrize("dtype", [np.str_, np.bytes_])
def test_reads_plain_string_metadata(tmp_path: Path, dtype: Any) -> None:
    path = tmp_path / "plain.npz"
    np.savez(path, diffraction=np.ones((2, 4, 4)), _metadata=np.array(json.dumps(META), dtype))
    assert read_metadata(path) == META


def test_files_without_metadata_give_none(tmp_path: Path) -> None:
    np.savez(tmp_path / "none.npz", diffraction=np.ones((2, 4, 4)))
    np.save(tmp_path / "plain.npy", np.ones((2, 4, 4)))
    assert read_metadata(tmp_path / "none.npz") is None
    assert read_metadata(tmp_path / "plain.npy") is None


def test_reads_hdf5_metadata_attribute_and_dataset(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "attr.h5", "w") as f:
        f.create_dataset("diffraction", data=np.ones((2, 4, 4)))
        f.attrs["_metadata"] = json.dumps(META)
    with h5py.File(tmp_path / "dset.h5", "w") as f:
        f.create_dataset("diffraction", data=np.ones((2, 4, 4)))
        f["_metadata"] = json.dumps(META)
    with h5py.File(tmp_path / "none.h5", "w") as f:
        f.create_dataset("diffraction", data=np.ones((2, 4, 4)))
    assert read_metadata(tmp_path / "attr.h5") == META
    assert read_metadata(tmp_path / "dset.h5") == META
    assert read_metadata(tmp_path / "none.h5") is None


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_reads_old_protocol_pickles_that_spell_bytes_with_codecs_encode(
    tmp_path: Path, protocol: int
) -> None:
    # What old numpy's np.save wrote: protocols 0-2 pickle bytes as _codecs.encode(s, "latin1").
    pickled = pickle.dumps(np.array(json.dumps(META), dtype=object), protocol=protocol)
    assert b"_codecs\nencode\n" in pickled
    path = tmp_path / f"old{protocol}.npz"
    _npz_with_metadata_member(path, pickled)
    assert read_metadata(path) == META


# ----------------------------------------------------------------- malicious pickles
class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


class _Subprocess:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (subprocess.call, (["touch", str(self.marker)],))


@pytest.mark.parametrize("payload", [_System, _Exec, _Subprocess])
def test_malicious_metadata_pickle_is_refused_and_runs_nothing(
    tmp_path: Path, payload: Any
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(
        path,
        diffraction=np.ones((2, 4, 4), np.float32),
        _metadata=np.array(payload(marker), dtype=object),
    )
    with pytest.raises(UnsafeFileError, match=r"evil\.npz:_metadata: refused to unpickle"):
        read_metadata(path)
    assert not marker.exists()


def test_the_malicious_file_really_runs_code_under_allow_pickle(tmp_path: Path) -> None:
    # Control for the test above: the crafted file is a real exploit for np.load.
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(path, _metadata=np.array(_Exec(marker), dtype=object))
    np.load(path, allow_pickle=True)["_metadata"]
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_a_bare_malicious_pickle_is_refused_at_any_protocol(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "bare.npz"
    _npz_with_metadata_member(path, pickle.dumps(_Exec(marker), protocol=protocol))
    with pytest.raises(UnsafeFileError, match=r"references (__builtin__|builtins)\.exec"):
        read_metadata(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.array(42, dtype=object), "holds a int"),
        (np.array({"physics_parameters": {}}, dtype=object), "holds a dict"),
        (np.array(["a", "b"], dtype=object), "not a single-string object array"),
    ],
)
def test_object_arrays_not_holding_one_string_are_refused(
    tmp_path: Path, value: np.ndarray, match: str
) -> None:
    path = tmp_path / "odd.npz"
    np.savez(path, _metadata=value)
    with pytest.raises(UnsafeFileError, match=match):
        read_metadata(path)


class _Encode:
    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> Any:
        return (codecs.encode, self.args)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("x", "rot13"), "arguments \\('x', 'rot13'\\)"),
        (("x", "utf-8"), "arguments \\('x', 'utf-8'\\)"),
        ((b"x", "latin1"), "arguments \\(b'x', 'latin1'\\)"),
        ((7, "latin1"), "arguments \\(7, 'latin1'\\)"),
        (("x",), "arguments \\('x',\\)"),
        (("x", "latin1", "strict"), "arguments \\('x', 'latin1', 'strict'\\)"),
    ],
)
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_codecs_encode_beyond_latin1_text_is_refused(
    tmp_path: Path, args: tuple[Any, ...], match: str, protocol: int
) -> None:
    path = tmp_path / "enc.npz"
    pickled = pickle.dumps(_Encode(*args), protocol=protocol)
    assert b"_codecs" in pickled
    _npz_with_metadata_member(path, pickled)
    with pytest.raises(
        UnsafeFileError, match=rf"enc\.npz:_metadata: .*_codecs\.encode with {match}"
    ):
        read_metadata(path)


def test_codecs_encode_inside_the_array_rebuild_is_held_to_latin1(tmp_path: Path) -> None:
    pickled = pickle.dumps(np.array(json.dumps(META), dtype=object), protocol=2)
    assert pickled.count(b"latin1") == 1
    path = tmp_path / "utf16.npz"
    _npz_with_metadata_member(path, pickled.replace(b"latin1", b"utf_16"))  # same length
    with pytest.raises(UnsafeFileError, match=r"_codecs\.encode with arguments \('b', 'utf_16'\)"):
        read_metadata(path)
    euro = "\u20ac".encode()  # BINUNICODE: 4-byte length, then UTF-8
    bad = pickled.replace(b"X\x01\x00\x00\x00b", b"X" + len(euro).to_bytes(4, "little") + euro)
    _npz_with_metadata_member(path, bad)
    with pytest.raises(UnsafeFileError, match="non-latin-1 text"):
        read_metadata(path)


def test_numpy_globals_beyond_the_array_rebuild_are_refused(tmp_path: Path) -> None:
    pickled = pickle.dumps(np.array(json.dumps(META), dtype=object), protocol=3)
    assert b"numpy\nndarray\n" in pickled
    path = tmp_path / "np.npz"
    _npz_with_metadata_member(path, pickled.replace(b"numpy\nndarray\n", b"numpy\nload\n"))
    with pytest.raises(UnsafeFileError, match=r"references numpy\.load"):
        read_metadata(path)


def test_a_non_array_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.npz"
    _npz_with_metadata_member(path, pickle.dumps(["{}"]))
    with pytest.raises(UnsafeFileError, match="not a 0-d string array"):
        read_metadata(path)


# ----------------------------------------------------------------- malformed metadata
def test_truncated_metadata_pickle_is_a_data_error(tmp_path: Path) -> None:
    pickled = pickle.dumps(np.array(json.dumps(META), dtype=object))
    path = tmp_path / "cut.npz"
    _npz_with_metadata_member(path, pickled[: len(pickled) // 2])
    with pytest.raises(DataFileError, match=r"cut\.npz:_metadata: corrupt metadata pickle"):
        read_metadata(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object, got list")],
)
def test_metadata_that_is_not_a_json_object_is_a_data_error(
    tmp_path: Path, text: str, match: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, _metadata=np.array(text))
    with pytest.raises(DataFileError, match=match):
        read_metadata(path)


def test_numeric_metadata_array_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "num.npz"
    np.savez(path, _metadata=np.arange(3.0))
    with pytest.raises(DataFileError, match="must be a JSON string, got an array of dtype"):
        read_metadata(path)


def test_corrupt_archive_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.npz"
    np.savez(path, _metadata=np.array(json.dumps(META)), diffraction=np.ones((4, 8, 8)))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataFileError, match=r"cut\.npz: not a readable \.npz"):
        read_metadata(path)


# ----------------------------------------------------------------- writing
def test_written_metadata_loads_without_pickle_and_as_ptychopinn_reads_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.npz"
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    write_metadata(path, META, diffraction=x)
    with np.load(path, allow_pickle=False) as data:
        assert json.loads(data["_metadata"].item()) == META
        np.testing.assert_array_equal(data["diffraction"], x)
    assert read_metadata(path) == META


def test_write_metadata_keeps_other_members_and_replaces_old_metadata(tmp_path: Path) -> None:
    path = tmp_path / "ptycho.npz"
    x = np.linspace(0, 1, 3 * 8 * 8).reshape(3, 8, 8)
    probe = np.ones((8, 8), np.complex64)
    np.savez_compressed(
        path, diffraction=x, probeGuess=probe, _metadata=np.array("{}", dtype=object)
    )
    write_metadata(path, META)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["_metadata", "diffraction", "probeGuess"]
        np.testing.assert_array_equal(data["diffraction"], x)
        np.testing.assert_array_equal(data["probeGuess"], probe)
    assert read_metadata(path) == META
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".physscale-")]


@pytest.mark.parametrize(
    ("metadata", "arrays", "match"),
    [
        ({"x": object()}, {}, "not JSON-serializable"),
        ({"x": float("nan")}, {}, "not JSON-serializable"),
        (["not", "a", "mapping"], {}, "must be a mapping"),
        ({}, {"objects": np.array([{}], dtype=object)}, "dtype object"),
        ({}, {"_metadata": np.array("{}")}, "pass metadata as the metadata argument"),
    ],
)
def test_write_metadata_refuses_what_cannot_be_stored_safely(
    tmp_path: Path, metadata: Any, arrays: dict[str, Any], match: str
) -> None:
    with pytest.raises(DataFileError, match=match):
        write_metadata(tmp_path / "x.npz", metadata, **arrays)
    assert not (tmp_path / "x.npz").exists()


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(metadata=st.dictionaries(st.text(max_size=8), _json, max_size=5))
def test_write_then_read_metadata_is_the_identity(metadata: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.npz"
        write_metadata(path, metadata)
        assert read_metadata(path) == metadata


@given(metadata=st.dictionaries(st.text(max_size=8), _json, max_size=5))
def test_reading_the_pickled_form_equals_the_json_it_holds(metadata: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.npz"
        np.savez(path, _metadata=np.array(json.dumps(metadata), dtype=object))
        assert read_metadata(path) == json.loads(json.dumps(metadata))


# ----------------------------------------------------------------- hostile metadata (issue 11)
def _shared_nest(depth: int) -> list[Any]:
    """A list nested ``depth`` deep whose two entries share one child: its pickle is a
    few bytes per level, its full repr 2**depth leaves."""
    node: list[Any] = ["x"]
    for _ in range(depth):
        node = [node, node]
    return node


class _Call:
    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> Any:
        return (self.fn, self.args)


@pytest.mark.parametrize(
    ("fn", "extra", "match"),
    [
        (np.dtype, (), r"the pickled array has dtype \(\[\[\["),
        (codecs.encode, ("latin1",), r"_codecs\.encode with arguments \(\[\[\["),
        (str, (), r"calls str with arguments \(\[\[\["),
    ],
)
def test_errors_about_pickled_structures_are_short_whatever_their_size(
    tmp_path: Path, fn: Any, extra: tuple[Any, ...], match: str
) -> None:
    # An 890-byte file gave a 234 MB one-line error in 5.5 s: the message held the
    # full repr, 2**40 leaves here. It must come back at once, and short.
    from fuzz._harness import call_with_timeout

    pickled = pickle.dumps(_Call(fn, _shared_nest(40), *extra), protocol=2)
    assert len(pickled) < 1000
    path = tmp_path / "bomb.npz"
    _npz_with_metadata_member(path, pickled)
    kind, message = call_with_timeout(lambda: read_metadata(path), seconds=20)
    assert kind == "UnsafeFileError", (kind, message[:300])
    assert re.search(match, message), message
    assert len(message) < 600


def test_a_memo_index_beyond_the_pickle_is_refused_before_unpickling(tmp_path: Path) -> None:
    # LONG_BINPUT 2**27 in a 9-byte pickle made CPython allocate a 1-2 GiB memo table.
    pickled = b"\x80\x02N" + b"r" + (2**24).to_bytes(4, "little") + b"."
    path = tmp_path / "memo.npz"
    _npz_with_metadata_member(path, pickled)
    with pytest.raises(UnsafeFileError, match=r"memo\.npz:_metadata: .*memo slot 16777216"):
        read_metadata(path)


def test_an_object_scalar_made_from_bytes_is_refused_not_a_crash(tmp_path: Path) -> None:
    # numpy.dtype("O8") + numpy's scalar(dtype, 8 bytes) turns arbitrary bytes into an
    # object pointer (SIGSEGV). Run in a child, so a crash fails this test, not pytest.
    raw = pickle.dumps(np.float64(1.0), protocol=4)
    raw = raw.replace(b"\x8c\x02f8", b"\x8c\x02O8").replace(np.float64(1.0).tobytes(), b"A" * 8)
    path = tmp_path / "scalar.npz"
    _npz_with_metadata_member(path, raw)
    code = (
        "import sys, physscale.errors as e\nfrom physscale.io import read_metadata\n"
        "try:\n    read_metadata(sys.argv[1])\nexcept e.PhysscaleError as exc:\n"
        "    print(type(exc).__name__, exc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("UnsafeFileError"), done.stdout
    assert re.search(r"references numpy\._?core\.multiarray\.scalar", done.stdout), done.stdout


def test_a_pickle_with_more_operations_than_metadata_needs_is_refused(tmp_path: Path) -> None:
    # Each opcode can make an object (an empty set is 216 bytes from 1 byte of pickle).
    pickled = pickle.dumps([None] * 5000, protocol=2)
    path = tmp_path / "many.npz"
    _npz_with_metadata_member(path, pickled)
    with pytest.raises(UnsafeFileError, match=r"more than 1000 operations"):
        read_metadata(path)


@pytest.mark.parametrize("descr", ["<U1048577", "|S4194305"])
def test_a_string_array_claiming_more_than_the_cap_is_refused_unread(
    tmp_path: Path, descr: str
) -> None:
    # A `<U` claiming 1 GiB was read whole: 2.2 GB peak from a 1 MB file.
    path = tmp_path / "big.npz"
    _npz_with_metadata_member(path, b"{}", descr=descr)
    with pytest.raises(DataFileError, match=r"big\.npz:_metadata: metadata string of \d+ bytes"):
        read_metadata(path)


def test_metadata_bytes_that_are_not_utf8_are_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "latin.npz"
    _npz_with_metadata_member(path, b'{"a": "\xe9"}', descr="|S10")
    with pytest.raises(DataFileError, match=r"latin\.npz:_metadata: metadata is not valid text"):
        read_metadata(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply to parse"),
        ('{"a": ' * 100 + "1" + "}" * 100, "JSON nested more than 64 levels"),
        ('{"n": ' + "9" * 5000 + "}", "not valid JSON"),
    ],
)
def test_json_that_breaks_the_parser_is_a_data_error(tmp_path: Path, text: str, match: str) -> None:
    # RecursionError, and ValueError for integers over 4300 digits, escaped raw.
    path = tmp_path / "deep.npz"
    np.savez(path, _metadata=np.array(text))
    with pytest.raises(DataFileError, match=rf"deep\.npz:_metadata: .*{match}"):
        read_metadata(path)


# ----------------------------------------------------------------- hostile HDF5 metadata
def _h5() -> Any:
    return pytest.importorskip("h5py")


def test_an_hdf5_fixed_string_above_the_cap_is_refused_unread(tmp_path: Path) -> None:
    # A 7 GB `_metadata` dataset was read whole before it was refused.
    h5 = _h5()
    with h5.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("_metadata", shape=(), dtype="S67108864")
    assert (tmp_path / "s.h5").stat().st_size < 100_000
    with pytest.raises(DataFileError, match=r"s\.h5:_metadata: metadata string of 67108864 bytes"):
        read_metadata(tmp_path / "s.h5")


def _lie_about_length(path: Path, true_length: int, claimed: int) -> None:
    """Replace the 4-byte stored length of a variable-length string (found by value)."""
    raw = bytearray(path.read_bytes())
    needle = true_length.to_bytes(4, "little")
    at = raw.index(needle, raw.index(b"_metadata"))
    raw[at : at + 4] = claimed.to_bytes(4, "little")
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("where", ["dataset", "attribute"])
def test_an_hdf5_string_claiming_more_than_the_cap_is_refused_unread(
    tmp_path: Path, where: str
) -> None:
    # libhdf5 allocates what the stored length says before reading the string.
    h5 = _h5()
    path = tmp_path / "vlen.h5"
    text = json.dumps({"physics_parameters": {"nphotons": 1e9}, "pad": "x" * 1200})
    with h5.File(path, "w") as f:
        if where == "dataset":
            f["_metadata"] = text
        else:
            f.attrs["_metadata"] = text
    assert read_metadata(path) == json.loads(text)
    _lie_about_length(path, len(text), 64 << 20)
    with pytest.raises(DataFileError, match=r"vlen\.h5:_metadata: metadata string of 67108864"):
        read_metadata(path)


@pytest.mark.parametrize("kind", ["fixed", "variable"])
def test_an_hdf5_metadata_attribute_that_is_not_utf8_is_a_data_error(
    tmp_path: Path, kind: str
) -> None:
    h5 = _h5()
    raw = b'{"a": "\xe9"}'
    with h5.File(tmp_path / "b.h5", "w") as f:
        if kind == "fixed":
            f.attrs.create("_metadata", data=np.bytes_(raw))
        else:  # h5py hands these back with the bad byte as a lone surrogate
            f.attrs.create("_metadata", data=raw, dtype=h5.string_dtype("utf-8"))
    with pytest.raises(DataFileError, match=r"b\.h5:_metadata: metadata is not UTF-8 text"):
        read_metadata(tmp_path / "b.h5")


def test_an_hdf5_metadata_attribute_in_dense_storage_is_refused(tmp_path: Path) -> None:
    # Its stored length cannot be read before libhdf5 reads the string.
    h5 = _h5()
    with h5.File(tmp_path / "dense.h5", "w", libver="latest") as f:
        for i in range(12):
            f.attrs[f"a{i}"] = i
        f.attrs["_metadata"] = "{}"
    with pytest.raises(UnsafeFileError, match=r"store the metadata as a dataset"):
        read_metadata(tmp_path / "dense.h5")


def test_hdf5_metadata_of_several_strings_or_none_is_a_data_error(tmp_path: Path) -> None:
    h5 = _h5()
    with h5.File(tmp_path / "many.h5", "w") as f:
        f["_metadata"] = ["{}", "{}"]
    with pytest.raises(DataFileError, match=r"must be a single string, got shape \(2,\)"):
        read_metadata(tmp_path / "many.h5")
    with h5.File(tmp_path / "null.h5", "w") as f:
        f.attrs["_metadata"] = h5.Empty("S10")
    with pytest.raises(DataFileError, match=r"null\.h5:_metadata: .*null dataspace"):
        read_metadata(tmp_path / "null.h5")


# ----------------------------------------------------------------- writes (issue 11)
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_new_file_gets_the_umask_mode_and_an_existing_file_keeps_its_mode(
    tmp_path: Path,
) -> None:
    # Both were 0600: shared beamline data became unreadable to the group.
    old = os.umask(0o022)
    try:
        path = tmp_path / "new.npz"
        write_metadata(path, META)
        assert path.stat().st_mode & 0o777 == 0o644
        shared = tmp_path / "shared.npz"
        np.savez(shared, diffraction=np.ones((2, 3, 3), np.float32))
        os.chmod(shared, 0o664)
        write_metadata(shared, META)
        assert shared.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    assert _umask() == old


def test_writing_through_a_symlink_replaces_its_target(tmp_path: Path) -> None:
    real = tmp_path / "real.npz"
    np.savez(real, diffraction=np.ones((2, 3, 3), np.float32))
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    write_metadata(link, META)
    assert link.is_symlink()
    assert read_metadata(real) == META


def _killed_write(path: Path, big: np.ndarray) -> None:
    """In a forked child: write_metadata killed (SIGKILL) in the middle of its write."""
    import multiprocessing
    import signal

    def child() -> None:
        original = np.lib.format.write_array

        def write_then_die(fp: Any, array: Any, *args: Any, **kwargs: Any) -> None:
            original(fp, array, *args, **kwargs)
            if array.size > 1000:
                os.kill(os.getpid(), signal.SIGKILL)

        np.lib.format.write_array = write_then_die
        write_metadata(path, {"step": 2}, big=big)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL


def test_a_killed_write_leaves_the_file_intact_and_the_next_write_removes_its_leftover(
    tmp_path: Path,
) -> None:
    # 30 of 30 killed write_metadata calls orphaned a temp file (up to 201 MB each).
    path = tmp_path / "data.npz"
    write_metadata(path, {"step": 1}, diffraction=np.ones((2, 3, 3), np.float32))
    _killed_write(path, np.ones((64, 64, 64), np.float32))
    assert read_metadata(path) == {"step": 1}  # the old file, whole
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "data.npz"]
    assert len(leftovers) == 1
    assert leftovers[0].startswith(".data.npz.physscale-tmp-")
    write_metadata(path, {"step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz"]
    assert read_metadata(path) == {"step": 3}


def test_concurrent_writes_to_one_file_lose_no_update(tmp_path: Path) -> None:
    # Two concurrent write_metadata calls silently lost 6 of 12 arrays.
    import multiprocessing

    path = tmp_path / "shared.npz"
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(12)

    def add(i: int) -> None:
        start.wait()
        write_metadata(path, {"writer": i}, **{f"a{i}": np.full((64, 64), i, np.float32)})

    procs = [ctx.Process(target=add, args=(i,)) for i in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with np.load(path) as data:
        names = set(data.files)
        for i in range(12):
            np.testing.assert_array_equal(data[f"a{i}"], np.full((64, 64), i, np.float32))
    assert names == {"_metadata", *(f"a{i}" for i in range(12))}
    assert [p.name for p in tmp_path.iterdir()] == ["shared.npz"]


def test_a_unicode_array_holding_invalid_code_points_is_a_data_error(tmp_path: Path) -> None:
    # numpy raised SystemError ("invalid maximum character passed to PyUnicode_New").
    path = tmp_path / "cp.npz"
    _npz_with_metadata_member(path, b"\xff\xff\xff\xff" * 2, descr="<U2")
    with pytest.raises(DataFileError, match=r"cp\.npz:_metadata: metadata is not valid text"):
        read_metadata(path)
