"""The dispatch: per-dataset float64 sums of pattern intensity, by the fastest path.

Everything that derives a scale (``derive_intensity_scale``, the streaming
``IntensityAccumulator``, amplitude normalization) goes through
`intensity_sum`, which runs the first path that can read ``x``; all do
the same float64 arithmetic and agree to float64 rounding:

1. [`native`][physscale.core.kernels.native]: one fused, threaded C pass over
   dense CPU float32/float64 data at the memory-read floor (with
   ``per_pattern``, row by row when every pattern is one run of memory);
2. [`device`][physscale.core.kernels.device]: one compiled pass over large dense
   inputs on CUDA;
3. [`blas`][physscale.core.kernels.blas]: numpy's BLAS, for dense CPU
   float32/float64 data when the native kernel is absent;
4. [`eager`][physscale.core.kernels.eager]: blocks of PyTorch ops, for
   everything else (masks, float16, bfloat16, strided views, small or
   masked accelerator inputs).

Every square is exact (a float32 squared fits a float64). Validation (NaN,
infinities, negative values) and the units-guard sample are shared, here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from physscale.core.kernels import blas, device, eager, native
from physscale.errors import EmptyInputError, NegativeValueError, NonFiniteError

Domain = Literal["amplitude", "intensity"]

#: Elements of the first block inspected by the units guard.
_UNITS_SAMPLE = 4096


@dataclass(frozen=True)
class IntensitySum:
    """What one pass over a batch yields.

    Attributes:
        total: float64 sum over every (unmasked) pixel of ``x**2``
            (amplitude domain) or ``x`` (intensity domain), in normalized
            intensity units.
        n_patterns: number of patterns (product of the non-spatial sizes).
        pattern_shape: sizes of the spatial axes, in axis order.
        integer_like: True when a sample of the data has integer-valued
            intensities (a sign of raw counts), False otherwise.
        pixels: number of pixels in the batch (every element of ``x``).
        masked_pixels: pixels the mask excluded (0 without a mask).
        masked_total: the intensity the mask excluded: the same sum as
            ``total`` over the excluded pixels that hold finite values >= 0
            (NaN, infinities and negative dead-pixel flags are left out).
        pattern_totals: with ``per_pattern``, each pattern's total (float64
            CPU tensor of ``n_patterns`` values, in pattern order), else None.
    """

    total: float
    n_patterns: int
    pattern_shape: tuple[int, ...]
    integer_like: bool
    pixels: int = 0
    masked_pixels: int = 0
    masked_total: float = 0.0
    pattern_totals: torch.Tensor | None = None


def whole_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for "a sampled intensity of data in ``dtype`` is whole".

    Eight roundings of the dtype (a square root of a count, stored, squared in
    float64 stays within three): bright non-integer data is not called whole,
    as a fixed 1e-5 called every value above about 5e4 whole.
    """
    return 8.0 * float(torch.finfo(dtype).eps)


#: "Whole" needs evidence: the chance that values with no integer structure all
#: land within the tolerance of an integer (2 * tolerance each, for values >= 1)
#: must be below this. Where the dtype cannot tell integers apart (float16 above
#: a few hundred, float32 above ~1e6) the values give no evidence either way.
WHOLE_CHANCE = 1e-6


def _integer_like(values: np.ndarray, rel: float) -> bool:
    """Whether a float64 sample of intensities looks like whole photon counts.

    numpy on the host: a handful of tiny torch ops cost more in dispatch (and, on
    an accelerator, in launches and syncs) than the 4096 values they inspect.
    """
    v = values[:_UNITS_SAMPLE]
    # Too little signal to judge (tiny or mostly dark samples, all-ones toys).
    if np.count_nonzero(v >= 1.0) < 16 or float(v.max()) < 2.0:
        return False
    tol = 1e-4 + rel * v
    if not np.all(np.abs(v - np.round(v)) <= tol):
        return False
    chance = np.log(np.minimum(2.0 * tol[v >= 1.0], 1.0)).sum()
    return bool(chance <= math.log(WHOLE_CHANCE))


