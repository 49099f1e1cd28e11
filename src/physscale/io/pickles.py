"""Pickles read as data, never as code: the one unpickler of physscale.

A pickle is a small program: ``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``OBJ``
and ``EXT`` name any callable in any module, ``REDUCE`` calls it. Every name
goes through ``find_class``, so `SafeUnpickler` resolves a name only
through an allow-list (`PickleRules`) that maps it to a stand-in
written in physscale, never to the real callable; any other name is refused
with [`UnsafeFileError`][physscale.errors.UnsafeFileError]. Nothing from the file runs.

Memory stays bounded by the pickle's size. Before the unpickler sees the
bytes, `check_opcodes` walks them and refuses:

- more operations than that kind of pickle needs (each makes at most one
  object, and the nesting depth of what is built is at most their number);
- memo indices beyond that (CPython sizes its memo table from the largest
  index it is given: ``LONG_BINPUT 2**28`` in an 11-byte pickle is 4 GiB);
- lengths that run past the data.

And every stand-in bounds what it builds (a path of a million references to
one long string would otherwise be a multiplication).

Two kinds of pickle are read, each with its own rules: a dataset's metadata
(a 0-d object array holding a JSON string; the rules live in
[`physscale.io.metadata`][physscale.io.metadata]) and the plain data of a host code's
configuration, `PLAIN_DATA` here: numbers, strings, containers, paths,
``OrderedDict`` and numpy numeric scalars. numpy's own
``numpy.dtype`` + ``numpy.core.multiarray.scalar`` are never called: together
they turn arbitrary bytes into an object pointer (a 138-byte pickle
crashes the interpreter). A numpy scalar is rebuilt here instead, from a
numeric dtype and exactly its number of bytes.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import pickletools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from physscale.errors import DataFileError, UnsafeFileError
from physscale.io._files import describe, preview

__all__ = [
    "MAX_PATH_CHARS",
    "PLAIN_DATA",
    "PickleRules",
    "SafeUnpickler",
    "check_opcodes",
    "load_pickle",
]

#: A stand-in factory: given how errors name the pickle, what a global resolves to.
StandIn = Callable[[str], Any]

_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}

#: The longest path (in characters, all parts together) a plain-data pickle may rebuild.
MAX_PATH_CHARS = 1 << 16


@dataclass(frozen=True)
class PickleRules:
    """What one kind of pickle may hold, and how errors about it read.

    Attributes:
        allowed: each global the pickle may name, ``(module, name)``, mapped
            to a factory that takes ``where`` and returns the stand-in the
            name resolves to (a function or class written in physscale).
        max_opcodes: the most operations such a pickle may have; memo
            indices must stay below it too.
        what: what the pickle holds, in messages (``"metadata"``).
        needs: how many operations a genuine one has, in messages
            (``"a 0-d string array needs about 60"``).
        refusal: the message for a global not allowed; formatted with
            ``where``, ``module`` and ``name``.
        corrupt: the start of the message for a pickle that does not parse;
            formatted with ``where``, followed by `` (<the error>)``.
    """

    allowed: Mapping[tuple[str, str], StandIn]
    max_opcodes: int
    what: str
    needs: str
    refusal: str
    corrupt: str


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the stand-ins its rules allow.

    ``find_class`` is the only way a pickle reaches code (GLOBAL,
    STACK_GLOBAL, INST, OBJ and EXT all go through it), so refusing every
    other name means nothing from the file can run. Use `load_pickle`,
    which also bounds the pickle's operations first.
    """

    def __init__(self, file: IO[bytes], where: str, rules: PickleRules) -> None:
        super().__init__(file)
        self.where = where
        self.rules = rules

    def find_class(self, module: str, name: str) -> Any:
        factory = self.rules.allowed.get((module, name))
        if factory is None:
            raise UnsafeFileError(
                self.rules.refusal.format(where=self.where, module=module, name=name)
            )
        return factory(self.where)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self.where}: refused a pickle persistent id in {self.rules.what}")


def check_opcodes(data: bytes, where: str, rules: PickleRules) -> None:
    """Walk the pickle's opcodes before CPython's unpickler sees it.

    Raises:
        UnsafeFileError: more than ``rules.max_opcodes`` operations, or a
            memo index at or beyond it.
        DataFileError: lengths that run past the data, unknown opcodes, no STOP.
    """
    cap = rules.max_opcodes
    count = 0
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            count += 1
            if count > cap:
                raise UnsafeFileError(
                    f"{where}: the {rules.what} pickle has more than {cap} operations; "
                    f"{rules.needs}. Refused"
                )
            if opcode.name in _MEMO_PUTS and not (isinstance(arg, int) and 0 <= arg < cap):
                raise UnsafeFileError(
                    f"{where}: the {rules.what} pickle stores into memo slot {preview(arg)}, "
                    f"far beyond what its {count} operations can use. Refused"
                )
            if opcode.name == "STOP":
                return
    except UnsafeFileError:
        raise
    except Exception as exc:  # pickletools' ValueError on bad opcodes, short data...
        corrupt = rules.corrupt.format(where=where)
        raise DataFileError(f"{corrupt} ({describe(exc)})") from None
    raise DataFileError(f"{rules.corrupt.format(where=where)} (no STOP opcode)")


