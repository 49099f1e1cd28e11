"""The ``physscale`` command line: derive a dataset's intensity scale, inspect files.

``physscale derive [PATH...]`` streams ``.npy``/``.npz``/HDF5 files (paths,
glob patterns, directories) through [`physscale.io.derive_files`][physscale.io.derive_files]
(bounded memory whatever the number and size of the files), resolves
nphotons per file (``--nphotons`` > each file's metadata >
``--nphotons-default``; files that disagree are an error), and prints the
[`ScaleRecord`][physscale.ScaleRecord] with the spread of the per-pattern intensity
and the frames the outlier rule flags; ``--plot`` draws them. Without PATH it
runs on the example dataset shipped with physscale.

``physscale normalize SCAN... --out FILE`` turns detector counts into normalized
training data through [`physscale.io.normalize_files`][physscale.io.normalize_files].

``physscale inspect PATH`` shows a record file, a bundle's record and manifest,
or a dataset's arrays and metadata.

``physscale doctor`` reports versions, the kernel in use (and, without the
native one, why and how to get it) and the optional packages found.

Exit status: 0 success, 1 bad data or files, 2 usage errors (a bad flag, or a
missing ``--nphotons`` / ``--layout`` that the data need). Errors are one
line on stderr; ``--debug`` adds the traceback.

The modules: [`parser`][physscale.cli.parser] (flags), [`derive`][physscale.cli.derive],
[`inspect`][physscale.cli.inspect] and [`doctor`][physscale.cli.doctor] (the commands),
[`summary`][physscale.cli.summary] (what derive prints), [`progress`][physscale.cli.progress]
(the bars) and [`messages`][physscale.cli.messages] (the library's errors in the
command's words). This module maps what they raise to exit statuses.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import TextIO

from physscale.cli import derive, doctor, inspect, normalize
from physscale.cli.messages import PROG, UsageError, in_our_words, one_line
from physscale.cli.parser import build_parser
from physscale.cli.progress import PROGRESS_DELAY_S
from physscale.errors import PhysscaleError
from physscale.io._files import ZIP_OPEN_ERRORS, describe

__all__ = ["PROGRESS_DELAY_S", "build_parser", "main"]

#: Of what a damaged zip archive raises, the errors only archives raise: the rest
#: (ValueError, RuntimeError, NotImplementedError) from anywhere else is a bug,
#: reported as one.
_ARCHIVE_ERRORS = tuple(
    e for e in ZIP_OPEN_ERRORS if e not in (ValueError, RuntimeError, NotImplementedError)
)


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
                    stderr.write(f"{PROG}: warning: {one_line(str(w.message))}\n")


def _run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        if args.command == "derive":
            return derive.run(args, stdout, stderr)
        if args.command == "normalize":
            return normalize.run(args, stdout, stderr)
        if args.command == "doctor":
            data = doctor.report()
            stdout.write(json.dumps(data, indent=2) if args.json else doctor.format_report(data))
            stdout.write("\n")
            return 0
        return inspect.run(args, stdout)
    except UsageError as exc:
        if args.debug:
            traceback.print_exc(file=stderr)
        stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except (PhysscaleError, OSError) as exc:
        if args.debug:
            traceback.print_exc(file=stderr)
        message = one_line(in_our_words(exc))
        if isinstance(exc, OSError) and not isinstance(exc, PhysscaleError):
            message = f"{exc.filename or ''}: {exc.strerror or describe(exc)}".lstrip(": ")
        stderr.write(f"{PROG}: error: {message}\n")
        return 1
    except _ARCHIVE_ERRORS as exc:
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
