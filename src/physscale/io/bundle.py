"""Placeholder: replaced by the persistence work (issue 6)."""

from __future__ import annotations

from typing import Any


class Bundle:
    """Placeholder."""


def save_bundle(path: Any, state_dict: Any, record: Any, **extra: Any) -> None:
    """Placeholder."""
    raise NotImplementedError


def load_bundle(path: Any) -> Bundle:
    """Placeholder."""
    raise NotImplementedError
