"""Bundles: the weights and the scale record in one checksummed zip.

A bundle holds exactly three members:

``state_dict.pt``
    ``torch.save`` of the model's state dict, read back only with
    ``torch.load(..., weights_only=True)`` (no code from the file ever runs).
``record.json``
    the :class:`~physscale.ScaleRecord` as JSON.
``manifest.json``
    the format name and version, the physscale version, the sha256 and size
    of every other member, and the caller's ``extra`` data (JSON).

:func:`load_bundle` refuses a bundle whose members do not match their
checksums, whose record is missing or invalid, whose format version it does
not know, or whose member names are unexpected or try to escape a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from physscale._version import __version__
from physscale.errors import DataFileError, DtypeError, IntegrityError, RecordError, UnsafeFileError
from physscale.io.checkpoint import parse_record_json, require_record
from physscale.record import READABLE_SCHEMA_VERSIONS, ScaleRecord

__all__ = ["BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "Bundle", "load_bundle", "save_bundle"]

#: The ``format`` field of every bundle manifest.
BUNDLE_FORMAT = "physscale-bundle"
#: The bundle layout version this physscale writes and reads.
BUNDLE_FORMAT_VERSION = 1

STATE_DICT_MEMBER = "state_dict.pt"
RECORD_MEMBER = "record.json"
MANIFEST_MEMBER = "manifest.json"
_CHECKSUMMED = (STATE_DICT_MEMBER, RECORD_MEMBER)
_MEMBERS = frozenset((*_CHECKSUMMED, MANIFEST_MEMBER))
# A fixed timestamp makes a bundle's bytes depend on its contents only.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# What reading a member can raise: corrupt data (a broken deflate stream is a
# zlib.error), encryption (RuntimeError), an unsupported compression method
# (NotImplementedError).
_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
)
# A manifest is a few hundred bytes plus `extra`; refuse to inflate anything absurd.
_MAX_MANIFEST_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle.

    Attributes:
        state_dict: the model state dict, loaded with ``weights_only=True``
            onto the ``map_location`` given to :func:`load_bundle`.
        record: the validated :class:`~physscale.ScaleRecord` saved with it.
        manifest: the parsed ``manifest.json`` (format, versions, checksums).
        extra: the ``**extra`` data given to :func:`save_bundle` (JSON values).
    """

    state_dict: dict[str, Any]
    record: ScaleRecord
    manifest: dict[str, Any]
    extra: dict[str, Any]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    """Check that ``extra`` survives JSON unchanged, and return a copy of it."""
    try:
        text = json.dumps(dict(extra), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise DtypeError(
            f"save_bundle extra data must be plain JSON (str, int, float, bool, None, "
            f"lists and str-keyed dicts of them, finite numbers): {exc}"
        ) from None
    copy: dict[str, Any] = json.loads(text)
    if copy != dict(extra):
        # json.dumps turns tuples into lists and int keys into str: say so now,
        # not when the loaded value differs from what was saved.
        raise DtypeError(
            "save_bundle extra data must be plain JSON: tuples, non-str dict keys and "
            "similar values would not load back unchanged; use lists and str keys"
        )
    return copy


def _state_dict_bytes(state_dict: Mapping[str, Any]) -> bytes:
    if not isinstance(state_dict, Mapping):
        raise DtypeError(
            f"state_dict must be a mapping such as model.state_dict(), got "
            f"{type(state_dict).__name__}"
        )
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    data = buffer.getvalue()
    # Refuse now what load_bundle would refuse later (custom classes in the dict).
    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise DtypeError(
            f"state_dict holds objects that torch.load(weights_only=True) refuses, so the "
            f"bundle could not be loaded safely: {_first_line(exc)}. Keep tensors, numbers and "
            f"strings in the state dict"
        ) from None
    return data


def _write_member(zf: zipfile.ZipFile, name: str, data: bytes, compress: bool) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def save_bundle(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Any],
    record: ScaleRecord,
    **extra: Any,
) -> Path:
    """Write weights, scale record and manifest to one zip file, atomically.

    Args:
        path: the bundle file to write (conventionally ``*.physscale.zip``);
            replaced atomically if it exists, never left half-written.
        state_dict: ``model.state_dict()``: tensors, numbers, strings
            (anything ``torch.load(weights_only=True)`` accepts).
        record: the scale to ship with the weights. For a trainable scaler
            pass ``scaler.to_record()`` (the *trained* value), not the record
            training started from.
        **extra: plain JSON data stored in the manifest (epoch, model name...).

    The serialized state dict is checked with a weights-only load before
    anything is written, so a bundle that saves is a bundle that loads.

    Returns:
        The path written.

    Raises:
        RecordError: ``record`` is not a ScaleRecord.
        DtypeError: ``state_dict`` or ``extra`` holds values that could not
            be loaded back safely and unchanged.
    """
    require_record(record)
    extra_json = _json_extra(extra)
    payload = {
        STATE_DICT_MEMBER: _state_dict_bytes(state_dict),
        RECORD_MEMBER: record.model_dump_json(indent=2).encode(),
    }
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "physscale_version": __version__,
        "record_schema_version": record.schema_version,
        "members": {
            name: {"sha256": _sha256(data), "size": len(data)} for name, data in payload.items()
        },
        "extra": extra_json,
    }
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w") as zf:
                _write_member(zf, MANIFEST_MEMBER, json.dumps(manifest, indent=2).encode(), True)
                _write_member(zf, RECORD_MEMBER, payload[RECORD_MEMBER], True)
                _write_member(zf, STATE_DICT_MEMBER, payload[STATE_DICT_MEMBER], False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def _check_member_names(names: list[str], where: str) -> None:
    for name in names:
        pure = PurePosixPath(name.replace("\\", "/"))
        if (
            pure.is_absolute()
            or name.startswith(("/", "\\"))
            or ".." in pure.parts
            or (len(name) > 1 and name[1] == ":")
            or "\x00" in name
        ):
            raise UnsafeFileError(
                f"{where} has a member named {name!r}, an absolute path or one that escapes "
                f"its folder; refusing a bundle that was not written by physscale.save_bundle"
            )
    if len(set(names)) != len(names):
        raise UnsafeFileError(f"{where} names a member twice ({sorted(names)}); refusing it")
    unexpected = sorted(set(names) - _MEMBERS)
    if unexpected:
        raise UnsafeFileError(
            f"{where} has unexpected member(s) {unexpected}; a physscale bundle holds only "
            f"{sorted(_MEMBERS)}"
        )


def _parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFileError(f"{where}: {MANIFEST_MEMBER} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise DataFileError(f"{where}: {MANIFEST_MEMBER} must be a JSON object")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise DataFileError(
            f"{where} is not a physscale bundle: manifest format is "
            f"{manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}"
        )
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION or isinstance(version, bool):
        raise DataFileError(
            f"{where} has bundle format version {version!r}; this physscale "
            f"({__version__}) reads version {BUNDLE_FORMAT_VERSION} only"
        )
    members = manifest.get("members")
    if not isinstance(members, dict) or set(members) != set(_CHECKSUMMED):
        listed = sorted(members) if isinstance(members, dict) else members
        raise DataFileError(
            f"{where}: the manifest must list exactly {sorted(_CHECKSUMMED)} under "
            f"'members', got {listed!r}"
        )
    for name, entry in members.items():
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and len(entry["sha256"]) == 64
            and isinstance(entry.get("size"), int)
            and not isinstance(entry.get("size"), bool)
            and entry["size"] >= 0
        )
        if not ok:
            raise DataFileError(
                f"{where}: manifest entry for {name!r} must be "
                f'{{"sha256": <64 hex digits>, "size": <bytes>}}, got {entry!r}'
            )
    if not isinstance(manifest.get("extra", {}), dict):
        raise DataFileError(f"{where}: manifest 'extra' must be a JSON object")
    return manifest


