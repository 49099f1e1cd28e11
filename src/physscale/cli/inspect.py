"""``physscale inspect``: what a record file, a bundle or a dataset holds, read safely.

Headers and metadata only; nothing from the file is executed (metadata that
would need code is refused, after what can be shown safely is shown).
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from physscale.cli.messages import one_line
from physscale.errors import DataFileError, UnsafeFileError
from physscale.io._files import ZIP_OPEN_ERRORS, describe, open_regular
from physscale.io.metadata import read_metadata
from physscale.io.nexus import data_stacks, find_counts_key, list_links
from physscale.io.readers import file_kind, list_arrays, pattern_source
from physscale.record import ScaleRecord

__all__ = ["run"]

_MAX_RECORD_BYTES = 1 << 20


def run(args: argparse.Namespace, stdout: TextIO) -> int:
    """Run ``physscale inspect`` with parsed ``args``; the exit status (errors raise)."""
    path: Path = args.path
    # Refuses FIFOs and devices without waiting on them (is_zipfile would read
    # /dev/zero forever).
    with open_regular(path) as f:
        head = f.read(64).lstrip()
    if path.suffix.lower() == ".json" or head.startswith(b"{"):
        record = _read_record(path)
        if args.json:
            stdout.write(record.model_dump_json(indent=2) + "\n")
        else:
            stdout.write("\n".join([f"{path}: ScaleRecord", *_record_lines(record)]) + "\n")
        return 0
    if _is_bundle(path):
        return _inspect_bundle(path, args.json, stdout)
    return _inspect_dataset(path, args.json, stdout, getattr(args, "follow_links", False))


def _read_record(path: Path) -> ScaleRecord:
    # Read one byte past the limit, never the whole of a huge file (nor a FIFO).
    with open_regular(path) as f:
        try:
            data = f.read(_MAX_RECORD_BYTES + 1)
        except OSError as exc:
            raise DataFileError(f"{path}: cannot read ({describe(exc)})") from None
    if len(data) > _MAX_RECORD_BYTES:
        raise DataFileError(f"{path}: too large to be a ScaleRecord JSON file")
    try:
        return ScaleRecord.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "record"
        raise DataFileError(
            f"{path}: not a valid ScaleRecord ({exc.error_count()} problem(s); first: "
            f"{loc}: {one_line(str(first['msg']))[:200]})"
        ) from None


def _record_lines(record: ScaleRecord) -> list[str]:
    data = record.model_dump(mode="json")
    width = max(len(k) for k in data)
    return [f"  {k:<{width}}  {json.dumps(v)}" for k, v in data.items() if v is not None]


def _is_bundle(path: Path) -> bool:
    # A regular file (checked by the caller): is_zipfile only seeks to its end.
    if not zipfile.is_zipfile(path):
        return False
    # is_zipfile only checks the end-of-central-directory record: the central
    # directory itself can still be damaged.
    try:
        with zipfile.ZipFile(path) as zf:
            return "record.json" in zf.namelist()
    except ZIP_OPEN_ERRORS as exc:
        raise DataFileError(
            f"{path}: not a readable zip archive (bundle or .npz), probably truncated or "
            f"corrupt ({describe(exc)})"
        ) from None


def _inspect_bundle(path: Path, as_json: bool, stdout: TextIO) -> int:
    from physscale.io import load_bundle

    bundle = load_bundle(path)  # verifies checksums; weights load with weights_only=True
    if as_json:
        payload = {
            "kind": "bundle",
            "record": bundle.record.model_dump(mode="json"),
            "manifest": bundle.manifest,
        }
        stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return 0
    lines = [f"{path}: bundle", "record:", *_record_lines(bundle.record)]
    lines += ["manifest:", *("  " + line for line in _json_lines(bundle.manifest))]
    stdout.write("\n".join(lines) + "\n")
    return 0


def _json_lines(value: Any) -> list[str]:
    return json.dumps(value, indent=2, default=str).splitlines()


def _inspect_dataset(path: Path, as_json: bool, stdout: TextIO, follow: bool = False) -> int:
    kind = file_kind(path)
    arrays = list_arrays(path)
    refused: UnsafeFileError | None = None
    try:
        metadata = read_metadata(path)
    except UnsafeFileError as exc:
        # Show what can be shown safely, then fail: the file is not to be trusted.
        metadata, refused = None, exc
    nphotons = None
    if metadata is not None:
        physics = metadata.get("physics_parameters")
        if isinstance(physics, dict):
            nphotons = physics.get("nphotons")
    # Links that leave the file (a NeXus master's data): where the data are.
    links = list_links(path) if kind == "hdf5" else []
    # With --follow-links: the stacks the links hold (read through them only inside
    # the file's folder, as derive and normalize do).
    stacks = _linked_stacks(path) if follow and links else []
    if as_json:
        payload = {
            "kind": kind,
            "path": str(path),
            "arrays": [
                {
                    "name": a.name,
                    "shape": list(a.shape),
                    "dtype": a.dtype.str if not a.dtype.hasobject else "object",
                    "fortran_order": a.fortran_order,
                }
                for a in arrays
            ],
            "links": [
                {"name": ln.name, "kind": ln.kind, "file": ln.file, "target": ln.target}
                for ln in links
            ],
            "stacks": [
                {"file": str(f), "key": k, "shape": list(s), "dtype": d} for f, k, s, d in stacks
            ],
            "metadata": metadata,
            "nphotons": nphotons,
        }
        stdout.write(json.dumps(payload, indent=2) + "\n")
        if refused is not None:
            raise refused
        return 0
    lines = [f"{path}: {kind} dataset", "arrays:"]
    width = max((len(a.name) for a in arrays), default=0)
    for a in arrays:
        dtype = "object (pickle; read only as metadata)" if a.dtype.hasobject else str(a.dtype)
        order = ", Fortran order" if a.fortran_order else ""
        lines.append(f"  {a.name:<{width}}  shape {a.shape}  dtype {dtype}{order}")
    if links:
        lines.append("links (data in other files; read with --follow-links):")
        lines += [f"  {ln.name} -> {ln.file}:{ln.target} ({ln.kind})" for ln in links]
    if stacks:
        lines.append("stacks (through the links):")
        lines += [f"  {f}:{k}  shape {tuple(s)}  dtype {d}" for f, k, s, d in stacks]
    if refused is not None:
        lines.append("metadata: REFUSED (its pickle would run code; see the error below)")
    elif metadata is None:
        lines.append("metadata: none")
    else:
        lines += ["metadata:", *("  " + line for line in _json_lines(metadata))]
    if refused is None:
        lines.append(
            f"nphotons (metadata): {nphotons}"
            if nphotons is not None
            else "nphotons (metadata): not given; pass --nphotons to physscale derive"
        )
    stdout.write("\n".join(lines) + "\n")
    if refused is not None:
        raise refused
    return 0


def _linked_stacks(path: Path) -> list[tuple[Path, str, tuple[int, ...], str]]:
    """The data stacks of a master's known layout, read through its links."""
    key = find_counts_key(path)
    out = []
    for spath, skey in data_stacks(path, key, True):
        info = pattern_source(spath, skey, counts=True, follow_links=True).info
        out.append((spath, skey, tuple(info.shape), str(info.dtype)))
    return out
