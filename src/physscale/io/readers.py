"""Placeholder: replaced by the readers work (issue 5)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def iter_patterns(path: Any, key: str = "diffraction", chunk_patterns: int = 256) -> Iterator[Any]:
    """Placeholder."""
    raise NotImplementedError
