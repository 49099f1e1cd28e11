"""Attaching the scale to training data, and handing it to batches in a safe shape.

Three helpers for the plumbing between a dataset and the loss:

- `attach_intensity_scale`: the whole "attach the physics scale" step of
  a ptychography pipeline in one call. It resolves nphotons (the container's
  metadata first), derives the scale once from the container's training
  amplitudes, and stores the scale, its [`ScaleRecord`][physscale.ScaleRecord] and
  the nphotons source on the container.
- `scale_for_batch`: reshapes a scale (one number, or one per sample)
  so it broadcasts against a ``(B, C, H, W)`` or ``(B, H, W, C)`` batch the
  only right way, and refuses shapes that could broadcast wrongly.
- `collate_with_scale`: a ``DataLoader`` ``collate_fn`` for datasets
  whose samples carry their own scale; it stacks the scales to
  ``(B, 1, 1, 1)``, never ``(B,)`` (SPEC failure mode 1: a ``(B,)`` scale
  times a ``(B, C, H, W)`` batch silently scales along the *last* axis, W).

The attached scale is a 0-d float64 CPU tensor: 0-d tensors broadcast against
any layout and, as torch's type promotion treats them like Python numbers,
multiplying a float32 (or CUDA) batch by one neither upcasts nor moves it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from physscale.core.checks import (
    DEFAULT_SPATIAL_DIMS,
    LAYOUTS,
    check_concrete,
    check_option,
    scalar_scale,
)
from physscale.core.kernels.sums import Domain
from physscale.core.preview import preview
from physscale.core.validation import is_validation_enabled
from physscale.derive import derive_scale_record
from physscale.errors import (
    BroadcastError,
    DtypeError,
    NegativeValueError,
    NonFiniteError,
    StateError,
)
from physscale.record import ScaleRecord

__all__ = [
    "DATA_KEYS",
    "NPHOTONS_SOURCE_FIELD",
    "RECORD_FIELD",
    "SCALE_FIELD",
    "attach_intensity_scale",
    "collate_with_scale",
    "scale_for_batch",
]

#: Where `attach_intensity_scale` puts the 0-d scale tensor.
SCALE_FIELD = "intensity_scale"
#: Where it puts the [`ScaleRecord`][physscale.ScaleRecord].
RECORD_FIELD = "physscale_record"
#: Where it puts the nphotons source (``"explicit"``, ``"metadata"``, ...).
NPHOTONS_SOURCE_FIELD = "nphotons_source"
#: Data keys tried, in order, when ``key`` is not given.
DATA_KEYS = ("X", "diffraction")


#: Tells an absent field from one that holds None.
_MISSING = object()


#: The highest rank ``collate_with_scale`` shapes a scale for (torch allows 64 axes).
_MAX_RANK = 64


def _lookup(container: Any, name: str, default: Any = None) -> Any:
    """``container[name]`` (a mapping) or ``container.name``; ``default`` when absent.

    One read per field: a property that loads the data is evaluated once
    (``hasattr`` followed by ``getattr`` would evaluate it twice).
    """
    if isinstance(container, Mapping):
        return container.get(name, default)
    return getattr(container, name, default)


def _set(container: Any, name: str, value: Any) -> None:
    if isinstance(container, MutableMapping):
        container[name] = value
    elif isinstance(container, Mapping):
        raise StateError(
            f"cannot attach {name!r} to a read-only {type(container).__name__}; pass a dict"
        )
    else:
        try:
            setattr(container, name, value)
        except AttributeError as exc:  # __slots__, frozen dataclasses, read-only properties
            raise StateError(
                f"cannot attach {name!r} to the {type(container).__name__} ({exc}); pass a "
                f"dict or an object that accepts new attributes"
            ) from None


def _training_data(container: Any, key: str | None) -> Any:
    """The value of the container's data field: ``key``, or the one of ``DATA_KEYS`` it has."""
    if key is not None:
        data = _lookup(container, key, _MISSING)
        if data is _MISSING:
            raise StateError(
                f"the container ({type(container).__name__}) has no {preview(key, 80)} "
                f"{'key' if isinstance(container, Mapping) else 'attribute'}"
            )
        return data
    candidates = {k: _lookup(container, k) for k in DATA_KEYS}
    found = {k: v for k, v in candidates.items() if v is not None}
    if len(found) != 1:
        names = list(found)
        what = "none" if not names else f"both {names[0]!r} and {names[1]!r}"
        raise StateError(
            f"cannot tell which field of the {type(container).__name__} holds the normalized "
            f"amplitudes (looked for {list(DATA_KEYS)}, found {what}); pass key=..."
        )
    return next(iter(found.values()))


def attach_intensity_scale(
    container: Any,
    *,
    nphotons: Any = None,
    config: Any = None,
    default: Any = None,
    record: ScaleRecord | None = None,
    key: str | None = None,
    layout: str | None = None,
    spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
    domain: Domain = "amplitude",
    mask: Any = None,
    data_source: str | None = None,
    overwrite: bool = False,
) -> ScaleRecord:
    """Derive the physics scale of a training container once and attach it.

    The container is a dict or any object holding the training split's
    normalized diffraction amplitudes (under ``key``; by default whichever
    of ``"X"`` or ``"diffraction"`` it has) and, optionally, PtychoPINN-style
    metadata (``container.metadata`` or ``container["metadata"]``,
    ``{"physics_parameters": {"nphotons": ...}}``).

    Afterwards the container holds (as attributes, or keys for a dict):

    - ``intensity_scale``: the scale ``s`` as a 0-d float64 CPU tensor, ready to
      multiply any batch (counts are ``(s * x)**2``);
    - ``physscale_record``: the [`ScaleRecord`][physscale.ScaleRecord];
    - ``nphotons_source``: where nphotons came from.

    Args:
        container: dict or object holding the training amplitudes.
        nphotons: explicit photons per pattern; overrides metadata (SPEC §4).
        config: a mapping or object with an ``nphotons`` entry, used when
            neither ``nphotons`` nor metadata gives one.
        default: the value of last resort.
        record: attach this record instead of deriving one: use it for
            validation, test and inference containers, which must carry the
            *training* scale, never one derived from their own data.
        key: the field holding the data, a ``(..., H, W)`` (or NHWC) real
            float tensor or array of normalized amplitudes.
        layout: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        spatial_dims: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        domain: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        mask: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        data_source: free text stored in the record.
        overwrite: replace a record already attached; by default attaching
            twice is an error, so the scale is derived once.

    Returns:
        The attached [`ScaleRecord`][physscale.ScaleRecord].

    Raises:
        StateError: a record is already attached (and not ``overwrite``), the
            data field is missing or ambiguous, or ``record`` was given with
            derivation arguments.

    Example:
        >>> import torch, physscale as ps
        >>> train = {"X": torch.full((4, 1, 8, 8), 0.5),
        ...          "metadata": {"physics_parameters": {"nphotons": 1e4}}}
        >>> record = ps.attach_intensity_scale(train, layout="NCHW")
        >>> record.nphotons_source, round(float(train["intensity_scale"]), 6)
        ('metadata', 25.0)
    """
    check_attach_arguments(
        container,
        attached=_lookup(container, RECORD_FIELD),
        record=record,
        overwrite=overwrite,
        derivation={"nphotons": nphotons, "config": config, "default": default, "mask": mask},
    )
    if record is None:
        record = derive_scale_record(
            _training_data(container, key),
            nphotons=nphotons,
            metadata=_lookup(container, "metadata"),
            config=config,
            default=default,
            data_source=data_source,
            spatial_dims=spatial_dims,
            layout=layout,
            domain=domain,
            mask=mask,
        )
    _set(container, SCALE_FIELD, torch.tensor(record.intensity_scale, dtype=torch.float64))
    _set(container, RECORD_FIELD, record)
    _set(container, NPHOTONS_SOURCE_FIELD, record.nphotons_source)
    return record


def check_attach_arguments(
    container: Any,
    *,
    attached: Any,
    record: ScaleRecord | None,
    overwrite: bool,
    derivation: Mapping[str, Any],
) -> None:
    """The rules every attach shares (here and in the adapters).

    The scale is derived once: a container that already holds a record
    (``attached``) is refused unless ``overwrite``. ``record=`` attaches an
    existing scale, so arguments that only steer a new derivation
    (``derivation``, by name) may not come with it.
    """
    if attached is not None and not overwrite:
        raise StateError(
            f"this {type(container).__name__} already has a {RECORD_FIELD}; the scale is "
            f"derived once from the training data. Pass overwrite=True to replace it"
        )
    if record is None:
        return
    if not isinstance(record, ScaleRecord):
        raise StateError(f"record must be a physscale.ScaleRecord, got {type(record).__name__}")
    clashing = [name for name, value in derivation.items() if value is not None]
    if clashing:
        raise StateError(
            f"record= attaches an existing scale; {', '.join(clashing)} would only "
            f"apply to a new derivation, so do not pass them with it"
        )


