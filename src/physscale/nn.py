"""The ``torch.nn`` side of physscale: the scale as a module parameter.

[`IntensityScaler`][physscale.nn.IntensityScaler] holds the physics scale as a registered log-scale
parameter, with TF PtychoPINN's convention (SPEC §2): ``normalize`` divides by
``exp(log_scale)`` and ``denormalize`` multiplies by it.

[`ScaledPoissonNLLLoss`][physscale.nn.ScaledPoissonNLLLoss] is
[`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll] as a
module: a fixed scale held as a buffer, or an [`IntensityScaler`][physscale.nn.IntensityScaler]
    whose
log-scale then learns through the loss.

Named ``nn`` after ``torch.nn``; a submodule named ``torch`` would shadow
``import torch`` inside the package.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from physscale.core.checks import check_option, positive_finite, scalar_scale
from physscale.core.jsontext import load_json
from physscale.core.likelihood import (
    DOMAINS,
    FORMS,
    REDUCTIONS,
    Domain,
    Form,
    Reduction,
    scaled_poisson_nll,
)
from physscale.core.loss_inputs import eps_value, loss_background, loss_mask, widest_dtype
from physscale.core.preview import preview
from physscale.errors import DtypeError, FrozenScaleWarning, OptionError, RecordError
from physscale.record import ScaleRecord

__all__ = ["IntensityScaler", "ScaledPoissonNLLLoss"]

#: Tag of the extra state an IntensityScaler saves in its ``state_dict``.
_EXTRA_STATE_FORMAT = "physscale.IntensityScaler/1"

_FLOAT32_EPS = torch.finfo(torch.float32).eps
# log-scales whose exp float32 holds as a normal number, with a margin for the
# rounding of the log itself (float32 spacing near 88 is 7.6e-6).
_FLOAT32_LOG_RANGE = (
    math.log(torch.finfo(torch.float32).tiny) + 1e-4,
    math.log(torch.finfo(torch.float32).max) - 1e-4,
)


def _float32_holds(log_value: float) -> bool:
    """Whether ``exp(log_value)`` is a normal float32 number."""
    return _FLOAT32_LOG_RANGE[0] <= log_value <= _FLOAT32_LOG_RANGE[1]


def _coarser_than_float32(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is a floating dtype with less precision than float32."""
    return dtype.is_floating_point and torch.finfo(dtype).eps > _FLOAT32_EPS


