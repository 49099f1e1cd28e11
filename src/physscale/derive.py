"""Deriving the physics scale, the amplitude normalization, and the closed form.

SPEC §1. The physics scale ``s = sqrt(nphotons / mean per-pattern sum(x**2))``
maps normalized amplitudes to photon-count amplitudes (counts are
``(s * x)**2``). The amplitude normalization factor
``sqrt((N/2)**2 / mean per-pattern sum(x_raw**2))`` is the same computation
with the target ``(N/2)**2`` in place of ``nphotons``; after it,
``s == sqrt(nphotons) / (N/2)`` (the closed form TF training uses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from physscale.accumulator import IntensityAccumulator
from physscale.core.checks import DEFAULT_SPATIAL_DIMS, as_float_tensor, positive_finite
from physscale.core.kernels.sums import Domain
from physscale.errors import AxisError, EmptyInputError

__all__ = [
    "amplitude_normalization_factor",
    "closed_form_intensity_scale",
    "derive_intensity_scale",
    "normalization_target",
    "normalize_amplitudes",
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
    return acc


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
            axes of at least 8) raise :class:`~physscale.AmbiguousLayoutError`
            naming what to pass, instead of a scale over the wrong axes.
            Explicit axes are always trusted.
        domain: ``"amplitude"`` sums ``x**2``; ``"intensity"`` sums ``x``.
        mask: optional boolean valid-pixel mask (True = use the pixel): the
            pattern's shape (e.g. ``(H, W)``), applied along the spatial axes
            in either layout, or any shape that broadcasts to ``x``. Excluded
            pixels add nothing to a pattern's sum, so nphotons is assigned to
            the unmasked pixels only: masking a bright region (a beamstop)
            raises the scale. A :class:`~physscale.MaskWarning` says so when
            the mask removes more than half of the intensity;
            :func:`physscale.derive_scale_record` records the masked fractions
            of pixels and intensity.

    Returns:
        0-d float64 tensor on ``x``'s device (CPU for numpy input or devices
        without float64): the amplitude factor ``s``; counts are ``(s * x)**2``.

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


def normalization_target(pattern_shape: Sequence[int]) -> float:
    """The mean per-pattern ``sum(x**2)`` after amplitude normalization: ``(N/2)**2``.

    For an ``N x N`` pattern this is ``(N/2)**2``; for ``H x W`` physscale
    uses ``H * W / 4``, which reduces to it. (Normalizing to ``N**2`` instead
    is the factor-of-2 trap of SPEC failure mode 6.)
    """
    if len(pattern_shape) == 0 or any(int(n) < 1 for n in pattern_shape):
        raise AxisError(f"pattern_shape must be positive sizes, got {tuple(pattern_shape)}")
    return math.prod(int(n) for n in pattern_shape) / 4.0


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
    ``sum(x**2)`` is ``(N/2)**2`` (see :func:`normalization_target`).

    Args:
        x_raw: raw amplitudes, same conventions as :func:`derive_intensity_scale`.

    Returns:
        0-d float64 tensor on ``x_raw``'s device (CPU for numpy input).
    """
    acc = accumulate(x_raw, spatial_dims, layout, "amplitude", mask)
    assert acc.pattern_shape is not None  # update() saw at least one pattern
    factor = acc.scale_for(normalization_target(acc.pattern_shape))
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
    :func:`amplitude_normalization_factor`, in ``x_raw``'s dtype and array
    type (numpy in, numpy out). Returns the factor as a float too, so the raw
    scale can be recovered (``x_raw = x / factor``).
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


def closed_form_intensity_scale(nphotons: Any, pattern_shape: int | Sequence[int]) -> float:
    """The scale of normalized data in closed form: ``sqrt(nphotons) / (N/2)``.

    Args:
        nphotons: expected photons per pattern, positive finite.
        pattern_shape: ``N`` (square patterns) or the spatial sizes ``(H, W)``.

    Equals :func:`derive_intensity_scale` on data normalized by
    :func:`normalize_amplitudes` (a property the tests check).
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
