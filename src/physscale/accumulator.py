"""IntensityAccumulator: the streaming form of the scale derivation.

Modelled on torchmetrics' metric state: ``update`` folds a batch in, ``merge``
combines two accumulators, ``all_reduce`` combines every rank's state, and
``intensity_scale`` is a pure function of the state. The running total is kept
as exact floating-point partials (Shewchuk's algorithm, as in ``math.fsum``),
so merging is exactly associative and commutative and the final total is the
correctly rounded sum of every batch's float64 total.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from physscale._checks import (
    DEFAULT_SPATIAL_DIMS,
    LAYOUTS,
    as_float_tensor,
    as_mask,
    check_option,
    positive_finite,
    spatial_axes,
)
from physscale._intensity_sum import Domain, intensity_sum
from physscale.errors import EmptyInputError, StateError, UnitsWarning, ZeroIntensityError

__all__ = ["IntensityAccumulator"]

_STATE_VERSION = 1
# Shewchuk partials of a float64 sum never need more than this many terms
# (one per binary exponent band of width 53 over the float64 range).
_MAX_PARTIALS = 40
# Slots for pattern_shape in the fixed-size all_reduce message.
_MAX_PATTERN_DIMS = 8
# A rank large enough that any sensible axis index is in range.
_ANY_RANK = 64
# Domains as numbers in the all_reduce message.
_DOMAIN_CODES: dict[Domain, float] = {"amplitude": 0.0, "intensity": 1.0}


def _padded(values: Sequence[int]) -> list[float]:
    """A length-prefixed, zero-padded float slot list for the all_reduce message."""
    return [float(len(values)), *map(float, values), *[0.0] * (_MAX_PATTERN_DIMS - len(values))]


def _unpadded(slots: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(v) for v in slots[1 : 1 + int(slots[0])])


def _grow(partials: list[float], x: float) -> list[float]:
    """Add ``x`` to a list of non-overlapping partials, exactly (Shewchuk 1997)."""
    if x == 0.0:
        return partials
    out: list[float] = []
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            out.append(lo)
        x = hi
    out.append(x)
    return out


class IntensityAccumulator:
    """Accumulate the mean per-pattern intensity of a dataset, batch by batch.

    Args:
        spatial_dims: the axes of one pattern (default the last two). Every
            other axis of a batch counts patterns. Negative indices resolve
            per batch, so batches of different rank are fine.
        domain: ``"amplitude"`` (batches hold normalized amplitudes, summed
            as ``x**2``) or ``"intensity"`` (batches hold intensities).
        layout: optional shortcut, ``"NCHW"`` or ``"NHWC"``.

    Streaming over any iterable of batches gives the same scale as one call
    of :func:`physscale.derive_intensity_scale` on their concatenation, to
    float64 rounding.
    """

    def __init__(
        self,
        spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
        domain: Domain = "amplitude",
        *,
        layout: str | None = None,
    ) -> None:
        self.domain: Domain = check_option(domain, ("amplitude", "intensity"), "domain")
        # Checks types, emptiness and layout conflicts now; ranges per batch.
        spatial_axes(_ANY_RANK, spatial_dims, layout)
        dims = LAYOUTS[layout] if layout is not None else spatial_dims
        self.spatial_dims: tuple[int, ...] = tuple(int(d) for d in dims)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._partials: list[float] = []
        self._n_patterns = 0
        self._pattern_shape: tuple[int, ...] | None = None
        self._integer_like: bool | None = None
        self._masked = False

    # ------------------------------------------------------------------ update
    def update(self, batch: Any, mask: Any = None) -> IntensityAccumulator:
        """Fold one batch in and return ``self``.

        Args:
            batch: torch.Tensor or numpy.ndarray of normalized amplitudes
                (or intensities for ``domain="intensity"``), real floating
                dtype, any shape with the spatial axes given at construction.
            mask: optional boolean valid-pixel mask broadcastable to ``batch``.
        """
        return self.update_named(batch, mask, "batch")

    def update_named(self, batch: Any, mask: Any, name: str) -> IntensityAccumulator:
        """``update``, with error messages calling the data ``name`` (e.g. "x")."""
        x = as_float_tensor(batch, name)
        axes = spatial_axes(x.ndim, self.spatial_dims)
        m = None if mask is None else as_mask(mask, x.shape, x.device)
        part = intensity_sum(x, axes, self.domain, m, name=name)
        self._masked = self._masked or (m is not None and part.n_patterns > 0)
        self._fold(part.total, part.n_patterns, part.pattern_shape, part.integer_like)
        return self

    def update_all(self, batches: Iterable[Any]) -> IntensityAccumulator:
        """``update`` with every batch of an iterable; returns ``self``."""
        for batch in batches:
            self.update(batch)
        return self

    # ------------------------------------------------------------------ fragments
    # (the io helper's hook for patterns larger than a reader's chunk)
    def update_fragments(
        self,
        shape: Sequence[int],
        fragments: Iterable[tuple[tuple[int | slice, ...], Any]],
        mask: Any = None,
    ) -> IntensityAccumulator:
        """Fold in one batch of ``shape`` that arrives in pieces; returns ``self``.

        For batches too large to hold in memory (a pattern larger than a
        file reader's chunk). ``fragments`` yields ``(index, piece)`` pairs:
        ``piece`` is ``batch[index]`` (basic indexing with ints and slices),
        and the pieces cover the batch exactly once, in any order. Only one
        piece needs to exist at a time. The result equals
        ``update(batch, mask)`` to float64 rounding; the state changes only
        once every piece is summed, so an error leaves it unchanged.

        Args:
            shape: the whole batch's shape (its spatial axes as for ``update``).
            fragments: ``(index, piece)`` pairs; pieces are numpy arrays or
                tensors of real floats.
            mask: optional boolean valid-pixel mask broadcastable to ``shape``.

        Raises:
            StateError: a piece whose shape does not match its index, or
                pieces that do not add up to the batch.
        """
        batch = torch.Size(int(s) for s in shape)
        axes = spatial_axes(len(batch), self.spatial_dims)
        pattern_shape = tuple(batch[a] for a in axes)
        if math.prod(pattern_shape) == 0:
            raise EmptyInputError(f"batch shape {tuple(batch)} has patterns with no pixels")
        layout = torch.empty((), dtype=torch.bool).expand(batch)  # shapes only, no memory
        m = None if mask is None else as_mask(mask, batch, torch.device("cpu"))
        partials: list[float] = []
        integer_like: bool | None = None
        covered = 0
        for index, piece in fragments:
            x = as_float_tensor(piece, "batch")
            if x.shape != layout[index].shape:
                raise StateError(
                    f"fragment at {index} has shape {tuple(x.shape)}, expected "
                    f"{tuple(layout[index].shape)} for a batch of shape {tuple(batch)}"
                )
            if x.numel() == 0:
                continue
            part_mask = None if m is None else m[index].to(x.device)
            part = intensity_sum(x, tuple(range(x.ndim)), self.domain, part_mask, name="batch")
            partials = _grow(partials, part.total)
            integer_like = part.integer_like and integer_like is not False
            covered += x.numel()
        if covered != batch.numel():
            raise StateError(
                f"fragments cover {covered} of the batch's {batch.numel()} elements; each "
                f"element must be in exactly one fragment"
            )
        n_patterns = batch.numel() // math.prod(pattern_shape)
        self._fold_partials(partials, n_patterns, pattern_shape, integer_like)
        self._masked = self._masked or (m is not None and n_patterns > 0)
        return self

    def _fold(
        self,
        total: float,
        n_patterns: int,
        pattern_shape: tuple[int, ...] | None,
        integer_like: bool | None,
    ) -> None:
        """Add one batch's (or one rank's) total, count and flags to the state."""
        if n_patterns == 0:
            return
        if self._pattern_shape is not None and pattern_shape != self._pattern_shape:
            raise StateError(
                f"pattern shape {pattern_shape} differs from the {self._pattern_shape} seen "
                f"before; one accumulator must see patterns of one shape"
            )
        self._pattern_shape = pattern_shape
        self._partials = _grow(self._partials, total)
        self._n_patterns += n_patterns
        if integer_like is not None:
            self._integer_like = integer_like and self._integer_like is not False

    # ------------------------------------------------------------------ combine
    def merge(self, other: IntensityAccumulator) -> IntensityAccumulator:
        """Fold another accumulator's state into this one; returns ``self``."""
        if not isinstance(other, IntensityAccumulator):
            raise StateError(f"can only merge an IntensityAccumulator, got {type(other).__name__}")
        self._check_compatible(other.domain, other.spatial_dims)
        self._fold_partials(other._partials, other._n_patterns, other._pattern_shape,
                            other._integer_like)  # fmt: skip
        self._masked = self._masked or other._masked
        return self

    def _fold_partials(
        self,
        partials: Sequence[float],
        n_patterns: int,
        pattern_shape: tuple[int, ...] | None,
        integer_like: bool | None,
    ) -> None:
        # Exact: each partial is added without rounding, the first with the counts.
        self._fold(partials[0] if partials else 0.0, n_patterns, pattern_shape, integer_like)
        if n_patterns:
            for p in partials[1:]:
                self._partials = _grow(self._partials, p)

    def _check_compatible(self, domain: str, spatial_dims: Sequence[int]) -> None:
        if domain != self.domain:
            raise StateError(f"cannot combine a {domain!r}-domain state with a {self.domain!r} one")
        if tuple(spatial_dims) != self.spatial_dims:
            raise StateError(
                f"cannot combine states with spatial_dims {tuple(spatial_dims)} and "
                f"{self.spatial_dims}"
            )

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
        mine = self._pack().to(device)
        gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, mine, group=group)
        # Fold into a fresh accumulator so a refused reduction leaves self as it was;
        # every rank sees the same gathered data, so every rank refuses alike.
        combined = IntensityAccumulator(self.spatial_dims, self.domain)
        for rank, packed in enumerate(gathered):
            combined._unpack_into(packed.cpu(), rank)
        self._partials = combined._partials
        self._n_patterns = combined._n_patterns
        self._pattern_shape = combined._pattern_shape
        self._integer_like = combined._integer_like
        self._masked = combined._masked
        return self

    def _pack(self) -> torch.Tensor:
        if len(self._partials) > _MAX_PARTIALS:  # pragma: no cover - impossible for float64
            raise StateError("internal: too many partials to pack")
        shape = self._pattern_shape or ()
        if len(shape) > _MAX_PATTERN_DIMS or len(self.spatial_dims) > _MAX_PATTERN_DIMS:
            raise StateError(f"all_reduce supports patterns of at most {_MAX_PATTERN_DIMS} axes")
        header = [
            float(self._n_patterns),
            {None: -1.0, False: 0.0, True: 1.0}[self._integer_like],
            float(self._masked),
            _DOMAIN_CODES[self.domain],
            *_padded(self.spatial_dims),
            *_padded(shape),
        ]
        partials = self._partials + [0.0] * (_MAX_PARTIALS - len(self._partials))
        return torch.tensor(header + partials, dtype=torch.float64)

    def _unpack_into(self, packed: torch.Tensor, rank: int) -> None:
        values = packed.tolist()
        n_patterns = int(values[0])
        integer_like = {-1.0: None, 0.0: False, 1.0: True}[values[1]]
        masked = bool(values[2])
        domain = next(d for d, code in _DOMAIN_CODES.items() if code == values[3])
        spatial_dims = _unpadded(values[4 : 5 + _MAX_PATTERN_DIMS])
        shape = _unpadded(values[5 + _MAX_PATTERN_DIMS : 6 + 2 * _MAX_PATTERN_DIMS])
        partials = [p for p in values[6 + 2 * _MAX_PATTERN_DIMS :] if p]
        try:
            self._check_compatible(domain, spatial_dims)
            self._fold_partials(partials, n_patterns, shape, integer_like)
        except StateError as exc:
            raise StateError(f"all_reduce: rank {rank}'s state does not fit: {exc}") from None
        self._masked = self._masked or masked

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The state as plain Python data (JSON- and ``weights_only``-safe)."""
        return {
            "version": _STATE_VERSION,
            "domain": self.domain,
            "spatial_dims": list(self.spatial_dims),
            "n_patterns": self._n_patterns,
            "total_partials": list(self._partials),
            "pattern_shape": None if self._pattern_shape is None else list(self._pattern_shape),
            "integer_like": self._integer_like,
            "masked": self._masked,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`, validating it."""
        if not isinstance(state, Mapping):
            raise StateError(f"state must be a mapping, got {type(state).__name__}")
        expected = {"version", "domain", "spatial_dims", "n_patterns", "total_partials",
                    "pattern_shape", "integer_like", "masked"}  # fmt: skip
        if set(state) != expected:
            raise StateError(
                f"state keys {sorted(state)} do not match the expected {sorted(expected)}"
            )
        if state["version"] != _STATE_VERSION:
            raise StateError(
                f"accumulator state version {state['version']!r} is not supported "
                f"(this physscale writes version {_STATE_VERSION})"
            )
        self._check_compatible(state["domain"], state["spatial_dims"])
        n = state["n_patterns"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise StateError(f"state n_patterns must be a non-negative int, got {n!r}")
        partials = [float(p) for p in state["total_partials"]]
        if not all(math.isfinite(p) for p in partials) or math.fsum(partials) < 0:
            raise StateError("state total_partials must be finite with a non-negative sum")
        shape = state["pattern_shape"]
        if (shape is None) != (n == 0):
            raise StateError("state pattern_shape must be given exactly when n_patterns > 0")
        if state["integer_like"] not in (None, True, False):
            raise StateError(
                f"state integer_like must be a bool or None, got {state['integer_like']!r}"
            )
        self.reset()
        pattern_shape = None if shape is None else tuple(int(s) for s in shape)
        self._fold_partials(partials, n, pattern_shape, state["integer_like"])
        self._masked = bool(state["masked"])

    # ------------------------------------------------------------------ results
    @property
    def n_patterns(self) -> int:
        """Number of patterns seen."""
        return self._n_patterns

    @property
    def pattern_shape(self) -> tuple[int, ...] | None:
        """Sizes of the spatial axes of the patterns seen (None before any)."""
        return self._pattern_shape

    @property
    def total_intensity(self) -> float:
        """Sum over every pattern of its (unmasked) intensity, normalized units, float64."""
        return math.fsum(self._partials)

    @property
    def mean_intensity(self) -> float:
        """Mean per-pattern intensity ``sum(x**2)`` (or ``sum(x)``), normalized units."""
        if self._n_patterns == 0:
            raise EmptyInputError("no patterns have been accumulated yet; call update() first")
        return self.total_intensity / self._n_patterns

    @property
    def masked(self) -> bool:
        """Whether any batch was folded in with a valid-pixel mask."""
        return self._masked

    @property
    def integer_like(self) -> bool | None:
        """Whether every batch's sample looked like whole counts (None before any)."""
        return self._integer_like

    def scale_for(self, target: float) -> float:
        """``sqrt(target / mean_intensity)`` as a float, with no units check.

        The factor that brings the mean per-pattern intensity to ``target``:
        the physics scale for ``target = nphotons``, the amplitude
        normalization factor for ``target = (N/2)**2``.
        """
        mean = self.mean_intensity
        if mean == 0.0:
            raise ZeroIntensityError(
                f"the total intensity of all {self._n_patterns} pattern(s) is zero; "
                f"no scale maps all-zero data to a positive photon count"
            )
        value = math.sqrt(target / mean)
        if not math.isfinite(value):
            raise ZeroIntensityError(
                f"the mean per-pattern intensity {mean!r} is too small for a finite scale"
            )
        return value

    def intensity_scale(self, nphotons: Any) -> torch.Tensor:
        """The physics scale ``sqrt(nphotons / mean_intensity)``, a 0-d float64 CPU tensor.

        Emits :class:`physscale.UnitsWarning` when the data looks like raw
        counts rather than normalized values (SPEC failure mode 4).
        """
        n = positive_finite(nphotons, "nphotons")
        value = self.scale_for(n)
        self._check_units(value, n)
        return torch.tensor(value, dtype=torch.float64)

    def _check_units(self, scale: float, nphotons: float) -> None:
        kind = "amplitudes" if self.domain == "amplitude" else "intensities"
        if self._integer_like:
            warnings.warn(
                f"the data look like raw photon counts, not normalized {kind}: sampled "
                f"intensities are whole numbers. Normalize first (see "
                f"physscale.normalize_amplitudes) or the scale will be meaningless",
                UnitsWarning,
                stacklevel=3,
            )
        elif abs(scale - 1.0) < 0.05:
            warnings.warn(
                f"the derived scale is {scale:.4g}, about 1: the data's mean per-pattern "
                f"intensity ({self.mean_intensity:.6g}) already equals nphotons "
                f"({nphotons:.6g}). The data may be in photon counts rather than normalized "
                f"{kind}; if not, silence physscale.UnitsWarning",
                UnitsWarning,
                stacklevel=3,
            )

    def __repr__(self) -> str:
        return (
            f"IntensityAccumulator(domain={self.domain!r}, spatial_dims={self.spatial_dims}, "
            f"n_patterns={self._n_patterns}, pattern_shape={self._pattern_shape})"
        )
