"""The record inside a ``torch.save`` checkpoint, as plain data.

The record travels as its JSON text under the key ``"physscale_record"``, so a
checkpoint loaded with ``torch.load(path, weights_only=True)`` still holds it
(a ``str`` is on the safe list; a pydantic model is not), and it is validated
on the way back in.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, TypeVar

import pydantic

from physscale.errors import RecordError
from physscale.record import ScaleRecord

__all__ = [
    "CHECKPOINT_KEY",
    "parse_record_json",
    "record_from_checkpoint",
    "record_to_checkpoint",
    "require_record",
]

CHECKPOINT_KEY = "physscale_record"
"""The checkpoint key that holds the record's JSON text."""

_Checkpoint = TypeVar("_Checkpoint", bound=MutableMapping[str, Any])


def parse_record_json(text: str | bytes, where: str) -> ScaleRecord:
    """Validate a record's JSON text; ``where`` names its origin in the error.

    Raises:
        RecordError: the text is not a valid [`ScaleRecord`][physscale.ScaleRecord]
            of a schema version this physscale reads.
    """
    try:
        return ScaleRecord.model_validate_json(text)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<record>'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise RecordError(f"{where} is not a valid physscale ScaleRecord: {problems}") from None


def require_record(record: Any) -> ScaleRecord:
    """Return ``record`` if it is a ScaleRecord, else raise RecordError saying how to make one."""
    if not isinstance(record, ScaleRecord):
        raise RecordError(
            f"record must be a physscale.ScaleRecord, got {type(record).__name__}; "
            f"make one with physscale.derive_scale_record or IntensityScaler.to_record()"
        )
    return record


def record_to_checkpoint(checkpoint: _Checkpoint, record: ScaleRecord) -> _Checkpoint:
    """Store ``record`` in ``checkpoint`` as JSON text and return the checkpoint.

    Args:
        checkpoint: the dict about to be given to ``torch.save`` (or Lightning's
            checkpoint dict); modified in place.
        record: the [`ScaleRecord`][physscale.ScaleRecord] to store; for a trained
            scale, pass ``scaler.to_record()`` so the *trained* value is kept.

    Returns:
        ``checkpoint`` itself, with ``checkpoint["physscale_record"]`` a ``str``.

    Examples:
        >>> import physscale as ps
        >>> from physscale.io import record_from_checkpoint, record_to_checkpoint
        >>> record = ps.closed_form_scale_record(1e6, 64)
        >>> checkpoint = record_to_checkpoint({'state_dict': {}}, record)
        >>> type(checkpoint['physscale_record']).__name__
        'str'
        >>> record_from_checkpoint(checkpoint) == record
        True
    """
    if not isinstance(checkpoint, MutableMapping):
        raise RecordError(
            f"checkpoint must be a dict (the object passed to torch.save), "
            f"got {type(checkpoint).__name__}"
        )
    checkpoint[CHECKPOINT_KEY] = require_record(record).model_dump_json()
    return checkpoint


def record_from_checkpoint(checkpoint: Mapping[str, Any]) -> ScaleRecord:
    """Read back and validate the record stored by
    [`record_to_checkpoint`][physscale.io.checkpoint.record_to_checkpoint].

    Args:
        checkpoint: a dict as returned by ``torch.load(path, weights_only=True)``.

    Raises:
        RecordError: no ``"physscale_record"`` key, a value that is not JSON
            text, or text that is not a valid record.

    Examples:
        >>> import torch, physscale as ps
        >>> from physscale.io import record_from_checkpoint, record_to_checkpoint
        >>> record = ps.closed_form_scale_record(1e6, 64)
        >>> torch.save(record_to_checkpoint({}, record), tmp / 'model.ckpt')
        >>> checkpoint = torch.load(tmp / 'model.ckpt', weights_only=True)
        >>> record_from_checkpoint(checkpoint).intensity_scale
        31.25
    """
    if not isinstance(checkpoint, Mapping):
        raise RecordError(
            f"checkpoint must be a dict (as returned by torch.load), got "
            f"{type(checkpoint).__name__}"
        )
    if CHECKPOINT_KEY not in checkpoint:
        keys = ", ".join(repr(k) for k in list(checkpoint)[:10]) or "none"
        raise RecordError(
            f"the checkpoint holds no physscale record (no {CHECKPOINT_KEY!r} key; keys: "
            f"{keys}); save it with physscale.io.record_to_checkpoint(checkpoint, record)"
        )
    text = checkpoint[CHECKPOINT_KEY]
    if not isinstance(text, str | bytes):
        raise RecordError(
            f"checkpoint[{CHECKPOINT_KEY!r}] must be the record's JSON text (str), got "
            f"{type(text).__name__}; write it with physscale.io.record_to_checkpoint"
        )
    return parse_record_json(text, f"checkpoint[{CHECKPOINT_KEY!r}]")
