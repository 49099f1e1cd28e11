"""``physscale derive``: the scale of a dataset, by
[`physscale.io.derive_files`][physscale.io.derive_files].

The command turns flags into the call, draws the progress bars, words the
library's errors with its flags (a missing ``--nphotons`` or ``--layout`` is
a usage error, exit status 2), and writes the record, the figure and the
summary. Nothing is written unless every file was read and the record made.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from collections.abc import Sequence
from typing import Literal, TextIO

from physscale.cli.messages import PROG, UsageError, fmt, in_our_words, one_line
from physscale.cli.progress import ProgressBars
from physscale.cli.summary import summary
from physscale.diagnostics import OutlierRule
from physscale.errors import (
    AmbiguousLayoutError,
    FileListError,
    NphotonsError,
    OptionError,
    PhysscaleError,
    StateError,
)
from physscale.io import derive_files, example_dataset_path
from physscale.io._atomic import atomic_write, check_output
from physscale.io.dataset import expand_paths

__all__ = ["run"]

#: Files whose refused metadata the warnings name; the rest are counted.
_NAMED_REFUSED = 5


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Run ``physscale derive`` with parsed ``args``; the exit status (errors raise)."""
    _check_options(args)
    inputs = _check_outputs(args)
    exclude: Literal["outliers"] | list[int] | None = (
        "outliers" if args.exclude_outliers else args.exclude_frames
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with ProgressBars(stream=stderr, enabled=not args.quiet) as bars:
                derived = derive_files(
                    list(args.paths) or [example_dataset_path()],
                    recursive=args.recursive,
                    key=args.key,
                    layout=args.layout,
                    domain=args.domain,
                    nphotons=args.nphotons,
                    nphotons_default=args.nphotons_default,
                    mask=args.mask,
                    diagnostics=not args.no_diagnostics,
                    exclude=exclude,
                    outlier_rule=_outlier_rule(args),
                    chunk_patterns=args.chunk_patterns,
                    workers=args.workers,
                    progress=bars,
                    follow_links=args.follow_links,
                    details=True,
                )
        except (FileListError, AmbiguousLayoutError, NphotonsError) as exc:
            # Raised before any data is read: a flag the data need is missing.
            raise UsageError(in_our_words(exc)) from None
        except StateError as exc:
            if exc.parameter != "exclude":
                raise
            raise UsageError(f"--exclude-frames: {exc}") from None
    if not args.quiet:
        _warn_refused(derived.refused, args.nphotons, stderr)
        for w in caught:
            stderr.write(f"{PROG}: warning: {one_line(str(w.message))}\n")
    record = derived.record
    text = record.model_dump_json(indent=2)
    figure = None
    if args.plot is not None:
        from physscale import report

        figure = report.render_report(derived, report.plot_format(args.plot))
    # Atomically, as bundles are written, and together: the figure's file is
    # written inside the record's, so if either write fails neither file changes.
    with contextlib.ExitStack() as stack:
        if args.out is not None:
            fh = stack.enter_context(atomic_write(args.out, inputs=inputs))
            fh.write((text + "\n").encode("utf-8"))
        if figure is not None:
            stack.enter_context(atomic_write(args.plot, inputs=inputs)).write(figure)
    if args.json:
        stdout.write(text + "\n")
    else:
        stdout.write(summary(derived, args.key, args.layout) + "\n")
        if args.out is not None:
            stdout.write(f"  record written to {args.out}\n")
        if args.plot is not None:
            stdout.write(f"  report figure written to {args.plot}\n")
    return 0


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
        except ImportError:
            raise UsageError(
                f"--plot {args.plot}: the report figure (--plot) needs matplotlib, which is "
                f"not installed; install it with: {report.PLOT_HINT}"
            ) from None
        try:
            report.plot_format(args.plot)
        except OptionError as exc:
            raise UsageError(f"--plot {args.plot}: {exc}") from None


def _check_outputs(args: argparse.Namespace) -> list[str | os.PathLike[str]]:
    """The files read, after refusing outputs that are inputs, read-only or the same file.

    Checked before anything is read, so a mistaken ``--out`` costs nothing;
    the writes check again (the files may change meanwhile).
    """
    outputs = [(flag, p) for flag, p in (("--out", args.out), ("--plot", args.plot)) if p]
    if not outputs:
        return []
    inputs: list[str | os.PathLike[str]] = [args.mask] if args.mask is not None else []
    with contextlib.suppress(PhysscaleError):  # derive_files reports it, in its words
        inputs += expand_paths(
            list(args.paths) or [example_dataset_path()], recursive=args.recursive
        )
    for _, path in outputs:
        check_output(path, inputs)  # DataFileError: exit 1, as the write itself would
    if len(outputs) == 2 and os.path.realpath(args.out) == os.path.realpath(args.plot):
        raise UsageError(f"--out and --plot name the same file ({args.plot}); give two files")
    return inputs


def _outlier_rule(args: argparse.Namespace) -> OutlierRule | None:
    given = {}
    if args.outlier_threshold is not None:
        given["threshold"] = args.outlier_threshold
    if args.near_zero is not None:
        given["near_zero"] = args.near_zero
    return OutlierRule(**given) if given else None


def _warn_refused(refused: Sequence[str], nphotons: float | None, stderr: TextIO) -> None:
    """One line per file whose unsafe metadata was ignored (a few, then a count)."""
    for why in refused[:_NAMED_REFUSED]:
        stderr.write(
            f"{PROG}: warning: {why} (metadata ignored; using --nphotons {fmt(nphotons or 0.0)})\n"
        )
    if len(refused) > _NAMED_REFUSED:
        stderr.write(
            f"{PROG}: warning: the metadata of {len(refused) - _NAMED_REFUSED} more file(s) was "
            f"refused the same way (ignored)\n"
        )