def intensity_sum(
    x: torch.Tensor,
    axes: tuple[int, ...],
    domain: Domain,
    mask: torch.Tensor | None = None,
    *,
    name: str = "x",
    per_pattern: bool = False,
    units_check: bool = True,
) -> IntensitySum:
    """Sum the intensity of every pattern of ``x`` in float64.

    Args:
        x: real floating tensor, any shape and strides, any device.
        axes: the spatial axes, already normalized (sorted, non-negative).
        domain: ``"amplitude"`` sums ``x**2``; ``"intensity"`` sums ``x``.
        mask: optional boolean tensor already expanded to ``x.shape``;
            False pixels contribute nothing.
        name: how error messages refer to ``x``.
        per_pattern: also return each pattern's total (``pattern_totals``).
        units_check: sample the data for the units guard (``integer_like``);
            False skips it (``integer_like`` is then False), for a caller that
            already knows its data are not whole counts.

    A batch with no patterns returns a zero sum over zero patterns.

    Raises:
        EmptyInputError (patterns without pixels), NonFiniteError, NegativeValueError.
    """
    pattern_shape = tuple(int(x.shape[a]) for a in axes)
    if math.prod(pattern_shape) == 0:
        raise EmptyInputError(
            f"{name} is empty: its patterns have no pixels "
            f"(shape {tuple(x.shape)}, spatial axes {axes})"
        )
    n_patterns = x.numel() // math.prod(pattern_shape)
    if n_patterns == 0:  # an empty batch adds nothing (e.g. an empty shard)
        return IntensitySum(0.0, 0, pattern_shape, False)
    square = domain == "amplitude"
    masked_totals: list[float] = []
    masked_pixels = 0
    pattern_totals = None
    if per_pattern:
        rows = _pattern_rows(x, axes, square) if mask is None else None
        if rows is not None:
            block_totals, lowest, pattern_totals = rows
        else:
            block_totals, lowest, masked_totals, masked_pixels, pattern_totals = (
                eager.pattern_block_sums(x, axes, square, mask)
            )
    else:
        dense = _dense_sums(x, square) if mask is None else None
        if dense is not None:
            block_totals, lowest = dense
        else:
            block_totals, lowest, masked_totals, masked_pixels = eager.block_sums(x, square, mask)
    if math.isnan(lowest) or not all(math.isfinite(t) for t in block_totals):
        _raise_nonfinite(x, name)
    if lowest < 0.0:
        kind = "amplitudes" if square else "intensities"
        raise NegativeValueError(
            f"{name} holds negative {kind} (minimum {lowest!r}); {kind} must be >= 0. "
            f"Clip detector noise (x.clamp(min=0)) before deriving a scale"
        )
    integer_like = False
    if units_check:
        sample = _units_sample(x, mask)
        integer_like = _integer_like(
            sample * sample if square else sample, whole_tolerance(x.dtype)
        )
    return IntensitySum(
        total=math.fsum(block_totals),
        n_patterns=n_patterns,
        pattern_shape=pattern_shape,
        integer_like=integer_like,
        pixels=x.numel(),
        masked_pixels=masked_pixels,
        masked_total=math.fsum(masked_totals),
        pattern_totals=None if pattern_totals is None else pattern_totals.cpu(),
    )


def _dense_sums(x: torch.Tensor, square: bool) -> tuple[list[float], float] | None:
    """Partial totals and the minimum of unmasked ``x`` from the first fused path that reads it.

    None when only the eager path can (it then also names a bad value).
    """
    found = native.reduce_dense(x, square=square)
    if found is not None:
        return found
    fused = device.fused_sum(x, square)
    # Finite totals from the fused pass mean no element is NaN, infinite or
    # negative (it turns negatives into NaN), so 0.0 is a valid lower bound;
    # otherwise the eager pass finds the minimum and the culprits.
    if fused is not None and all(math.isfinite(t) for t in fused):
        return fused, 0.0
    if fused is not None:
        return None
    return blas.reduce_dense(x, square=square)


def _pattern_rows(
    x: torch.Tensor, axes: tuple[int, ...], square: bool
) -> tuple[list[float], float, torch.Tensor] | None:
    """Per-pattern totals from the native or BLAS path, when each pattern is one run of memory.

    That is a C-contiguous ``x`` whose spatial axes are its last ones (NCHW
    stacks, the files ``physscale derive`` reads): pattern ``i`` is then row
    ``i`` of ``x.reshape(-1, H * W)``, in the pattern order of
    `eager.pattern_block_sums`. None otherwise (the eager path runs).
    """
    if axes != tuple(range(x.ndim - len(axes), x.ndim)):
        return None
    row_len = math.prod(x.shape[a] for a in axes)
    found = native.reduce_rows(x, row_len, square=square)
    if found is not None:
        return found
    return blas.reduce_rows(x, row_len, square=square)


def _units_sample(x: torch.Tensor, mask: torch.Tensor | None) -> np.ndarray:
    """The first (at most) ``_UNITS_SAMPLE`` values of ``x`` in float64 on the host,
    masked pixels as 0 (one small device-to-host copy)."""
    index = next(eager.blocks(tuple(x.shape), _UNITS_SAMPLE))
    sample = x[index].to(device="cpu", dtype=torch.float64).reshape(-1).numpy()
    if mask is not None:
        keep = mask[index].to(device="cpu").reshape(-1).numpy()
        sample = np.where(keep, sample, 0.0)
    return sample


def _raise_nonfinite(x: torch.Tensor, name: str) -> None:
    # Only reached on bad data, so an extra pass to name the problem is fine.
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    if n_nan == 0 and n_inf == 0:
        raise NonFiniteError(
            f"the sum of squares of {name} overflows float64 (values up to "
            f"{float(x.abs().amax())!r}); these are not normalized amplitudes"
        )
    raise NonFiniteError(
        f"{name} holds {n_nan} NaN and {n_inf} infinite value(s); every value must be finite"
    )
