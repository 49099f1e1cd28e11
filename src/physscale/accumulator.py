"""IntensityAccumulator: the streaming form of the scale derivation.

Modelled on torchmetrics: the work is done by pure functions of an
`AccumulatorState` (state in, state out), and the class holds one state
and its configuration and calls them.

- update: `batch_state` (one batch's sums) and `fragments_state`
  (one batch that arrives in pieces), folded in with `fold`;
- merge / all_reduce / load: `fold` of another state, exactly;
- compute: the scale is
`physscale.core.scale.scale_from_totals` of the
  state's total and pattern count (`AccumulatorState.scale_for`).

The running total is kept as exact floating-point partials (Shewchuk's
algorithm, as in ``math.fsum``), so merging is exactly associative and
commutative and the final total is the correctly rounded sum of every batch's
float64 total.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from physscale.core.checks import (
    DEFAULT_SPATIAL_DIMS,
    LAYOUTS,
    MASK_POLARITY,
    as_float_tensor,
    as_mask,
    check_layout,
    check_mask_coverage,
    check_materializable,
    check_option,
    counts_next_step,
    positive_finite,
    spatial_axes,
    split_masked,
)
from physscale.core.kernels.sums import Domain, intensity_sum
from physscale.core.preview import preview
from physscale.core.scale import mean_from_totals, scale_from_totals
from physscale.diagnostics import OutlierRule, PatternStats, flag_outliers, pattern_stats
from physscale.errors import (
    EmptyInputError,
    MaskError,
    MaskWarning,
    NonFiniteError,
    StateError,
    UnitsWarning,
)

__all__ = ["IntensityAccumulator"]

_STATE_VERSION = 2
_READABLE_STATE_VERSIONS = (1, 2)
_STATE_KEYS_V1 = frozenset({"version", "domain", "spatial_dims", "n_patterns", "total_partials",
                            "pattern_shape", "integer_like", "masked"})  # fmt: skip
_STATE_KEYS = _STATE_KEYS_V1 | {"pixels", "masked_pixels", "masked_partials", "pattern_totals"}
# Bounds no real dataset reaches (a restored state is validated against them).
_MAX_COUNT = 2**63 - 1
_MAX_PATTERN_SIZE = 2**31 - 1
#: A mask that removes more than this fraction of the intensity is warned about.
MASK_WARNING_FRACTION = 0.5
# Shewchuk partials of a float64 sum never need more than this many terms
# (one per binary exponent band of width 53 over the float64 range).
_MAX_PARTIALS = 40
# Slots for pattern_shape in the fixed-size all_reduce message.
_MAX_PATTERN_DIMS = 8
# A rank large enough that any sensible axis index is in range.
_ANY_RANK = 64
# Domains as numbers in the all_reduce message.
_DOMAIN_CODES: dict[Domain, float] = {"amplitude": 0.0, "intensity": 1.0}
_NO_PATTERNS = "no patterns have been accumulated yet; call update() first"
# Per-pattern totals are kept as at most about this many pieces (see _appended).
_MAX_PIECES = 64


# ---------------------------------------------------------------- exact sums
def _grow(partials: Sequence[float], x: float) -> Sequence[float]:
    """Add ``x`` to a list of non-overlapping partials, exactly (Shewchuk 1997).

    Returns a new list, or ``partials`` itself when ``x`` is 0; the input is
    never changed, so a refused addition leaves the caller's state as it was.

    Raises:
        NonFiniteError: the exact sum leaves the float64 range.
    """
    if x == 0.0:
        return partials
    out: list[float] = []
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        if math.isinf(hi):
            raise NonFiniteError(
                "the accumulated total intensity exceeds the float64 range (about 1.8e308); "
                "values this large cannot be normalized amplitudes or intensities"
            )
        lo = y - (hi - x)
        if lo:
            out.append(lo)
        x = hi
    out.append(x)
    return out


def _grow_all(partials: Sequence[float], values: Iterable[float]) -> tuple[float, ...]:
    for v in values:
        partials = _grow(partials, v)
    return tuple(partials)


# ---------------------------------------------------------------- the state
class AccumulatorState(NamedTuple):
    """An accumulator's state as plain values (immutable: folding makes a new one).

    Attributes:
        partials: the exact total intensity as non-overlapping float64
            partials (their exact sum is the total), normalized units.
        n_patterns: patterns seen.
        pattern_shape: sizes of one pattern's spatial axes (None before any).
        integer_like: whether every batch's sample looked like whole counts
            (None before any).
        masked: whether any batch came with a valid-pixel mask.
        pixels: pixels seen (masked ones included).
        masked_pixels: pixels a mask excluded; None when unknown (a version-1
            state with a mask was folded in, or masked frames were excluded).
        masked_partials: the intensity masks excluded, exact partials like ``partials``.
        pattern_totals: each pattern's total (float64 CPU), in the order seen,
            as consecutive pieces; None when per-pattern totals are not kept.
    """

    partials: tuple[float, ...] = ()
    n_patterns: int = 0
    pattern_shape: tuple[int, ...] | None = None
    integer_like: bool | None = None
    masked: bool = False
    pixels: int = 0
    masked_pixels: int | None = 0
    masked_partials: tuple[float, ...] = ()
    pattern_totals: tuple[torch.Tensor, ...] | None = None

    @property
    def total_intensity(self) -> float:
        """The sum over every pattern of its (unmasked) intensity, float64, correctly rounded."""
        return math.fsum(self.partials)

    @property
    def mean_intensity(self) -> float:
        """Mean per-pattern intensity ``sum(x**2)`` (or ``sum(x)``), normalized units."""
        if self.n_patterns == 0:
            raise EmptyInputError(_NO_PATTERNS)
        return mean_from_totals(self.total_intensity, self.n_patterns)

    def scale_for(self, target: float) -> float:
        """``sqrt(target / mean_intensity)``:
        `scale_from_totals`."""
        if self.n_patterns == 0:
            raise EmptyInputError(_NO_PATTERNS)
        return scale_from_totals(self.total_intensity, self.n_patterns, target)

    @property
    def masked_pixel_fraction(self) -> float | None:
        """With a mask: the fraction of all pixels seen that it excluded (else None)."""
        if not self.masked or self.masked_pixels is None or self.pixels == 0:
            return None
        return self.masked_pixels / self.pixels

    @property
    def masked_intensity_fraction(self) -> float | None:
        """With a mask: the fraction of the intensity in excluded pixels (None if unknown)."""
        if not self.masked or self.masked_pixels is None:
            return None
        removed = math.fsum(self.masked_partials)
        whole = removed + self.total_intensity
        return removed / whole if whole > 0.0 else None


def empty_state(keep_pattern_totals: bool) -> AccumulatorState:
    """The state before any batch (keeping per-pattern totals or not)."""
    return AccumulatorState(pattern_totals=() if keep_pattern_totals else None)


def joined_totals(state: AccumulatorState) -> torch.Tensor | None:
    """The per-pattern totals as one float64 CPU tensor (None when not kept)."""
    pieces = state.pattern_totals
    if pieces is None:
        return None
    if len(pieces) == 1:
        return pieces[0]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)


def _appended(
    pieces: tuple[torch.Tensor, ...], more: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """``pieces`` then ``more``; past `_MAX_PIECES`, the newest are joined in one copy.

    The join takes the newest half of the pieces, and older ones while they are
    at most twice as large as what is being joined: a fold costs O(1) amortized
    (one ``torch.cat`` per ~32 folds), and a piece is copied again only once at
    least half as much has arrived after it, so each total is copied O(log n)
    times. The values are copied, never summed: every bit stays.
    """
    out = [*pieces, *more]
    if len(out) <= _MAX_PIECES:
        return tuple(out)
    tail: list[torch.Tensor] = []
    size = 0
    while out and (len(tail) < _MAX_PIECES // 2 or out[-1].numel() <= 2 * size):
        size += out[-1].numel()
        tail.append(out.pop())
    return (*out, torch.cat(tail[::-1]))


def fold(state: AccumulatorState, other: AccumulatorState) -> AccumulatorState:
    """The state of both: exact sums, added counts; ``state`` is not changed.

    Raises:
        StateError: another pattern shape, or ``state`` keeps per-pattern
            totals and ``other`` has none.
        NonFiniteError: the exact total leaves the float64 range.
    """
    if other.n_patterns == 0:
        return state
    if state.pattern_shape is not None and other.pattern_shape != state.pattern_shape:
        raise StateError(
            f"pattern shape {other.pattern_shape} differs from the {state.pattern_shape} "
            f"seen before; one accumulator must see patterns of one shape"
        )
    if state.pattern_totals is not None and other.pattern_totals is None:
        raise StateError(
            "this accumulator keeps per-pattern totals (keep_pattern_totals=True) but the "
            "state folded in has none; both sides must keep them"
        )
    integer_like = state.integer_like
    if other.integer_like is not None:
        integer_like = other.integer_like and state.integer_like is not False
    masked_pixels = None
    if state.masked_pixels is not None and other.masked_pixels is not None:
        masked_pixels = state.masked_pixels + other.masked_pixels
    return AccumulatorState(
        # Exact: every partial is added without rounding.
        partials=_grow_all(state.partials, other.partials),
        n_patterns=state.n_patterns + other.n_patterns,
        pattern_shape=other.pattern_shape,
        integer_like=integer_like,
        masked=state.masked or other.masked,
        pixels=state.pixels + other.pixels,
        masked_pixels=masked_pixels,
        masked_partials=_grow_all(state.masked_partials, other.masked_partials),
        pattern_totals=(
            None
            if state.pattern_totals is None or other.pattern_totals is None
            else _appended(state.pattern_totals, other.pattern_totals)
        ),
    )


# ---------------------------------------------------------------- update
def batch_state(
    batch: Any,
    mask: Any,
    name: str,
    *,
    domain: Domain,
    spatial_dims: Sequence[int],
    axes_explicit: bool,
    per_pattern: bool,
    units_check: bool,
) -> AccumulatorState:
    """One batch's state: its float64 sums (see `IntensityAccumulator.update`).

    ``name`` is what error messages call the data; ``per_pattern`` keeps each
    pattern's total; ``units_check`` samples the batch for whole counts.
    """
    # Before any conversion copies it: a broadcast view larger than memory is refused
    # now, not summed for minutes (torch) or copied into terabytes (numpy).
    check_materializable(batch, name)
    batch, mask = split_masked(batch, mask, name)
    x = as_float_tensor(batch, name)
    check_layout(x.shape, axes_explicit, name)
    axes = spatial_axes(x.ndim, spatial_dims)
    m = None if mask is None else as_mask(mask, x.shape, x.device, axes)
    part = intensity_sum(
        x, axes, domain, m, name=name, per_pattern=per_pattern, units_check=units_check
    )
    return AccumulatorState(
        partials=(part.total,),
        n_patterns=part.n_patterns,
        pattern_shape=part.pattern_shape,
        integer_like=part.integer_like,
        masked=m is not None,
        pixels=part.pixels,
        masked_pixels=part.masked_pixels,
        masked_partials=(part.masked_total,),
        pattern_totals=None if part.pattern_totals is None else (part.pattern_totals,),
    )


def _piece_patterns(
    index: tuple[int | slice, ...], ndim: int, axes: Sequence[int], ids: torch.Tensor
) -> tuple[tuple[int, ...], torch.Tensor]:
    """A fragment's spatial axes (in its own dimensions) and its patterns' ids.

    ``index`` is basic indexing (ints and slices) into a batch of ``ndim``
    axes whose spatial axes are ``axes``; ``ids`` holds each pattern's id laid
    out like the batch with size 1 on the spatial axes. The ids come in the
    C order of the fragment's non-spatial axes, the order in which
    ``intensity_sum(..., per_pattern=True)`` returns its pattern totals.
    """
    full = (*index, *[slice(None)] * (ndim - len(index)))
    kept = [d for d, i in enumerate(full) if not isinstance(i, int)]
    piece_axes = tuple(k for k, d in enumerate(kept) if d in axes)
    # On a spatial axis ids has size 1: an int picks it, a slice keeps it.
    id_index = tuple(
        (0 if isinstance(i, int) else slice(None)) if d in axes else i for d, i in enumerate(full)
    )
    return piece_axes, ids[id_index].reshape(-1)


def fragments_state(
    shape: Sequence[int],
    fragments: Iterable[tuple[tuple[int | slice, ...], Any]],
    mask: Any,
    name: str,
    *,
    domain: Domain,
    spatial_dims: Sequence[int],
    axes_explicit: bool,
    per_pattern: bool,
) -> AccumulatorState:
    """The state of one batch of ``shape`` that arrives in pieces.

    See `IntensityAccumulator.update_fragments`; ``per_pattern`` adds
    each piece's sums to the patterns it belongs to.
    """
    batch = torch.Size(int(s) for s in shape)
    check_layout(batch, axes_explicit, name)
    axes = spatial_axes(len(batch), spatial_dims)
    pattern_shape = tuple(batch[a] for a in axes)
    if math.prod(pattern_shape) == 0:
        raise EmptyInputError(f"{name} shape {tuple(batch)} has patterns with no pixels")
    n_patterns = batch.numel() // math.prod(pattern_shape)
    layout = torch.empty((), dtype=torch.bool).expand(batch)  # shapes only, no memory
    m = None if mask is None else as_mask(mask, batch, torch.device("cpu"), axes)
    # With per-pattern totals: each pattern's id laid out like the batch, size 1 on
    # the spatial axes (a broadcast view), so a piece's index picks its patterns' ids.
    totals = ids = None
    if per_pattern:
        id_shape = [1 if d in axes else n for d, n in enumerate(batch)]
        ids = torch.arange(n_patterns).view(id_shape)
        totals = torch.zeros(n_patterns, dtype=torch.float64)
    partials: Sequence[float] = ()
    masked_partials: Sequence[float] = ()
    integer_like: bool | None = None
    covered = masked_pixels = 0
    for index, piece in fragments:
        x = as_float_tensor(piece, name)
        if x.shape != layout[index].shape:
            raise StateError(
                f"fragment at {index} has shape {tuple(x.shape)}, expected "
                f"{tuple(layout[index].shape)} for a batch of shape {tuple(batch)}"
            )
        if x.numel() == 0:
            continue
        part_mask = None if m is None else m[index].to(x.device)
        if ids is None or totals is None:
            part = intensity_sum(x, tuple(range(x.ndim)), domain, part_mask, name=name)
        else:
            piece_axes, piece_ids = _piece_patterns(index, len(batch), axes, ids)
            part = intensity_sum(x, piece_axes, domain, part_mask, name=name, per_pattern=True)
            assert part.pattern_totals is not None
            totals.index_add_(0, piece_ids, part.pattern_totals)
        partials = _grow(partials, part.total)
        masked_partials = _grow(masked_partials, part.masked_total)
        masked_pixels += part.masked_pixels
        integer_like = part.integer_like and integer_like is not False
        covered += x.numel()
    if covered != batch.numel():
        raise StateError(
            f"fragments cover {covered} of the batch's {batch.numel()} elements; each "
            f"element must be in exactly one fragment"
        )
    return AccumulatorState(
        partials=tuple(partials),
        n_patterns=n_patterns,
        pattern_shape=pattern_shape,
        integer_like=integer_like,
        masked=m is not None,
        pixels=batch.numel(),
        masked_pixels=masked_pixels,
        masked_partials=tuple(masked_partials),
        pattern_totals=None if totals is None else (totals,),
    )


# ---------------------------------------------------------------- per-pattern totals
def required_totals(state: AccumulatorState, what: str) -> torch.Tensor:
    """The per-pattern totals ``what`` needs; an error when there are none."""
    totals = joined_totals(state)
    if totals is None:
        raise StateError(
            f"{what} needs the per-pattern totals: make the accumulator with "
            f"IntensityAccumulator(..., keep_pattern_totals=True)"
        )
    if totals.numel() == 0:
        raise EmptyInputError(_NO_PATTERNS)
    return totals


def exclude_frames(
    state: AccumulatorState, frames: Iterable[int] | torch.Tensor
) -> AccumulatorState:
    """The state of every pattern but ``frames`` (see `IntensityAccumulator.excluding`)."""
    totals = required_totals(state, "excluding()")
    n = totals.numel()
    index = torch.as_tensor(list(frames) if not isinstance(frames, torch.Tensor) else frames)
    if index.numel() and (index.dtype.is_floating_point or index.dtype == torch.bool):
        raise StateError(f"frames must be integer pattern indices, got dtype {index.dtype}")
    index = index.reshape(-1).to(torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise StateError(f"frame indices must be in [0, {n}), got {index.tolist()[:10]}...")
    if len(set(index.tolist())) != index.numel():
        raise StateError("frame indices to exclude must be distinct")
    if index.numel() >= n:
        raise StateError(f"excluding all {n} patterns leaves nothing to derive a scale from")
    keep = torch.ones(n, dtype=torch.bool)
    keep[index] = False
    kept = totals[keep]
    pixels_each = state.pixels // max(state.n_patterns, 1)
    unknown = state.masked and bool(index.numel())
    return state._replace(
        # The kept patterns' own totals, summed exactly: subtracting the excluded ones
        # from the whole would leave their rounding in (a hot frame's dwarfs the rest).
        partials=_grow_all((), kept.tolist()),
        n_patterns=n - index.numel(),
        pixels=state.pixels - index.numel() * pixels_each,
        pattern_totals=(kept,),
        masked_pixels=None if unknown else state.masked_pixels,
        masked_partials=() if unknown else state.masked_partials,
    )


# ---------------------------------------------------------------- all_reduce message
def _padded(values: Sequence[int]) -> list[float]:
    """A length-prefixed, zero-padded float slot list for the all_reduce message."""
    return [float(len(values)), *map(float, values), *[0.0] * (_MAX_PATTERN_DIMS - len(values))]


def _unpadded(slots: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(v) for v in slots[1 : 1 + int(slots[0])])


@dataclass
class Packed:
    """What one rank sent in ``all_reduce``: its configuration and its state."""

    domain: Domain
    spatial_dims: tuple[int, ...]
    keeps: bool  # whether that rank keeps per-pattern totals
    state: AccumulatorState


def pack(
    state: AccumulatorState, domain: Domain, spatial_dims: Sequence[int], keeps: bool
) -> torch.Tensor:
    """A rank's configuration and state as one fixed-size float64 tensor (no totals)."""
    if len(state.partials) > _MAX_PARTIALS or len(state.masked_partials) > _MAX_PARTIALS:
        raise StateError("internal: too many partials to pack")  # pragma: no cover
    shape = state.pattern_shape or ()
    if len(shape) > _MAX_PATTERN_DIMS or len(spatial_dims) > _MAX_PATTERN_DIMS:
        raise StateError(f"all_reduce supports patterns of at most {_MAX_PATTERN_DIMS} axes")
    header = [
        float(state.n_patterns),
        {None: -1.0, False: 0.0, True: 1.0}[state.integer_like],
        float(state.masked),
        _DOMAIN_CODES[domain],
        float(state.pixels),
        -1.0 if state.masked_pixels is None else float(state.masked_pixels),
        float(keeps),
        *_padded(spatial_dims),
        *_padded(shape),
    ]
    padding = [0.0] * (_MAX_PARTIALS - len(state.partials))
    masked_padding = [0.0] * (_MAX_PARTIALS - len(state.masked_partials))
    values = [*header, *state.partials, *padding, *state.masked_partials, *masked_padding]
    return torch.tensor(values, dtype=torch.float64)


