"""Per-pattern diagnostics: the spread of the per-pattern intensity, and outlier frames.

Every frame moves the mean per-pattern intensity, and so the scale. A beam
dump gives near-zero frames, a saturated or hot frame is far above the rest,
a drift slowly moves the totals. `pattern_stats` summarizes the
per-pattern totals an [`IntensityAccumulator`][physscale.IntensityAccumulator] keeps
(``keep_pattern_totals=True``) and flags outlier frames by a robust rule
(`OutlierRule`), saying how far the scale would move without them.
It never excludes anything: excluding frames is an explicit choice
([`physscale.IntensityAccumulator.excluding`][physscale.IntensityAccumulator.excluding]).

The rule, with ``m`` the median of the totals and
``MAD = 1.4826 * median(|t - m|)`` (the normal-consistent median absolute
deviation, floored at ``mad_floor * m`` so that identical frames do not flag
rounding noise):

- a frame is **near zero** when its total is below ``near_zero * m``
  (default 5 % of the median: a beam dump, a shutter that stayed closed);
- a frame is **far from the median** when ``|t - m| > threshold * MAD``
  (default 5 robust standard deviations: a hot or saturated frame, a glitch).

Both are robust: half the frames would have to be bad to move ``m`` or
``MAD``. A slow drift shows in the spread (``cv``, the quantiles) and in the
picture (``physscale derive --plot``) before it shows in the flags.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from physscale.errors import EmptyInputError, StateError

__all__ = [
    "MAX_LISTED_FRAMES",
    "ExcludedFrames",
    "OutlierRule",
    "PatternStats",
    "flag_outliers",
    "pattern_stats",
]

#: At most this many flagged frame indices are listed (the count is always exact),
#: so a record stays small whatever the dataset.
MAX_LISTED_FRAMES = 1000

#: The quantiles reported, in percent.
QUANTILES = (1, 5, 25, 50, 75, 95, 99)

_MAD_TO_SIGMA = 1.4826

NonNegativeFinite = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class OutlierRule(BaseModel):
    """The robust rule that flags frames (see the module docstring).

    Attributes:
        near_zero: a frame whose total is below this fraction of the median
            total is flagged as near zero.
        threshold: a frame farther than this many robust standard deviations
            (``1.4826 * MAD``) from the median is flagged as far from it.
        mad_floor: the robust standard deviation is at least this fraction of
            the median, so near-identical frames do not flag rounding noise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    near_zero: Annotated[float, Field(ge=0, lt=1)] = 0.05
    threshold: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0
    mad_floor: Annotated[float, Field(ge=0, lt=1)] = 1e-3


class PatternStats(BaseModel):
    """The spread of the per-pattern intensity of a dataset, and its flagged frames.

    Totals are in the accumulator's units: normalized ``sum(x**2)`` per
    pattern (amplitude domain) or ``sum(x)`` (intensity domain). Frame
    indices count patterns in the order they were accumulated (files in the
    order given, patterns in C order of their non-spatial axes).

    Attributes:
        n_patterns: the number of patterns summarized.
        minimum, maximum, mean, median: of the per-pattern totals.
        quantiles: the 1st, 5th, 25th, 50th, 75th, 95th and 99th percentiles,
            keyed ``"p01"`` .. ``"p99"`` (linear interpolation).
        std: the population standard deviation of the totals.
        cv: the coefficient of variation, ``std / mean``.
        robust_std: ``1.4826 * median(|t - median|)``, floored as the rule says.
        rule: the rule that flagged frames.
        near_zero_count, far_count: how many frames each part of the rule flagged.
        flagged_count: frames flagged by either part.
        flagged_frames: their indices (at most `MAX_LISTED_FRAMES`, the smallest).
        flagged_frames_truncated: whether the list was cut.
        scale_ratio_without_flagged: the factor by which the scale would move
            if the flagged frames were excluded, ``sqrt(mean / mean of the
            rest)`` (1.0 when none is flagged; None when excluding them
            would leave no intensity, or a factor beyond float64).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_patterns: Annotated[int, Field(ge=1)]
    minimum: NonNegativeFinite
    maximum: NonNegativeFinite
    mean: NonNegativeFinite
    median: NonNegativeFinite
    quantiles: dict[str, NonNegativeFinite]
    std: NonNegativeFinite
    cv: NonNegativeFinite
    robust_std: NonNegativeFinite
    rule: OutlierRule
    near_zero_count: Annotated[int, Field(ge=0)]
    far_count: Annotated[int, Field(ge=0)]
    flagged_count: Annotated[int, Field(ge=0)]
    flagged_frames: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_LISTED_FRAMES)
    flagged_frames_truncated: bool
    scale_ratio_without_flagged: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None


def _as_totals(totals: torch.Tensor | Sequence[float]) -> torch.Tensor:
    t = torch.as_tensor(totals, dtype=torch.float64).reshape(-1).cpu()
    if t.numel() == 0:
        raise EmptyInputError("there are no per-pattern totals to summarize")
    if not bool(t.isfinite().all()) or bool((t < 0).any()):
        raise StateError("per-pattern totals must be finite and >= 0")
    # Only totals this large can sum past float64; then check exactly (rare).
    if float(t.max()) * t.numel() > sys.float_info.max:
        try:
            math.fsum(t.tolist())
        except OverflowError:
            raise StateError(
                "the per-pattern totals sum beyond float64 (about 1.8e308); rescale the data"
            ) from None
    return t


def flag_outliers(
    totals: torch.Tensor | Sequence[float], rule: OutlierRule | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frames the rule flags, as two boolean masks: ``(near_zero, far)``.

    Args:
        totals: per-pattern totals, ``(n_patterns,)``, finite and >= 0.
        rule: the `OutlierRule` (default: its defaults).
    """
    rule = rule or OutlierRule()
    t = _as_totals(totals)
    median = _median(t)
    return _flags(t, median, _robust_std(t, median, rule), rule)


