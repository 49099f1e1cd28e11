"""Deriving the scale from a rank's ``DataLoader`` and reducing over ranks.

Under DDP each rank sees one shard (a ``DistributedSampler``); the scale must
still be the dataset's. `derive_from_dataloader` streams the rank's
batches into an [`IntensityAccumulator`][physscale.IntensityAccumulator], combines every
rank's state with [`all_reduce`][physscale.IntensityAccumulator.all_reduce] (exact:
the same bits as one process over the same batches), and returns the record,
identical on every rank. ``torch.distributed`` does the communication.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from physscale.accumulator import IntensityAccumulator
from physscale.attach import DATA_KEYS
from physscale.core.checks import DEFAULT_SPATIAL_DIMS
from physscale.core.kernels.sums import Domain
from physscale.core.nphotons import resolve_nphotons
from physscale.derive import derive_scale_record
from physscale.errors import StateError
from physscale.record import ScaleRecord

__all__ = ["accumulate_batches", "batch_data", "derive_from_dataloader", "is_distributed"]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialized."""
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized())


def batch_data(batch: Any, key: str | int | None = None) -> Any:
    """The normalized-amplitude tensor inside one batch.

    Args:
        batch: a tensor or array (returned as is), a dict (``batch[key]``;
            without ``key``, whichever one of ``"X"`` and ``"diffraction"`` it
            has; both is an error), or a tuple/list
            (``batch[key]``, default element 0, the usual ``(inputs, targets)``).
        key: the dict key or sequence index of the data.
    """
    if isinstance(batch, Mapping):
        if key is None:
            found = [k for k in DATA_KEYS if k in batch]
            if len(found) != 1:
                # Guessing between two candidate fields would be silent and arbitrary.
                raise StateError(
                    f"a dict batch needs key=... naming its amplitudes (looked for "
                    f"{list(DATA_KEYS)}, the batch has {sorted(map(str, batch))})"
                )
            key = found[0]
        if key not in batch:
            raise StateError(f"the dict batch has no {key!r} entry (it has {sorted(batch)})")
        return batch[key]
    if isinstance(batch, list | tuple):
        index = 0 if key is None else key
        if not isinstance(index, int) or not -len(batch) <= index < len(batch):
            raise StateError(
                f"key={key!r} does not index a batch that is a {type(batch).__name__} of "
                f"{len(batch)} elements"
            )
        return batch[index]
    if key is not None:
        raise StateError(f"key={key!r} given, but the batch is a {type(batch).__name__}")
    return batch


def accumulate_batches(
    batches: Iterable[Any],
    accumulator: IntensityAccumulator,
    *,
    key: str | int | None = None,
    mask: Any = None,
) -> IntensityAccumulator:
    """Fold the data of every batch of ``batches`` into ``accumulator``; returns it."""
    for batch in batches:
        accumulator.update(batch_data(batch, key), mask=mask)
    return accumulator


def derive_from_dataloader(
    loader: Iterable[Any],
    *,
    nphotons: Any = None,
    metadata: Any = None,
    config: Any = None,
    default: Any = None,
    key: str | int | None = None,
    spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
    layout: str | None = None,
    domain: Domain = "amplitude",
    mask: Any = None,
    reduce: bool = True,
    group: Any = None,
    data_source: str | None = None,
) -> ScaleRecord:
    """Derive the scale record from a (rank's) ``DataLoader``, reduced over ranks.

    Args:
        loader: any iterable of batches; under DDP, this rank's loader (its
            ``DistributedSampler`` shard; an empty shard is fine).
        nphotons: the explicit value, as for
            [`physscale.resolve_nphotons`][physscale.resolve_nphotons].
        metadata: as for [`physscale.resolve_nphotons`][physscale.resolve_nphotons].
        config: as for [`physscale.resolve_nphotons`][physscale.resolve_nphotons].
        default: as for [`physscale.resolve_nphotons`][physscale.resolve_nphotons].
        key: where the normalized amplitudes are in a batch (see `batch_data`).
        spatial_dims: the batch's spatial axes, as for
            [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        layout: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        domain: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        mask: optional boolean valid-pixel mask applied to every batch.
        reduce: combine all ranks' statistics when a process group is
            initialized (every rank must then call this). ``False``: this
            rank's data only. Without a process group there is nothing to combine.
        group: the ``torch.distributed`` process group (default: the world).
        data_source: free text stored in the record.

    Returns:
        The [`ScaleRecord`][physscale.ScaleRecord], the same on every rank when reduced.

    Example:
        >>> import torch, physscale as ps
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.full((8, 1, 8, 8), 0.5)), batch_size=3)
        >>> record = ps.derive_from_dataloader(loader, nphotons=1e4, key=0, layout="NCHW")
        >>> record.n_patterns, round(record.intensity_scale, 6)
        (8, 25.0)
    """
    # Resolve first: a missing nphotons should fail before a pass over the data.
    resolve_nphotons(metadata, config, explicit=nphotons, default=default)
    acc = IntensityAccumulator(spatial_dims, domain, layout=layout)
    with torch.no_grad():
        accumulate_batches(loader, acc, key=key, mask=mask)
    if reduce and is_distributed():
        acc.all_reduce(group)
    return derive_scale_record(
        acc,
        nphotons=nphotons,
        metadata=metadata,
        config=config,
        default=default,
        data_source=data_source,
    )
