"""The one unpickler: globals resolve only to physscale's stand-ins, memory bounded by the pickle.

The metadata rules are exercised through ``read_metadata`` (test_io_metadata.py),
the plain-data rules through the PtychoPINN adapter (test_adapters.py); here
the mechanism itself and each plain-data stand-in.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
from typing import Any

import numpy as np
import pytest

from physscale.errors import DataFileError, UnsafeFileError
from physscale.io.pickles import MAX_PATH_CHARS, PLAIN_DATA, PickleRules, load_pickle

RULES = PickleRules(
    allowed=PLAIN_DATA,
    max_opcodes=500,
    what="test",
    needs="a test needs few",
    refusal="{where}: refused {module}.{name}",
    corrupt="{where}: corrupt",
)


def _load(value_or_bytes: Any, protocol: int = 4) -> Any:
    if isinstance(value_or_bytes, bytes):
        raw = value_or_bytes
    else:
        raw = pickle.dumps(value_or_bytes, protocol=protocol)
    return load_pickle(raw, "t.pkl", RULES)


@pytest.mark.parametrize("protocol", [3, 4, 5])
@pytest.mark.parametrize(
    "value",
    [
        np.float16(1.5), np.float32(-2.0), np.float64(np.pi), np.longdouble(1.25),
        np.int8(-7), np.uint64(2**64 - 1), np.bool_(False), np.bool_(True),
        np.complex64(1 - 2j), np.complex128(3 + 4j),
        np.array([3.5], dtype=">f8")[0], np.array([-9], dtype="<i2")[0],
    ],
)  # fmt: skip
def test_numeric_numpy_scalars_are_rebuilt_exactly(value: Any, protocol: int) -> None:
    loaded = _load({"v": value}, protocol)["v"]
    assert loaded == value and loaded.dtype == value.dtype.newbyteorder("=")


def test_paths_become_pure_paths_and_ordered_dicts_load() -> None:
    value = {
        "posix": pathlib.PurePosixPath("/data/run 7/x.npz"),
        "windows": pathlib.PureWindowsPath("C:/data/x.npz"),
        "here": pathlib.Path("rel/x"),
        "ordered": collections.OrderedDict([("b", 1), ("a", [2.0])]),
    }
    loaded = _load(value)
    assert loaded["posix"] == pathlib.PurePosixPath("/data/run 7/x.npz")
    assert loaded["windows"] == pathlib.PureWindowsPath("C:/data/x.npz")
    assert str(loaded["here"]) == "rel/x" and not isinstance(loaded["here"], pathlib.Path)
    assert loaded["ordered"] == value["ordered"] and list(loaded["ordered"]) == ["b", "a"]


def _edited(value: Any, old: bytes, new: bytes) -> bytes:
    raw = pickle.dumps(value, protocol=3)  # no frames: an edit may change the length
    assert raw.count(old) == 1, raw
    return raw.replace(old, new)


_F8 = b"X\x02\x00\x00\x00f8"  # the dtype's name, as protocol 3 writes it


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        # numpy.dtype + scalar on arbitrary bytes: an object pointer (SIGSEGV), a void blob...
        (_edited(np.float64(1.0), _F8, _F8[:-2] + b"O8"), "dtype 'O8'; only numeric"),
        (_edited(np.float64(1.0), _F8, _F8[:-2] + b"V8"), "dtype 'V8'; only numeric"),
        (_edited(np.float64(1.0), _F8, _F8[:-2] + b"M8"), "dtype 'M8'; only numeric"),
        # a structured dtype's state (names, fields) is refused even for a numeric kind
        (_edited(np.float64(1.0), b"NNN", b"N)N"), "malformed dtype state"),
        # the scalar's bytes must be exactly its size
        (_edited(np.float64(1.0), b"C\x08" + np.float64(1.0).tobytes(), b"C\x04abcd"),
         "needs 8 bytes"),
        (_edited(np.bool_(True), b"C\x01\x01", b"C\x01\x07"), "numpy bool holds"),
        (_edited(pathlib.PurePosixPath("a"), b"X\x01\x00\x00\x00a", b"K\x07"), "only strings"),
    ],
)  # fmt: skip
def test_plain_data_standins_refuse_what_is_not_plain(raw: bytes, match: str) -> None:
    with pytest.raises(UnsafeFileError, match=match):
        _load(raw)


def test_a_path_longer_than_the_cap_is_refused() -> None:
    _load(pathlib.PurePosixPath("a" * MAX_PATH_CHARS))
    with pytest.raises(UnsafeFileError, match=f"longer than {MAX_PATH_CHARS} characters"):
        _load(pathlib.PurePosixPath("a" * MAX_PATH_CHARS, "b"))


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pwned",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_any_other_global_is_refused_with_the_rules_message(protocol: int) -> None:
    with pytest.raises(UnsafeFileError, match=r"^t\.pkl: refused (builtins|__builtin__)\.print$"):
        _load({"x": _Evil()}, protocol)


def test_bounds_come_before_the_unpickler() -> None:
    with pytest.raises(UnsafeFileError, match="more than 500 operations; a test needs few"):
        _load([None] * 600)
    with pytest.raises(UnsafeFileError, match="memo slot 500, far beyond"):
        _load(b"\x80\x02Nr" + (500).to_bytes(4, "little") + b".")
    with pytest.raises(UnsafeFileError, match="persistent id in test"):
        _load(b"\x80\x02X\x01\x00\x00\x00aQ.")
    with pytest.raises(DataFileError, match=r"^t\.pkl: corrupt \(.*STOP"):
        _load(b"\x80\x02N")
    with pytest.raises(DataFileError, match=r"^t\.pkl: corrupt \("):
        _load(b"\x80\x02X\xff\xff\x00\x00ab.")
