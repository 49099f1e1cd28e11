"""Counts and gains: raw detector counts in, and other codes' conventions translated.

Two things live here:

- [`normalize_counts`][physscale.counts.normalize_counts]: data that arrive as detector counts
(pty-chi, most
  beamline files) become PtychoPINN-normalized amplitudes
  ``x = sqrt(counts) * factor`` (mean per-pattern ``sum(x**2) == (N/2)**2``),
  with a [`ScaleRecord`][physscale.ScaleRecord] whose scale maps them back to the
  counts exactly: ``(s * x)**2 == counts`` to rounding. Its ``nphotons`` is
  the measured mean counts per pattern, ``nphotons_source == "measured"``.
- [`scale_from_gain`][physscale.counts.scale_from_gain] /
[`gain_from_scale`][physscale.counts.gain_from_scale]: a detector gain in the
  model ``y = gain * Poisson(x / gain)`` (deepinv's ``PoissonNoise(gain)``
  and any code written that way) is the physscale scale ``s = gain ** -0.5``.

The count-native way to use the likelihood needs nothing from here: with
``scale=1`` the rate and the observations of
[`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll]
are already photon counts (``domain="intensity"``: ``lam = pred``,
``k = obs``); see ``docs/poisson-nll.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from physscale.accumulator import IntensityAccumulator
from physscale.core.checks import (
    DEFAULT_SPATIAL_DIMS,
    as_mask,
    check_materializable,
    positive_real,
    real_number,
    scalar_scale,
    spatial_axes,
)
from physscale.core.kernels.sums import WHOLE_CHANCE, whole_tolerance
from physscale.core.scale import normalization_target
from physscale.errors import (
    DtypeError,
    EmptyInputError,
    MaskError,
    MaskWarning,
    NegativeValueError,
    NonFiniteError,
    NotCountsError,
)
from physscale.record import ScaleRecord

__all__ = [
    "default_invalid_values",
    "gain_from_scale",
    "infer_gain",
    "invalid_pixels",
    "normalize_counts",
    "scale_from_gain",
]

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def _counts_tensor(counts: object) -> torch.Tensor:
    """``counts`` as a detached float64 tensor (on its device; CPU for numpy and MPS).

    Integer dtypes are the usual case here (raw detector frames); they are
    converted exactly up to 2**53 counts per pixel.
    """
    if isinstance(counts, np.ndarray):
        if counts.dtype.kind not in "iuf" or (
            counts.dtype.kind == "f" and counts.dtype.itemsize not in (2, 4, 8)
        ):
            raise DtypeError(_counts_dtype_message(str(counts.dtype)))
        check_materializable(counts, "counts")  # before asarray copies a broadcast view
        return torch.from_numpy(np.asarray(counts, dtype=np.float64))
    if isinstance(counts, torch.Tensor):
        if counts.dtype == torch.bool or counts.is_complex():
            raise DtypeError(_counts_dtype_message(str(counts.dtype)))
        if counts.layout != torch.strided:
            raise DtypeError(
                f"counts must be a dense tensor, got layout {counts.layout}; convert it "
                f"with counts.to_dense()"
            )
        check_materializable(counts, "counts")
        t = counts.detach()
        if t.device.type == "mps":  # no float64 there; counts need it to stay exact
            t = t.cpu()
        return t.to(torch.float64)
    raise DtypeError(
        f"counts must be a torch.Tensor or numpy.ndarray of photon counts, got "
        f"{type(counts).__name__}"
    )


def _counts_dtype_message(dtype: str) -> str:
    return (
        f"counts must hold real photon counts (an integer or floating dtype), got dtype "
        f"{dtype}; a complex or boolean array is not a diffraction measurement"
    )


def _output_dtype(counts: Any) -> torch.dtype:
    """float64 for integer and float64 counts; float32 for narrower floats."""
    if isinstance(counts, np.ndarray):
        if counts.dtype.kind == "f" and counts.dtype.itemsize < 8:
            return torch.float32
        return torch.float64
    if counts.dtype.is_floating_point and counts.dtype != torch.float64:
        return torch.float32
    return torch.float64


def default_invalid_values(dtype: Any) -> tuple[int, ...]:
    """The marker values an array of ``dtype`` holds at invalid pixels by default.

    For integer dtypes the maximum (Eiger: ``2**32-1`` in uint32 at gaps and
    bad pixels, ``65535`` in uint16 at gaps and saturation, SPEC section 6);
    none for floating dtypes (their bad pixels come with a mask).
    """
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
            return ()
        return (int(torch.iinfo(dtype).max),)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        return (int(np.iinfo(dt).max),)
    return ()


def invalid_pixels(
    counts: ArrayT,
    invalid_values: Sequence[float] | None = None,
    max_valid: float | None = None,
) -> ArrayT | None:
    """Where ``counts`` holds marker values, not photons (SPEC section 6).

    Args:
        counts: integer or float counts (numpy array or tensor).
        invalid_values: values that mark invalid pixels; None means
            `default_invalid_values` (the integer dtype's maximum),
            ``()`` means none.
        max_valid: counts above this are not photons (NeXus
            ``saturation_value`` / ``countrate_correction_count_cutoff``).

    Returns:
        A boolean array of ``counts``' type and shape (True = invalid), or
        None when no test applies.
    """
    values = default_invalid_values(counts.dtype) if invalid_values is None else invalid_values
    out: Any = None
    for v in values:
        hit = counts == v
        out = hit if out is None else out | hit
    if max_valid is not None:
        above = counts > max_valid
        out = above if out is None else out | above
    result: ArrayT | None = out
    return result


def _describe_markers(invalid_values: Sequence[float], max_valid: float | None) -> str:
    parts = [
        f"the value {v:g}" if isinstance(v, float) else f"the value {v}" for v in invalid_values
    ]
    if max_valid is not None:
        parts.append(f"counts above {max_valid:g}")
    return " or ".join(parts) or "no marker"


def normalize_counts(
    counts: ArrayT,
    *,
    spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
    layout: str | None = None,
    mask: Any = None,
    invalid_values: Sequence[float] | None = None,
    max_valid: float | None = None,
    data_source: str | None = None,
) -> tuple[ArrayT, ScaleRecord]:
    """Raw detector counts to PtychoPINN-normalized amplitudes and their exact scale.

    ``x = sqrt(counts) * factor`` at valid pixels and ``0`` at excluded ones,
    with ``factor`` chosen so that the mean per-pattern ``sum(x**2)`` is
    ``(N/2)**2`` (``H * W / 4`` for ``H x W`` patterns; see
    `physscale.normalization_target`). The record's ``intensity_scale``
    ``s`` maps ``x`` back: ``(s * x)**2 == counts`` at every valid pixel to the
    rounding of the output dtype. Its ``nphotons`` is the measured mean valid
    counts per pattern (``nphotons_source == "measured"``), so ``s`` is also
    exactly the scale [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale]
    derives from
    ``x`` with the same mask for that ``nphotons`` (``method="derived"``).

    Invalid pixels are never photons (SPEC section 6): for integer counts the
    dtype's maximum is a detector marker (Eiger: ``2**32-1`` at gaps and bad
    pixels, ``65535`` in uint16 at gaps and saturation) and is excluded exactly
    like a masked pixel; markers in pixels the mask calls valid are counted
    and warned about ([`physscale.MaskWarning`][physscale.MaskWarning], naming how many).

    Args:
        counts: photon counts, ``torch.Tensor`` (any device) or
            ``numpy.ndarray`` of an integer or real floating dtype, values
            >= 0 and finite at valid pixels. Any shape: the spatial axes form
            one pattern and every other axis counts patterns.
        spatial_dims: the axes of one pattern; default the last two (NCHW).
        layout: ``"NCHW"`` or ``"NHWC"``, a shortcut for ``spatial_dims``.
            Never guessed.
        mask: optional boolean valid-pixel mask broadcastable to ``counts``
            (True = valid pixel; False = excluded, e.g. a beamstop, a gap or
            a dead pixel), per pattern or per frame. A NeXus/Eiger
            ``pixel_mask`` is nonzero = bad: pass ``mask=(pixel_mask == 0)``
            (`physscale.core.checks.valid_from_pixel_mask`). Excluded
            pixels add nothing to the statistics and may hold any sentinel
            (negative, NaN, inf). A ``numpy.ma.MaskedArray`` brings its own
            mask (then pass no ``mask``). A mask that excludes most pixels is
            the inverted-mask signature (warned), one that excludes all is refused.
        invalid_values: marker values that are never photons; default the
            integer dtype's maximum (none for floats); ``()`` for none.
        max_valid: counts above this are invalid (NeXus ``saturation_value``
            or ``countrate_correction_count_cutoff``).
        data_source: free text stored in the record (a path, a scan name).

    Returns:
        ``(x, record)``. ``x`` has ``counts``' shape and array type (numpy in,
        numpy out; torch in, torch out on the same device), dtype float64 for
        integer and float64 counts (exact round trip), float32 for float32,
        float16 and bfloat16 counts; 0 at every excluded pixel. ``record`` is a
        [`ScaleRecord`][physscale.ScaleRecord] with ``method="derived"``,
        ``nphotons_source="measured"``, ``mean_intensity`` the mean
        per-pattern ``sum(x**2)`` of the returned ``x`` (``(N/2)**2`` to
        rounding), ``intensity_scale == sqrt(nphotons / mean_intensity)`` and,
        with a mask or markers, the masked pixel and intensity fractions
        (invalid pixels count as masked; their marker values are never
        intensity).

    Raises:
        DtypeError: complex or boolean counts, or not an array.
        EmptyInputError: no patterns, or patterns without pixels.
        NonFiniteError, NegativeValueError: NaN, inf or negative counts in a
            valid pixel.
        ZeroIntensityError: every valid pixel counted zero photons.
        NotCountsError: floating-point data that are not whole counts (a
            valid pixel off a whole number by more than the rounding of its
            dtype): their mean is not a measured nphotons.
        MaskError: a mask that is not boolean, or excludes every pixel, or
            keeps only zero-count pixels while the excluded ones hold photons.
        AxisError, OptionError: bad axes or layout.

    Example:
        >>> import numpy as np, physscale as ps
        >>> counts = np.random.default_rng(0).poisson(50.0, size=(8, 1, 16, 16))
        >>> x, record = ps.normalize_counts(counts)
        >>> bool(np.allclose((record.intensity_scale * x) ** 2, counts, rtol=1e-12))
        True
    """
    if isinstance(counts, np.ma.MaskedArray):
        # Honour the array's own mask (np.asarray would silently drop it).
        if mask is not None:
            raise MaskError(
                "counts is a numpy MaskedArray and mask= was given too; pass the valid-pixel "
                "mask one way: either mask= with plain data, or the MaskedArray alone"
            )
        mask = ~np.ma.getmaskarray(counts)
        counts = np.ma.getdata(counts)
    c = _counts_tensor(counts)
    axes = spatial_axes(c.ndim, spatial_dims, layout)
    valid = None if mask is None else as_mask(mask, c.shape, c.device, axes)
    if invalid_values is not None and not isinstance(invalid_values, Sequence | np.ndarray):
        raise MaskError(
            f"invalid_values must be a sequence of marker values such as (65535,), got "
            f"{type(invalid_values).__name__}"
        )
    markers = tuple(
        default_invalid_values(counts.dtype) if invalid_values is None else invalid_values
    )
    limit = None if max_valid is None else real_number(max_valid, "max_valid", "a number of counts")
    invalid_any = invalid_pixels(counts, markers, limit)
    if invalid_any is not None:
        invalid = (
            torch.from_numpy(np.asarray(invalid_any))
            if isinstance(invalid_any, np.ndarray)
            else invalid_any
        ).to(c.device)
        if bool(invalid.any()):
            unmasked = invalid if valid is None else invalid & valid
            n_bad = int(unmasked.sum())
            if n_bad:
                warnings.warn(
                    f"{n_bad} pixel value(s) in counts ({n_bad / invalid.numel():.3%} of all) "
                    f"are {_describe_markers(markers, limit)}, the detector's marker for "
                    f"gaps, bad or saturated pixels, in pixels the mask calls valid: they are "
                    f"excluded exactly like masked pixels and never counted as photons (pass "
                    f"invalid_values= to name other markers, or a mask that excludes them)",
                    MaskWarning,
                    stacklevel=2,
                )
            valid = ~invalid if valid is None else valid & ~invalid
            c = c.masked_fill(invalid, 0.0)
    # The statistics of the counts themselves (intensity domain: sum of counts),
    # through the core, which also refuses NaN, inf and negative counts.
    acc = IntensityAccumulator(spatial_dims, "intensity", layout=layout)
    acc.update_named(c, valid, "counts")
    if acc.n_patterns == 0:
        raise EmptyInputError(f"counts is empty (shape {tuple(c.shape)}); there are no patterns")
    assert acc.pattern_shape is not None
    _refuse_non_whole(c, valid, _input_dtype(counts))
    acc.check_mask_coverage(
        "the mask (with the invalid pixels)" if invalid_any is not None else "the mask",
        refuse=True,
    )
    measured = acc.mean_intensity  # mean counts per pattern (valid pixels)
    factor = acc.scale_for(normalization_target(acc.pattern_shape))
    # Excluded pixels passed no check and are not data: they become 0, so that no
    # marker or sentinel survives into the normalized output (SPEC section 6).
    x64 = torch.sqrt(c).mul_(factor)
    if valid is not None:
        x64 = x64.masked_fill_(~valid, 0.0)
    x_t = x64.to(_output_dtype(counts))
    # The scale of the returned x (in its own dtype), derived by the core.
    acc_x = IntensityAccumulator(spatial_dims, "amplitude", layout=layout)
    acc_x.update_named(x_t, valid, "x")
    # No masked-intensity warning: nphotons is measured on the valid pixels
    # themselves, so the scale maps x back to the counts whatever the mask removed.
    scale = acc_x.scale_for(measured)
    record = ScaleRecord(
        intensity_scale=scale,
        nphotons=measured,
        nphotons_source="measured",
        nphotons_candidates={"measured": measured},
        method="derived",
        domain="amplitude",
        n_patterns=acc_x.n_patterns,
        pattern_shape=acc_x.pattern_shape,
        spatial_dims=acc_x.spatial_dims,
        masked=acc_x.masked,
        masked_pixel_fraction=acc.masked_pixel_fraction,
        masked_intensity_fraction=acc.masked_intensity_fraction,
        mean_intensity=acc_x.mean_intensity,
        data_source=data_source,
    )
    if isinstance(counts, np.ndarray):
        return x_t.numpy(), record
    return x_t.to(counts.device), record


def _input_dtype(data: Any) -> torch.dtype | None:
    """The floating dtype whose rounding ``data`` carry, or None for integer data (exact)."""
    if isinstance(data, np.ndarray):
        if data.dtype.kind != "f":
            return None
        return {2: torch.float16, 4: torch.float32}.get(data.dtype.itemsize, torch.float64)
    return data.dtype if data.is_floating_point() else None


def _refuse_non_whole(
    c: torch.Tensor, valid: torch.Tensor | None, dtype: torch.dtype | None
) -> None:
    """Refuse data that are not whole photon counts (float64 ``c``; ``valid``: kept pixels).

    The units guard's tolerance (``kernels.sums``): a value is whole within
    ``1e-4 + whole_tolerance(dtype) * value``; and a nonzero count is at least
    1, so a value in ``(0, 0.5)`` is not one. Where the dtype cannot tell
    integers apart (float32 above ~1e6) every value passes: the data give no
    evidence against counts. When the values are a gain times whole counts,
    the message gives the gain ([`infer_gain`][physscale.counts.infer_gain]).

    Raises:
        NotCountsError: a kept value is not a whole count.
    """
    if dtype is None:  # integer data: whole by construction
        return
    v = c if valid is None else c[valid]
    off = (v - v.round()).abs_().gt(v.mul(whole_tolerance(dtype)).add_(1e-4))
    off |= (v > 0.0) & (v < 0.5)
    n_off = int(off.sum())
    if n_off == 0:
        return
    example = float(v[off][0])
    try:
        g = _gain_of(v.detach().cpu().numpy(), whole_tolerance(dtype))
        found = (
            f"They are whole multiples of {g!r}, a gain times counts (y = g * Poisson(x / g), "
            f"as PtyRAD's noise model stores them): pass counts / {g!r} "
            f"(ps.infer_gain(counts) finds it)"
        )
    except NotCountsError:
        found = (
            "If they are normalized intensities or amplitudes, derive their scale with "
            "ps.derive_intensity_scale(x, nphotons=..., domain='intensity' or 'amplitude') "
            "and the nphotons you know; if they are a gain times counts, divide by the gain "
            "(ps.infer_gain)"
        )
    raise NotCountsError(
        f"counts are not whole photon counts: {n_off} of {v.numel()} valid value(s) are "
        f"off a whole number (e.g. {example!r}), so their mean is no measured nphotons. "
        f"{found}"
    )


def _gain_values(y: object) -> tuple[np.ndarray, float]:
    """``y``'s values as a flat float64 numpy array, and the relative rounding of its dtype."""
    if isinstance(y, torch.Tensor):
        if y.dtype == torch.bool or y.is_complex() or y.layout != torch.strided:
            raise DtypeError(_counts_dtype_message(str(y.dtype)))
        values = y.detach().cpu().to(torch.float64).numpy().reshape(-1)
    elif isinstance(y, np.ndarray):
        if y.dtype.kind not in "iuf":
            raise DtypeError(_counts_dtype_message(str(y.dtype)))
        values = np.asarray(y, dtype=np.float64).reshape(-1)
    else:
        raise DtypeError(
            f"y must be a torch.Tensor or numpy.ndarray of gain * counts, got {type(y).__name__}"
        )
    dtype = _input_dtype(y) or torch.float64
    return values, whole_tolerance(dtype)


