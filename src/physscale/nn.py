"""The ``torch.nn`` side of physscale: the scale as a module parameter.

:class:`IntensityScaler` holds the physics scale as a registered log-scale
parameter, with TF PtychoPINN's convention (SPEC §2): ``normalize`` divides by
``exp(log_scale)`` and ``denormalize`` multiplies by it.

:class:`ScaledPoissonNLLLoss` is :func:`physscale.scaled_poisson_nll` as a
module: a fixed scale held as a buffer, or an :class:`IntensityScaler` whose
log-scale then learns through the loss.

Named ``nn`` after ``torch.nn``; a submodule named ``torch`` would shadow
``import torch`` inside the package.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from torch import nn

from physscale._checks import check_option, positive_finite
from physscale.errors import DtypeError, RecordError
from physscale.likelihood import (
    DOMAINS,
    FORMS,
    REDUCTIONS,
    Domain,
    Form,
    Reduction,
    scalar_scale,
    scaled_poisson_nll,
)
from physscale.record import ScaleRecord

__all__ = ["IntensityScaler", "ScaledPoissonNLLLoss"]

#: Tag of the extra state an IntensityScaler saves in its ``state_dict``.
_EXTRA_STATE_FORMAT = "physscale.IntensityScaler/1"


class IntensityScaler(nn.Module):
    """The physics intensity scale as a (optionally trainable) log-scale parameter.

    TF convention (SPEC §2): the model input is divided by ``exp(log_scale)``
    (:meth:`normalize`) and the output amplitude multiplied by it
    (:meth:`denormalize`). ``log_scale`` is a registered ``nn.Parameter``, so
    it is in ``parameters()`` and ``state_dict()``, reaches an optimizer, and
    moves with ``.to(device)``; it has ``requires_grad=False`` when frozen.

    The :class:`~physscale.ScaleRecord` the scaler was built from (or its
    initial value and nphotons) is saved with the weights as a JSON string
    (``get_extra_state``), so ``torch.load(..., weights_only=True)`` can read a
    saved ``state_dict`` and :meth:`to_record` still knows the provenance.

    Args:
        scale_or_record: the intensity scale ``s`` (amplitude factor; counts
            are ``(s * x)**2``): a positive finite float, a 0-d tensor, or a
            ``ScaleRecord``.
        trainable: whether ``log_scale`` learns (TF
            ``intensity_scale.trainable``).
        nphotons: photons per pattern the scale stands for. Only for a bare
            scale, and only needed by :meth:`to_record` (a record requires
            nphotons); a ``ScaleRecord`` carries its own.
        dtype: floating dtype of ``log_scale`` (default ``torch.float32``,
            like TF's variable); it follows ``module.to(dtype)`` afterwards.
    """

    log_scale: nn.Parameter

    def __init__(
        self,
        scale_or_record: ScaleRecord | float | torch.Tensor,
        trainable: bool = False,
        *,
        nphotons: float | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(trainable, bool):
            raise DtypeError(f"trainable must be True or False, got {trainable!r}")
        record = scale_or_record if isinstance(scale_or_record, ScaleRecord) else None
        if record is not None and nphotons is not None:
            raise RecordError(
                "nphotons comes from the ScaleRecord; do not pass nphotons with a record "
                f"(the record says {record.nphotons!r})"
            )
        initial = scalar_scale(scale_or_record, "IntensityScaler scale")
        self._record: ScaleRecord | None = record
        self._initial_scale: float = initial
        self._nphotons: float | None = (
            None if nphotons is None else positive_finite(nphotons, "IntensityScaler nphotons")
        )
        value = torch.tensor(math.log(initial), dtype=dtype or torch.float32)
        self.log_scale = nn.Parameter(value, requires_grad=trainable)

    @classmethod
    def from_record(cls, record: ScaleRecord, trainable: bool = False) -> IntensityScaler:
        """A scaler starting at ``record.intensity_scale`` that remembers the record."""
        if not isinstance(record, ScaleRecord):
            raise RecordError(
                f"from_record needs a physscale.ScaleRecord, got {type(record).__name__}"
            )
        return cls(record, trainable=trainable)

    @property
    def trainable(self) -> bool:
        """Whether ``log_scale`` currently requires grad."""
        return bool(self.log_scale.requires_grad)

    @property
    def scale(self) -> torch.Tensor:
        """The current scale ``exp(log_scale)``, a 0-d tensor (differentiable if trainable)."""
        return torch.exp(self.log_scale)

    @property
    def initial_scale(self) -> float:
        """The scale this scaler started from (the record's, or the bare value)."""
        return self._initial_scale

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x / exp(log_scale)``: physical amplitudes to normalized (TF IntensityScaler)."""
        return x / torch.exp(self.log_scale)

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        """``y * exp(log_scale)``: normalized amplitudes to physical (TF IntensityScaler_inv)."""
        return y * torch.exp(self.log_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`normalize` (the TF layer's call)."""
        return self.normalize(x)

    def _moved(self, current: float) -> bool:
        # Whether log_scale differs from its initial value by more than rounding:
        # float32 by default, or a coarser dtype the module was cast to (a float32 value
        # cast to float64 by model.double() keeps its float32 rounding).
        initial_log = math.log(self._initial_scale)
        eps = max(torch.finfo(self.log_scale.dtype).eps, torch.finfo(torch.float32).eps)
        return abs(math.log(current) - initial_log) > 4.0 * eps * max(1.0, abs(initial_log))

    def to_record(self, nphotons: float | None = None) -> ScaleRecord:
        """The :class:`~physscale.ScaleRecord` of the *current* scale.

        - Built from a record: ``record.trained(current)`` (``method="trained"``,
          ``initial_intensity_scale`` kept) when trainable or when the value
          has moved (e.g. a trained ``state_dict`` was loaded); otherwise the
          original record, unchanged.
        - Built from a bare scale: a ``method="explicit"`` record of the
          initial value, then ``.trained(current)`` as above. This needs
          ``nphotons`` (a record requires it): given here or to the
          constructor, else :class:`~physscale.RecordError`.

        Raises:
            RecordError: no nphotons for a bare scale, an ``nphotons`` that
                contradicts the record's, or a log-scale that has diverged
                (NaN, or a scale that is zero or overflows float64).
        """
        log_value = float(self.log_scale.detach().to(torch.float64))
        # exp overflows float64 above ~709.78; a diverged log-scale is a user-facing error.
        current = math.exp(log_value) if math.isfinite(log_value) and log_value < 709.0 else 0.0
        if not current > 0.0:
            raise RecordError(
                f"the scale exp(log_scale) = exp({log_value!r}) is not a positive finite "
                "number: training diverged (lower the learning rate or freeze the scale); "
                "no record can hold it"
            )
        record = self._record
        if record is None:
            n = self._nphotons if nphotons is None else positive_finite(nphotons, "nphotons")
            if self._nphotons is not None and n != self._nphotons:
                raise RecordError(
                    f"to_record(nphotons={n!r}) contradicts the nphotons={self._nphotons!r} "
                    f"this IntensityScaler was built with"
                )
            if n is None:
                raise RecordError(
                    "this IntensityScaler was built from a bare scale, so its record has no "
                    "nphotons; pass to_record(nphotons=...) or IntensityScaler(..., nphotons=...), "
                    "or build it from a ScaleRecord"
                )
            record = ScaleRecord(
                intensity_scale=self._initial_scale,
                nphotons=n,
                nphotons_source="explicit",
                method="explicit",
            )
        elif nphotons is not None and positive_finite(nphotons, "nphotons") != record.nphotons:
            raise RecordError(
                f"to_record(nphotons={nphotons!r}) contradicts the record's "
                f"nphotons={record.nphotons!r}"
            )
        if self.trainable or self._moved(current):
            return record.trained(current)
        return record

    def get_extra_state(self) -> str:
        """The provenance as a JSON string (loads under ``weights_only=True``)."""
        return json.dumps(
            {
                "format": _EXTRA_STATE_FORMAT,
                "record": None if self._record is None else self._record.model_dump_json(),
                "initial_intensity_scale": self._initial_scale,
                "nphotons": self._nphotons,
            }
        )

    def set_extra_state(self, state: Any) -> None:
        """Restore the provenance saved by :meth:`get_extra_state`."""
        try:
            if not isinstance(state, str):
                raise TypeError(f"expected a JSON string, got {type(state).__name__}")
            data = json.loads(state)
            if not isinstance(data, dict) or data.get("format") != _EXTRA_STATE_FORMAT:
                raise ValueError(f"format tag is not {_EXTRA_STATE_FORMAT!r}")
            raw_record = data["record"]
            record = None if raw_record is None else ScaleRecord.model_validate_json(raw_record)
            initial = positive_finite(
                data["initial_intensity_scale"], "initial_intensity_scale", RecordError
            )
            raw_n = data["nphotons"]
            n = None if raw_n is None else positive_finite(raw_n, "nphotons", RecordError)
        except (TypeError, ValueError, KeyError) as exc:
            raise RecordError(
                f"IntensityScaler extra state in this state_dict is malformed ({exc}); "
                "it must be the JSON string IntensityScaler.get_extra_state() writes"
            ) from None
        self._record, self._initial_scale, self._nphotons = record, initial, n

    def extra_repr(self) -> str:
        scale = math.exp(float(self.log_scale.detach().to(torch.float64)))
        return f"scale={scale:.6g}, trainable={self.trainable}"


class ScaledPoissonNLLLoss(nn.Module):
    """:func:`physscale.scaled_poisson_nll` as an ``nn.Module``.

    Args:
        scale: either a fixed intensity scale (positive float, 0-d tensor or
            :class:`~physscale.ScaleRecord`), kept as the float64 buffer
            ``scale`` (moves with ``.to(device)``, saved in ``state_dict``); or
            an :class:`IntensityScaler`, registered as the submodule ``scaler``.
            With a scaler the *rate* uses its current ``exp(log_scale)``, so a
            trainable log-scale learns through the loss, while the *counts*
            use its initial scale, the data's fixed scale (TF: the targets are
            ``(s * X)**2`` with the data's ``s`` whatever the layer learns).
        domain, form, reduction, eps: as for :func:`physscale.scaled_poisson_nll`.
        mask: optional valid-pixel mask (boolean or 0/1 floats) broadcastable
            to every batch, e.g. ``(H, W)``; a non-persistent buffer (moves
            with the module, not saved: it belongs to the detector setup).
        background: background counts per pixel added to the rate, a number
            >= 0 or a tensor broadcastable to every batch (a non-persistent
            buffer when a tensor).

    ``forward(pred, obs)`` takes normalized amplitudes (or intensities), shape
    ``(B, ...)``, and returns the reduced loss (float32, or float64 for
    float64 inputs).
    """

    scale: torch.Tensor | None
    mask: torch.Tensor | None
    background_map: torch.Tensor | None

    def __init__(
        self,
        scale: IntensityScaler | ScaleRecord | float | torch.Tensor,
        *,
        domain: Domain = "amplitude",
        form: Form = "tf",
        reduction: Reduction = "mean",
        mask: torch.Tensor | None = None,
        background: float | torch.Tensor = 0.0,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.domain: Domain = check_option(domain, DOMAINS, "domain")
        self.form: Form = check_option(form, FORMS, "form")
        self.reduction: Reduction = check_option(reduction, REDUCTIONS, "reduction")
        self.eps = float(eps)
        self.scaler: IntensityScaler | None
        if isinstance(scale, IntensityScaler):
            self.scaler = scale
            self.register_buffer("scale", None)
        else:
            if isinstance(scale, torch.Tensor) and scale.requires_grad:
                raise DtypeError(
                    "a trainable scale must be a physscale.nn.IntensityScaler (its log_scale "
                    "is a registered parameter the optimizer sees); got a tensor that requires "
                    "grad. Use ScaledPoissonNLLLoss(IntensityScaler(s, trainable=True))"
                )
            self.scaler = None
            value = scalar_scale(scale, "ScaledPoissonNLLLoss scale")
            self.register_buffer("scale", torch.tensor(value, dtype=torch.float64))
        self.register_buffer(
            "mask", None if mask is None else torch.as_tensor(mask).detach(), persistent=False
        )
        if isinstance(background, torch.Tensor):
            self.register_buffer("background_map", background.detach(), persistent=False)
            self.background_value = 0.0
        else:
            self.register_buffer("background_map", None, persistent=False)
            self.background_value = background

    def forward(self, pred: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """The loss of ``pred`` against ``obs`` (normalized units, same shape)."""
        if self.scaler is not None:
            scale: torch.Tensor = self.scaler.scale
            count_scale: float | None = self.scaler.initial_scale
        else:
            assert self.scale is not None
            scale, count_scale = self.scale, None
        background = (
            self.background_map if self.background_map is not None else (self.background_value)
        )
        return scaled_poisson_nll(
            pred,
            obs,
            scale,
            domain=self.domain,
            form=self.form,
            reduction=self.reduction,
            mask=self.mask,
            background=background,
            eps=self.eps,
            count_scale=count_scale,
        )

    def extra_repr(self) -> str:
        scale = "<scaler>" if self.scale is None else f"{float(self.scale):.6g}"
        return (
            f"scale={scale}, domain={self.domain!r}, form={self.form!r}, "
            f"reduction={self.reduction!r}"
        )
