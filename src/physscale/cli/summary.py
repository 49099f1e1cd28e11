"""The summary ``physscale derive`` prints: the scale, where nphotons came from, the frames."""

from __future__ import annotations

import os

from physscale.cli.messages import PROG, fmt
from physscale.io.dataset import DerivedFiles
from physscale.record import ScaleRecord

__all__ = ["summary"]

#: Flagged frames the summary names (with their file); the rest are counted.
_SUMMARY_FRAMES = 10


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
    line = f"  nphotons         {fmt(record.nphotons)}    from "
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
            lines.append(f"                   (the file's metadata says {fmt(meta)}; overridden)")
        elif n_files > 1 and sources is not None and sources.metadata_nphotons:
            said = ", ".join(
                f"{fmt(c.value)} ({c.files} file{'s' if c.files != 1 else ''})"
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
            f"({_percent(ratio)}); nothing was excluded ({rule_flags}; if they are a whole "
            f"file at another exposure or attenuation, derive that file separately: "
            f"docs/preparing-data.md)"
        )
    elif stats.flagged_count:
        lines.append(
            "                   without them no intensity would be left to derive a scale "
            "from; nothing was excluded"
        )
    return lines


def summary(derived: DerivedFiles, key: str, layout: str | None) -> str:
    """The text ``physscale derive`` prints (without --json)."""
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
        f"  intensity scale  s = {fmt(record.intensity_scale)}    (counts = (s * x)**2)",
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
        f"  mean intensity   {fmt(record.mean_intensity or 0.0)}    "
        f"(mean per-pattern {kind}, normalized units)",
        f"  implied dose     {fmt(record.implied_nphotons or 0.0)} photons per pattern",
    ]
    lines += _stats_lines(derived, "--exclude-outliers would")
    return "\n".join(lines)