def _symmetric_gcd(a: float, b: float, tol: float) -> float:
    """The largest ``g`` of which ``a`` and ``b`` are whole multiples within ``tol``
    (Euclid's algorithm on floats, with the nearest-multiple remainder)."""
    a, b = max(a, b), min(a, b)
    for _ in range(200):  # converges in O(log) steps; the bound only guards floats
        if b <= tol:
            break
        a, b = b, abs(a - round(a / b) * b)
    return a


def infer_gain(y: ArrayT) -> float:
    """The gain ``g`` of data that are ``g`` times whole photon counts, recovered exactly.

    Some codes store ``y = g * Poisson(x / g)`` and drop ``g`` (PtyRAD's noise
    model, deepinv's ``PoissonNoise(gain)``): such data are whole counts only
    after dividing by ``g``. This finds the quantum: the largest ``g`` of which
    every nonzero value is a whole multiple, to the rounding of ``y``'s dtype
    (a few float64 roundings for float64 data: ``g`` comes back to about
    1e-15 relative; float32 data to about 1e-7). Then ``y / g`` are the counts
    (``physscale.normalize_counts(y / g)``) and ``physscale.scale_from_gain(g)``
    the scale of ``y`` in the count-native loss.

    The quantum must be evidence, not an accident (the rule of the units
    guard, ``kernels.sums.WHOLE_CHANCE``): the chance that values with no
    quantum all land that close to multiples of the fitted ``g`` must be
    below one in a million. Data with one distinct nonzero value, or values
    too large in units of ``g`` for the dtype to tell multiples apart, have
    none.

    Args:
        y: ``torch.Tensor`` (any device) or ``numpy.ndarray`` of an integer or
            real floating dtype, values >= 0 and finite; zeros are allowed
            (they are multiples of any gain). Any shape.

    Returns:
        ``g`` as a float (1.0 for plain integer counts with a 1 among them).

    Raises:
        DtypeError: complex or boolean data, or not an array.
        NonFiniteError, NegativeValueError: NaN, inf or negative values.
        NotCountsError: no quantum: the values are not whole multiples of one
            gain (normalized or continuous data), or there is no evidence of one.

    Example:
        >>> import numpy as np, physscale as ps
        >>> counts = np.random.default_rng(0).poisson(5.0, size=(4, 16, 16))
        >>> y = 0.37 * counts  # g * Poisson: the gain dropped
        >>> g = ps.infer_gain(y)
        >>> abs(g / 0.37 - 1) < 1e-12
        True
        >>> bool(np.array_equal(np.rint(y / g), counts))
        True
    """
    return _gain_of(*_gain_values(y))