def unpack(packed: torch.Tensor) -> Packed:
    """Inverse of `pack` (the state comes without per-pattern totals)."""
    v = packed.tolist()
    dims_at = 7
    shape_at = dims_at + 1 + _MAX_PATTERN_DIMS
    partials_at = shape_at + 1 + _MAX_PATTERN_DIMS
    masked_at = partials_at + _MAX_PARTIALS
    shape = _unpadded(v[shape_at:partials_at])
    return Packed(
        domain=next(d for d, code in _DOMAIN_CODES.items() if code == v[3]),
        spatial_dims=_unpadded(v[dims_at:shape_at]),
        keeps=bool(v[6]),
        state=AccumulatorState(
            partials=tuple(p for p in v[partials_at:masked_at] if p),
            n_patterns=int(v[0]),
            pattern_shape=shape or None,
            integer_like={-1.0: None, 0.0: False, 1.0: True}[v[1]],
            masked=bool(v[2]),
            pixels=int(v[4]),
            masked_pixels=None if v[5] < 0 else int(v[5]),
            masked_partials=tuple(p for p in v[masked_at:] if p),
        ),
    )


def combine_ranks(
    ranks: Sequence[Packed],
    domain: Domain,
    spatial_dims: Sequence[int],
    keep_pattern_totals: bool,
) -> AccumulatorState:
    """Every rank's state folded in rank order: what ``all_reduce`` gives each rank.

    Raises:
        StateError: a rank whose domain, spatial axes or pattern shape differ.
    """
    combined = empty_state(keep_pattern_totals)
    for rank, r in enumerate(ranks):
        try:
            check_compatible(r.domain, r.spatial_dims, domain, spatial_dims)
            combined = fold(combined, r.state)
        except (StateError, NonFiniteError) as exc:
            raise StateError(f"all_reduce: rank {rank}'s state does not fit: {exc}") from None
    return combined