def load_pickle(data: bytes, where: str, rules: PickleRules) -> Any:
    """Unpickle ``data`` under ``rules``, with no code from it run and bounded memory.

    Args:
        data: the whole pickle (its size is the caller's cap).
        where: names the pickle in messages (``"file.npz:_metadata"``).
        rules: what it may hold.

    Raises:
        UnsafeFileError: a global outside the rules (or refused by its
            stand-in), a persistent id, too many operations or memo slots.
        DataFileError: anything else that keeps it from loading.
    """
    check_opcodes(data, where, rules)
    try:
        return SafeUnpickler(io.BytesIO(data), where, rules).load()
    except UnsafeFileError:
        raise
    except Exception as exc:  # any malformed pickle: report, never trust
        corrupt = rules.corrupt.format(where=where)
        raise DataFileError(f"{corrupt} ({describe(exc)})") from None


# --------------------------------------------------------------------------- plain data


def _path_standin(kind: type[pathlib.PurePath]) -> StandIn:
    """A path class's stand-in: a pure path (no file system access) of bounded length."""

    def factory(where: str) -> Callable[..., pathlib.PurePath]:
        def make_path(*parts: Any) -> pathlib.PurePath:
            if not all(isinstance(p, str | pathlib.PurePath) for p in parts):
                raise UnsafeFileError(
                    f"{where}: a pickled path made of {preview(parts)}; only strings are accepted"
                )
            if sum(len(str(p)) for p in parts) > MAX_PATH_CHARS:
                raise UnsafeFileError(
                    f"{where}: a pickled path longer than {MAX_PATH_CHARS} characters; refused"
                )
            return kind(*parts)

        return make_path

    return factory


def _ordered_dict(where: str) -> Callable[..., collections.OrderedDict[Any, Any]]:
    def make(*args: Any) -> collections.OrderedDict[Any, Any]:
        # The pickle adds the items afterwards (SETITEMS); a list of pairs is bounded by it too.
        if len(args) > 1 or (args and not isinstance(args[0], list | tuple | dict)):
            raise UnsafeFileError(
                f"{where}: OrderedDict called with {preview(args)}; only its items are accepted"
            )
        return collections.OrderedDict(*args)

    return make


# numpy spells a numeric dtype as kind + bytes: b1, i1..i8, u1..u8, f2..f16, c8..c32.
_NUMERIC_DTYPE = re.compile(r"[biufc]\d{1,2}")


class _NumericDtype:
    """Stands in for ``numpy.dtype``: a numeric dtype only, never object, void or structured."""

    def __init__(self, where: str, *args: Any) -> None:
        self.where = where
        spec = args[0] if args else None
        if not isinstance(spec, str) or not _NUMERIC_DTYPE.fullmatch(spec):
            raise UnsafeFileError(
                f"{where}: a pickled numpy dtype {preview(spec)}; only numeric scalars "
                f"(bool, int, uint, float, complex) are rebuilt"
            )
        if not all(isinstance(a, bool) for a in args[1:3]) or len(args) > 3:
            raise UnsafeFileError(f"{where}: numpy.dtype called with {preview(args)}; refused")
        try:
            self.dtype: np.dtype[Any] = np.dtype(spec)
        except TypeError:
            raise UnsafeFileError(f"{where}: {spec!r} is not a numpy dtype; refused") from None

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        ok = (
            isinstance(state, tuple)
            and len(state) in (8, 9)
            and state[1] in ("|", "<", ">", "=")
            and state[2:5] == (None, None, None)
            and (len(state) == 8 or state[8] in (None, {}))
        )
        if not ok:
            raise UnsafeFileError(f"{self.where}: malformed dtype state {preview(state)} in pickle")
        if state[1] in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


def _scalar(where: str) -> Callable[..., Any]:
    """Stands in for numpy's ``scalar``: the value read from exactly ``itemsize`` bytes."""

    def make_scalar(*args: Any) -> Any:
        if len(args) != 2 or not isinstance(args[0], _NumericDtype):
            raise UnsafeFileError(
                f"{where}: a pickled numpy scalar built from {preview(args)}; only a numeric "
                f"dtype and its bytes are accepted"
            )
        dtype, data = args[0].dtype, args[1]
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise UnsafeFileError(
                f"{where}: a pickled numpy {dtype} scalar needs {dtype.itemsize} bytes, got "
                f"{preview(data)}; refused"
            )
        if dtype.kind == "b" and data not in (b"\x00", b"\x01"):
            raise UnsafeFileError(f"{where}: a pickled numpy bool holds {data!r}; refused")
        return np.frombuffer(data, dtype=dtype)[0]

    return make_scalar


def _numeric_dtype(where: str) -> Callable[..., _NumericDtype]:
    return lambda *args: _NumericDtype(where, *args)


_PATHS: dict[str, type[pathlib.PurePath]] = {
    "PosixPath": pathlib.PurePosixPath,
    "PurePosixPath": pathlib.PurePosixPath,
    "WindowsPath": pathlib.PureWindowsPath,
    "PureWindowsPath": pathlib.PureWindowsPath,
    "Path": pathlib.PurePath,
    "PurePath": pathlib.PurePath,
}

#: Plain data: what a host code's configuration pickle may hold besides
#: numbers, strings, bytes, None and containers (which need no global).
#: Paths become pure paths (no file system access) and numpy numeric scalars
#: are rebuilt from their bytes.
PLAIN_DATA: Mapping[tuple[str, str], StandIn] = {
    **{(m, n): _path_standin(k) for n, k in _PATHS.items() for m in ("pathlib", "pathlib._local")},
    ("collections", "OrderedDict"): _ordered_dict,
    ("numpy", "dtype"): _numeric_dtype,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
}