def _gain_of(values: np.ndarray, rel: float) -> float:
    """[`infer_gain`][physscale.counts.infer_gain] of flat float64 ``values`` with the relative
    rounding ``rel``."""
    if values.size == 0:
        raise EmptyInputError("y is empty; there are no values to find a gain in")
    if not np.isfinite(values).all():
        raise NonFiniteError(f"y holds {int((~np.isfinite(values)).sum())} NaN or infinite values")
    if float(values.min()) < 0.0:
        raise NegativeValueError(
            f"y must be >= 0 (gain * photon counts), got a minimum of {float(values.min())!r}"
        )
    u = np.unique(values[values > 0.0])
    if u.size == 0:
        raise NotCountsError("y is zero everywhere: every gain fits, so none can be inferred")
    # A first guess: the smallest value or step. Rounded multiples of it, then a least-squares
    # fit over the distinct values, which the rounding of y cannot bias.
    g = float(u[0]) if u.size == 1 else min(float(u[0]), float(np.diff(u).min()))
    tol = rel * float(u[-1])
    within = False
    for _ in range(8):
        k = np.rint(u / g)
        if k.min() >= 1.0:
            g = float(np.dot(u, k) / np.dot(k, k))
            k = np.rint(u / g)
            within = bool(k.min() >= 1.0 and np.all(np.abs(u - k * g) <= rel * u))
        if within:
            break
        # A multiple of the quantum (no step of one quantum): Euclid with the value
        # farthest from a multiple.
        worst = float(u[np.argmax(np.abs(u / g - np.rint(u / g)))])
        g = _symmetric_gcd(g, worst, tol)
        if g <= tol:
            break
    # Evidence: every distinct value past the first that sits on a multiple by chance.
    chance = float(np.log(np.minimum(2.0 * rel * k[1:], 1.0)).sum()) if within else 0.0
    if not within or chance > math.log(WHOLE_CHANCE):
        what = (
            f"one distinct nonzero value ({u[0]:.6g}), so every fraction of it fits"
            if u.size == 1
            else f"{u.size} distinct nonzero values from {u[0]:.6g} to {u[-1]:.6g} are not "
            f"whole multiples of one gain to the rounding of its dtype (relative {rel:.2g}), "
            f"or too few to tell"
        )
        raise NotCountsError(
            f"y has no quantum: it has {what}. infer_gain "
            "needs data stored as gain * whole photon counts; normalized or continuous "
            "values have no gain to recover"
        )
    return g


