"""Bundles: the weights and the scale record in one checksummed zip.

A bundle holds three members, and a fourth when it is signed:

``state_dict.pt``
    ``torch.save`` of the model's state dict, read back only with
    ``torch.load(..., weights_only=True)`` (no code from the file ever runs).
``record.json``
    the [`ScaleRecord`][physscale.ScaleRecord] as JSON.
``manifest.json``
    the format name and version, the physscale version, the sha256 and size
    of every other member, and the caller's ``extra`` data (JSON).
``signature.json`` (only with ``save_bundle(..., key=...)``)
    an HMAC-SHA256 of ``manifest.json`` under a key the user holds.

[`load_bundle`][physscale.io.bundle.load_bundle] refuses a bundle whose members do not match their
checksums, whose record is missing or invalid, whose format version it does
not know, or whose member names are unexpected or try to escape a folder.
Every member's declared size is checked before it is inflated: the JSON
members are capped, and the weights must be stored uncompressed (as
[`save_bundle`][physscale.io.bundle.save_bundle] writes them), so they can take no more memory than
the
file's own size.

**Integrity, not authenticity.** The manifest's sha256 sums detect
corruption and accidental edits. They prove nothing about who wrote the
bundle: anyone who edits a member can recompute its checksum. To know that a
bundle is one you (or someone holding your key) wrote, sign it with
``save_bundle(..., key=key)`` and load it with ``load_bundle(..., key=key)``,
which refuses a bundle without a valid signature under that key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from physscale._version import __version__
from physscale.errors import DataFileError, DtypeError, IntegrityError, RecordError, UnsafeFileError
from physscale.io._files import (
    ZIP_OPEN_ERRORS,
    check_zip_member,
    describe,
    load_json,
    open_regular,
    preview,
)
from physscale.io.archive import new_archive, write_member
from physscale.io.checkpoint import parse_record_json, require_record
from physscale.record import READABLE_SCHEMA_VERSIONS, ScaleRecord

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "MIN_KEY_BYTES",
    "Bundle",
    "load_bundle",
    "save_bundle",
]

BUNDLE_FORMAT = "physscale-bundle"
"""The ``format`` field of every bundle manifest."""
BUNDLE_FORMAT_VERSION = 1
"""The bundle layout version this physscale writes and reads."""

STATE_DICT_MEMBER = "state_dict.pt"
RECORD_MEMBER = "record.json"
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "signature.json"
_CHECKSUMMED = (STATE_DICT_MEMBER, RECORD_MEMBER)
_MEMBERS = frozenset((*_CHECKSUMMED, MANIFEST_MEMBER, SIGNATURE_MEMBER))

MIN_KEY_BYTES = 16
"""The shortest signing key accepted (bytes); use ``secrets.token_bytes(32)``."""
_SIGNATURE_FORMAT = "physscale-bundle-signature"
_SIGNATURE_ALGORITHM = "HMAC-SHA256"
# Domain separation: this key's HMACs of anything else never verify as a bundle's.
_SIGNED_PREFIX = b"physscale-bundle-manifest-v1\n"
# Members are rw-r--r-- when unpacked (the timestamp is fixed by new_archive).
_MODE = 0o644
# A manifest is a few hundred bytes plus `extra`, a record about 1 kB, a
# signature 200 bytes: refuse to inflate anything absurd.
_MAX_MANIFEST_BYTES = 4 * 2**20
_MAX_RECORD_BYTES = 2**20
_MAX_SIGNATURE_BYTES = 4096
_MEMBER_CAPS = {
    MANIFEST_MEMBER: _MAX_MANIFEST_BYTES,
    RECORD_MEMBER: _MAX_RECORD_BYTES,
    SIGNATURE_MEMBER: _MAX_SIGNATURE_BYTES,
}


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle.

    Attributes:
        state_dict: the model state dict, loaded with ``weights_only=True``
            onto the ``map_location`` given to [`load_bundle`][physscale.io.bundle.load_bundle].
        record: the validated [`ScaleRecord`][physscale.ScaleRecord] saved with it.
        manifest: the parsed ``manifest.json`` (format, versions, checksums).
        extra: the ``**extra`` data given to [`save_bundle`][physscale.io.bundle.save_bundle] (JSON
            values).
        authenticated: True when [`load_bundle`][physscale.io.bundle.load_bundle] was given a key
            and
            verified the bundle's signature with it; False otherwise (the
            checksums then prove integrity only, not who wrote it).
    """

    state_dict: dict[str, Any]
    record: ScaleRecord
    manifest: dict[str, Any]
    extra: dict[str, Any]
    authenticated: bool = False


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
            f"bundle could not be loaded safely: {_refusal(exc)}. Keep tensors, numbers and "
            f"strings in the state dict"
        ) from None
    return data


