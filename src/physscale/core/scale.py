"""The scale from totals, and the amplitude normalization's target (SPEC §1).

Pure functions of numbers: every other module that gives a scale (the
accumulator, ``derive_intensity_scale``, the records, ``normalize_counts``)
calls `scale_from_totals`; none owns the formula.

- the physics scale: ``s = sqrt(nphotons / mean per-pattern sum(x**2))``
  (``sum(x)`` for intensities), `scale_from_totals` with
  ``target = nphotons``;
- the amplitude normalization factor: the same with
  ``target = (N/2)**2`` (`normalization_target`);
- the closed form TF training uses on normalized data:
  ``s = sqrt(nphotons) / (N/2)``
  ([`closed_form_intensity_scale`][physscale.core.scale.closed_form_intensity_scale]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from physscale.core.checks import positive_finite
from physscale.core.preview import preview
from physscale.errors import AxisError, EmptyInputError, ZeroIntensityError

__all__ = [
    "closed_form_intensity_scale",
    "mean_from_totals",
    "normalization_target",
    "pattern_sizes",
    "scale_from_totals",
]


def mean_from_totals(total_intensity: float, n_patterns: int) -> float:
    """The mean per-pattern intensity ``total_intensity / n_patterns`` (float64).

    Args:
        total_intensity: the sum over every pattern of ``sum(x**2)`` (or
            ``sum(x)``), normalized intensity units, finite and >= 0.
        n_patterns: how many patterns that total covers.

    Raises:
        EmptyInputError: ``n_patterns`` is 0.
    """
    if n_patterns < 1:
        raise EmptyInputError("no patterns to take a mean over (n_patterns is 0)")
    return total_intensity / n_patterns


def scale_from_totals(total_intensity: float, n_patterns: int, target: float) -> float:
    """The factor that brings the mean per-pattern intensity to ``target``.

    ``sqrt(target / (total_intensity / n_patterns))``, in float64: the physics
    scale for ``target = nphotons``, the amplitude normalization factor for
    ``target = (N/2)**2``. (The mean is formed first, then the root, as
    0.2.0 did: the same bits.) No units check: that is the caller's.

    Args:
        total_intensity: the sum over every pattern of ``sum(x**2)``
            (amplitudes) or ``sum(x)`` (intensities), normalized units,
            finite and >= 0.
        n_patterns: how many patterns that total covers, >= 1.
        target: the mean per-pattern intensity wanted, positive finite
            (already checked by the caller).

    Raises:
        EmptyInputError: ``n_patterns`` is 0.
        ZeroIntensityError: a zero total, or one so small that the scale is
            not finite.
    """
    mean = mean_from_totals(total_intensity, n_patterns)
    if mean == 0.0:
        raise ZeroIntensityError(
            f"the total intensity of all {n_patterns} pattern(s) is zero; "
            f"no scale maps all-zero data to a positive photon count"
        )
    value = math.sqrt(target / mean)
    if not math.isfinite(value):
        raise ZeroIntensityError(
            f"the mean per-pattern intensity {mean!r} is too small for a finite scale"
        )
    return value


def normalization_target(pattern_shape: Sequence[int]) -> float:
    """The mean per-pattern ``sum(x**2)`` after amplitude normalization: ``(N/2)**2``.

    For an ``N x N`` pattern this is ``(N/2)**2``; for ``H x W`` physscale
    uses ``H * W / 4``, which reduces to it. (Normalizing to ``N**2`` instead
    is the factor-of-2 trap of SPEC failure mode 6.)
    """
    if len(pattern_shape) == 0 or any(int(n) < 1 for n in pattern_shape):
        raise AxisError(
            f"pattern_shape must be positive sizes, got {preview(tuple(pattern_shape))}"
        )
    size = math.prod(int(n) for n in pattern_shape)
    if size > 2**1000:  # no pattern is that large; the division would overflow
        raise AxisError(f"pattern_shape {preview(tuple(pattern_shape))} is not a pattern's size")
    return size / 4.0


def closed_form_intensity_scale(nphotons: Any, pattern_shape: int | Sequence[int]) -> float:
    """The scale of normalized data in closed form: ``sqrt(nphotons) / (N/2)``.

    Args:
        nphotons: expected photons per pattern, positive finite.
        pattern_shape: ``N`` (square patterns) or the spatial sizes ``(H, W)``.

    Equals [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale] on data
    normalized by
    [`physscale.normalize_amplitudes`][physscale.normalize_amplitudes] (a property the tests check).

    Examples:
        >>> import physscale as ps
        >>> ps.closed_form_intensity_scale(1e6, 64)   # sqrt(1e6) / (64/2)
        31.25
    """
    n = positive_finite(nphotons, "nphotons")
    return math.sqrt(n / normalization_target(pattern_sizes(pattern_shape)))


def pattern_sizes(pattern_shape: Any) -> tuple[int, ...]:
    """``N`` (an integer, square patterns) or a sequence of sizes, as a tuple of ints."""
    if isinstance(pattern_shape, bool | np.bool_):
        raise AxisError(f"pattern_shape must be N or (H, W), got the boolean {pattern_shape!r}")
    if isinstance(pattern_shape, int | np.integer):
        return (int(pattern_shape), int(pattern_shape))
    if isinstance(pattern_shape, Sequence) and all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) for n in pattern_shape
    ):
        return tuple(int(n) for n in pattern_shape)
    raise AxisError(f"pattern_shape must be N or a sequence of sizes (H, W), got {pattern_shape!r}")
