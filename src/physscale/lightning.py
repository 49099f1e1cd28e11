"""PyTorch Lightning integration:
[`PhysicsScaleCallback`][physscale.lightning.PhysicsScaleCallback] (extra ``lightning``).

At fit start the callback derives the physics scale from the training
dataloader on every rank, reduces it over ranks, and hands it to the
LightningModule. It stores the record in every checkpoint and restores it on
load, so resuming never re-derives.

What the module receives (the contract):

- ``pl_module.physscale_record``: the [`ScaleRecord`][physscale.ScaleRecord] the run
  uses (derived at the first fit, or restored from the checkpoint). If the
  attribute is already set (not None) when fit starts, nothing is derived.
- ``pl_module.on_physscale_record(record)``: called, if the module defines
  it, each time a record is attached (derived or restored).
- an [`IntensityScaler`][physscale.nn.IntensityScaler] on the module (the one named by
  ``scaler_attribute``, or the only one among ``pl_module.modules()``) is
  set to the derived scale in place, keeping its ``trainable`` flag and its
  place in the optimizer. Checkpoints then store ``scaler.to_record()``: the
  *trained* value. On resume, the scaler's weights come back with the
  module's state dict.

Loading for inference without a Trainer (``Module.load_from_checkpoint``)
does not run callbacks; call [`restore_record`][physscale.lightning.restore_record] from the
module's own
``on_load_checkpoint(checkpoint)``, or read it with
[`physscale.io.record_from_checkpoint`][physscale.io.record_from_checkpoint].
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:
    raise ImportError(
        "physscale.lightning needs PyTorch Lightning: pip install 'physscale[lightning]' "
        "(or pip install lightning)"
    ) from exc

from physscale.core.checks import DEFAULT_SPATIAL_DIMS
from physscale.core.kernels.sums import Domain
from physscale.distributed import derive_from_dataloader
from physscale.errors import FrozenScaleWarning, RecordError, StateError
from physscale.io.checkpoint import CHECKPOINT_KEY, record_from_checkpoint, record_to_checkpoint
from physscale.nn import IntensityScaler
from physscale.record import ScaleRecord

__all__ = ["RECORD_ATTRIBUTE", "PhysicsScaleCallback", "find_scaler", "restore_record"]

RECORD_ATTRIBUTE = "physscale_record"
"""The LightningModule attribute that holds the record."""
#: The optional LightningModule hook called with each attached record.
RECORD_HOOK = "on_physscale_record"


def find_scaler(module: Any, attribute: str | None = None) -> IntensityScaler | None:
    """The module's [`IntensityScaler`][physscale.nn.IntensityScaler], or None if it has none.

    Args:
        module: an ``nn.Module`` (a LightningModule).
        attribute: dotted attribute path of the scaler (``"model.scaler"``);
            without it, the only IntensityScaler among ``module.modules()``.

    Raises:
        StateError: ``attribute`` is not an IntensityScaler, or there are
            several scalers and no ``attribute`` says which.

    Examples:
        >>> import torch
        >>> from physscale.lightning import find_scaler
        >>> from physscale.nn import IntensityScaler
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3), IntensityScaler(31.25))
        >>> find_scaler(model) is model[1]
        True
        >>> find_scaler(torch.nn.Linear(2, 2)) is None
        True
    """
    if attribute is not None:
        found: Any = module
        for part in attribute.split("."):
            found = getattr(found, part, None)
        if not isinstance(found, IntensityScaler):
            raise StateError(
                f"scaler_attribute={attribute!r} is {type(found).__name__} on the module, "
                f"not a physscale.nn.IntensityScaler"
            )
        return found
    scalers = [m for m in module.modules() if isinstance(m, IntensityScaler)]
    if len(scalers) > 1:
        names = [n for n, m in module.named_modules() if isinstance(m, IntensityScaler)]
        raise StateError(
            f"the module holds {len(scalers)} IntensityScalers ({names}); pass "
            f"scaler_attribute=... to say which one carries the physics scale"
        )
    return scalers[0] if scalers else None


def _attach(module: Any, record: ScaleRecord) -> None:
    setattr(module, RECORD_ATTRIBUTE, record)
    hook = getattr(module, RECORD_HOOK, None)
    if callable(hook):
        hook(record)


def restore_record(module: Any, checkpoint: Mapping[str, Any]) -> ScaleRecord:
    """Attach the record stored in ``checkpoint`` to ``module`` and return it.

    For a LightningModule's ``on_load_checkpoint(self, checkpoint)``, so that
    ``load_from_checkpoint`` restores the record too. Never derives.

    Raises:
        RecordError: the checkpoint holds no (valid) physscale record.

    Examples:
        >>> import torch, physscale as ps
        >>> from physscale.io import record_to_checkpoint
        >>> from physscale.lightning import restore_record
        >>> checkpoint = record_to_checkpoint({}, ps.closed_form_scale_record(1e6, 64))
        >>> module = torch.nn.Linear(2, 2)
        >>> restore_record(module, checkpoint).intensity_scale
        31.25
    """
    record = record_from_checkpoint(checkpoint)
    _attach(module, record)
    return record


def _check_scaler_optimized(trainer: Any, module: Any, attribute: str | None) -> None:
    """Warn when the module's trainable scaler is in no optimizer's param groups."""
    try:
        scaler = find_scaler(module, attribute)
    except (RecordError, StateError, AttributeError, TypeError):
        return  # an ambiguous or missing scaler is reported where it is used
    optimizers = list(getattr(trainer, "optimizers", None) or [])
    if scaler is None or not scaler.trainable or not optimizers:
        return
    param = scaler.log_scale
    held = any(
        p is param for opt in optimizers for group in opt.param_groups for p in group["params"]
    )
    if not held:
        warnings.warn(
            f"the module's IntensityScaler is trainable, but its log_scale is in none of the "
            f"{len(optimizers)} optimizer(s)' param groups, so the scale will never learn. "
            f"Build the optimizer from the module's parameters with the scaler inside the "
            f"module (torch.optim.Adam(self.parameters()) in configure_optimizers), or "
            f"freeze it (IntensityScaler(..., trainable=False))",
            FrozenScaleWarning,
            stacklevel=2,
        )


class PhysicsScaleCallback(pl.Callback):
    """Derive the physics scale at fit start, hand it to the module, checkpoint it.

    Args:
        nphotons: explicit photons per pattern (overrides everything).
        metadata: PtychoPINN-style metadata, or the training data container
            holding it (an object with ``.metadata`` or a dict with a
            ``"metadata"`` entry, read as
            [`physscale.attach_intensity_scale`][physscale.attach_intensity_scale]
            reads it); wins over ``config``.
        config: a mapping or object with ``nphotons``.
        default: the value of last resort.
        dataloader: the loader to derive from; default the trainer's training
            dataloader (with Lightning's DistributedSampler under DDP).
        key: where a batch keeps its normalized amplitudes (dict key or
            tuple index; see `physscale.distributed.batch_data`).
        spatial_dims: the batch's spatial axes, as for
            [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        layout: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        domain: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        mask: as for [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        scaler_attribute: dotted path of the module's IntensityScaler, if
            it holds several.
        data_source: free text stored in the record.

    Under DDP every rank derives from its own shard and the statistics are
    all-reduced ([`all_reduce`][physscale.IntensityAccumulator.all_reduce]), so
    every rank gets the same record. Lightning's DistributedSampler pads
    shards by repeating up to ``world_size - 1`` samples; those repeats are
    counted. For the exact dataset scale pass a ``dataloader`` whose sampler
    does not pad (``sampler=range(rank, n, world_size)``).
    """

    def __init__(
        self,
        *,
        nphotons: Any = None,
        metadata: Any = None,
        config: Any = None,
        default: Any = None,
        dataloader: Iterable[Any] | None = None,
        key: str | int | None = None,
        spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
        layout: str | None = None,
        domain: Domain = "amplitude",
        mask: Any = None,
        scaler_attribute: str | None = None,
        data_source: str | None = None,
    ) -> None:
        super().__init__()
        self.nphotons, self.metadata, self.config, self.default = (
            nphotons,
            metadata,
            config,
            default,
        )
        self.dataloader = dataloader
        self.key = key
        self.spatial_dims, self.layout, self.domain, self.mask = spatial_dims, layout, domain, mask
        self.scaler_attribute = scaler_attribute
        self.data_source = data_source
        #: How many times this callback derived a scale (0 after a resume).
        self.derivations = 0

    # ------------------------------------------------------------------ derive
    def _train_loader(self, trainer: pl.Trainer) -> Iterable[Any]:
        if self.dataloader is not None:
            return self.dataloader
        # on_fit_start runs before the fit loop builds its dataloader; building
        # it now is what the loop would do first (and it does not rebuild it).
        trainer.fit_loop.setup_data()
        loader = trainer.train_dataloader
        if loader is None:
            raise StateError(
                "the trainer has no training dataloader to derive the physics scale from; "
                "pass PhysicsScaleCallback(dataloader=...) or nphotons with a record"
            )
        if isinstance(loader, Mapping | list | tuple):
            raise StateError(
                "the trainer has several training dataloaders; pass "
                "PhysicsScaleCallback(dataloader=...) naming the one to derive from"
            )
        return loader  # type: ignore[no-any-return]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Derive, reduce and attach the record, unless one is attached or coming.

        First checks that a trainable scaler's ``log_scale`` is in an optimizer's
        param groups (else [`FrozenScaleWarning`][physscale.errors.FrozenScaleWarning]: the
        scale would silently never learn).
        """
        _check_scaler_optimized(trainer, pl_module, self.scaler_attribute)
        if getattr(pl_module, RECORD_ATTRIBUTE, None) is not None:
            return  # restored from a checkpoint, set by the user, or an earlier fit
        if trainer.ckpt_path is not None:
            return  # resuming: on_load_checkpoint brings the record (never re-derive)
        record = derive_from_dataloader(
            self._train_loader(trainer),
            nphotons=self.nphotons,
            metadata=self.metadata,
            config=self.config,
            default=self.default,
            key=self.key,
            spatial_dims=self.spatial_dims,
            layout=self.layout,
            domain=self.domain,
            mask=self.mask,
            data_source=self.data_source,
        )
        self.derivations += 1
        scaler = find_scaler(pl_module, self.scaler_attribute)
        if scaler is not None:
            # In place: the optimizer already holds this parameter.
            dtype = scaler.log_scale.dtype
            fresh = IntensityScaler(record, trainable=scaler.trainable, dtype=dtype)
            scaler.load_state_dict(fresh.state_dict())
        _attach(pl_module, record)

    # ------------------------------------------------------------------ persist
    def current_record(self, pl_module: pl.LightningModule) -> ScaleRecord | None:
        """The record to save: the scaler's current (trained) one, else the attached one."""
        record: ScaleRecord | None = getattr(pl_module, RECORD_ATTRIBUTE, None)
        if record is None:
            return None
        scaler = find_scaler(pl_module, self.scaler_attribute)
        return record if scaler is None else scaler.to_record()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Store the current record as ``checkpoint["physscale_record"]`` (JSON text)."""
        record = self.current_record(pl_module)
        if record is not None:
            record_to_checkpoint(checkpoint, record)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Attach the checkpoint's record to the module; a checkpoint without one is an error."""
        if CHECKPOINT_KEY not in checkpoint:
            raise RecordError(
                "resuming from a checkpoint that holds no physscale record, so the scale "
                "the weights were trained with is unknown; resume from a checkpoint saved "
                "with PhysicsScaleCallback, or set pl_module.physscale_record yourself "
                "before fitting without ckpt_path"
            )
        restore_record(pl_module, checkpoint)
