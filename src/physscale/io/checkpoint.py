"""Placeholder: replaced by the persistence work (issue 6)."""

from __future__ import annotations

from typing import Any


def record_to_checkpoint(checkpoint: Any, record: Any) -> dict[str, Any]:
    """Placeholder."""
    raise NotImplementedError


def record_from_checkpoint(checkpoint: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError
