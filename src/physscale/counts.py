"""Counts and gains: raw detector counts in, and other codes' conventions translated.

Two things live here:

- :func:`normalize_counts`: data that arrive as detector counts (pty-chi, most
  beamline files) become PtychoPINN-normalized amplitudes
  ``x = sqrt(counts) * factor`` (mean per-pattern ``sum(x**2) == (N/2)**2``),
  with a :class:`~physscale.ScaleRecord` whose scale maps them back to the
  counts exactly: ``(s * x)**2 == counts`` to rounding. Its ``nphotons`` is
  the measured mean counts per pattern, ``nphotons_source == "measured"``.
- :func:`scale_from_gain` / :func:`gain_from_scale`: a detector gain in the
  model ``y = gain * Poisson(x / gain)`` (deepinv's ``PoissonNoise(gain)``
  and any code written that way) is the physscale scale ``s = gain ** -0.5``.

The count-native way to use the likelihood needs nothing from here: with
``scale=1`` the rate and the observations of :func:`physscale.scaled_poisson_nll`
are already photon counts (``domain="intensity"``: ``lam = pred``,
``k = obs``); see ``docs/poisson-nll.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from physscale.accumulator import IntensityAccumulator
from physscale.core.checks import DEFAULT_SPATIAL_DIMS, positive_real, scalar_scale
from physscale.core.scale import normalization_target
from physscale.errors import DtypeError, EmptyInputError, MaskError, NonFiniteError
from physscale.record import ScaleRecord

__all__ = ["gain_from_scale", "normalize_counts", "scale_from_gain"]

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
        return torch.from_numpy(np.asarray(counts, dtype=np.float64))
    if isinstance(counts, torch.Tensor):
        if counts.dtype == torch.bool or counts.is_complex():
            raise DtypeError(_counts_dtype_message(str(counts.dtype)))
        if counts.layout != torch.strided:
            raise DtypeError(
                f"counts must be a dense tensor, got layout {counts.layout}; convert it "
                f"with counts.to_dense()"
            )
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


def normalize_counts(
    counts: ArrayT,
    *,
    spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
    layout: str | None = None,
    mask: Any = None,
    data_source: str | None = None,
) -> tuple[ArrayT, ScaleRecord]:
    """Raw detector counts to PtychoPINN-normalized amplitudes and their exact scale.

    ``x = sqrt(counts) * factor`` with ``factor`` chosen so that the mean
    per-pattern ``sum(x**2)`` is ``(N/2)**2`` (``H * W / 4`` for ``H x W``
    patterns; see :func:`physscale.normalization_target`). The record's
    ``intensity_scale`` ``s`` maps ``x`` back: ``(s * x)**2 == counts`` to the
    rounding of the output dtype. Its ``nphotons`` is the measured mean
    counts per pattern (``nphotons_source == "measured"``), so ``s`` is also
    exactly the scale :func:`physscale.derive_intensity_scale` derives from
    ``x`` for that ``nphotons`` (``method="derived"``).

    Args:
        counts: photon counts, ``torch.Tensor`` (any device) or
            ``numpy.ndarray`` of an integer or real floating dtype, values
            >= 0 and finite. Any shape: the spatial axes form one pattern and
            every other axis counts patterns.
        spatial_dims: the axes of one pattern; default the last two (NCHW).
        layout: ``"NCHW"`` or ``"NHWC"``, a shortcut for ``spatial_dims``.
            Never guessed.
        mask: optional boolean valid-pixel mask broadcastable to ``counts``
            (False = excluded pixel, e.g. a beamstop or a dead pixel). Excluded
            pixels add nothing to the statistics, so ``nphotons`` is the mean
            count in the *valid* pixels of a pattern. Excluded pixels may hold
            any sentinel (negative, NaN, inf); those come out as 0 in ``x``,
            and excluded pixels with valid counts are normalized like the rest.
            A ``numpy.ma.MaskedArray`` brings its own mask (then pass no ``mask``).
        data_source: free text stored in the record (a path, a scan name).

    Returns:
        ``(x, record)``. ``x`` has ``counts``' shape and array type (numpy in,
        numpy out; torch in, torch out on the same device), dtype float64 for
        integer and float64 counts (exact round trip), float32 for float32,
        float16 and bfloat16 counts. ``record`` is a :class:`~physscale.ScaleRecord`
        with ``method="derived"``, ``nphotons_source="measured"``,
        ``mean_intensity`` the mean per-pattern ``sum(x**2)`` of the returned
        ``x`` (``(N/2)**2`` to rounding) and ``intensity_scale == sqrt(nphotons
        / mean_intensity)``.

    Raises:
        DtypeError: complex or boolean counts, or not an array.
        EmptyInputError: no patterns, or patterns without pixels.
        NonFiniteError, NegativeValueError: NaN, inf or negative counts in a
            valid pixel.
        ZeroIntensityError: every valid pixel counted zero photons.
        AxisError, MaskError, OptionError: bad axes, layout or mask.

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
    # The statistics of the counts themselves (intensity domain: sum of counts),
    # through the core, which also refuses NaN, inf and negative counts.
    acc = IntensityAccumulator(spatial_dims, "intensity", layout=layout)
    acc.update_named(c, mask, "counts")
    if acc.n_patterns == 0:
        raise EmptyInputError(f"counts is empty (shape {tuple(c.shape)}); there are no patterns")
    assert acc.pattern_shape is not None
    measured = acc.mean_intensity  # mean counts per pattern (valid pixels)
    factor = acc.scale_for(normalization_target(acc.pattern_shape))
    # Excluded pixels passed no check: a negative sentinel gives sqrt(-1) = NaN and
    # an inf stays inf. Valid pixels were checked above, so only excluded ones change.
    x64 = torch.sqrt(c).mul_(factor)
    x64 = torch.nan_to_num_(x64, nan=0.0, posinf=0.0)
    x_t = x64.to(_output_dtype(counts))
    # The scale of the returned x (in its own dtype), derived by the core.
    acc_x = IntensityAccumulator(spatial_dims, "amplitude", layout=layout)
    acc_x.update_named(x_t, mask, "x")
    record = ScaleRecord(
        intensity_scale=acc_x.scale_for(measured),
        nphotons=measured,
        nphotons_source="measured",
        nphotons_candidates={"measured": measured},
        method="derived",
        domain="amplitude",
        n_patterns=acc_x.n_patterns,
        pattern_shape=acc_x.pattern_shape,
        spatial_dims=acc_x.spatial_dims,
        masked=acc_x.masked,
        mean_intensity=acc_x.mean_intensity,
        data_source=data_source,
    )
    if isinstance(counts, np.ndarray):
        return x_t.numpy(), record
    return x_t.to(counts.device), record


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
    """
    g = positive_real(gain, "gain", "a positive real number (y = gain * Poisson(x / gain))")
    return float(g**-0.5)  # finite and > 0 for every positive finite float


def gain_from_scale(scale: Any) -> float:
    """The detector gain of a physscale scale: ``gain = scale ** -2``.

    The inverse of :func:`scale_from_gain`.

    Args:
        scale: the intensity scale ``s`` (amplitude factor): a positive finite
            float, a 0-d tensor or a :class:`~physscale.ScaleRecord`.

    Returns:
        The gain as a float, for ``y = gain * Poisson(x / gain)``.

    Raises:
        DtypeError, NonFiniteError, NegativeValueError: not a positive finite scale.
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
