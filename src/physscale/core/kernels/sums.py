"""The one kernel: per-dataset float64 sums of pattern intensity.

Everything that derives a scale (``derive_intensity_scale``, the streaming
``IntensityAccumulator``, amplitude normalization) goes through
:func:`intensity_sum`, which runs one of two kernels doing the same float64
arithmetic:

- the native kernel (:mod:`physscale.core.kernels.native`): one fused, threaded pass over
  dense CPU float32/float64 data, no extra memory, at the memory-read floor;
  with ``per_pattern``, the same pass row by row when every pattern is one
  run of memory (C-contiguous data, spatial axes last, no mask);
- the eager kernel (:func:`_eager_sum`, everything else): blocks of at most
  ``BLOCK_NUMEL`` elements converted to float64 into one reused buffer, so the
  extra memory is bounded (8 MiB on the CPU, 64 MiB on accelerators) whatever
  the input size.

Either way every square is exact (a float32 squared fits a float64), and
validation (NaN, infinities, negative values) and the units-guard sample are
shared.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from physscale.core.kernels import device as _device_sum
from physscale.core.kernels import native as _native
from physscale.errors import EmptyInputError, NegativeValueError, NonFiniteError

Domain = Literal["amplitude", "intensity"]

#: Elements per block on the CPU: 8 MiB of float64, large enough to amortize
#: dispatch overhead and small enough to stay in a last-level cache.
BLOCK_NUMEL = 1 << 20

#: Blocks are this many times larger on accelerators (64 MiB of float64), where
#: kernel launches, not caches, set the cost. (Not measured: no GPU in CI.)
ACCELERATOR_BLOCK_FACTOR = 8

#: Elements of the first block inspected by the units guard.
_UNITS_SAMPLE = 4096

Index = tuple[int | slice, ...]


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


def _accumulation_device(device: torch.device) -> torch.device:
    # Apple's MPS backend has no float64: accumulate on the CPU there.
    return torch.device("cpu") if device.type == "mps" else device


def _blocks(shape: tuple[int, ...], limit: int, prefix: Index = ()) -> Iterator[Index]:
    """Index tuples cutting an array of ``shape`` into pieces of <= ``limit`` elements.

    Pieces are cut along the leading axis (recursing when one leading slice is
    itself too large), so they are views of any strided tensor.
    """
    numel = math.prod(shape)
    if numel <= limit or not shape:
        yield prefix
        return
    inner = numel // shape[0]
    if inner <= limit:
        step = limit // inner
        for start in range(0, shape[0], step):
            yield (*prefix, slice(start, min(start + step, shape[0])))
    else:
        for i in range(shape[0]):
            yield from _blocks(shape[1:], limit, (*prefix, i))


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
    # The native kernel (one fused, threaded pass) when it is built and the data
    # allow it; otherwise the eager blockwise kernel. Same float64 arithmetic.
    native = _native.reduce_dense(x, square=square) if mask is None and not per_pattern else None
    rows = _native_rows(x, axes, square) if mask is None and per_pattern else None
    masked_totals: list[float] = []
    masked_pixels = 0
    pattern_totals = None
    if rows is not None:
        block_totals, lowest, pattern_totals = rows
    elif per_pattern:
        block_totals, lowest, masked_totals, masked_pixels, pattern_totals = _eager_pattern_sums(
            x, axes, square, mask
        )
    elif native is None:
        block_totals, lowest, masked_totals, masked_pixels = _eager_sum(x, square, mask)
    else:
        block_totals, lowest = native
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


def _native_rows(
    x: torch.Tensor, axes: tuple[int, ...], square: bool
) -> tuple[list[float], float, torch.Tensor] | None:
    """Per-pattern totals from the native kernel, when each pattern is one run of memory.

    That is a C-contiguous ``x`` whose spatial axes are its last ones (NCHW
    stacks, the files ``physscale derive`` reads): pattern ``i`` is then row
    ``i`` of ``x.reshape(-1, H * W)``, in the pattern order of
    :func:`_eager_pattern_sums`. None otherwise (the eager kernel runs).
    """
    if axes != tuple(range(x.ndim - len(axes), x.ndim)):
        return None
    return _native.reduce_rows(x, math.prod(x.shape[a] for a in axes), square=square)


def _eager_sum(
    x: torch.Tensor, square: bool, mask: torch.Tensor | None
) -> tuple[list[float], float, list[float], int]:
    """Per-block float64 totals and the minimum, in eager PyTorch ops.

    Each block of at most ``BLOCK_NUMEL`` elements is converted into one reused
    float64 buffer, then reduced with a dot product (or a sum) and an ``amin``.
    With a mask, also the per-block intensity of the excluded pixels (finite
    values >= 0 only) and the number of excluded pixels.
    Large unmasked inputs on accelerators take one compiled pass instead
    (:mod:`physscale.core.kernels.device`) unless it reports a bad value.
    """
    if mask is None:
        fused = _device_sum.fused_sum(x, square)
        # Finite totals from the fused pass mean no element is NaN, infinite or
        # negative (it turns negatives into NaN), so 0.0 is a valid lower bound;
        # otherwise the blockwise pass below finds the minimum and the culprits.
        if fused is not None and all(math.isfinite(t) for t in fused):
            return fused, 0.0, [], 0
    device = _accumulation_device(x.device)
    limit = BLOCK_NUMEL * (1 if device.type == "cpu" else ACCELERATOR_BLOCK_FACTOR)
    buffer = torch.empty(min(limit, x.numel()), dtype=torch.float64, device=device)
    # Per-block float64 totals and minima stay on the device until the end.
    totals: list[torch.Tensor] = []
    minima: list[torch.Tensor] = []
    dropped_totals: list[torch.Tensor] = []
    dropped_counts: list[torch.Tensor] = []
    for index in _blocks(tuple(x.shape), limit):
        block = x[index]
        if mask is None and block.dtype == torch.float64 and block.is_contiguous() \
                and block.device == device:  # fmt: skip
            flat = block.view(-1)  # already float64: no copy needed
        else:
            view = buffer[: block.numel()].view(block.shape)
            view.copy_(block)
            if mask is not None:
                removed, count = _apply_mask(view, mask[index], square)
                dropped_totals.append(removed)
                dropped_counts.append(count)
            flat = view.view(-1)
        totals.append(torch.dot(flat, flat) if square else flat.sum())
        # Checked on the cached float64 block: measured faster than on the source.
        minima.append(flat.amin())
    # One device-to-host transfer for the whole pass.
    n = len(totals)
    stats = torch.stack(
        [torch.stack(minima).amin(), *totals, *dropped_totals, *dropped_counts]
    ).tolist()
    return stats[1 : 1 + n], stats[0], stats[1 + n : 1 + 2 * n], int(sum(stats[1 + 2 * n :]))


def _apply_mask(
    view: torch.Tensor, keep: torch.Tensor, square: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the excluded pixels of a float64 buffer in place.

    Returns (on the buffer's device) the intensity the mask took away, over
    finite values >= 0 only (dead pixels often hold NaN or negative flags),
    and the number of excluded pixels.
    """
    dropped = keep.to(view.device).logical_not()
    kept_out = torch.where(dropped & (view >= 0) & view.isfinite(), view, 0.0).view(-1)
    removed = torch.dot(kept_out, kept_out) if square else kept_out.sum()
    # masked_fill, not a multiply: a NaN in a dead pixel must not leak.
    view.masked_fill_(dropped, 0.0)
    return removed, dropped.sum(dtype=torch.float64)


