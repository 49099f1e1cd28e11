"""The ``physscale`` command line: derive a dataset's intensity scale, inspect files.

``physscale derive [PATH]`` streams a ``.npy``/``.npz``/HDF5 file through an
:class:`~physscale.IntensityAccumulator` (bounded memory whatever the file
size), resolves nphotons (``--nphotons`` > the file's metadata >
``--nphotons-default``, else an error) and prints the :class:`~physscale.ScaleRecord`.
Without PATH it runs on the example dataset shipped with physscale.

``physscale inspect PATH`` shows a record file, a bundle's record and manifest,
or a dataset's arrays and metadata.

``physscale doctor`` reports versions, the kernel in use (and, without the
native one, why and how to get it) and the optional packages found.

Exit status: 0 success, 1 bad data or files, 2 usage errors (a bad flag, or a
missing ``--nphotons`` / ``--layout`` that the data need). Errors are one
line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from pydantic import ValidationError

from physscale import doctor
from physscale._checks import check_layout, positive_finite, spatial_axes
from physscale.accumulator import IntensityAccumulator
from physscale.errors import (
    AmbiguousLayoutError,
    DataFileError,
    MaskError,
    NphotonsError,
    PhysscaleError,
    UnsafeFileError,
)
from physscale.io._atomic import atomic_write
from physscale.io._files import ZIP_OPEN_ERRORS, describe, open_regular
from physscale.io.metadata import read_metadata
from physscale.io.readers import (
    ArrayInfo,
    example_dataset_path,
    file_kind,
    list_arrays,
    pattern_source,
    read_mask,
)
from physscale.io.streaming import fold_patterns
from physscale.nphotons import resolve_nphotons
from physscale.record import ScaleRecord, derive_scale_record

__all__ = ["build_parser", "main"]

PROG = "physscale"

#: Seconds of work before the progress indicator appears (small inputs stay silent).
PROGRESS_DELAY_S = 0.5
_PROGRESS_INTERVAL_S = 0.1
_MAX_RECORD_BYTES = 1 << 20


class UsageError(Exception):
    """An invocation that needs another flag (exit status 2, like argparse's errors)."""


# --------------------------------------------------------------------------- progress
class Progress:
    """A one-line progress indicator on a terminal stream (no dependency).

    Draws nothing unless ``stream`` is a TTY and ``enabled``, and only once
    ``delay`` seconds have passed, so quick runs and pipes stay clean.
    """

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO,
        enabled: bool = True,
        delay: float = PROGRESS_DELAY_S,
        label: str = "reading",
    ) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.active = enabled and _isatty(stream)
        self.delay = delay
        self.label = label
        self._start = time.monotonic()
        self._last_draw = -1.0
        self._drawn = False

    def advance(self, n: int) -> None:
        """Count ``n`` more units done and redraw if due."""
        self.done += n
        if not self.active:
            return
        now = time.monotonic()
        if now - self._start < self.delay or now - self._last_draw < _PROGRESS_INTERVAL_S:
            return
        self._last_draw = now
        frac = min(self.done / self.total, 1.0)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        self.stream.write(f"\r{PROG}: {self.label} [{bar}] {self.done}/{self.total} ({frac:6.1%})")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the line, if one was drawn."""
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------- parser
def _positive_number(text: str) -> float:
    try:
        return positive_finite(text, "value")
    except NphotonsError:
        raise argparse.ArgumentTypeError(
            f"expected a positive finite number such as 1e9, got {text!r}"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the defaults are SUPPRESSed so they never overwrite the
    # value given before the subcommand name.
    default: Any = False if top else argparse.SUPPRESS
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the full traceback on errors",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no progress indicator and no warnings on stderr",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``physscale`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The dataset intensity scale s = sqrt(nphotons / mean per-pattern "
        "sum(x**2)) of normalized diffraction amplitudes, with its provenance.",
        epilog="Exit status: 0 success, 1 bad data or files, 2 usage errors (including a "
        "missing --nphotons or --layout that the data need).",
    )
    parser.add_argument("--version", action=doctor.VersionAction)
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    derive = sub.add_parser(
        "derive",
        help="derive the intensity scale of a dataset",
        description="Stream a dataset, resolve nphotons (--nphotons > the file's metadata > "
        "--nphotons-default) and print the scale record. Without PATH, runs on the "
        "example dataset shipped with physscale.",
    )
    derive.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help=".npy, .npz or HDF5 file of normalized amplitudes (default: the shipped example)",
    )
    derive.add_argument(
        "--key",
        default="diffraction",
        help="the .npz key or HDF5 dataset path of the patterns (default: diffraction)",
    )
    derive.add_argument(
        "--nphotons",
        type=_positive_number,
        metavar="N",
        help="expected photons per pattern; overrides the file's metadata",
    )
    derive.add_argument(
        "--nphotons-default",
        type=_positive_number,
        metavar="N",
        help="nphotons to use when neither --nphotons nor the file's metadata gives one",
    )
    derive.add_argument(
        "--layout",
        choices=("NCHW", "NHWC"),
        help="NCHW: the last two axes are one pattern (default); NHWC: axes -3, -2 "
        "(TensorFlow). Every other axis counts patterns",
    )
    derive.add_argument(
        "--domain",
        choices=("amplitude", "intensity"),
        default="amplitude",
        help="amplitude: sum x**2 per pattern (default); intensity: sum x",
    )
    derive.add_argument(
        "--mask",
        type=Path,
        metavar="PATH",
        help=".npy boolean valid-pixel mask (True = use the pixel): the pattern's shape "
        "(H, W), applied along the spatial axes in either layout, or a shape that "
        "broadcasts to the data. With a mask, nphotons is the expected count in the "
        "unmasked pixels of a pattern: masking a bright beamstop region raises the "
        "scale (the record gives the masked fractions of pixels and intensity)",
    )
    derive.add_argument("--out", type=Path, metavar="FILE", help="write the record JSON here")
    derive.add_argument(
        "--json", action="store_true", help="print the record as JSON instead of a summary"
    )
    derive.add_argument(
        "--chunk-patterns",
        type=_positive_int,
        metavar="K",
        help="first-axis entries read per chunk (default: about 16 MiB per chunk)",
    )
    _add_common(derive, top=False)

    inspect = sub.add_parser(
        "inspect",
        help="show a record, a bundle, or a dataset's arrays and metadata",
        description="Show a ScaleRecord JSON file, a bundle's record and manifest, or a "
        ".npy/.npz/HDF5 dataset's arrays (shape, dtype) and metadata. Reads headers "
        "only; never executes code from the file.",
    )
    inspect.add_argument("path", metavar="PATH", type=Path, help="the file to inspect")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_common(inspect, top=False)

    doc = sub.add_parser(
        "doctor",
        help="report versions, the kernel in use (and why), optional packages",
        description="Report physscale's and its dependencies' versions, the kernel in use and, "
        "without the native one, why and how to get it, the optional packages found, the "
        "validation switch, and torch's threads and devices. Exit status 0.",
    )
    doc.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_common(doc, top=False)
    return parser


# --------------------------------------------------------------------------- derive
def _load_mask(path: Path, info: ArrayInfo, spatial_dims: Sequence[int]) -> np.ndarray:
    """The --mask array, its header checked first: never larger than one entry or pattern."""
    axes = spatial_axes(len(info.shape), spatial_dims)
    pattern = math.prod(info.shape[a] for a in axes)
    return read_mask(path, f"--mask {path}", max(pattern, info.count // info.shape[0]))


def _missing_nphotons(path: Path, metadata: Any, exc: NphotonsError) -> str:
    """The one-line message when neither the flags nor the file give nphotons."""
    if metadata is None:
        why = "it has no metadata"
    elif "was not given" in str(exc):
        why = 'its metadata has no ["physics_parameters"]["nphotons"]'
    else:  # a misplaced or misspelled key: the core's message says where it is
        return f"{path}: {exc}; or pass --nphotons N"
    return (
        f"{path}: nphotons is not known: {why}. Pass --nphotons N (expected photons per "
        f"pattern; overrides the file's metadata) or --nphotons-default N (used only when "
        f"the metadata gives none)"
    )


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _summary(record: ScaleRecord, key: str, layout: str | None) -> str:
    shape = " x ".join(str(n) for n in record.pattern_shape or ())
    sources = {
        "explicit": "--nphotons",
        "metadata": 'the file\'s metadata ["physics_parameters"]["nphotons"]',
        "config": "the config",
        "default": "--nphotons-default",
    }
    kind = "sum(x**2)" if record.domain == "amplitude" else "sum(x)"
    lines = [
        f"{PROG} derive: {record.data_source} (key {key!r})",
        f"  intensity scale  s = {_fmt(record.intensity_scale)}    (counts = (s * x)**2)",
        f"  nphotons         {_fmt(record.nphotons)}    from {sources[record.nphotons_source]}",
    ]
    meta = record.nphotons_candidates.get("metadata")
    if meta is not None and record.nphotons_source != "metadata" and meta != record.nphotons:
        lines.append(f"                   (the file's metadata says {_fmt(meta)}; overridden)")
    lines += [
        f"  patterns         {record.n_patterns} of {shape} pixels "
        f"({record.domain} domain, layout {layout or 'NCHW'}"
        f"{', masked' if record.masked else ''})",
    ]
    if record.masked_pixel_fraction is not None:
        removed = record.masked_intensity_fraction
        of_intensity = "" if removed is None else f", {removed:.1%} of the intensity"
        lines.append(
            f"  mask             excludes {record.masked_pixel_fraction:.1%} of the pixels"
            f"{of_intensity}; nphotons counts the unmasked pixels only"
        )
    lines += [
        f"  mean intensity   {_fmt(record.mean_intensity or 0.0)}    "
        f"(mean per-pattern {kind}, normalized units)",
        f"  implied dose     {_fmt(record.implied_nphotons or 0.0)} photons per pattern",
    ]
    return "\n".join(lines)


def _derive(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    path = Path(args.path) if args.path is not None else example_dataset_path()
    # Checks file, key, header and every declared size before any work.
    source = pattern_source(path, args.key)
    info = source.info
    try:
        metadata = read_metadata(path)
    except UnsafeFileError as exc:
        if args.nphotons is None:
            raise
        # Nothing from the file ran; an explicit --nphotons makes the metadata moot.
        metadata = None
        if not args.quiet:
            message = str(exc).replace("\n", " ")
            stderr.write(
                f"{PROG}: warning: {message} (metadata ignored; using --nphotons "
                f"{_fmt(args.nphotons)})\n"
            )
    # Fail before reading the data when no nphotons can be had, or the layout is unclear.
    if args.nphotons is None and args.nphotons_default is None:
        try:
            resolve_nphotons(metadata)
        except NphotonsError as exc:
            raise UsageError(_missing_nphotons(path, metadata, exc)) from None
    try:
        check_layout(info.shape, args.layout is not None, str(path), cli=True)
    except AmbiguousLayoutError as exc:
        raise UsageError(str(exc)) from None
    acc = IntensityAccumulator(domain=args.domain, layout=args.layout)
    mask = _load_mask(args.mask, info, acc.spatial_dims) if args.mask is not None else None
    progress = Progress(info.shape[0], stream=stderr, enabled=not args.quiet)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fold_patterns(
                acc,
                source,
                mask=mask,
                chunk_patterns=args.chunk_patterns,
                on_progress=progress.advance,
            )
        except MaskError as exc:
            raise MaskError(f"--mask {args.mask}: {exc}") from None
        finally:
            progress.close()
        record = derive_scale_record(
            acc,
            nphotons=args.nphotons,
            metadata=metadata,
            default=args.nphotons_default,
            data_source=str(path),
        )
    if not args.quiet:
        for w in caught:
            stderr.write(f"{PROG}: warning: {_one_line(str(w.message))}\n")
    text = record.model_dump_json(indent=2)
    if args.out is not None:
        # Atomically, as bundles are written: a failed write leaves the old record.
        with atomic_write(args.out) as fh:
            fh.write((text + "\n").encode("utf-8"))
    if args.json:
        stdout.write(text + "\n")
    else:
        stdout.write(_summary(record, args.key, args.layout) + "\n")
        if args.out is not None:
            stdout.write(f"  record written to {args.out}\n")
    return 0


# --------------------------------------------------------------------------- inspect
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
            f"{loc}: {_one_line(str(first['msg']))[:200]})"
        ) from None


def _record_lines(record: ScaleRecord) -> list[str]:
    data = record.model_dump(mode="json")
    width = max(len(k) for k in data)
    return [f"  {k:<{width}}  {json.dumps(v)}" for k, v in data.items() if v is not None]


#: What opening or reading a damaged zip can raise (bad signatures, inflate, short reads).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError)


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


def _inspect(args: argparse.Namespace, stdout: TextIO) -> int:
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
    return _inspect_dataset(path, args.json, stdout)


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


def _inspect_dataset(path: Path, as_json: bool, stdout: TextIO) -> int:
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


# --------------------------------------------------------------------------- main
def _one_line(text: str) -> str:
    """Messages (ours, torch's multi-line warnings) as one line each."""
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``physscale`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    stdout, stderr = sys.stdout, sys.stderr
    if args.command is None:
        parser.print_help(stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:
        # Every warning (torch's are several lines) becomes one line on stderr.
        warnings.simplefilter("default")
        try:
            return _run(args, stdout, stderr)
        finally:
            if not args.quiet:
                for w in caught:
                    stderr.write(f"{PROG}: warning: {_one_line(str(w.message))}\n")


def _run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        if args.command == "derive":
            return _derive(args, stdout, stderr)
        if args.command == "doctor":
            data = doctor.report()
            stdout.write(json.dumps(data, indent=2) if args.json else doctor.format_report(data))
            stdout.write("\n")
            return 0
        return _inspect(args, stdout)
    except UsageError as exc:
        if args.debug:
            traceback.print_exc(file=stderr)
        stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except (PhysscaleError, OSError) as exc:
        if args.debug:
            traceback.print_exc(file=stderr)
        message = _one_line(str(exc))
        if isinstance(exc, OSError) and not isinstance(exc, PhysscaleError):
            message = f"{exc.filename or ''}: {exc.strerror or describe(exc)}".lstrip(": ")
        stderr.write(f"{PROG}: error: {message}\n")
        return 1
    except _ZIP_ERRORS as exc:
        # A damaged archive reached past the readers' own checks: still one line.
        # (Its OSError member is already taken by the clause above.)
        if args.debug:
            traceback.print_exc(file=stderr)
        where = args.path if args.path is not None else "the example dataset"
        message = describe(exc)
        stderr.write(f"{PROG}: error: {where}: corrupt or truncated archive ({message})\n")
        return 1
    except KeyboardInterrupt:
        stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:  # a bug, not bad input: still one line, and say so
        if args.debug:
            traceback.print_exc(file=stderr)
        stderr.write(
            f"{PROG}: error: unexpected {type(exc).__name__} ({describe(exc)}); this is a "
            f"physscale bug: please report it with the output of --debug\n"
        )
        return 1