def check_compatible(
    domain: str, spatial_dims: Sequence[int], own_domain: str, own_dims: Sequence[int]
) -> None:
    """Refuse to combine a state of another domain or other spatial axes."""
    if domain != own_domain:
        raise StateError(f"cannot combine a {domain!r}-domain state with a {own_domain!r} one")
    if tuple(spatial_dims) != tuple(own_dims):
        raise StateError(
            f"cannot combine states with spatial_dims {tuple(spatial_dims)} and {tuple(own_dims)}"
        )


# ---------------------------------------------------------------- state_dict
def _pattern_totals(value: Any, n_patterns: int) -> torch.Tensor | None:
    """A state's per-pattern totals: None, or ``n_patterns`` finite numbers >= 0."""
    if value is None:
        return None
    ok = (
        isinstance(value, list | tuple)
        and len(value) == n_patterns
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    )
    if ok:
        try:
            out = torch.tensor([float(v) for v in value], dtype=torch.float64)
        except OverflowError:
            ok = False
        else:
            ok = bool(out.isfinite().all()) and bool((out >= 0).all())
    if not ok:
        raise StateError(
            f"state pattern_totals must be null or a list of {n_patterns} finite numbers >= 0 "
            f"(one per pattern), got {value!r:.80}"
        )
    return out


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise StateError(
            f"state {name} must be a non-negative int (at most 2**63 - 1), got {value!r:.80}"
        )
    return value