def _check_key(key: Any) -> bytes:
    """The signing key as bytes; refuses what cannot be a secret key."""
    if isinstance(key, str):
        raise DtypeError(
            "key must be bytes (for example secrets.token_bytes(32), kept secret), not str; "
            "a passphrase is not a key. (Extra data named 'key' cannot be stored: the "
            "keyword is reserved for the signing key)"
        )
    if not isinstance(key, bytes | bytearray | memoryview):
        raise DtypeError(f"key must be bytes, got {type(key).__name__}")
    raw = bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        raise DtypeError(
            f"key must be at least {MIN_KEY_BYTES} random bytes, got {len(raw)}; make one with "
            f"secrets.token_bytes(32)"
        )
    return raw


def _signature(key: bytes, manifest_bytes: bytes) -> str:
    return hmac.new(key, _SIGNED_PREFIX + manifest_bytes, hashlib.sha256).hexdigest()


def save_bundle(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Any],
    record: ScaleRecord,
    *,
    key: bytes | None = None,
    **extra: Any,
) -> Path:
    """Write weights, scale record and manifest to one zip file, atomically.

    Args:
        path: the bundle file to write (conventionally ``*.physscale.zip``);
            replaced atomically if it exists, never left half-written (a
            leftover temporary file of a killed save is removed by the next
            save to the same path). A new file gets the umask's mode; a
            replaced one keeps its mode.
        state_dict: ``model.state_dict()``: tensors, numbers, strings
            (anything ``torch.load(weights_only=True)`` accepts).
        record: the scale to ship with the weights. For a trainable scaler
            pass ``scaler.to_record()`` (the *trained* value), not the record
            training started from.
        key: optional secret signing key (bytes, at least
            `MIN_KEY_BYTES`; e.g. ``secrets.token_bytes(32)``). The
            bundle then carries an HMAC-SHA256 of its manifest, which
            ``load_bundle(path, key=key)`` verifies: proof that someone
            holding the key wrote it. Without a key the checksums prove
            integrity only.
        **extra: plain JSON data stored in the manifest (epoch, model name...).

    The serialized state dict is checked with a weights-only load before
    anything is written, so a bundle that saves is a bundle that loads.

    Returns:
        The path written.

    Raises:
        RecordError: ``record`` is not a ScaleRecord.
        DtypeError: ``state_dict`` or ``extra`` holds values that could not
            be loaded back safely and unchanged; ``key`` is not a bytes key.

    Examples:
        >>> import torch, physscale as ps
        >>> from physscale.io import load_bundle, save_bundle
        >>> model = torch.nn.Linear(2, 2)
        >>> record = ps.closed_form_scale_record(1e6, 64)
        >>> path = save_bundle(tmp / 'model.bundle', model.state_dict(), record)
        >>> load_bundle(path).record == record
        True
    """
    require_record(record)
    secret = None if key is None else _check_key(key)
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
    manifest_bytes = json.dumps(manifest, indent=2).encode()
    with new_archive(path) as zf:
        write_member(zf, MANIFEST_MEMBER, manifest_bytes, compress=True, mode=_MODE)
        write_member(zf, RECORD_MEMBER, payload[RECORD_MEMBER], compress=True, mode=_MODE)
        write_member(zf, STATE_DICT_MEMBER, payload[STATE_DICT_MEMBER], compress=False, mode=_MODE)
        if secret is not None:
            signature = {
                "format": _SIGNATURE_FORMAT,
                "algorithm": _SIGNATURE_ALGORITHM,
                "signs": MANIFEST_MEMBER,
                "hmac": _signature(secret, manifest_bytes),
            }
            signed = json.dumps(signature, indent=2).encode()
            write_member(zf, SIGNATURE_MEMBER, signed, compress=True, mode=_MODE)
    return Path(path)


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
    manifest = load_json(data, where, what=MANIFEST_MEMBER)
    if not isinstance(manifest, dict):
        raise DataFileError(f"{where}: {MANIFEST_MEMBER} must be a JSON object")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise DataFileError(
            f"{where} is not a physscale bundle: manifest format is "
            f"{preview(manifest.get('format'))}, expected {BUNDLE_FORMAT!r}"
        )
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION or isinstance(version, bool):
        raise DataFileError(
            f"{where} has bundle format version {preview(version)}; this physscale "
            f"({__version__}) reads version {BUNDLE_FORMAT_VERSION} only"
        )
    members = manifest.get("members")
    if not isinstance(members, dict) or set(members) != set(_CHECKSUMMED):
        listed = sorted(members) if isinstance(members, dict) else members
        raise DataFileError(
            f"{where}: the manifest must list exactly {sorted(_CHECKSUMMED)} under "
            f"'members', got {preview(listed)}"
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
                f'{{"sha256": <64 hex digits>, "size": <bytes>}}, got {preview(entry)}'
            )
    if not isinstance(manifest.get("extra", {}), dict):
        raise DataFileError(f"{where}: manifest 'extra' must be a JSON object")
    return manifest


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes:
    """Read a member whose declared sizes were checked (see `_check_members`)."""
    try:
        data = zf.read(info)
    except ZIP_OPEN_ERRORS as exc:
        raise DataFileError(
            f"{where}: member {info.filename!r} cannot be read ({describe(exc)})"
        ) from None
    if len(data) != info.file_size:  # pragma: no cover - zipfile checks it too
        raise DataFileError(f"{where}: member {info.filename!r} is truncated")
    return data