def _kept_precision(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor | None:
    """``before`` on ``after``'s device if a cast made it coarser than float32, else None.

    The value keeps ``before``'s dtype when that is float32 or better (float32
    on Apple MPS, which has no float64), else becomes float32.
    """
    if not _coarser_than_float32(after.dtype):
        return None
    dtype = torch.float32 if _coarser_than_float32(before.dtype) else before.dtype
    if dtype == torch.float64:
        dtype = widest_dtype(after.device)
    return before.detach().to(device=after.device, dtype=dtype)


class IntensityScaler(nn.Module):
    """The physics intensity scale as a (optionally trainable) log-scale parameter.

    TF convention (SPEC §2): the model input is divided by ``exp(log_scale)``
    ([`normalize`][physscale.nn.IntensityScaler.normalize]) and the output amplitude multiplied by
    it
    ([`denormalize`][physscale.nn.IntensityScaler.denormalize]). ``log_scale`` is a registered
    ``nn.Parameter``, so
    it is in ``parameters()`` and ``state_dict()``, reaches an optimizer, and
    moves with ``.to(device)``; it has ``requires_grad=False`` when frozen.

    The [`ScaleRecord`][physscale.ScaleRecord] the scaler was built from (or its
    initial value and nphotons) is saved with the weights as a JSON string
    (``get_extra_state``), so ``torch.load(..., weights_only=True)`` can read a
    saved ``state_dict`` and [`to_record`][physscale.nn.IntensityScaler.to_record] still knows the
    provenance.

    Casting the module (``.half()``, ``.bfloat16()``, ``model.to(torch.float16)``,
    Lightning ``precision="bf16-true"``) never rounds the physics scale:
    ``log_scale`` stays float32 (float64 after ``.double()``), the same
    ``Parameter`` object. ``scale`` is ``exp(log_scale)`` computed in
    ``log_scale``'s dtype (float32 by default), while
    [`to_record`][physscale.nn.IntensityScaler.to_record] gives the value the
    scaler was built from while a frozen ``log_scale`` has not moved, else
    ``exp(log_scale)`` computed in float64. With a float32 ``log_scale`` the
    two differ by float32 rounding (a few 1e-8 relative; see the example):
    the record holds the float64 value, ``scale`` the float32 one.
    ``normalize``/``denormalize`` of a half-precision ``x`` still return
    ``x``'s dtype (a 0-d parameter does not promote a batch).

    Built from a *trained* record (``method="trained"``, e.g. to resume
    training): ``log_scale`` starts at the trained ``record.intensity_scale``,
    while [`initial_scale`][physscale.nn.IntensityScaler.initial_scale] (the data's scale, which
    [`ScaledPoissonNLLLoss`][physscale.nn.ScaledPoissonNLLLoss] uses for the observed counts, TF's
    ``(s_data * X)**2``) is ``record.initial_intensity_scale``, the scale
    derived from the data before any training.
    [`to_record`][physscale.nn.IntensityScaler.to_record] keeps that
    first value as ``initial_intensity_scale``.

    Args:
        scale_or_record: the intensity scale ``s`` (amplitude factor; counts
            are ``(s * x)**2``): a positive finite float, a 0-d tensor, or a
            ``ScaleRecord``.
        trainable: whether ``log_scale`` learns (TF
            ``intensity_scale.trainable``).
        nphotons: photons per pattern the scale stands for. Only for a bare
            scale, and only needed by [`to_record`][physscale.nn.IntensityScaler.to_record] (a
            record requires
            nphotons); a ``ScaleRecord`` carries its own.
        dtype: dtype of ``log_scale``, ``torch.float32`` (the default, like
            TF's variable) or ``torch.float64``; it follows ``module.double()``
            and ``module.float()`` afterwards, never a cast below float32. A
            scale float32 cannot hold as a normal number (beyond about 1e-38 to
            3e38) gets a float64 ``log_scale`` by default, kept through
            ``.float()``; asking for float32 then is a ``DtypeError``.

    Examples:
        >>> import torch
        >>> from physscale.nn import IntensityScaler
        >>> scaler = IntensityScaler(31.25, nphotons=1e6)   # frozen; trainable=True to learn it
        >>> scaler.normalize(torch.full((2, 1, 4, 4), 62.5)).shape
        torch.Size([2, 1, 4, 4])
        >>> float(scaler.scale)   # exp(log_scale) in float32
        31.250001907348633
        >>> scaler.to_record().intensity_scale   # the record keeps float64
        31.25
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
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise DtypeError(
                f"IntensityScaler dtype must be torch.float32 or torch.float64, got {dtype!r}; "
                "a coarser log-scale would round the physics scale (cast the model with "
                ".half() instead: the scaler keeps log_scale in float32)"
            )
        start = scalar_scale(scale_or_record, "IntensityScaler scale")
        holds = _float32_holds(math.log(start))
        if dtype is None:
            dtype = torch.float32 if holds else torch.float64
        elif dtype == torch.float32 and not holds:
            raise DtypeError(
                f"float32 cannot hold the scale {start!r} (exp of a float32 log-scale "
                f"overflows or underflows beyond about 1e-38 to 3e38); use "
                f"dtype=torch.float64, or leave dtype out to get it"
            )
        self._record: ScaleRecord | None = record
        self._initial_scale: float = start if record is None else record.data_scale
        self._nphotons: float | None = (
            None if nphotons is None else positive_finite(nphotons, "IntensityScaler nphotons")
        )
        value = torch.tensor(math.log(start), dtype=dtype)
        self.log_scale = nn.Parameter(value, requires_grad=trainable)
        # An optimizer step updates log_scale in place, which bumps its version counter: a
        # trainable scale whose counter never moved was never trained (see to_record).
        self._start_version: int = self.log_scale._version

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # A dtype cast must not round the physics scale: restore log_scale to float32 or
        # better after a cast below it, in place (.data), so the Parameter object an
        # optimizer holds stays valid. Device moves pass through.
        before = self.log_scale.data
        grad = self.log_scale.grad
        before_grad = None if grad is None else grad.detach()
        untouched = not self._updated()
        out = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        kept = _kept_precision(before, self.log_scale)
        if kept is None and self._beyond_float32(before):
            # .float() of a scale float32 cannot hold: keep the float64 log-scale.
            kept = before.detach().to(self.log_scale.device, widest_dtype(self.log_scale.device))
        if kept is not None:
            self.log_scale.data = kept
            if before_grad is not None:
                self.log_scale.grad = before_grad.to(device=kept.device, dtype=kept.dtype)
        if untouched:  # a cast or a move is no training step
            self._start_version = self.log_scale._version
        return out

    def _updated(self) -> bool:
        # Whether log_scale was written in place since construction or the last load (an
        # optimizer step, or any in-place update).
        return self.log_scale._version != self._start_version

    def _beyond_float32(self, before: torch.Tensor) -> bool:
        # Only a float64 log-scale cast to float32 needs a look at its value (one read,
        # when the module is cast, never in forward); meta tensors have none.
        if not (before.dtype == torch.float64 and self.log_scale.dtype == torch.float32):
            return False
        if before.device.type == "meta":
            return False
        return not _float32_holds(float(before))

    @classmethod
    def from_record(cls, record: ScaleRecord, trainable: bool = False) -> IntensityScaler:
        """A scaler starting at ``record.intensity_scale`` that remembers the record.

        For a trained record the data's scale
        ([`initial_scale`][physscale.nn.IntensityScaler.initial_scale], the count
        scale of [`ScaledPoissonNLLLoss`][physscale.nn.ScaledPoissonNLLLoss]) is
        ``record.initial_intensity_scale``.
        """
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
        """The data's scale: the first value of this scale's history.

        The bare value, a record's ``intensity_scale``, or a trained record's
        ``initial_intensity_scale``; [`ScaledPoissonNLLLoss`][physscale.nn.ScaledPoissonNLLLoss]
        computes the
        observed counts with it.
        """
        return self._initial_scale

    def _start_scale(self) -> float:
        # The value log_scale was built from (a trained record's trained value).
        return self._initial_scale if self._record is None else self._record.intensity_scale

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x / exp(log_scale)``: physical amplitudes to normalized (TF IntensityScaler)."""
        return x / torch.exp(self.log_scale)

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        """``y * exp(log_scale)``: normalized amplitudes to physical (TF IntensityScaler_inv)."""
        return y * torch.exp(self.log_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as [`normalize`][physscale.nn.IntensityScaler.normalize] (the TF layer's call)."""
        return self.normalize(x)

    def _moved(self, current: float) -> bool:
        # Whether log_scale differs from the value it was built from by more than float32
        # rounding (a float32 value cast to float64 by model.double() keeps that rounding).
        initial_log = math.log(self._start_scale())
        eps = max(torch.finfo(self.log_scale.dtype).eps, _FLOAT32_EPS)
        return abs(math.log(current) - initial_log) > 4.0 * eps * max(1.0, abs(initial_log))

    def to_record(self, nphotons: float | None = None) -> ScaleRecord:
        """The [`ScaleRecord`][physscale.ScaleRecord] of the *current* scale.

        - Built from a record: ``record.trained(current)`` (``method="trained"``,
          ``initial_intensity_scale`` kept) when trainable or when the value
          has moved (e.g. a trained ``state_dict`` was loaded); otherwise the
          original record, unchanged.
        - Built from a bare scale: a ``method="explicit"`` record of the
          initial value, then ``.trained(current)`` as above. This needs
          ``nphotons`` (a record requires it): given here or to the
          constructor, else [`RecordError`][physscale.errors.RecordError].

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
        if self._moved(current):
            return record.trained(current)
        if self.trainable:
            if not self._updated():
                # A learnable scale no optimizer ever stepped: say so, and claim nothing.
                warnings.warn(
                    f"this IntensityScaler is trainable but its log_scale was never updated "
                    f"(the scale is still its initial {current:.8g}): no optimizer holds it. "
                    f"Put the scaler inside the model (e.g. model.scaler = scaler), so that "
                    f"model.parameters() includes it, or pass scaler.parameters() to the "
                    f"optimizer. The record claims no training (method={record.method!r})",
                    FrozenScaleWarning,
                    stacklevel=2,
                )
                return record
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
        """Restore the provenance saved by
        [`get_extra_state`][physscale.nn.IntensityScaler.get_extra_state]."""
        try:
            if not isinstance(state, str):
                raise TypeError(f"expected a JSON string, got {type(state).__name__}")
            # Bounded: deep nesting is a RecordError (caught below), never RecursionError.
            data = load_json(state, "its JSON text", RecordError)
            if not isinstance(data, dict) or data.get("format") != _EXTRA_STATE_FORMAT:
                raise ValueError(f"format tag is not {_EXTRA_STATE_FORMAT!r}")
            raw_record = data["record"]
            record = None if raw_record is None else ScaleRecord.model_validate_json(raw_record)
            initial = positive_finite(
                data["initial_intensity_scale"], "initial_intensity_scale", RecordError
            )
            raw_n = data["nphotons"]
            n = None if raw_n is None else positive_finite(raw_n, "nphotons", RecordError)
            if record is not None:
                # The record defines the data's scale (states saved before this rule
                # stored a trained record's trained value here).
                initial = record.data_scale
        except (TypeError, ValueError, KeyError) as exc:
            raise RecordError(
                f"IntensityScaler extra state in this state_dict is malformed ({exc}); "
                "it must be the JSON string IntensityScaler.get_extra_state() writes"
            ) from None
        self._record, self._initial_scale, self._nphotons = record, initial, n
        # load_state_dict copies log_scale in place before it restores this: a load is no
        # training step.
        self._start_version = self.log_scale._version

    def extra_repr(self) -> str:
        scale = math.exp(float(self.log_scale.detach().to(torch.float64)))
        return f"scale={scale:.6g}, trainable={self.trainable}"


class ScaledPoissonNLLLoss(nn.Module):
    """[`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll] as an ``nn.Module``.

    Args:
        scale: either a fixed intensity scale (positive float, 0-d tensor or
            [`ScaleRecord`][physscale.ScaleRecord]), kept as the float64 buffer
            ``scale`` (moves with ``.to(device)``, saved in ``state_dict``); or
            an [`IntensityScaler`][physscale.nn.IntensityScaler], registered as the submodule
            ``scaler``.
            With a scaler the *rate* uses its current ``exp(log_scale)``, so a
            trainable log-scale learns through the loss, while the *counts*
            use its [`initial_scale`][physscale.nn.IntensityScaler.initial_scale], the data's fixed
            scale (TF: the targets are ``(s * X)**2`` with the data's ``s``
            whatever the layer learns; for a scaler built from a trained
            record, that record's ``initial_intensity_scale``).
        domain: as for [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll].
        form: as for [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll].
        reduction: as for [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll].
        eps: as for [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll]: a finite number
            of
            photon counts >= 0 (0 means no floor: the unfloored likelihood).
        mask: optional valid-pixel mask, a tensor or numpy array of booleans
            (True = valid) or 0/1 floats, broadcastable to every batch, e.g.
            ``(H, W)``, excluding not every pixel; a non-persistent buffer
            (moves with the module, not saved: it belongs to the detector setup).
        background: background counts per pixel added to the rate, a finite
            number >= 0 or a real floating tensor of finite values >= 0
            broadcastable to every batch (a non-persistent buffer when a tensor).
        persistent: whether the fixed scale is saved in ``state_dict`` (the
            default, as 0.1 did). ``False`` keeps it out, so putting the loss
            into a host model (e.g. a ``Loss`` slot of PtychoPINN's PyTorch
            port) adds no key to the host's ``state_dict`` and existing
            checkpoints still load with ``strict=True``; the scale then comes
            from the constructor argument, not from a loaded state. Only for a
            fixed scale: a scaler's ``log_scale`` is a parameter whose trained
            value must be saved (register the scaler on the model).

    Every argument is checked here, with the same checks (and errors) as
    [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll]; value checks (the mask's
    weights, the
    background's values) run when validation is on
    ([`physscale.set_validation`][physscale.set_validation]), and the shapes against the data are
    checked at each forward. Casting the module (``.half()``, ``.bfloat16()``)
    keeps the fixed scale in float64 and a background map in float32 or better.

    ``forward(pred, obs)`` takes normalized amplitudes (or intensities), shape
    ``(B, ...)``, and returns the reduced loss (float32, or float64 for
    float64 inputs).

    Examples:
        >>> import torch
        >>> from physscale.nn import ScaledPoissonNLLLoss
        >>> loss_fn = ScaledPoissonNLLLoss(4.0)   # the data's intensity scale
        >>> pred = torch.full((2, 1, 4, 4), 0.5, requires_grad=True)
        >>> loss = loss_fn(pred, torch.full((2, 1, 4, 4), 0.5))
        >>> loss.backward()
        >>> round(loss.item(), 4), pred.grad.shape
        (-1.5452, torch.Size([2, 1, 4, 4]))
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
        persistent: bool = True,
    ) -> None:
        super().__init__()
        self.domain: Domain = check_option(domain, DOMAINS, "domain")
        self.form: Form = check_option(form, FORMS, "form")
        self.reduction: Reduction = check_option(reduction, REDUCTIONS, "reduction")
        self.eps = eps_value(eps)
        if not isinstance(persistent, bool):
            raise OptionError(f"persistent must be True or False, got {preview(persistent)}")
        self.scaler: IntensityScaler | None
        if isinstance(scale, IntensityScaler):
            if not persistent:
                raise OptionError(
                    "persistent=False keeps a fixed scale out of state_dict; a scaler's "
                    "log_scale is a parameter whose trained value must be saved. Register the "
                    "scaler on the host model, or give the loss a fixed scale (a number or a "
                    "ScaleRecord) with persistent=False"
                )
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
            self.register_buffer(
                "scale", torch.tensor(value, dtype=torch.float64), persistent=persistent
            )
        self.register_buffer("mask", None if mask is None else loss_mask(mask), persistent=False)
        background_map, self.background_value = loss_background(background)
        self.register_buffer("background_map", background_map, persistent=False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # A dtype cast must not round the physics: the fixed scale stays float64 (restored
        # from its pre-cast value on the new device), a background map float32 or better.
        scale, background_map = self.scale, self.background_map
        out = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        if scale is not None and self.scale is not None and self.scale.dtype != scale.dtype:
            self.scale = scale.to(device=self.scale.device, dtype=widest_dtype(self.scale.device))
        if background_map is not None and self.background_map is not None:
            kept = _kept_precision(background_map, self.background_map)
            if kept is not None:
                self.background_map = kept
        return out

    def forward(self, pred: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """The loss of ``pred`` against ``obs`` (normalized units, same shape).

        With a scaler: the rate at its current scale, the counts at the data's
        ([`IntensityScaler.initial_scale`][physscale.nn.IntensityScaler.initial_scale]); else both
        at the fixed ``scale``.
        """
        scaler, bg_map = self.scaler, self.background_map
        return scaled_poisson_nll(
            pred,
            obs,
            self.scale if scaler is None else scaler.scale,
            count_scale=None if scaler is None else scaler.initial_scale,
            domain=self.domain,
            form=self.form,
            reduction=self.reduction,
            mask=self.mask,
            background=self.background_value if bg_map is None else bg_map,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        scale = "<scaler>" if self.scale is None else f"{float(self.scale):.6g}"
        return (
            f"scale={scale}, domain={self.domain!r}, form={self.form!r}, "
            f"reduction={self.reduction!r}"
        )
