"""Placeholder: replaced by the readers work (issue 5)."""

from __future__ import annotations

from typing import Any


def read_metadata(path: Any) -> dict[str, Any] | None:
    """Placeholder."""
    raise NotImplementedError


def write_metadata(path: Any, metadata: Any) -> None:
    """Placeholder."""
    raise NotImplementedError
