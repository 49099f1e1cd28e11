"""The argument parser of the ``physscale`` command: flags, their checks and help texts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from physscale.cli import doctor, normalize
from physscale.cli.messages import PROG
from physscale.core.checks import positive_finite
from physscale.errors import NphotonsError
from physscale.io.dataset import DEFAULT_WORKERS, MAX_WORKERS

__all__ = ["MAX_EXCLUDED_FRAMES", "build_parser", "frame_list"]


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


#: The most frames ``--exclude-frames`` may name, all ranges together: the list
#: is built before the files are read (a set of ten million ints is ~1 GB).
MAX_EXCLUDED_FRAMES = 1_000_000


def _workers(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_WORKERS} files read at the same time, got {text!r}"
        )
    return value


def frame_list(text: str) -> list[int]:
    """``3,17,200-210`` (ranges inclusive) as a sorted list of distinct frame indices.

    At most `MAX_EXCLUDED_FRAMES` frames in all, checked before any list is built.
    """
    spans: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            first = int(lo)
            last = int(hi) if dash else first
        except ValueError:
            first = last = -1
        if first < 0 or last < first:
            raise argparse.ArgumentTypeError(
                f"expected frame indices such as 3,17,200-210 (ranges inclusive, indices "
                f">= 0), got {part[:40]!r}"
            )
        spans.append((first, last))
    count = sum(last - first + 1 for first, last in spans)
    if count > MAX_EXCLUDED_FRAMES:
        raise argparse.ArgumentTypeError(
            f"names {count} frames; at most {MAX_EXCLUDED_FRAMES} may be excluded (to drop "
            "more, derive from fewer files)"
        )
    frames: set[int] = set()
    for first, last in spans:
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
    derive.add_argument(
        "--follow-links",
        action="store_true",
        help="HDF5 (NeXus masters): follow external links and virtual datasets, only to "
        "files in the master's own folder; --key /entry/data reads an Eiger master's "
        "data_NNNNNN links as one stack, in link-name order",
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
        type=frame_list,
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
        type=_workers,
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
    inspect.add_argument(
        "--follow-links",
        action="store_true",
        help="also show the stacks a NeXus master's links hold (only files in its own folder)",
    )
    _add_common(inspect, top=False)

    normalize.add_parser(sub, _add_common)

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