def _read_checked(zf: zipfile.ZipFile, name: str, entry: Mapping[str, Any], where: str) -> bytes:
    """Read one member, refusing it unless its size and sha256 match the manifest."""
    info = zf.getinfo(name)
    if info.file_size != entry["size"]:
        raise IntegrityError(
            f"{where}: member {name!r} has {info.file_size} bytes but the manifest says "
            f"{entry['size']}; the bundle was modified or corrupted after it was written"
        )
    data = _read_member(zf, info, where)
    if _sha256(data) != entry["sha256"]:
        raise IntegrityError(
            f"{where}: member {name!r} does not match its sha256 in the manifest; the "
            f"bundle was modified or corrupted after it was written"
        )
    return data


def _check_members(zf: zipfile.ZipFile, archive_size: int, where: str) -> None:
    """Every member's declared sizes, checked before anything is inflated.

    The JSON members are capped; the weights must be stored (uncompressed),
    as save_bundle writes them, so they hold no more bytes than the file.
    """
    total = 0
    for info in zf.infolist():
        name = info.filename
        check_zip_member(
            info,
            f"{where}: member {name!r}",
            archive_size=archive_size,
            max_bytes=_MEMBER_CAPS.get(name),
            stored_only=name == STATE_DICT_MEMBER,
        )
        total += info.compress_size
    if total > archive_size:
        raise DataFileError(
            f"{where}: its members claim {total} bytes of data but the file holds "
            f"{archive_size}; it is corrupt or hostile"
        )


def _check_torch_archive(data: bytes, where: str) -> None:
    """``torch.save``'s own zip inside ``state_dict.pt``: stored records only, sizes real.

    torch would inflate compressed records (a decompression bomb inside the
    weights); ``torch.save`` never writes any.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            infos = inner.infolist()
    except ZIP_OPEN_ERRORS as exc:
        raise DataFileError(
            f"{where}: {STATE_DICT_MEMBER} is not a torch.save archive ({describe(exc)})"
        ) from None
    for info in infos:
        check_zip_member(
            info, f"{where}: {STATE_DICT_MEMBER}:{info.filename}", archive_size=len(data),
            stored_only=True,
        )  # fmt: skip


def _parse_record(data: bytes, where: str) -> ScaleRecord:
    # Name an unknown schema version plainly before pydantic's generic message.
    raw = load_json(data, where, RecordError, what=RECORD_MEMBER)
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version is not None and version not in READABLE_SCHEMA_VERSIONS:
        readable = " and ".join(map(str, READABLE_SCHEMA_VERSIONS))
        raise RecordError(
            f"{where}: {RECORD_MEMBER} has record schema version {preview(version)}; this "
            f"physscale ({__version__}) reads versions {readable}"
        )
    return parse_record_json(data, f"{where}: {RECORD_MEMBER}")


def _refusal(exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, without its advice to load unsafely.

    torch's message suggests re-running with ``weights_only=False``, which
    would run the file's code, and allow-listing the global "if you trust"
    it: neither is ever repeated.
    """
    text = str(exc)
    found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", text)
    if found:
        return f"it references {found.group(1)}, which is not on torch's weights-only allow-list"
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    if found:
        first = found.group(1).split(". ")[0].strip()
        if first and "weights_only" not in first and "False" not in first:
            return " ".join(first.split())[:200]
    return "objects outside torch's weights-only allow-list"


def _load_state_dict(data: bytes, where: str, map_location: Any) -> dict[str, Any]:
    _check_torch_archive(data, where)
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{where}: {STATE_DICT_MEMBER} holds objects that a weights-only load refuses "
            f"({_refusal(exc)}); physscale never executes code from a file"
        ) from None
    except (MemoryError, RecursionError) as exc:
        raise DataFileError(
            f"{where}: {STATE_DICT_MEMBER} could not be loaded ({type(exc).__name__})"
        ) from None
    except Exception as exc:  # torch raises KeyError, IndexError, TypeError... on damage
        raise DataFileError(
            f"{where}: {STATE_DICT_MEMBER} is not a valid torch state dict "
            f"({type(exc).__name__}: {describe(exc)})"
        ) from None
    if not isinstance(state, dict):
        raise DataFileError(
            f"{where}: {STATE_DICT_MEMBER} holds a {type(state).__name__}, not a state dict"
        )
    return state


