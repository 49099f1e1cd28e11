"""The report figure of a dataset: per-pattern intensity across files, at a glance.

``physscale derive PATH... --plot report.png``, or from Python::

    derived = physscale.io.derive_files(paths, ..., details=True)
    physscale.report.plot_report(derived, "report.png")

writes one figure:

- left, the per-pattern total against the frame index, files in order, with
  the file boundaries marked, the mean and median, the outlier rule's limits
  and the flagged frames (red);
- right, the histogram of the totals (log counts, so a handful of bad frames
  shows), on the same intensity axis;
- the title: the scale, the implied dose, how many frames were flagged and
  how far the scale would move without them.

A PNG also carries the figures as text (its ``physscale`` chunk holds JSON:
patterns, files, flagged counts, the scale, the implied dose), for scripts
and tests. matplotlib is an optional extra (``pip install "physscale[plot]"``),
imported only here and only when a figure is drawn, with the Agg backend (no
display needed).

This module draws what `physscale.io` derived; ``io`` never imports it.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from physscale._version import __version__
from physscale.diagnostics import PatternStats

if TYPE_CHECKING:
    from physscale.io.dataset import DerivedFiles

__all__ = ["PLOT_HINT", "plot_format", "plot_report", "render_report", "require_matplotlib"]

PLOT_HINT = 'pip install "physscale[plot]"'
"""What to install for the figure."""

#: Above this many frames the series is drawn as a per-bin min/max band and
#: median (every flagged frame is still drawn), so any dataset draws quickly.
MAX_POINTS = 20_000
#: File boundaries are drawn for at most this many files (a denser set of lines
#: would hide the data); file names are written for at most NAMED_FILES.
MAX_BOUNDARIES = 200
NAMED_FILES = 12
#: At most this many flagged frames are drawn as markers.
MAX_MARKERS = 5_000

_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
_BLUE, _LIGHT, _RED, _GREY = "#1f5fa8", "#7fa7d6", "#c62828", "#555555"


def require_matplotlib() -> None:
    """Raise ImportError, naming the extra to install, when matplotlib is missing.

    Examples:
        >>> from physscale.report import require_matplotlib
        >>> require_matplotlib()   # returns None with matplotlib installed, else says how to get it
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            f"the report figure needs matplotlib, which is not installed; install it with: "
            f"{PLOT_HINT}"
        ) from None


