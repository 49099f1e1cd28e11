"""A short ``repr`` for error messages, bounded in size and time for any value.

The one place where values from callers and files are formatted into
messages: a message must never fail or blow up while it is built. ``repr`` of
a Python int over 4300 digits raises ``ValueError`` (and is quadratic below
that); a structure built by a hostile file can have an exponentially large
``repr``.
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["preview"]


class _BoundedRepr(reprlib.Repr):
    """reprlib with small limits, and no decimal conversion of huge integers."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = 4
        self.maxdict = self.maxset = self.maxfrozenset = self.maxdeque = 4
        self.maxstring = 80
        self.maxlong = 40
        self.maxother = 60

    def repr1(self, x: Any, level: int) -> str:
        # int subclasses (and bool-like numpy ints) get repr_int too, not their own repr.
        if isinstance(x, int) and not isinstance(x, bool):
            return self.repr_int(x, level)
        return super().repr1(x, level)

    def repr_int(self, x: int, level: int) -> str:
        # repr() of a million-digit int is quadratic, and over 4300 digits it raises.
        if x.bit_length() > 128:
            return f"<int of {x.bit_length()} bits>"
        return int.__repr__(x)

    def repr_bytes(self, x: bytes, level: int) -> str:
        text = repr(x[: self.maxstring])
        return text if len(x) <= self.maxstring else text + "..."

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return f"bytearray({self.repr_bytes(bytes(x[: self.maxstring + 1]), level)})"

    def repr_instance(self, x: Any, level: int) -> str:
        # Plain scalars have short reprs; anything else is named, never formatted.
        if x is None or isinstance(x, float | complex | bool):
            return repr(x)
        return f"<{type(x).__name__}>"


_REPR = _BoundedRepr()


def preview(value: Any, limit: int = 200) -> str:
    """A ``repr`` of ``value`` of at most about ``limit`` characters, built in bounded time."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a hostile object's own repr failed; say what it is
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