def _int_list(value: Any, name: str, low: int, high: int) -> tuple[int, ...]:
    ok = isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in value
    )
    if not ok:
        raise StateError(
            f"state {name} must be a list of ints from {low} to {high}, got {value!r:.80}"
        )
    return tuple(value)


def _partials(value: Any, name: str) -> list[float]:
    """A list of finite floats with a finite, non-negative exact sum."""
    ok = (
        isinstance(value, list | tuple)
        and len(value) <= _MAX_PARTIALS
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    )
    if ok:
        try:
            out = [float(v) for v in value]
            total = math.fsum(out)
        except (OverflowError, ValueError):
            ok = False
        else:
            ok = all(math.isfinite(v) for v in out) and math.isfinite(total) and total >= 0.0
            # Partials that the sum wrote never cancel: the largest is the total to
            # within rounding. [1e308, -1e308, 1] sums to 1, but no sum made it.
            ok = ok and max(map(abs, out), default=0.0) <= total * (1.0 + 2.0**-40)
    if not ok:
        raise StateError(
            f"state {name} must be the exact partials of a sum: a list of at most "
            f"{_MAX_PARTIALS} finite numbers with a finite, non-negative sum that none of "
            f"them exceeds, got {preview(value, 80)}"
        )
    return out


def state_to_dict(
    state: AccumulatorState, domain: Domain, spatial_dims: Sequence[int]
) -> dict[str, Any]:
    """The state as plain Python data (JSON- and ``weights_only``-safe), version 2."""
    totals = joined_totals(state)
    return {
        "version": _STATE_VERSION,
        "domain": domain,
        "spatial_dims": list(spatial_dims),
        "n_patterns": state.n_patterns,
        "total_partials": list(state.partials),
        "pattern_shape": None if state.pattern_shape is None else list(state.pattern_shape),
        "integer_like": state.integer_like,
        "masked": state.masked,
        "pixels": state.pixels,
        "masked_pixels": state.masked_pixels,
        "masked_partials": list(state.masked_partials),
        "pattern_totals": None if totals is None else totals.tolist(),
    }


