"""The ``physscale`` command line: derive a dataset's intensity scale, inspect files.

``physscale derive [PATH...]`` streams ``.npy``/``.npz``/HDF5 files (paths,
glob patterns, directories) through :class:`~physscale.IntensityAccumulator`
instances merged exactly (bounded memory whatever the number and size of the
files), resolves nphotons per file (``--nphotons`` > each file's metadata >
``--nphotons-default``; files that disagree are an error), and prints the
:class:`~physscale.ScaleRecord` with the spread of the per-pattern intensity
and the frames the outlier rule flags; ``--plot`` draws them. Without PATH it
runs on the example dataset shipped with physscale.

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
import os
import sys
import traceback
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import ValidationError

from physscale.cli import doctor
from physscale.core.checks import positive_finite
from physscale.diagnostics import OutlierRule
from physscale.errors import (
    AmbiguousLayoutError,
    DataFileError,
    FileListError,
    NphotonsError,
    OptionError,
    PhysscaleError,
    StateError,
    UnsafeFileError,
)
from physscale.io._atomic import atomic_write
from physscale.io._files import ZIP_OPEN_ERRORS, describe, open_regular
from physscale.io._progress import PROGRESS_DELAY_S, DatasetProgress
from physscale.io.dataset import (
    DEFAULT_WORKERS,
    DerivedFiles,
    check_frames,
    derive_plan,
    expand_paths,
    plan_files,
    resolve_files,
)
from physscale.io.metadata import read_metadata
from physscale.io.readers import example_dataset_path, file_kind, list_arrays
from physscale.record import ScaleRecord

__all__ = ["PROGRESS_DELAY_S", "build_parser", "main"]

PROG = "physscale"

_MAX_RECORD_BYTES = 1 << 20
#: Flagged frames the summary names (with their file); the rest are counted.
_SUMMARY_FRAMES = 10


class UsageError(Exception):
    """An invocation that needs another flag (exit status 2, like argparse's errors)."""


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


def _frame_list(text: str) -> list[int]:
    """``3,17,200-210`` (ranges inclusive) as a sorted list of distinct frame indices."""
    frames: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            first = int(lo)
            last = int(hi) if dash else first
        except ValueError:
            first = last = -1
        if first < 0 or last < first or last - first > 10_000_000:
            raise argparse.ArgumentTypeError(
                f"expected frame indices such as 3,17,200-210 (ranges inclusive, indices "
                f">= 0), got {part!r}"
            )
        frames.update(range(first, last + 1))
    return sorted(frames)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
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
        help="derive the intensity scale of a dataset (one file or many)",
        description="Stream a dataset (files, glob patterns, directories), resolve nphotons "
        "per file (--nphotons > the file's metadata > --nphotons-default; files that "
        "disagree are an error), and print the scale record with the spread of the "
        "per-pattern intensity and the frames the outlier rule flags. Nothing is excluded "
        "unless asked (--exclude-outliers, --exclude-frames). Without PATH, runs on the "
        "example dataset shipped with physscale.",
        epilog="A directory stands for its regular files named *.npy, *.npz, *.h5, *.hdf5, "
        "*.nxs or *.cxi (any case; hidden files skipped), sorted by name; subdirectories "
        "only with --recursive. A glob pattern (quoted or not) is expanded as the shell "
        "does, sorted; one that matches nothing is a usage error. Files count in the order "
        "given; frame indices count patterns through the files in that order. Exit "
        "status: 0 success, 1 bad data or files, 2 usage errors.",
    )
    derive.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=".npy, .npz or HDF5 files of normalized amplitudes, glob patterns or "
        "directories (default: the shipped example)",
    )
    derive.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="also read the data files of subdirectories (and let ** span directories)",
    )
    derive.add_argument(
        "--key",
        default="diffraction",
        help="the .npz key or HDF5 dataset path of the patterns in every file "
        "(default: diffraction)",
    )
    derive.add_argument(
        "--nphotons",
        type=_positive_number,
        metavar="N",
        help="expected photons per pattern for every file; overrides the files' metadata",
    )
    derive.add_argument(
        "--nphotons-default",
        type=_positive_number,
        metavar="N",
        help="nphotons for files whose metadata gives none (when --nphotons is not given)",
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
        "--plot",
        type=Path,
        metavar="FILE",
        help="write the report figure (.png, .pdf or .svg): per-pattern totals against the "
        "frame index with file boundaries, their histogram, the mean, the flagged frames "
        'and the implied dose. Needs matplotlib: pip install "physscale[plot]"',
    )
    exclusion = derive.add_mutually_exclusive_group()
    exclusion.add_argument(
        "--exclude-outliers",
        action="store_true",
        help="derive without the frames the outlier rule flags (near zero, or far from the "
        "median); the record states what was excluded and how far the scale moved",
    )
    exclusion.add_argument(
        "--exclude-frames",
        type=_frame_list,
        metavar="LIST",
        help="derive without these frames, e.g. 3,17,200-210 (ranges inclusive; frames "
        "count patterns through the files in the order given)",
    )
    derive.add_argument(
        "--outlier-threshold",
        type=_positive_number,
        metavar="K",
        help="flag frames more than K robust standard deviations (1.4826 * MAD) from the "
        "median (default 5)",
    )
    derive.add_argument(
        "--near-zero",
        type=_fraction,
        metavar="F",
        help="flag frames whose total is below F times the median (default 0.05)",
    )
    derive.add_argument(
        "--no-diagnostics",
        action="store_true",
        help="do not keep per-pattern totals (no spread, no flags, no --plot or exclusion)",
    )
    derive.add_argument(
        "--chunk-patterns",
        type=_positive_int,
        metavar="K",
        help="first-axis entries read per chunk (default: about 4 MiB per chunk)",
    )
    derive.add_argument(
        "--workers",
        type=_positive_int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"files read at the same time (default {DEFAULT_WORKERS})",
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
def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _percent(ratio: float) -> str:
    return f"{(ratio - 1.0) * 100:+.3g}%"


_SOURCES_ONE = {
    "explicit": "--nphotons",
    "metadata": 'the file\'s metadata ["physics_parameters"]["nphotons"]',
    "config": "the config",
    "default": "--nphotons-default",
}


def _nphotons_line(record: ScaleRecord) -> list[str]:
    sources = record.sources
    n_files = 1 if sources is None else sources.n_files
    line = f"  nphotons         {_fmt(record.nphotons)}    from "
    if n_files == 1 or record.nphotons_source == "explicit":
        lines = [line + _SOURCES_ONE[record.nphotons_source]]
    elif record.nphotons_source == "metadata":
        lines = [line + f"the metadata of all {n_files} files (they agree)"]
    else:  # a default filled in for some files
        without = sources.files_without_nphotons if sources is not None else 0
        lines = [
            line + f"--nphotons-default for {without} file(s), the metadata of the others "
            f"(they agree)"
        ]
    meta = record.nphotons_candidates.get("metadata")
    if record.nphotons_source == "explicit":
        if n_files == 1 and meta is not None and meta != record.nphotons:
            lines.append(f"                   (the file's metadata says {_fmt(meta)}; overridden)")
        elif n_files > 1 and sources is not None and sources.metadata_nphotons:
            said = ", ".join(
                f"{_fmt(c.value)} ({c.files} file{'s' if c.files != 1 else ''})"
                for c in sources.metadata_nphotons[:4]
            )
            more = " ..." if len(sources.metadata_nphotons) > 4 else ""
            lines.append(f"                   (the files' metadata says {said}{more}; overridden)")
    return lines


def _stats_lines(derived: DerivedFiles, rule_flags: str) -> list[str]:
    record = derived.record
    stats = record.pattern_stats
    if stats is None:
        return []
    q = stats.quantiles
    lines = [
        f"  per pattern      min {stats.minimum:.4g}  p01 {q['p01']:.4g}  median "
        f"{stats.median:.4g}  p99 {q['p99']:.4g}  max {stats.maximum:.4g}  CV {stats.cv:.2%}",
    ]
    rule = stats.rule
    if stats.flagged_count == 0:
        lines.append("  flagged          none")
    else:
        lines.append(
            f"  flagged          {stats.flagged_count} of {stats.n_patterns} frames: "
            f"{stats.near_zero_count} near zero, {stats.far_count} far from the median"
        )
        shown = []
        for frame in stats.flagged_frames[:_SUMMARY_FRAMES]:
            name, local = derived.file_of(frame)
            where = f"{os.path.basename(name)} #{local}: " if len(derived.files) > 1 else ""
            shown.append(f"{frame} ({where}{derived.total_of(frame):.4g})")
        more = stats.flagged_count - len(shown)
        if more:
            shown.append(f"and {more} more")
        for i in range(0, len(shown), 3):
            lines.append("                   " + ", ".join(shown[i : i + 3]))
    lines.append(
        f"                   (rule: below {rule.near_zero:.3g} x the median, or more than "
        f"{rule.threshold:g} robust sd (1.4826 MAD) from it)"
    )
    excluded = record.excluded_frames
    if excluded is not None:
        how = "--exclude-outliers" if excluded.reason == "outliers" else "--exclude-frames"
        lines.append(
            f"  EXCLUDED         {excluded.count} frame(s) ({how}): the scale moved by "
            f"x{excluded.scale_ratio:.6g} ({_percent(excluded.scale_ratio)}); "
            f"{record.n_patterns} patterns count"
        )
    elif stats.flagged_count and stats.scale_ratio_without_flagged is not None:
        ratio = stats.scale_ratio_without_flagged
        lines.append(
            f"                   without them s would move by x{ratio:.6g} "
            f"({_percent(ratio)}); nothing was excluded ({rule_flags})"
        )
    elif stats.flagged_count:
        lines.append(
            "                   without them no intensity would be left to derive a scale "
            "from; nothing was excluded"
        )
    return lines


def _summary(derived: DerivedFiles, key: str, layout: str | None) -> str:
    record = derived.record
    shape = " x ".join(str(n) for n in record.pattern_shape or ())
    kind = "sum(x**2)" if record.domain == "amplitude" else "sum(x)"
    n_files = len(derived.files)
    before = (
        record.n_patterns
        if record.excluded_frames is None
        else (record.excluded_frames.n_patterns_before)
    )
    in_files = f" in {n_files} files" if n_files > 1 else ""
    lines = [
        f"{PROG} derive: {record.data_source} (key {key!r})",
        f"  intensity scale  s = {_fmt(record.intensity_scale)}    (counts = (s * x)**2)",
        *_nphotons_line(record),
        f"  patterns         {before} of {shape} pixels{in_files} "
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
    lines += _stats_lines(derived, "--exclude-outliers would")
    return "\n".join(lines)


def _outlier_rule(args: argparse.Namespace) -> OutlierRule | None:
    given = {}
    if args.outlier_threshold is not None:
        given["threshold"] = args.outlier_threshold
    if args.near_zero is not None:
        given["near_zero"] = args.near_zero
    return OutlierRule(**given) if given else None


def _check_options(args: argparse.Namespace) -> None:
    """Flag combinations that cannot work, refused before anything is read."""
    needs = [
        flag
        for flag, given in (
            ("--plot", args.plot is not None),
            ("--exclude-outliers", args.exclude_outliers),
            ("--exclude-frames", args.exclude_frames is not None),
        )
        if given
    ]
    if args.no_diagnostics and needs:
        raise UsageError(f"{needs[0]} needs the per-pattern totals; drop --no-diagnostics")
    if args.plot is not None:
        from physscale import report

        try:
            report.require_matplotlib()
            report.plot_format(args.plot)
        except (ImportError, OptionError) as exc:
            raise UsageError(f"--plot {args.plot}: {exc}") from None


def _derive(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    _check_options(args)
    given: list[str | Path] = list(args.paths) or [example_dataset_path()]
    try:
        files = expand_paths(given, recursive=args.recursive)
        # Checks every file, key, header, size, shape and metadata before any data.
        plan = plan_files(
            files,
            key=args.key,
            layout=args.layout,
            domain=args.domain,
            nphotons=args.nphotons,
            nphotons_default=args.nphotons_default,
            cli=True,
        )
        resolution = resolve_files(plan, cli=True)
        exclude: Literal["outliers"] | list[int] | None = None
        if args.exclude_outliers:
            exclude = "outliers"
        elif args.exclude_frames is not None:
            exclude = check_frames(args.exclude_frames, sum(f.n_patterns for f in plan.files))
    except (FileListError, AmbiguousLayoutError, NphotonsError) as exc:
        # Fail before reading the data when a flag the data need is missing.
        raise UsageError(str(exc)) from None
    except StateError as exc:
        raise UsageError(f"--exclude-frames: {exc}") from None
    if not args.quiet:
        _warn_refused(plan.refused, args.nphotons, stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with DatasetProgress(
            len(plan.files), plan.nbytes, stream=stderr, enabled=not args.quiet
        ) as progress:
            derived = derive_plan(
                plan,
                resolution,
                domain=args.domain,
                mask=args.mask,
                mask_name="--mask",
                diagnostics=not args.no_diagnostics,
                exclude=exclude,
                outlier_rule=_outlier_rule(args),
                chunk_patterns=args.chunk_patterns,
                workers=args.workers,
                progress=progress,
            )
    if not args.quiet:
        for w in caught:
            stderr.write(f"{PROG}: warning: {_one_line(str(w.message))}\n")
    record = derived.record
    text = record.model_dump_json(indent=2)
    figure = None
    if args.plot is not None:
        from physscale import report

        figure = report.render_report(derived, report.plot_format(args.plot))
    # Atomically, as bundles are written: a failed write leaves the old files. Nothing
    # is written unless every file was read and the record made.
    if args.out is not None:
        with atomic_write(args.out) as fh:
            fh.write((text + "\n").encode("utf-8"))
    if figure is not None:
        with atomic_write(args.plot) as fh:
            fh.write(figure)
    if args.json:
        stdout.write(text + "\n")
    else:
        stdout.write(_summary(derived, args.key, args.layout) + "\n")
        if args.out is not None:
            stdout.write(f"  record written to {args.out}\n")
        if args.plot is not None:
            stdout.write(f"  report figure written to {args.plot}\n")
    return 0


def _warn_refused(refused: Sequence[Any], nphotons: float | None, stderr: TextIO) -> None:
    """One line per file whose unsafe metadata was ignored (a few, then a count)."""
    for f in refused[:5]:
        stderr.write(
            f"{PROG}: warning: {f.refused} (metadata ignored; using --nphotons "
            f"{_fmt(nphotons or 0.0)})\n"
        )
    if len(refused) > 5:
        stderr.write(
            f"{PROG}: warning: the metadata of {len(refused) - 5} more file(s) was refused "
            f"the same way (ignored)\n"
        )


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
        named = getattr(args, "path", None) or ", ".join(map(str, getattr(args, "paths", [])))
        where = named or "the example dataset"
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