def _verify_signature(zf: zipfile.ZipFile, manifest_bytes: bytes, key: bytes, where: str) -> None:
    if SIGNATURE_MEMBER not in zf.namelist():
        raise IntegrityError(
            f"{where} is not signed, but a key was given: it was written without a key, or "
            f"its signature was removed. Refusing it"
        )
    raw = load_json(
        _read_member(zf, zf.getinfo(SIGNATURE_MEMBER), where), where, what=SIGNATURE_MEMBER
    )
    ok = (
        isinstance(raw, dict)
        and raw.get("format") == _SIGNATURE_FORMAT
        and raw.get("algorithm") == _SIGNATURE_ALGORITHM
        and raw.get("signs") == MANIFEST_MEMBER
        and isinstance(raw.get("hmac"), str)
    )
    if not ok:
        raise IntegrityError(f"{where}: {SIGNATURE_MEMBER} is malformed; refusing the bundle")
    # surrogatepass: a lone surrogate ("\ud800") is compared (and differs), not an error.
    given = raw["hmac"].encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(given, _signature(key, manifest_bytes).encode()):
        raise IntegrityError(
            f"{where}: the signature does not match this key: the bundle was modified after "
            f"it was signed, or signed with a different key. Refusing it"
        )


@contextlib.contextmanager
def _open_bundle(path: str | os.PathLike[str], where: str) -> Iterator[zipfile.ZipFile]:
    if not os.path.lexists(path):
        raise DataFileError(f"{where} does not exist")
    fh = open_regular(path)  # refuses FIFOs and devices without waiting on them
    with fh:
        try:
            zf = zipfile.ZipFile(fh)
        except ZIP_OPEN_ERRORS as exc:
            raise DataFileError(
                f"{where} is not a readable zip file ({describe(exc)}); it may be truncated "
                f"or not a bundle"
            ) from None
        with zf:
            yield zf


def load_bundle(
    path: str | os.PathLike[str], *, map_location: Any = "cpu", key: bytes | None = None
) -> Bundle:
    """Read and verify a bundle written by [`save_bundle`][physscale.io.bundle.save_bundle].

    Args:
        path: the bundle file (a regular file; FIFOs and devices are refused).
        map_location: where to put the tensors, as for ``torch.load``
            (default ``"cpu"``).
        key: the signing key given to ``save_bundle``. With a key, a bundle
            without a valid signature under it is refused before anything
            else in it is read; the result has ``authenticated=True``.
            Without one, a signature is ignored and the checksums prove
            integrity only (anyone can recompute them).

    Returns:
        A [`Bundle`][physscale.io.bundle.Bundle] with the state dict, the record, the manifest and
        ``extra``.

    Raises:
        DataFileError: the file is missing, not a zip, truncated, not a
            physscale bundle, of an unknown format version, or declares
            member sizes it cannot back (oversized or compressed weights,
            expansion beyond what deflate can produce).
        UnsafeFileError: member names that are absolute, escape a folder, are
            duplicated or unexpected, or a state dict that needs code to load.
        IntegrityError: a member whose size or sha256 differs from the
            manifest; with ``key``, a missing or wrong signature.
        RecordError: a missing or invalid record, or an unknown record schema version.
        DtypeError: ``key`` is not a bytes key.

    Examples:
        >>> import torch, physscale as ps
        >>> from physscale.io import load_bundle, save_bundle
        >>> model = torch.nn.Linear(2, 2)
        >>> record = ps.closed_form_scale_record(1e6, 64)
        >>> path = save_bundle(tmp / 'model.bundle', model.state_dict(), record)
        >>> bundle = load_bundle(path)
        >>> model.load_state_dict(bundle.state_dict)
        <All keys matched successfully>
        >>> bundle.record.intensity_scale
        31.25
    """
    secret = None if key is None else _check_key(key)
    where = f"bundle {os.fspath(path)!r}"
    with _open_bundle(path, where) as zf:
        names = zf.namelist()
        _check_member_names(names, where)
        if MANIFEST_MEMBER not in names:
            raise DataFileError(f"{where} has no {MANIFEST_MEMBER}; it is not a physscale bundle")
        archive_size = os.fstat(zf.fp.fileno()).st_size  # type: ignore[union-attr]
        _check_members(zf, archive_size, where)
        manifest_bytes = _read_member(zf, zf.getinfo(MANIFEST_MEMBER), where)
        if secret is not None:
            _verify_signature(zf, manifest_bytes, secret, where)
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
        authenticated=secret is not None,
    )
