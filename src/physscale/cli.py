"""The ``physscale`` command line (stub: the full CLI arrives with the I/O work)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from physscale._version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``physscale`` console script; returns the exit code."""
    parser = argparse.ArgumentParser(prog="physscale", description=__doc__)
    parser.add_argument("--version", action="version", version=f"physscale {__version__}")
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2