def _flags(
    t: torch.Tensor, median: float, robust: float, rule: OutlierRule
) -> tuple[torch.Tensor, torch.Tensor]:
    near_zero = t < rule.near_zero * median
    far = (t - median).abs() > rule.threshold * robust
    return near_zero, far


def _median(t: torch.Tensor) -> float:
    # numpy: torch.quantile refuses inputs of more than 2**24 elements.
    return float(np.median(t.numpy()))


def _robust_std(t: torch.Tensor, median: float, rule: OutlierRule) -> float:
    mad = _median((t - median).abs())
    return max(_MAD_TO_SIGMA * mad, rule.mad_floor * median)


def pattern_stats(
    totals: torch.Tensor | Sequence[float], rule: OutlierRule | None = None
) -> PatternStats:
    """Summarize per-pattern totals and flag outlier frames (nothing is excluded).

    Args:
        totals: per-pattern totals, ``(n_patterns,)``, finite and >= 0, e.g.
            [`physscale.IntensityAccumulator.pattern_totals`][physscale.IntensityAccumulator.pattern_totals].
        rule: the `OutlierRule` (default: its defaults).

    Raises:
        EmptyInputError: no totals. StateError: a negative or non-finite total.
    """
    rule = rule or OutlierRule()
    t = _as_totals(totals)
    n = t.numel()
    # One median, one MAD, one exact pass over the totals: this runs after every
    # derive with diagnostics, on up to millions of totals.
    median = _median(t)
    robust = _robust_std(t, median, rule)
    near_zero, far = _flags(t, median, robust, rule)
    flagged = near_zero | far
    indices = flagged.nonzero().reshape(-1)
    kept = n - int(indices.numel())
    # Each sum correctly rounded (math.fsum); the total is their float64 sum.
    rest_total = math.fsum(t[~flagged].tolist()) if indices.numel() else math.fsum(t.tolist())
    flagged_total = math.fsum(t[indices].tolist())
    total = rest_total + flagged_total
    mean = total / n
    ratio: float | None = None
    if kept:
        rest = rest_total / kept
        if rest > 0:
            # Two roots, not the root of the quotient: mean / rest overflows when the
            # remaining frames are nearly dark. None if even this is beyond float64.
            ratio = math.sqrt(mean) / math.sqrt(rest)
            ratio = ratio if math.isfinite(ratio) else None
    values = t.numpy()
    deviation = values - mean
    # Squares of totals above ~1e154 overflow: square the deviations in units of
    # the largest one (a power of two, so the scaling is exact). numpy's pairwise
    # float64 sum: a relative error of a few ulps, plenty for a spread.
    peak = float(np.abs(deviation).max())
    unit = math.ldexp(1.0, math.frexp(peak)[1]) if peak > 0 else 1.0
    relative = deviation / unit
    std = unit * math.sqrt(float(np.sum(relative * relative)) / n)
    qs = np.quantile(values, [q / 100 for q in QUANTILES])
    return PatternStats(
        n_patterns=n,
        minimum=float(t.min()),
        maximum=float(t.max()),
        mean=mean,
        median=median,
        quantiles={f"p{q:02d}": float(v) for q, v in zip(QUANTILES, qs, strict=True)},
        std=std,
        cv=std / mean if mean > 0 else 0.0,
        robust_std=robust,
        rule=rule,
        near_zero_count=int(near_zero.sum()),
        far_count=int(far.sum()),
        flagged_count=int(indices.numel()),
        flagged_frames=indices[:MAX_LISTED_FRAMES].tolist(),
        flagged_frames_truncated=indices.numel() > MAX_LISTED_FRAMES,
        scale_ratio_without_flagged=ratio,
    )


class ExcludedFrames(BaseModel):
    """Which frames a scale was derived without, and why (an explicit choice, recorded).

    Attributes:
        reason: ``"outliers"`` (the frames the `OutlierRule` flagged)
            or ``"explicit"`` (a list of frame indices the user gave).
        rule: the rule, for ``"outliers"``.
        count: how many frames were excluded.
        frames: their indices in accumulation order (at most
            `MAX_LISTED_FRAMES`, the smallest).
        frames_truncated: whether the list was cut.
        n_patterns_before: the number of patterns before exclusion.
        scale_ratio: the scale with the frames excluded over the scale with
            every frame (the factor the exclusion moved it by).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: Literal["outliers", "explicit"]
    rule: OutlierRule | None = None
    count: Annotated[int, Field(ge=1)]
    frames: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_LISTED_FRAMES)
    frames_truncated: bool
    n_patterns_before: Annotated[int, Field(ge=2)]
    scale_ratio: Annotated[float, Field(gt=0, allow_inf_nan=False)]