def plot_format(path: str | os.PathLike[str]) -> str:
    """The figure format named by ``path``'s suffix: ``"png"``, ``"pdf"`` or ``"svg"``.

    Raises:
        OptionError: another suffix.

    Examples:
        >>> from physscale.report import plot_format
        >>> plot_format('scale_report.PNG'), plot_format(tmp / 'report.svg')
        ('png', 'svg')
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in _FORMATS:
        from physscale.errors import OptionError

        raise OptionError(
            f"{os.fspath(path)}: the report figure is written as .png, .pdf or .svg "
            f"(by the file name's suffix), got {suffix or 'no suffix'!r}"
        )
    return _FORMATS[suffix]


def summary_numbers(derived: DerivedFiles) -> dict[str, Any]:
    """What the figure states, as plain data (the PNG's ``physscale`` text chunk)."""
    record = derived.record
    stats = record.pattern_stats
    excluded = record.excluded_frames
    return {
        "physscale_version": __version__,
        "n_patterns": stats.n_patterns if stats is not None else record.n_patterns,
        "n_files": len(derived.files),
        "flagged_count": None if stats is None else stats.flagged_count,
        "near_zero_count": None if stats is None else stats.near_zero_count,
        "far_count": None if stats is None else stats.far_count,
        "scale_ratio_without_flagged": None if stats is None else stats.scale_ratio_without_flagged,
        "excluded_count": 0 if excluded is None else excluded.count,
        "intensity_scale": record.intensity_scale,
        "implied_nphotons": record.implied_nphotons,
        "mean_intensity": record.mean_intensity,
        "nphotons": record.nphotons,
    }


def _title(derived: DerivedFiles, stats: PatternStats) -> tuple[str, str]:
    record = derived.record
    n_files = len(derived.files)
    files = f"{n_files} file{'s' if n_files != 1 else ''}"
    flagged = stats.flagged_count
    head = (
        f"{stats.n_patterns} patterns in {files}  ·  s = {record.intensity_scale:.6g}  ·  "
        f"implied dose {record.implied_nphotons or 0.0:.4g} photons/pattern  ·  "
        f"{flagged} flagged"
    )
    excluded = record.excluded_frames
    if excluded is not None:
        how = "--exclude-outliers" if excluded.reason == "outliers" else "by frame list"
        sub = (
            f"{excluded.count} frame(s) EXCLUDED ({how}): the scale moved by "
            f"$\\times${excluded.scale_ratio:.6g} ({_percent(excluded.scale_ratio)})"
        )
    elif flagged and stats.scale_ratio_without_flagged is not None:
        ratio = stats.scale_ratio_without_flagged
        sub = (
            f"nothing excluded; excluding the {flagged} flagged frame(s) would move the scale "
            f"by $\\times${ratio:.6g} ({_percent(ratio)})"
        )
    elif flagged:
        sub = (
            f"nothing excluded; excluding the {flagged} flagged frame(s) would leave no "
            f"intensity to derive a scale from"
        )
    else:
        sub = "no frame flagged; nothing excluded"
    return head, sub


def _percent(ratio: float) -> str:
    return f"{(ratio - 1.0) * 100:+.3g} %"


def _series(ax: Any, totals: np.ndarray, starts: Sequence[int], flagged: np.ndarray) -> None:
    """The totals against the frame index: points (alternating shades per file) or a band."""
    n = totals.size
    frames = np.arange(n)
    if n <= MAX_POINTS:
        size = 9 if n <= 2000 else 3
        bounds = [*starts, n]
        for i, (a, b) in enumerate(itertools.pairwise(bounds)):
            color = _BLUE if i % 2 == 0 else _LIGHT
            ax.scatter(frames[a:b], totals[a:b], s=size, color=color, linewidths=0, zorder=2)
        if n <= 2000:
            ax.plot(frames, totals, color=_BLUE, linewidth=0.5, alpha=0.35, zorder=1)
        return
    # Too many frames for points: per bin, the band of the unflagged frames and their
    # median (the flagged frames are marked one by one on top).
    bins = MAX_POINTS // 4
    edges = np.linspace(0, n, bins + 1).astype(np.int64)
    usual = np.ones(n, dtype=bool)
    usual[flagged] = False
    lo = np.minimum.reduceat(np.where(usual, totals, np.inf), edges[:-1])
    hi = np.maximum.reduceat(np.where(usual, totals, -np.inf), edges[:-1])
    empty = ~np.isfinite(lo)
    lo[empty], hi[empty] = np.nan, np.nan
    mid = np.array(
        [np.median(t[u]) if u.any() else np.nan
         for t, u in zip(np.split(totals, edges[1:-1]), np.split(usual, edges[1:-1]), strict=True)]
    )  # fmt: skip
    centre = (edges[:-1] + edges[1:] - 1) / 2.0
    ax.fill_between(centre, lo, hi, color=_LIGHT, alpha=0.6, linewidth=0, zorder=1,
                    label="min to max per bin (unflagged)")  # fmt: skip
    ax.plot(centre, mid, color=_BLUE, linewidth=0.8, zorder=2, label="median per bin")


def render_report(derived: DerivedFiles, fmt: str = "png", dpi: int = 110) -> bytes:
    """Draw the report figure and return the file's bytes.

    Args:
        derived: what ``physscale.io.derive_files(..., details=True)``
            returned (the record, the per-pattern totals and the files).
        fmt: ``"png"``, ``"pdf"`` or ``"svg"``.
        dpi: resolution of a PNG.

    Raises:
        ImportError: matplotlib is not installed.
        StateError: no per-pattern totals (derived without diagnostics).

    Examples:
        >>> import numpy as np
        >>> from physscale.io import derive_files
        >>> from physscale.report import render_report
        >>> np.save(tmp / 'a.npy', np.full((4, 8, 8), 0.5, dtype=np.float32))
        >>> derived = derive_files([tmp / 'a.npy'], nphotons=1e6, details=True)
        >>> render_report(derived, 'png')[1:4]
        b'PNG'
    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from physscale.errors import StateError

    record = derived.record
    stats = record.pattern_stats
    if derived.pattern_totals is None or stats is None:
        raise StateError("the report figure needs the per-pattern totals: derive with diagnostics")
    totals = derived.pattern_totals.numpy()
    n = totals.size
    starts = list(np.cumsum([0] + [count for _, count in derived.files[:-1]]))

    fig = Figure(figsize=(12.5, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 2, width_ratios=(4.2, 1.0))
    ax = fig.add_subplot(grid[0, 0])
    hist = fig.add_subplot(grid[0, 1], sharey=ax)
    head, sub = _title(derived, stats)
    fig.suptitle(head + "\n" + sub, fontsize=11.5, x=0.01, horizontalalignment="left")

    # Limits of the outlier rule: near zero below, far from the median on both sides.
    rule = stats.rule
    far_lo = stats.median - rule.threshold * stats.robust_std
    far_hi = stats.median + rule.threshold * stats.robust_std
    near = rule.near_zero * stats.median
    ax.axhspan(max(far_lo, 0.0), far_hi, color="#2e7d32", alpha=0.06, zorder=0,
               label=f"median ± {rule.threshold:g} robust $\\sigma$ (not flagged)")  # fmt: skip
    ax.axhline(near, color=_RED, linestyle=":", linewidth=1.0, zorder=1,
               label=f"near zero: < {rule.near_zero:.0%} of the median")  # fmt: skip

    if len(derived.files) > 1 and len(derived.files) <= MAX_BOUNDARIES:
        for s in starts[1:]:
            ax.axvline(s - 0.5, color=_GREY, linewidth=0.6, alpha=0.5, zorder=1)
    flagged = _flagged(totals, stats)
    _series(ax, totals, starts, flagged)
    ax.axhline(stats.mean, color="black", linewidth=1.2, zorder=3,
               label=f"mean {stats.mean:.6g}")  # fmt: skip
    ax.axhline(stats.median, color="black", linewidth=0.8, linestyle="--", zorder=3,
               label=f"median {stats.median:.6g}")  # fmt: skip
    if record.excluded_frames is not None and record.mean_intensity is not None:
        ax.axhline(record.mean_intensity, color=_RED, linewidth=1.0, zorder=3,
                   label=f"mean without the excluded frames {record.mean_intensity:.6g} "
                   "(sets the scale)")  # fmt: skip
    if flagged.size:
        shown = flagged[:MAX_MARKERS]
        ax.scatter(shown, totals[shown], s=46, marker="x", color=_RED, linewidths=1.5, zorder=4,
                   label=f"flagged ({stats.flagged_count})")  # fmt: skip
    excluded = record.excluded_frames
    if excluded is not None and not excluded.frames_truncated:
        ex = np.asarray(excluded.frames, dtype=np.int64)
        ax.scatter(ex, totals[ex], s=90, facecolors="none", edgecolors=_RED, linewidths=1.0,
                   zorder=4, label=f"excluded ({excluded.count})")  # fmt: skip

    if 1 < len(derived.files) <= NAMED_FILES:
        for (name, count), s in zip(derived.files, starts, strict=True):
            ax.annotate(os.path.basename(name), xy=(s + count / 2 - 0.5, 1.0),
                        xycoords=("data", "axes fraction"), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7.5,
                        color=_GREY, clip_on=False)  # fmt: skip
    kind = "sum(x²)" if record.domain == "amplitude" else "sum(x)"
    ax.set_ylabel(f"per-pattern {kind}  (normalized units)")
    files_note = (
        "files in order, boundaries marked"
        if 1 < len(derived.files) <= MAX_BOUNDARIES
        else ("one file" if len(derived.files) == 1 else "files in order")
    )
    ax.set_xlabel(f"frame index  ({files_note})")
    ax.set_xlim(-0.5, n - 0.5)
    top = _top(totals, stats, far_hi)
    above = np.flatnonzero(totals > top)
    if above.size:
        # A few very bright frames would flatten everything else: they are drawn at
        # the top edge, marked, with their count and the largest value.
        shown = above[:MAX_MARKERS]
        ax.scatter(shown, np.full(shown.size, top), marker="^", s=40, color=_RED, zorder=5,
                   clip_on=False, label=f"above the axis ({above.size}, up to "
                   f"{float(totals.max()):.4g})")  # fmt: skip
    ax.set_ylim(bottom=0.0, top=top)
    ax.grid(True, axis="y", alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, ncol=4, frameon=False)

    bins = int(min(80, max(10, math.sqrt(n) * 2)))
    hist.hist(np.minimum(totals, top), bins=np.linspace(0.0, top, bins + 1).tolist(),
              orientation="horizontal", color=_BLUE, alpha=0.85, log=True)  # fmt: skip
    hist.axhline(stats.mean, color="black", linewidth=1.2)
    hist.axhline(stats.median, color="black", linewidth=0.8, linestyle="--")
    hist.axhline(near, color=_RED, linestyle=":", linewidth=1.0)
    hist.set_xlabel("patterns (log)")
    hist.tick_params(axis="y", labelleft=False)
    hist.grid(True, axis="x", alpha=0.25)
    q = stats.quantiles
    text = "\n".join(
        [
            f"min {stats.minimum:<10.5g} p01 {q['p01']:.5g}",
            f"p50 {stats.median:<10.5g} p99 {q['p99']:.5g}",
            f"max {stats.maximum:<10.5g} CV  {stats.cv:.3%}",
            f"near zero {stats.near_zero_count:<4d} far {stats.far_count}",
        ]
    )
    hist.set_title(text, fontsize=8, family="monospace", loc="left")

    numbers = summary_numbers(derived)
    title = head + " — " + sub
    if fmt == "png":
        metadata: dict[str, Any] = {"Title": title, "Software": f"physscale {__version__}",
                                    "physscale": json.dumps(numbers)}  # fmt: skip
    elif fmt == "svg":
        metadata = {"Title": title, "Description": json.dumps(numbers)}
    else:
        metadata = {"Title": title, "Subject": json.dumps(numbers)}
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return buffer.getvalue()


def _top(totals: np.ndarray, stats: PatternStats, far_hi: float) -> float:
    """The intensity axis' top: every frame, unless a few bright ones would flatten the rest."""
    highest = float(totals.max())
    # The frames within the rule's limits set the scale of the picture.
    usual = totals[totals <= far_hi]
    typical = max(float(usual.max()) if usual.size else 0.0, far_hi)
    if highest <= 1.6 * typical:
        return highest * 1.05 or 1.0
    return typical * 1.25 or 1.0


def _flagged(totals: np.ndarray, stats: PatternStats) -> np.ndarray:
    """Every flagged frame (the record lists at most 1000; the rule is re-applied)."""
    if not stats.flagged_frames_truncated:
        return np.asarray(stats.flagged_frames, dtype=np.int64)
    rule = stats.rule
    near = totals < rule.near_zero * stats.median
    far = np.abs(totals - stats.median) > rule.threshold * stats.robust_std
    return np.flatnonzero(near | far)


def plot_report(derived: DerivedFiles, path: str | os.PathLike[str]) -> None:
    """Draw the report figure and write it to ``path`` atomically (.png, .pdf or .svg).

    Args:
        derived: what ``physscale.io.derive_files(..., details=True)``
            returned.
        path: the figure file; its suffix names the format.

    Raises:
        ImportError: matplotlib is not installed (``pip install "physscale[plot]"``).
        OptionError: a suffix other than .png, .pdf or .svg.
        StateError: derived without diagnostics (no per-pattern totals).

    Examples:
        >>> import numpy as np
        >>> from physscale.io import derive_files
        >>> from physscale.report import plot_report
        >>> np.save(tmp / 'a.npy', np.full((4, 8, 8), 0.5, dtype=np.float32))
        >>> derived = derive_files([tmp / 'a.npy'], nphotons=1e6, details=True)
        >>> plot_report(derived, tmp / 'report.png')
        >>> (tmp / 'report.png').stat().st_size > 0
        True
    """
    from physscale.io._atomic import atomic_write

    data = render_report(derived, plot_format(path))
    with atomic_write(path) as fh:
        fh.write(data)


def write_report(path: str | os.PathLike[str], derived: DerivedFiles) -> None:
    """Deprecated since 0.3: [`plot_report`][physscale.report.plot_report] (the same, arguments the
    other way round)."""
    warnings.warn(
        "physscale.report.write_report(path, derived) is deprecated since physscale 0.3: "
        "use physscale.report.plot_report(derived, path)",
        DeprecationWarning,
        stacklevel=2,
    )
    plot_report(derived, path)