def _check_values(scale: torch.Tensor, where: str) -> None:
    """Dtype and layout always; the values (one host sync) only with validation on."""
    if scale.layout != torch.strided:
        raise DtypeError(f"{where} must be a dense tensor, got layout {scale.layout}")
    if not scale.is_floating_point():
        raise DtypeError(
            f"{where} must be a real floating-point tensor, got dtype {scale.dtype}; "
            f"a bool or integer scale is almost certainly a mistake"
        )
    if not is_validation_enabled():
        return  # the sync-free path (physscale.set_validation(False))
    check_concrete(scale, where)
    values = scale.detach()
    finite = torch.isfinite(values)
    # One host sync on the usual (valid) path: this runs for every batch.
    if bool((finite & (values > 0)).all()):
        return
    if not bool(finite.all()):
        raise NonFiniteError(f"{where} holds NaN or infinite values")
    raise NegativeValueError(f"{where} must be > 0 everywhere (counts are (scale * x)**2)")


def scale_for_batch(scale: Any, batch: torch.Tensor, layout: str | None = "NCHW") -> torch.Tensor:
    """Return ``scale`` in the shape that broadcasts correctly against ``batch``.

    Args:
        scale: one scale (a float, a 0-d or one-element tensor, a
            [`ScaleRecord`][physscale.ScaleRecord], or an ``IntensityScaler``'s
            ``.scale``) or one scale per sample: a tensor of shape ``(B,)``
            or ``(B, 1, ..., 1)``.
        batch: the batch it will multiply, ``(B, C, H, W)`` for
            ``layout="NCHW"``, ``(B, H, W, C)`` for ``"NHWC"``; any rank
            ``>= 1`` with the sample axis first for ``layout=None``.
        layout: ``"NCHW"``, ``"NHWC"`` (both require a 4-D batch; the sample
            axis is first in both) or ``None``.

    Returns:
        A 0-d tensor for one scale (float64 for a number or record), or a
        ``(B, 1, ..., 1)`` tensor with ``batch.ndim`` axes for per-sample
        scales, on ``batch``'s device. A tensor scale keeps its dtype and
        autograd graph (a trainable scaler still learns through it).

    Raises:
        BroadcastError: a scale shape that is not one of the above, or a
            per-sample scale whose length is not the batch size.
        AxisError / OptionError: a batch that does not fit ``layout``.

    Example:
        >>> import torch, physscale as ps
        >>> batch = torch.ones(3, 1, 8, 8)
        >>> ps.scale_for_batch(torch.tensor([1.0, 2.0, 3.0]), batch).shape  # never (3,)
        torch.Size([3, 1, 1, 1])
    """
    if not isinstance(batch, torch.Tensor):
        raise BroadcastError(f"batch must be a torch.Tensor, got {type(batch).__name__}")
    if layout is not None:
        name = check_option(layout, tuple(LAYOUTS), "layout")
        if batch.ndim != 4:
            raise BroadcastError(
                f"a {name} batch must have 4 axes, got shape {tuple(batch.shape)}; "
                f"pass layout=None for other ranks"
            )
    if batch.ndim == 0:
        raise BroadcastError("batch must have a sample axis, got a 0-d tensor")
    if not isinstance(scale, torch.Tensor):
        value = scalar_scale(scale, "scale")
        return torch.tensor(value, dtype=torch.float64, device=batch.device)
    n = batch.shape[0]
    if scale.numel() == 1 and (scale.ndim <= 1 or n != 1):
        # One number. (B == 1 with a (1, 1, 1, 1) scale falls through to the
        # per-sample path, which gives the same answer.)
        _check_values(scale, "scale")
        return scale.reshape(()).to(batch.device)
    per_sample = scale.ndim >= 1 and scale.shape[0] == n and all(d == 1 for d in scale.shape[1:])
    if not per_sample or scale.ndim > batch.ndim:
        raise BroadcastError(
            f"a scale of shape {tuple(scale.shape)} is ambiguous against a batch of shape "
            f"{tuple(batch.shape)}: give one number (0-d) or one per sample, shape ({n},) "
            f"or ({n}, 1, ..., 1)"
        )
    _check_values(scale, "per-sample scale")
    return scale.reshape((n,) + (1,) * (batch.ndim - 1)).to(batch.device)