def _read_checked(zf: zipfile.ZipFile, name: str, entry: Mapping[str, Any], where: str) -> bytes:
    """Read one member, refusing it unless its size and sha256 match the manifest."""
    info = zf.getinfo(name)
    if info.file_size != entry["size"]:
        raise IntegrityError(
            f"{where}: member {name!r} has {info.file_size} bytes but the manifest says "
            f"{entry['size']}; the bundle was modified or corrupted after it was written"
        )
    try:
        data = zf.read(info)
    except _READ_ERRORS as exc:
        raise DataFileError(f"{where}: member {name!r} cannot be read ({exc})") from None
    if _sha256(data) != entry["sha256"]:
        raise IntegrityError(
            f"{where}: member {name!r} does not match its sha256 in the manifest; the "
            f"bundle was modified or corrupted after it was written"
        )
    return data


def _parse_record(data: bytes, where: str) -> ScaleRecord:
    # Name an unknown schema version plainly before pydantic's generic message.
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{where}: {RECORD_MEMBER} is not valid JSON ({exc})") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version is not None and version not in READABLE_SCHEMA_VERSIONS:
        readable = " and ".join(map(str, READABLE_SCHEMA_VERSIONS))
        raise RecordError(
            f"{where}: {RECORD_MEMBER} has record schema version {version!r}; this "
            f"physscale ({__version__}) reads versions {readable}"
        )
    return parse_record_json(data, f"{where}: {RECORD_MEMBER}")


