"""Deriving the physics scale and its record, and the amplitude normalization.

SPEC §1. The physics scale ``s = sqrt(nphotons / mean per-pattern sum(x**2))``
maps normalized amplitudes to photon-count amplitudes (counts are
``(s * x)**2``). The amplitude normalization factor
``sqrt((N/2)**2 / mean per-pattern sum(x_raw**2))`` is the same computation
with the target ``(N/2)**2`` in place of ``nphotons``; after it,
``s == sqrt(nphotons) / (N/2)`` (the closed form TF training uses).

The formulas live in `physscale.core.scale` (``scale_from_totals``,
``normalization_target``, ``closed_form_intensity_scale``); the totals come
from an [`IntensityAccumulator`][physscale.IntensityAccumulator]. This module puts them
together and builds the [`ScaleRecord`][physscale.ScaleRecord] of a scale.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from physscale.accumulator import IntensityAccumulator
from physscale.core.checks import DEFAULT_SPATIAL_DIMS, as_float_tensor, positive_finite
from physscale.core.kernels.sums import Domain
from physscale.core.loss_inputs import intensities_message, looks_like_intensities, quantum_parts
from physscale.core.nphotons import NphotonsResolution, NphotonsSource, resolve_nphotons
from physscale.core.scale import (
    closed_form_intensity_scale,
    normalization_target,
    pattern_sizes,
    scale_from_totals,
)
from physscale.diagnostics import MAX_LISTED_FRAMES, ExcludedFrames, OutlierRule
from physscale.errors import EmptyInputError, RecordError, UnitsWarning
from physscale.record import DataSources, ScaleRecord

__all__ = [
    "amplitude_normalization_factor",
    "closed_form_scale_record",
    "derive_intensity_scale",
    "derive_scale_record",
    "normalize_amplitudes",
    "record_from_accumulator",
]

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def accumulate(
    x: Any,
    spatial_dims: Sequence[int],
    layout: str | None,
    domain: Domain,
    mask: Any,
    keep_pattern_totals: bool = False,
) -> IntensityAccumulator:
    """One accumulator over all of ``x``; an error if ``x`` holds no pattern."""
    acc = IntensityAccumulator(
        spatial_dims, domain, layout=layout, keep_pattern_totals=keep_pattern_totals
    ).update_named(x, mask, "x")
    if acc.n_patterns == 0:
        raise EmptyInputError(f"x is empty (shape {tuple(x.shape)}); there are no patterns")
    _warn_if_intensities(x, acc)
    return acc


#: How many leading values the intensity rule samples (as the units guard does).
_INTENSITY_SAMPLE = 4096


def _warn_if_intensities(x: Any, acc: IntensityAccumulator) -> None:
    """UnitsWarning when amplitudes look like intensities (docs/concepts.md, Units).

    The rule of the loss (`physscale.core.loss_inputs.looks_like_intensities`)
    on the leading values; never on raw counts (the units warning says that)
    nor on PtychoPINN-normalized amplitudes (mean per-pattern ``sum(x**2) ==
    (N/2)**2``).
    """
    if acc.domain != "amplitude" or acc.integer_like or acc.pattern_shape is None:
        return
    target = normalization_target(acc.pattern_shape)
    if abs(acc.mean_intensity - target) <= 1e-6 * target:
        return
    if not isinstance(x, torch.Tensor | np.ndarray) or x.ndim == 0:
        return
    # Leading patterns only: the reshape below then copies at most that slice.
    per_item = max(1, int(np.prod(x.shape[1:])))
    lead = x[: -(-_INTENSITY_SAMPLE // per_item)]
    if isinstance(lead, np.ndarray):
        # A float64 copy: any strides, byte order or read-only memory.
        a = torch.from_numpy(np.asarray(lead).reshape(-1)[:_INTENSITY_SAMPLE].astype(np.float64))
        size = lead.dtype.itemsize if lead.dtype.kind == "f" else 8
        dtype = {2: torch.float16, 4: torch.float32}.get(size, torch.float64)
    else:
        a = lead.detach().reshape(-1)[:_INTENSITY_SAMPLE].to("cpu", torch.float64)
        dtype = lead.dtype
    a = a[torch.isfinite(a) & (a >= 0)]  # masked sentinels are no data
    if a.numel() == 0:
        return
    if looks_like_intensities(torch.stack(quantum_parts(a, dtype)).tolist(), dtype):
        warnings.warn(intensities_message("x"), UnitsWarning, stacklevel=4)


def _result_device(x: Any) -> torch.device:
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    return torch.device("cpu") if device.type == "mps" else device


def derive_intensity_scale(
    x: Any,
    nphotons: Any,
    *,
    spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
    layout: str | None = None,
    domain: Domain = "amplitude",
    mask: Any = None,
) -> torch.Tensor:
    """Derive the dataset-level intensity scale ``sqrt(nphotons / mean per-pattern sum)``.

    Args:
        x: normalized diffraction amplitudes (``domain="amplitude"``) or
            normalized intensities (``domain="intensity"``); ``torch.Tensor``
            (any device) or ``numpy.ndarray`` of a real floating dtype,
            values >= 0. Any shape: the spatial axes form one pattern and
            every other axis counts patterns. A ``numpy.ma.MaskedArray``'s
            masked entries are excluded, as if given in ``mask``.
        nphotons: expected photons per pattern over the dataset, a positive
            finite real number. With a mask: the expected photons in the
            *unmasked* pixels of a pattern (see ``mask``).
        spatial_dims: the axes of one pattern; default the last two (NCHW).
        layout: ``"NCHW"`` (``spatial_dims=(-2, -1)``) or ``"NHWC"``
            (``spatial_dims=(-3, -2)``, the TensorFlow layout). Never guessed:
            with neither ``spatial_dims`` nor ``layout`` given, data that look
            channels-last (rank >= 3, a last axis of 1 to 4 entries after two
            axes of at least 8) raise [`AmbiguousLayoutError`][physscale.AmbiguousLayoutError]
            naming what to pass, instead of a scale over the wrong axes.
            Explicit axes are always trusted.
        domain: ``"amplitude"`` sums ``x**2``; ``"intensity"`` sums ``x``.
        mask: optional boolean valid-pixel mask (True = use the pixel): the
            pattern's shape (e.g. ``(H, W)``), applied along the spatial axes
            in either layout, or any shape that broadcasts to ``x``. Excluded
            pixels add nothing to a pattern's sum, so nphotons is assigned to
            the unmasked pixels only: masking a bright region (a beamstop)
            raises the scale. A [`MaskWarning`][physscale.MaskWarning] says so when
            the mask removes more than half of the intensity;
            [`physscale.derive_scale_record`][physscale.derive_scale_record] records the masked
            fractions
            of pixels and intensity.

    Returns:
        0-d float64 tensor on ``x``'s device (CPU for numpy input or devices
        without float64): the amplitude factor ``s``; counts are ``(s * x)**2``.
        It is `physscale.core.scale.scale_from_totals` of the exact
        float64 total the [`IntensityAccumulator`][physscale.IntensityAccumulator] sums.

    Raises:
        PhysscaleError: a subclass that says what was wrong: DtypeError,
            EmptyInputError, NonFiniteError, NegativeValueError,
            ZeroIntensityError, AxisError (AmbiguousLayoutError among them),
            MaskError, NphotonsError or OptionError.

    Example:
        >>> import torch, physscale
        >>> x = torch.tensor([[[[1.0, 2.0], [2.0, 4.0]]], [[[1.0, 2.0], [2.0, 4.0]]]])
        >>> float(physscale.derive_intensity_scale(x, 100.0))  # sum x**2 = 25 per pattern
        2.0
    """
    n = positive_finite(nphotons, "nphotons")
    acc = accumulate(x, spatial_dims, layout, domain, mask)
    return acc.intensity_scale(n).to(_result_device(x))


def amplitude_normalization_factor(
    x_raw: Any,
    *,
    spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
    layout: str | None = None,
    mask: Any = None,
) -> torch.Tensor:
    """The factor ``sqrt((N/2)**2 / mean per-pattern sum(x_raw**2))``.

    Multiplying raw amplitudes (square roots of counts) by it gives the
    normalized amplitudes a network trains on: their mean per-pattern
    ``sum(x**2)`` is ``(N/2)**2`` (see `normalization_target`).

    Args:
        x_raw: raw amplitudes, same conventions as
            [`derive_intensity_scale`][physscale.derive.derive_intensity_scale].

    Returns:
        0-d float64 tensor on ``x_raw``'s device (CPU for numpy input).

    Examples:
        >>> import numpy as np, physscale as ps
        >>> ps.amplitude_normalization_factor(np.full((3, 8, 8), 2.0))
        tensor(0.2500, dtype=torch.float64)
    """
    acc = accumulate(x_raw, spatial_dims, layout, "amplitude", mask)
    assert acc.pattern_shape is not None  # update() saw at least one pattern
    target = normalization_target(acc.pattern_shape)
    factor = scale_from_totals(acc.total_intensity, acc.n_patterns, target)
    return torch.tensor(factor, dtype=torch.float64, device=_result_device(x_raw))


def normalize_amplitudes(
    x_raw: ArrayT,
    *,
    spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
    layout: str | None = None,
    mask: Any = None,
) -> tuple[ArrayT, float]:
    """Normalize raw amplitudes the PtychoPINN way; return ``(x, factor)``.

    ``x = x_raw * factor`` with ``factor`` from
    [`amplitude_normalization_factor`][physscale.derive.amplitude_normalization_factor], in
    ``x_raw``'s dtype and array
    type (numpy in, numpy out). Returns the factor as a float too, so the raw
    scale can be recovered (``x_raw = x / factor``).

    Examples:
        >>> import numpy as np, physscale as ps
        >>> x_raw = np.full((3, 8, 8), 2.0)
        >>> x, f = ps.normalize_amplitudes(x_raw)   # mean per-pattern sum(x**2) becomes (8/2)**2
        >>> f, float((x**2).sum(axis=(-2, -1)).mean())
        (0.25, 16.0)
    """
    factor = float(
        amplitude_normalization_factor(x_raw, spatial_dims=spatial_dims, layout=layout, mask=mask)
    )
    if isinstance(x_raw, np.ndarray):
        # Multiply in float32 at least: a factor rounded to float16 would bias the
        # normalization (and every scale derived from it) by up to 5e-4.
        wide = np.promote_types(x_raw.dtype, np.float32)
        return (x_raw.astype(wide, copy=False) * wide.type(factor)).astype(x_raw.dtype), factor
    t = as_float_tensor(x_raw, "x_raw")
    return t * factor, factor


def derive_scale_record(
    x_or_accumulator: Any,
    *,
    nphotons: Any = None,
    metadata: Any = None,
    config: Any = None,
    default: Any = None,
    data_source: str | None = None,
    spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
    layout: str | None = None,
    domain: Domain = "amplitude",
    mask: Any = None,
    diagnostics: bool = False,
    exclude: Literal["outliers"] | Sequence[int] | None = None,
    outlier_rule: OutlierRule | None = None,
) -> ScaleRecord:
    """Resolve nphotons, derive the scale, and return its
    [`ScaleRecord`][physscale.derive.ScaleRecord].

    Args:
        x_or_accumulator: normalized data (as for
            [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale]) or an
            [`IntensityAccumulator`][physscale.derive.IntensityAccumulator] that has seen the data.
        nphotons: the explicit value, as for
            [`physscale.resolve_nphotons`][physscale.resolve_nphotons].
        metadata: as for [`physscale.resolve_nphotons`][physscale.resolve_nphotons].
        config: as for [`physscale.resolve_nphotons`][physscale.resolve_nphotons].
        default: as for [`physscale.resolve_nphotons`][physscale.resolve_nphotons].
        data_source: free text recorded with the scale (a path, a name).
        spatial_dims: as for
            [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale]; this
            and the next three are not allowed with an accumulator, which
            fixed them already.
        layout: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        domain: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        mask: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        diagnostics: for array input, keep every pattern's total and put
            their spread and the flagged frames in ``record.pattern_stats``.
            An accumulator made with ``keep_pattern_totals=True`` always gives them.
        exclude: derive *without* some frames, an explicit choice that the
            record states in ``excluded_frames``: ``"outliers"`` (the frames
            ``outlier_rule`` flags; nothing is excluded if none is) or a
            sequence of pattern indices. Needs per-pattern totals (implied
            for array input). None (default): every pattern counts.
        outlier_rule: the `OutlierRule` for the
            statistics and for ``exclude="outliers"`` (default: its defaults).

    Examples:
        >>> import torch, physscale as ps
        >>> x = torch.full((4, 1, 8, 8), 0.5)   # 4 patterns, sum(x**2) = 16 each
        >>> record = ps.derive_scale_record(x, nphotons=1600.0, layout='NCHW')
        >>> record.intensity_scale, record.nphotons_source
        (10.0, 'explicit')
    """
    resolution = resolve_nphotons(metadata, config, explicit=nphotons, default=default)
    if isinstance(x_or_accumulator, IntensityAccumulator):
        acc = x_or_accumulator
        if mask is not None or layout is not None or spatial_dims is not DEFAULT_SPATIAL_DIMS \
                or domain != "amplitude":  # fmt: skip
            raise RecordError(
                "spatial_dims, layout, domain and mask belong to the accumulator; "
                "do not pass them with one"
            )
    else:
        keep = diagnostics or exclude is not None
        acc = accumulate(x_or_accumulator, spatial_dims, layout, domain, mask, keep)
    return record_from_accumulator(
        acc,
        resolution,
        data_source=data_source,
        exclude=exclude,
        outlier_rule=outlier_rule,
    )


def record_from_accumulator(
    acc: IntensityAccumulator,
    resolution: NphotonsResolution,
    *,
    data_source: str | None = None,
    exclude: Literal["outliers"] | Sequence[int] | None = None,
    outlier_rule: OutlierRule | None = None,
    sources: DataSources | None = None,
) -> ScaleRecord:
    """The derived record of an accumulator's data, for an nphotons already resolved.

    What [`derive_scale_record`][physscale.derive.derive_scale_record] does after resolving
    nphotons (and
    [`physscale.io.derive_files`][physscale.io.derive_files] after resolving it per file).

    Args:
        acc: the accumulator that has seen the data.
        resolution: nphotons, its source and the candidates on offer.
        data_source: free text recorded with the scale (a path, a name).
        exclude: as for [`derive_scale_record`][physscale.derive.derive_scale_record].
        outlier_rule: as for [`derive_scale_record`][physscale.derive.derive_scale_record].
        sources: the data files, for the record's ``sources``.

    Raises:
        PhysscaleError: no patterns, zero intensity, bad frame indices.
    """
    if data_source is not None and not isinstance(data_source, str):
        raise RecordError(f"data_source must be text or None, got {type(data_source).__name__}")
    stats = acc.pattern_stats(outlier_rule) if acc.keep_pattern_totals else None
    excluded = None
    if exclude is not None:
        acc, excluded = _exclude(acc, exclude, outlier_rule, resolution.value)
    scale = float(acc.intensity_scale(resolution.value))
    return ScaleRecord(
        intensity_scale=scale,
        nphotons=resolution.value,
        nphotons_source=resolution.source,
        nphotons_candidates=resolution.candidates,
        method="derived",
        domain=acc.domain,
        n_patterns=acc.n_patterns,
        pattern_shape=acc.pattern_shape,
        spatial_dims=acc.spatial_dims,
        masked=acc.masked,
        masked_pixel_fraction=acc.masked_pixel_fraction,
        masked_intensity_fraction=acc.masked_intensity_fraction,
        mean_intensity=acc.mean_intensity,
        data_source=data_source,
        pattern_stats=stats,
        excluded_frames=excluded,
        sources=sources,
    )


def _exclude(
    acc: IntensityAccumulator,
    exclude: Literal["outliers"] | Sequence[int],
    rule: OutlierRule | None,
    nphotons: float,
) -> tuple[IntensityAccumulator, ExcludedFrames | None]:
    """The accumulator without the chosen frames, and the record of what was excluded."""
    if isinstance(exclude, str):
        if exclude != "outliers":
            raise RecordError(
                f"exclude must be 'outliers' or a sequence of frame indices, got {exclude!r}"
            )
        frames = acc.outlier_frames(rule)
        reason: Literal["outliers", "explicit"] = "outliers"
    else:
        frames = [int(i) for i in exclude]
        reason, rule = "explicit", None
    if not frames:
        return acc, None
    kept = acc.excluding(frames)
    ratio = kept.scale_for(nphotons) / acc.scale_for(nphotons)
    ordered = sorted(frames)
    return kept, ExcludedFrames(
        reason=reason,
        rule=(rule or OutlierRule()) if reason == "outliers" else None,
        count=len(frames),
        frames=ordered[:MAX_LISTED_FRAMES],
        frames_truncated=len(frames) > MAX_LISTED_FRAMES,
        n_patterns_before=acc.n_patterns,
        scale_ratio=ratio,
    )


def closed_form_scale_record(
    nphotons: Any,
    pattern_shape: int | Sequence[int],
    *,
    nphotons_source: NphotonsSource = "explicit",
    data_source: str | None = None,
) -> ScaleRecord:
    """The record of the closed-form scale ``sqrt(nphotons) / (N/2)`` (TF training).

    Examples:
        >>> import physscale as ps
        >>> record = ps.closed_form_scale_record(1e6, (64, 64))
        >>> record.intensity_scale, record.method
        (31.25, 'closed_form')
    """
    shape = pattern_sizes(pattern_shape)
    n = positive_finite(nphotons, "nphotons")
    return ScaleRecord(
        intensity_scale=closed_form_intensity_scale(n, shape),
        nphotons=n,
        nphotons_source=nphotons_source,
        method="closed_form",
        pattern_shape=shape,
        data_source=data_source,
    )