def state_from_dict(
    state: Mapping[str, Any],
    domain: Domain,
    spatial_dims: Sequence[int],
    keep_pattern_totals: bool,
) -> AccumulatorState:
    """Validate a `state_to_dict` mapping (version 1 or 2) for an accumulator.

    Every field is checked (types, ranges, consistency, and that its domain
    and spatial axes are ``domain`` and ``spatial_dims``).

    Raises:
        StateError: what is wrong with the state.
    """
    if not isinstance(state, Mapping):
        raise StateError(f"state must be a mapping, got {type(state).__name__}")
    version = state.get("version")
    if isinstance(version, bool) or version not in _READABLE_STATE_VERSIONS:
        raise StateError(
            f"accumulator state version {version!r} is not supported (this physscale "
            f"reads versions {', '.join(map(str, _READABLE_STATE_VERSIONS))})"
        )
    expected = _STATE_KEYS_V1 if version == 1 else _STATE_KEYS
    if set(state) != expected:
        raise StateError(
            f"state keys {sorted(map(str, state))} do not match the expected "
            f"{sorted(expected)} of a version-{version} state"
        )
    found, dims = state["domain"], _int_list(state["spatial_dims"], "spatial_dims", -64, 63)
    if found not in _DOMAIN_CODES or not dims or len(dims) > _MAX_PATTERN_DIMS:
        raise StateError(
            f"state domain {found!r} / spatial_dims {state['spatial_dims']!r} are not valid"
        )
    check_compatible(found, dims, domain, spatial_dims)
    n = _count(state["n_patterns"], "n_patterns")
    shape = state["pattern_shape"]
    pattern_shape = None
    if shape is not None:
        pattern_shape = _int_list(shape, "pattern_shape", 1, _MAX_PATTERN_SIZE)
        if not pattern_shape or len(pattern_shape) > _MAX_PATTERN_DIMS:
            raise StateError(f"state pattern_shape must have 1 to 8 sizes, got {shape!r}")
    if (pattern_shape is None) != (n == 0):
        raise StateError("state pattern_shape must be given exactly when n_patterns > 0")
    for flag, allowed in (("integer_like", (None, True, False)), ("masked", (True, False))):
        if not any(state[flag] is a for a in allowed):
            raise StateError(f"state {flag} must be one of {allowed}, got {state[flag]!r}")
    pixels = n * math.prod(pattern_shape or ())
    masked_pixels: int | None = 0 if not state["masked"] else None
    masked_partials: list[float] = []
    pattern_totals: torch.Tensor | None = None
    if version != 1:
        if _count(state["pixels"], "pixels") != pixels:
            raise StateError(
                f"state pixels {state['pixels']!r} is not n_patterns x the pattern's "
                f"pixel count ({pixels})"
            )
        if state["masked_pixels"] is not None:
            masked_pixels = _count(state["masked_pixels"], "masked_pixels")
            if masked_pixels > pixels or (masked_pixels and not state["masked"]):
                raise StateError(
                    f"state masked_pixels {masked_pixels} does not fit pixels {pixels} "
                    f"and masked={state['masked']!r}"
                )
        masked_partials = _partials(state["masked_partials"], "masked_partials")
        pattern_totals = _pattern_totals(state["pattern_totals"], n)
    loaded = AccumulatorState(
        partials=tuple(_partials(state["total_partials"], "total_partials")),
        n_patterns=n,
        pattern_shape=pattern_shape,
        integer_like=state["integer_like"],
        masked=state["masked"],
        pixels=pixels,
        masked_pixels=masked_pixels,
        masked_partials=tuple(masked_partials),
        pattern_totals=None if pattern_totals is None else (pattern_totals,),
    )
    # Folded into an empty state: the partials are re-summed exactly, and the
    # same checks as a merge apply (totals present when kept).
    return fold(empty_state(keep_pattern_totals), loaded)