def _one_scale(value: Any, i: int, key: str) -> torch.Tensor:
    """One sample's scale as a 0-d tensor (its own dtype; float64 for a number or a record).

    ``torch.stack`` then promotes mixed dtypes, as ``default_collate`` would not.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise BroadcastError(
                f"sample {i} has a {preview(key, 80)} of shape {tuple(value.shape)}; each sample "
                f"must carry one number"
            )
        return value.reshape(())
    return torch.tensor(
        scalar_scale(value, f"sample {i}'s {preview(key, 80)}"), dtype=torch.float64
    )


def collate_with_scale(
    samples: Sequence[Mapping[str, Any]],
    *,
    scale_key: str = SCALE_FIELD,
    like: str | None = None,
    ndim: int = 4,
) -> dict[str, Any]:
    """``DataLoader`` ``collate_fn`` for dict samples that carry a per-sample scale.

    Everything is collated by ``torch.utils.data.default_collate``; the scales
    under ``scale_key`` are then shaped ``(B, 1, ..., 1)`` so they broadcast
    per sample against the batch, where ``default_collate`` would give a
    ``(B,)`` tensor that broadcasts along the last axis instead.

    Use ``functools.partial(collate_with_scale, like="X")`` to set options.

    Args:
        samples: dicts; each holds one scale (float or 0-d / one-element
            tensor) under ``scale_key``.
        scale_key: the key of the per-sample scale.
        like: the key of the data the scale will multiply; the scale gets
            that batch's rank. Without it, ``ndim`` axes (4: NCHW or NHWC).
        ndim: the rank of the scale tensor when ``like`` is not given.

    Returns:
        The collated dict, ``batch[scale_key]`` of shape ``(B, 1, ..., 1)``.

    Example:
        >>> import torch, physscale as ps
        >>> samples = [{"X": torch.ones(1, 8, 8), "intensity_scale": 10.0 + i} for i in range(3)]
        >>> batch = ps.collate_with_scale(samples, like="X")
        >>> batch["X"].shape, batch["intensity_scale"].shape
        (torch.Size([3, 1, 8, 8]), torch.Size([3, 1, 1, 1]))
    """
    if not isinstance(samples, Sequence) or isinstance(samples, str | bytes):
        raise BroadcastError(
            f"samples must be a list of dict samples, got {type(samples).__name__}"
        )
    if not samples:
        raise BroadcastError("collate_with_scale needs at least one sample")
    for i, sample in enumerate(samples):
        if not isinstance(sample, Mapping) or scale_key not in sample:
            raise BroadcastError(
                f"sample {i} is not a dict with a {preview(scale_key, 80)} entry "
                f"(got {type(sample).__name__}); collate_with_scale is for dict samples"
            )
    # One 0-d tensor per sample, so that a float beside a tensor, or a 0-d tensor
    # beside a (1,) one, collate alike (default_collate refuses mixed forms).
    scales = torch.stack([_one_scale(s[scale_key], i, scale_key) for i, s in enumerate(samples)])
    rest = [{k: v for k, v in s.items() if k != scale_key} for s in samples]
    batch: dict[str, Any] = default_collate(rest)
    if isinstance(ndim, bool) or not isinstance(ndim, int) or not 0 <= ndim <= _MAX_RANK:
        raise BroadcastError(
            f"ndim must be an int from 1 to {_MAX_RANK} (the batch's rank), got "
            f"{type(ndim).__name__} {preview(ndim, 40)}"
        )
    rank = ndim
    if like is not None:
        ref = batch.get(like)
        if not isinstance(ref, torch.Tensor):
            raise BroadcastError(
                f"like={preview(like, 80)} does not name a tensor field of the samples"
            )
        rank = ref.ndim
    if rank < 1:
        raise BroadcastError(f"the scale needs at least one axis, got ndim={rank}")
    _check_values(scales, f"per-sample {preview(scale_key, 80)}")
    batch[scale_key] = scales.reshape((len(samples),) + (1,) * (rank - 1))
    return batch