def _load_state_dict(data: bytes, where: str, map_location: Any) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{where}: {STATE_DICT_MEMBER} holds objects that a weights-only load refuses "
            f"({_first_line(exc)}); physscale never executes code from a file"
        ) from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise DataFileError(
            f"{where}: {STATE_DICT_MEMBER} is not a torch state dict ({exc})"
        ) from None
    if not isinstance(state, dict):
        raise DataFileError(
            f"{where}: {STATE_DICT_MEMBER} holds a {type(state).__name__}, not a state dict"
        )
    return state


def load_bundle(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> Bundle:
    """Read and verify a bundle written by :func:`save_bundle`.

    Args:
        path: the bundle file.
        map_location: where to put the tensors, as for ``torch.load``
            (default ``"cpu"``).

    Returns:
        A :class:`Bundle` with the state dict, the record, the manifest and ``extra``.

    Raises:
        DataFileError: the file is missing, not a zip, truncated, not a
            physscale bundle, or of an unknown format version.
        UnsafeFileError: member names that are absolute, escape a folder, are
            duplicated or unexpected, or a state dict that needs code to load.
        IntegrityError: a member whose size or sha256 differs from the manifest.
        RecordError: a missing or invalid record, or an unknown record schema version.
    """
    where = f"bundle {os.fspath(path)!r}"
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataFileError(f"{where} does not exist") from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataFileError(
            f"{where} is not a readable zip file ({exc}); it may be truncated or not a bundle"
        ) from None
    with zf:
        names = zf.namelist()
        _check_member_names(names, where)
        if MANIFEST_MEMBER not in names:
            raise DataFileError(f"{where} has no {MANIFEST_MEMBER}; it is not a physscale bundle")
        if zf.getinfo(MANIFEST_MEMBER).file_size > _MAX_MANIFEST_BYTES:
            raise DataFileError(f"{where}: {MANIFEST_MEMBER} is implausibly large")
        try:
            manifest_bytes = zf.read(MANIFEST_MEMBER)
        except _READ_ERRORS as exc:
            raise DataFileError(f"{where}: {MANIFEST_MEMBER} cannot be read ({exc})") from None
        manifest = _parse_manifest(manifest_bytes, where)
        if RECORD_MEMBER not in names:
            raise RecordError(
                f"{where} has no {RECORD_MEMBER}: the scale record is missing, so the "
                f"weights cannot be used with the right physics scale"
            )
        if STATE_DICT_MEMBER not in names:
            raise DataFileError(f"{where} has no {STATE_DICT_MEMBER}")
        members = manifest["members"]
        record_bytes = _read_checked(zf, RECORD_MEMBER, members[RECORD_MEMBER], where)
        state_bytes = _read_checked(zf, STATE_DICT_MEMBER, members[STATE_DICT_MEMBER], where)
    record = _parse_record(record_bytes, where)
    state_dict = _load_state_dict(state_bytes, where, map_location)
    return Bundle(
        state_dict=state_dict,
        record=record,
        manifest=manifest,
        extra=dict(manifest.get("extra", {})),
    )