# ---------------------------------------------------------------- the warnings of compute
def _warn_mask(state: AccumulatorState, scale: float) -> None:
    removed = state.masked_intensity_fraction
    if removed is None or removed <= MASK_WARNING_FRACTION:
        return
    pixels = state.masked_pixel_fraction or 0.0
    ratio = math.sqrt(1.0 / (1.0 - removed)) if removed < 1.0 else math.inf
    warnings.warn(
        f"the mask removes {removed:.1%} of the data's intensity ({pixels:.1%} of its "
        f"pixels). nphotons is assigned to the unmasked pixels only, so the scale "
        f"({scale:.6g}) is {ratio:.3g}x the one derived without the mask. The mask "
        f"marks valid pixels (True = valid pixel). If the masked pixels are bad (gaps, "
        f"dead or hot pixels, marker values such as 2**32-1 or 65535), keep the mask: "
        f"this scale is right, and normalized data should hold 0 there "
        f"(physscale.normalize_counts writes 0 at excluded pixels). If they hold real "
        f"photons that nphotons counts (a beamstop's region of whole patterns), that "
        f"nphotons is not the one of the valid pixels: state nphotons for the valid "
        f"pixels, or check that the mask is not inverted",
        MaskWarning,
        stacklevel=3,
    )


def _warn_units(state: AccumulatorState, domain: Domain, scale: float, nphotons: float) -> None:
    kind = "amplitudes" if domain == "amplitude" else "intensities"
    if state.integer_like:
        warnings.warn(
            f"the data look like raw photon counts, not normalized {kind}: sampled "
            f"intensities are whole numbers, and a scale derived from counts is "
            f"meaningless. {counts_next_step()}",
            UnitsWarning,
            stacklevel=3,
        )
    elif abs(scale - 1.0) < 0.05:
        warnings.warn(
            f"the derived scale is {scale:.4g}, about 1: the data's mean per-pattern "
            f"intensity ({state.mean_intensity:.6g}) already equals nphotons "
            f"({nphotons:.6g}). The data may be in photon counts rather than normalized "
            f"{kind}; if not, silence physscale.UnitsWarning",
            UnitsWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------- the class
class IntensityAccumulator:
    """Accumulate the mean per-pattern intensity of a dataset, batch by batch.

    Args:
        spatial_dims: the axes of one pattern (default the last two). Every
            other axis of a batch counts patterns. Negative indices resolve
            per batch, so batches of different rank are fine.
        domain: ``"amplitude"`` (batches hold normalized amplitudes, summed
            as ``x**2``) or ``"intensity"`` (batches hold intensities).
        layout: optional shortcut, ``"NCHW"`` or ``"NHWC"``.
        keep_pattern_totals: also keep every pattern's own total (8 bytes a
            pattern), for the diagnostics of `pattern_stats` and for
            `excluding` frames. It uses the eager kernel, which reduces
            each pattern separately.

    Streaming over any iterable of batches gives the same scale as one call
    of [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale] on their
    concatenation, to float64 rounding. The state is an `AccumulatorState`; every method
    is a call of this module's pure functions on it.
    """

    def __init__(
        self,
        spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
        domain: Domain = "amplitude",
        *,
        layout: str | None = None,
        keep_pattern_totals: bool = False,
    ) -> None:
        self.domain: Domain = check_option(domain, ("amplitude", "intensity"), "domain")
        if not isinstance(keep_pattern_totals, bool):
            raise StateError(
                f"keep_pattern_totals must be True or False, got {preview(keep_pattern_totals)}"
            )
        self.keep_pattern_totals = keep_pattern_totals
        # Checks types, emptiness and layout conflicts now; ranges per batch.
        spatial_axes(_ANY_RANK, spatial_dims, layout)
        dims = LAYOUTS[layout] if layout is not None else spatial_dims
        self.spatial_dims: tuple[int, ...] = tuple(int(d) for d in dims)
        # Defaulted axes are checked against each batch's shape (the layout guard);
        # axes the caller named are trusted.
        self.axes_explicit = layout is not None or spatial_dims is not DEFAULT_SPATIAL_DIMS
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._state = empty_state(self.keep_pattern_totals)

    # ------------------------------------------------------------------ update
    def update(self, batch: Any, mask: Any = None) -> IntensityAccumulator:
        """Fold one batch in and return ``self``.

        Args:
            batch: torch.Tensor or numpy.ndarray of normalized amplitudes
                (or intensities for ``domain="intensity"``), real floating
                dtype, any shape with the spatial axes given at construction.
                A ``numpy.ma.MaskedArray``'s masked entries are left out, as
                if passed in ``mask``.
            mask: optional boolean valid-pixel mask (True = use the pixel):
                the pattern's shape, e.g. ``(H, W)``, applied along the
                spatial axes in any layout, or any shape that broadcasts to
                ``batch``. Excluded pixels add nothing to a pattern's sum.

        Raises:
            AmbiguousLayoutError: the axes were defaulted and ``batch`` looks
                channels-last (see
                [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale]).
        """
        return self.update_named(batch, mask, "batch")

    def update_named(self, batch: Any, mask: Any, name: str) -> IntensityAccumulator:
        """``update``, with error messages calling the data ``name`` (e.g. "x")."""
        part = batch_state(
            batch,
            mask,
            name,
            domain=self.domain,
            spatial_dims=self.spatial_dims,
            axes_explicit=self.axes_explicit,
            per_pattern=self.keep_pattern_totals,
            # Once one batch is not whole counts, the dataset is not (the flag is an AND).
            units_check=self._state.integer_like is not False,
        )
        self._state = fold(self._state, part)
        return self

    def update_all(self, batches: Iterable[Any]) -> IntensityAccumulator:
        """``update`` with every batch of an iterable; returns ``self``."""
        for batch in batches:
            self.update(batch)
        return self

    # (the io helper's hook for patterns larger than a reader's chunk)
    def update_fragments(
        self,
        shape: Sequence[int],
        fragments: Iterable[tuple[tuple[int | slice, ...], Any]],
        mask: Any = None,
        *,
        name: str = "batch",
    ) -> IntensityAccumulator:
        """Fold in one batch of ``shape`` that arrives in pieces; returns ``self``.

        For batches too large to hold in memory (a pattern larger than a
        file reader's chunk). ``fragments`` yields ``(index, piece)`` pairs:
        ``piece`` is ``batch[index]`` (basic indexing with ints and slices),
        and the pieces cover the batch exactly once, in any order. Only one
        piece needs to exist at a time. The result equals
        ``update(batch, mask)`` to float64 rounding; the state changes only
        once every piece is summed, so an error leaves it unchanged. With
        ``keep_pattern_totals``, each piece's sums are added to the patterns
        it belongs to (8 bytes a pattern of the batch), so every pattern
        gets its total however the pieces cut it.

        Args:
            shape: the whole batch's shape (its spatial axes as for ``update``).
            fragments: ``(index, piece)`` pairs; pieces are numpy arrays or
                tensors of real floats.
            mask: optional boolean valid-pixel mask, as for ``update``.
            name: how error messages call the data (e.g. a file's name).

        Raises:
            StateError: a piece whose shape does not match its index, or pieces
                that do not add up to the batch.
            AmbiguousLayoutError: as for ``update``.
        """
        part = fragments_state(
            shape,
            fragments,
            mask,
            name,
            domain=self.domain,
            spatial_dims=self.spatial_dims,
            axes_explicit=self.axes_explicit,
            per_pattern=self.keep_pattern_totals,
        )
        self._state = fold(self._state, part)
        return self

    # ------------------------------------------------------------------ combine
    def merge(self, other: IntensityAccumulator) -> IntensityAccumulator:
        """Fold another accumulator's state into this one; returns ``self``."""
        if not isinstance(other, IntensityAccumulator):
            raise StateError(f"can only merge an IntensityAccumulator, got {type(other).__name__}")
        check_compatible(other.domain, other.spatial_dims, self.domain, self.spatial_dims)
        self._state = fold(self._state, other._state)
        return self

    def all_reduce(self, group: Any = None) -> IntensityAccumulator:
        """Combine the state of every rank of a ``torch.distributed`` group, in place.

        Every rank ends with the same state: each gathers all ranks' exact
        partials and folds them in rank order, so the result is bitwise
        identical across ranks and equal to a single-process pass over the
        same batches. Ranks with no data (an empty shard) are fine.
        Works with gloo (CPU tensors) and NCCL (CUDA tensors). Every rank of
        ``group`` must call it (it is a collective).

        Raises:
            StateError: no initialized process group; or ranks whose domain,
                spatial_dims or pattern shape differ (raised on every rank,
                each of which keeps its own state unchanged).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise StateError(
                "all_reduce needs an initialized torch.distributed process group "
                "(torch.distributed.init_process_group)"
            )
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        mine = pack(self._state, self.domain, self.spatial_dims, self.keep_pattern_totals)
        mine = mine.to(device)
        gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, mine, group=group)
        ranks = [unpack(packed.cpu()) for packed in gathered]
        # Per-pattern totals travel in a second gather, padded to the longest rank's, and
        # only when every rank keeps them (every rank decides alike: no rank waits alone).
        longest = max(r.state.n_patterns for r in ranks)
        if all(r.keeps for r in ranks) and longest:
            padded = torch.zeros(longest, dtype=torch.float64)
            own = self.pattern_totals
            if own is not None:
                padded[: own.numel()] = own
            padded = padded.to(device)
            totals = [torch.empty_like(padded) for _ in ranks]
            dist.all_gather(totals, padded, group=group)
            for r, t in zip(ranks, totals, strict=True):
                r.state = r.state._replace(pattern_totals=(t[: r.state.n_patterns].cpu(),))
        # Every rank sees the same gathered data, so every rank refuses alike.
        self._state = combine_ranks(ranks, self.domain, self.spatial_dims, self.keep_pattern_totals)
        return self

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The state as plain Python data (JSON- and ``weights_only``-safe)."""
        return state_to_dict(self._state, self.domain, self.spatial_dims)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by `state_dict` (version 1 or 2), validating it.

        Every field is checked (types, ranges, consistency) before anything
        changes; a refused state raises [`StateError`][physscale.errors.StateError] and
        leaves the accumulator as it was.
        """
        self._state = state_from_dict(
            state, self.domain, self.spatial_dims, self.keep_pattern_totals
        )

    # ------------------------------------------------------------------ results
    @property
    def n_patterns(self) -> int:
        """Number of patterns seen."""
        return self._state.n_patterns

    @property
    def pattern_shape(self) -> tuple[int, ...] | None:
        """Sizes of the spatial axes of the patterns seen (None before any)."""
        return self._state.pattern_shape

    @property
    def total_intensity(self) -> float:
        """Sum over every pattern of its (unmasked) intensity, normalized units, float64."""
        return self._state.total_intensity

    @property
    def mean_intensity(self) -> float:
        """Mean per-pattern intensity ``sum(x**2)`` (or ``sum(x)``), normalized units."""
        return self._state.mean_intensity

    @property
    def masked(self) -> bool:
        """Whether any batch was folded in with a valid-pixel mask."""
        return self._state.masked

    @property
    def pattern_totals(self) -> torch.Tensor | None:
        """Each pattern's total intensity, in the order seen (float64 CPU tensor).

        None unless the accumulator was made with ``keep_pattern_totals=True``.
        Same units as `mean_intensity` (normalized ``sum(x**2)`` or ``sum(x)``).
        """
        totals = joined_totals(self._state)
        if totals is not None and len(self._state.pattern_totals or ()) > 1:
            self._state = self._state._replace(pattern_totals=(totals,))  # join once
        return totals

    @property
    def masked_pixel_fraction(self) -> float | None:
        """With a mask: the fraction of all pixels seen that it excluded (else None)."""
        return self._state.masked_pixel_fraction

    @property
    def masked_intensity_fraction(self) -> float | None:
        """With a mask: the fraction of the intensity that lay in excluded pixels.

        The excluded intensity counts the excluded pixels' finite values >= 0
        (NaN, infinities and negative dead-pixel flags are left out). None
        without a mask, or when it is unknown (a version-1 state was loaded).
        """
        return self._state.masked_intensity_fraction

    @property
    def integer_like(self) -> bool | None:
        """Whether every batch's sample looked like whole counts (None before any)."""
        return self._state.integer_like

    def pattern_stats(self, rule: OutlierRule | None = None) -> PatternStats:
        """The spread of the per-pattern totals and the frames ``rule`` flags.

        See `physscale.diagnostics`. Nothing is excluded; for that, use
        `excluding`. Needs ``keep_pattern_totals=True``.
        """
        return pattern_stats(required_totals(self._state, "pattern_stats()"), rule)

    def outlier_frames(self, rule: OutlierRule | None = None) -> list[int]:
        """Indices of the frames ``rule`` flags (near zero or far from the median)."""
        near_zero, far = flag_outliers(required_totals(self._state, "outlier_frames()"), rule)
        return (near_zero | far).nonzero().reshape(-1).tolist()

    def excluding(self, frames: Iterable[int] | torch.Tensor) -> IntensityAccumulator:
        """A new accumulator over every pattern but ``frames``; this one is unchanged.

        Args:
            frames: indices of patterns in the order they were accumulated
                (as `pattern_totals` and `pattern_stats` count them).

        The total is the exact sum of the kept patterns' totals (each rounded
        once to float64), so however bright an excluded frame was, the result
        is that of the kept patterns to float64 rounding. With a mask,
        the masked fractions of what remains are unknown (None). Needs
        ``keep_pattern_totals=True``.

        Raises:
            StateError: no per-pattern totals; indices that are not distinct
                ints in range; excluding every pattern.
        """
        state = exclude_frames(self._state, frames)
        out = IntensityAccumulator(self.spatial_dims, self.domain, keep_pattern_totals=True)
        out.axes_explicit = self.axes_explicit
        out._state = state
        return out

    # ------------------------------------------------------------------ compute
    def scale_for(self, target: float) -> float:
        """``sqrt(target / mean_intensity)`` as a float, with no units check.

        The factor that brings the mean per-pattern intensity to ``target``:
        the physics scale for ``target = nphotons``, the amplitude
        normalization factor for ``target = (N/2)**2``
        (`physscale.core.scale.scale_from_totals`).
        """
        return self._state.scale_for(target)

    def intensity_scale(self, nphotons: Any) -> torch.Tensor:
        """The physics scale ``sqrt(nphotons / mean_intensity)``, a 0-d float64 CPU tensor.

        Emits [`physscale.UnitsWarning`][physscale.UnitsWarning] when the data looks like raw
        counts rather than normalized values (SPEC failure mode 4), and
        [`physscale.MaskWarning`][physscale.MaskWarning] when a mask removed most of the intensity.
        """
        n = positive_finite(nphotons, "nphotons")
        self.check_mask_coverage()
        value = self.scale_for(n)
        _warn_units(self._state, self.domain, value, n)
        _warn_mask(self._state, value)
        return torch.tensor(value, dtype=torch.float64)

    def check_mask_coverage(self, where: str = "the mask", *, refuse: bool = False) -> None:
        """Name an inverted mask before it gives a plausible wrong scale.

        Raises [`MaskError`][physscale.errors.MaskError] when the masks excluded every
        pixel, or the valid pixels are all zero (the data's intensity lies
        only in excluded pixels); warns [`MaskWarning`][physscale.MaskWarning] when
        they excluded most pixels, or raises with ``refuse`` above 90 % (see
        `physscale.core.checks.check_mask_coverage`).
        """
        state = self._state
        if not state.masked or state.masked_pixels is None:
            return
        check_mask_coverage(state.masked_pixels, state.pixels, where, refuse=refuse)
        if state.n_patterns and state.total_intensity == 0.0 and math.fsum(state.masked_partials):
            raise MaskError(
                f"every valid pixel is zero and all of the data's intensity lies in the "
                f"pixels {where} excludes: the mask looks inverted. {MASK_POLARITY}"
            )

    def __repr__(self) -> str:
        return (
            f"IntensityAccumulator(domain={self.domain!r}, spatial_dims={self.spatial_dims}, "
            f"n_patterns={self.n_patterns}, pattern_shape={self.pattern_shape})"
        )