def scale_from_gain(gain: Any) -> float:
    """The physscale scale of a detector gain: ``s = gain ** -0.5``.

    A code that models measurements as ``y = gain * Poisson(x / gain)``
    (deepinv's ``PoissonNoise(gain)``) sees ``y / gain`` photons. physscale's
    counts are ``s**2`` times the normalized intensity, so ``s**2 = 1 / gain``:
    ``scaled_poisson_nll(x, y, scale_from_gain(gain), domain="intensity")`` is
    the Poisson likelihood of ``y`` under ``x`` in that model.

    Args:
        gain: the gain, a positive finite real number (float, 0-d tensor or array).

    Returns:
        The intensity scale ``s`` (amplitude factor) as a float.

    Raises:
        DtypeError, NonFiniteError, NegativeValueError: ``gain`` is not a
            positive finite real number.

    Examples:
        >>> import physscale as ps
        >>> ps.scale_from_gain(0.25)   # y = 0.25 * Poisson(x / 0.25)  <=>  s = 0.25 ** -0.5
        2.0
    """
    g = positive_real(gain, "gain", "a positive real number (y = gain * Poisson(x / gain))")
    return float(g**-0.5)  # finite and > 0 for every positive finite float


def gain_from_scale(scale: Any) -> float:
    """The detector gain of a physscale scale: ``gain = scale ** -2``.

    The inverse of [`scale_from_gain`][physscale.counts.scale_from_gain].

    Args:
        scale: the intensity scale ``s`` (amplitude factor): a positive finite
            float, a 0-d tensor or a [`ScaleRecord`][physscale.ScaleRecord].

    Returns:
        The gain as a float, for ``y = gain * Poisson(x / gain)``.

    Raises:
        DtypeError, NonFiniteError, NegativeValueError: not a positive finite scale.

    Examples:
        >>> import physscale as ps
        >>> ps.gain_from_scale(2.0)
        0.25
    """
    s = scalar_scale(scale, "scale")
    try:
        gain = s**-2.0
    except OverflowError:  # s below ~1e-154
        gain = math.inf
    if not math.isfinite(gain) or gain == 0.0:
        raise NonFiniteError(
            f"scale {s!r} has no finite gain (scale**-2 is outside the float range); "
            f"it is not a physical intensity scale"
        )
    return float(gain)