def _eager_pattern_sums(
    x: torch.Tensor, axes: tuple[int, ...], square: bool, mask: torch.Tensor | None
) -> tuple[list[float], float, list[float], int, torch.Tensor]:
    """:func:`_eager_sum`, plus the float64 intensity of every pattern.

    Returns the same four values and a ``(n_patterns,)`` float64 tensor on the
    accumulation device, in pattern order (the non-spatial axes raveled in C
    order, e.g. ``(b, c)`` for ``(B, H, W, C)`` with spatial axes 1, 2). Each
    block is reduced over the spatial axes it holds; a pattern split across
    blocks (one pattern larger than a block) gets each part added, so memory
    stays bounded by the block whatever the pattern size.
    """
    device = _accumulation_device(x.device)
    limit = BLOCK_NUMEL * (1 if device.type == "cpu" else ACCELERATOR_BLOCK_FACTOR)
    buffer = torch.empty(min(limit, x.numel()), dtype=torch.float64, device=device)
    # Pattern ids laid out like x, with size 1 on the spatial axes (a broadcast view).
    id_shape = [1 if d in axes else n for d, n in enumerate(x.shape)]
    ids = torch.arange(math.prod(id_shape), device=device).view(id_shape)
    sums = torch.zeros(ids.numel(), dtype=torch.float64, device=device)
    totals: list[torch.Tensor] = []
    minima: list[torch.Tensor] = []
    dropped_totals: list[torch.Tensor] = []
    dropped_counts: list[torch.Tensor] = []
    for index in _blocks(tuple(x.shape), limit):
        block = x[index]
        view = buffer[: block.numel()].view(block.shape)
        view.copy_(block)
        if mask is not None:
            removed, count = _apply_mask(view, mask[index], square)
            dropped_totals.append(removed)
            dropped_counts.append(count)
        minima.append(view.amin())
        if square:
            view.mul_(view)  # our own buffer: squaring in place is safe
        # The block's dimensions: x's, less those an integer index dropped.
        kept = [d for d in range(x.ndim) if d >= len(index) or not isinstance(index[d], int)]
        spatial = [i for i, d in enumerate(kept) if d in axes]
        per_pattern = view.sum(dim=spatial, keepdim=True) if spatial else view
        id_index = tuple(
            (0 if isinstance(i, int) else slice(None)) if d in axes else i
            for d, i in enumerate(index)
        )
        block_ids = ids[id_index].expand(per_pattern.shape)
        sums.index_add_(0, block_ids.reshape(-1), per_pattern.reshape(-1))
        totals.append(per_pattern.sum())
    n = len(totals)
    stats = torch.stack(
        [torch.stack(minima).amin(), *totals, *dropped_totals, *dropped_counts]
    ).tolist()
    dropped = int(sum(stats[1 + 2 * n :]))
    return stats[1 : 1 + n], stats[0], stats[1 + n : 1 + 2 * n], dropped, sums


def _units_sample(x: torch.Tensor, mask: torch.Tensor | None) -> np.ndarray:
    """The first (at most) ``_UNITS_SAMPLE`` values of ``x`` in float64 on the host,
    masked pixels as 0 (one small device-to-host copy)."""
    index = next(_blocks(tuple(x.shape), _UNITS_SAMPLE))
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
