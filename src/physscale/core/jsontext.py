"""JSON text from elsewhere, parsed with bounded nesting and clean errors.

The one JSON guard of physscale: files' metadata and manifests
(`physscale.io`), a module's extra state (`physscale.nn`) and metadata
passed as a JSON string (`physscale.resolve_nphotons`) all parse through
`load_json`. ``json.loads`` raises ``RecursionError`` on deep nesting,
``UnicodeDecodeError`` on bytes that are not UTF-8 and ``ValueError`` on
integers over 4300 digits; here each is the caller's error class with a
short message, and data nested deeper than `MAX_JSON_DEPTH` is refused.
"""

from __future__ import annotations

import json
from typing import Any

from physscale.errors import DataFileError, PhysscaleError

__all__ = ["MAX_JSON_DEPTH", "check_depth", "load_json"]

#: JSON nested deeper than this is refused (metadata, manifests and records are shallow).
MAX_JSON_DEPTH = 64


def _short(exc: Exception, limit: int = 200) -> str:
    # json's and the codecs' messages name a position, never the data: short already.
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_depth(
    value: Any,
    where: str,
    limit: int = MAX_JSON_DEPTH,
    error: type[PhysscaleError] = DataFileError,
) -> None:
    """Refuse JSON data nested deeper than ``limit`` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise error(f"{where}: JSON nested more than {limit} levels deep; refused")
        stack.extend((child, depth + 1) for child in children)


def load_json(
    data: str | bytes,
    where: str,
    error: type[PhysscaleError] = DataFileError,
    *,
    what: str = "JSON",
) -> Any:
    """``json.loads`` whose failures are all ``error`` with a bounded message.

    Catches what the standard library raises on hostile text besides
    ``JSONDecodeError``: ``RecursionError`` (deep nesting),
    ``UnicodeDecodeError`` (bytes that are not UTF-8) and ``ValueError``
    (integers over 4300 digits); refuses nesting deeper than
    `MAX_JSON_DEPTH`.
    """
    try:
        value = json.loads(data)
    except RecursionError:
        raise error(f"{where}: {what} is nested too deeply to parse; refused") from None
    except UnicodeDecodeError as exc:
        raise error(f"{where}: {what} is not UTF-8 text ({_short(exc)})") from None
    except ValueError as exc:  # JSONDecodeError, and int digit limits
        raise error(f"{where}: {what} is not valid JSON ({_short(exc)})") from None
    check_depth(value, where, error=error)
    return value
