"""How the command line words what it says: one line per error or warning, its own flags.

The library names its options in Python terms and carries them apart in a
[`Wording`][physscale.errors.Wording]; `in_our_words` renders that with
this command's flags (``nphotons=`` becomes ``--nphotons N``), so no message
is edited as text and the library never learns a flag's spelling.
"""

from __future__ import annotations

from physscale.core.checks import COUNTS_NEXT_STEP_CLI
from physscale.errors import PhysscaleError

__all__ = ["FLAGS", "PROG", "UsageError", "fmt", "in_our_words", "one_line"]

PROG = "physscale"

#: The library's options (the keys of its Wordings) as this command's flags.
FLAGS = {
    "nphotons": "--nphotons N",
    "nphotons_default": "--nphotons-default N",
    "layout_NHWC": "--layout NHWC",
    "layout_NCHW": "--layout NCHW",
    "recursive": "--recursive",
    "mask": "--mask",
    "follow_links": "--follow-links",
    **COUNTS_NEXT_STEP_CLI,
}


class UsageError(Exception):
    """An invocation that needs another flag (exit status 2, like argparse's errors)."""


def in_our_words(exc: BaseException) -> str:
    """The message of ``exc``, naming this command's flags where the library named options."""
    wording = exc.wording if isinstance(exc, PhysscaleError) else None
    # A message edited after it was raised (a caller added context) no longer matches
    # its wording: then it is shown as it is.
    if wording is None or wording.render() != str(exc):
        return str(exc)
    return wording.render(FLAGS)


def one_line(text: str) -> str:
    """Messages (ours, torch's multi-line warnings) as one line each."""
    return " ".join(text.split())


def fmt(value: float) -> str:
    """A number as the summary shows it (6 significant digits)."""
    return f"{value:.6g}"
