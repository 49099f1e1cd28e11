"""The inputs of the scaled Poisson NLL: coerced, checked, and cast for its math.

The constraints of [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll] in one place, in
two
stages (the ``torch.distributions`` way):

- `loss_inputs` looks at types, shapes, dtypes, devices and options,
  never at a tensor value: no host sync, so it always runs, ``torch.compile``
  traces it without a graph break, and meta tensors pass through it.
- `check_loss_values` reads the values (NaN, infinities, negatives, mask
  weights, overflow) in one device-to-host transfer, and warns when ``obs``
  look like raw photon counts ([`UnitsWarning`][physscale.UnitsWarning]). It runs only
  while [`is_validation_enabled`][physscale.is_validation_enabled], and never inside
  ``torch.func`` transforms or under ``torch.compile``.

`loss_mask` and `loss_background` are the same checks for the mask
and background a [`ScaledPoissonNLLLoss`][physscale.ScaledPoissonNLLLoss] holds. The option
sets (`DOMAINS`, `FORMS`, `REDUCTIONS`) are declared here and
re-exported by `physscale.core.likelihood`, whose math they name.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from physscale.core.checks import (
    check_materializable,
    check_option,
    counts_next_step,
    real_number,
    scalar_scale,
)
from physscale.core.kernels.sums import WHOLE_CHANCE, whole_tolerance
from physscale.core.validation import is_compiling, is_validation_enabled, under_functorch
from physscale.errors import (
    ArgumentOrderError,
    BroadcastError,
    DtypeError,
    EmptyInputError,
    MaskError,
    NegativeValueError,
    NonFiniteError,
    UnitsWarning,
)

__all__ = [
    "DOMAINS",
    "FORMS",
    "REDUCTIONS",
    "Cast",
    "Domain",
    "Form",
    "LossInputs",
    "Reduction",
    "Scale",
    "Seen",
    "check_loss_values",
    "eps_value",
    "intensities_message",
    "looks_like_intensities",
    "loss_background",
    "loss_inputs",
    "loss_mask",
    "quantum_parts",
    "widest_dtype",
]

Domain = Literal["amplitude", "intensity"]
Form = Literal["tf", "stirling", "exact", "deviance"]
Reduction = Literal["mean", "sum", "none", "per_sample"]

DOMAINS: tuple[Domain, ...] = ("amplitude", "intensity")
FORMS: tuple[Form, ...] = ("tf", "stirling", "exact", "deviance")
REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none", "per_sample")

#: A scale or background: a tensor, or a Python float when the host knows it (the
#: kernels take it as a scalar: no fill kernel to make a 0-d tensor, no sync).
Scale = torch.Tensor | float

#: ``(p, o, s, t, b, m)``: prediction and observation in the compute dtype, zero where
#: the mask is 0; the scale; the count scale (None: the scale); the background (None:
#: none); the mask as 0/1 in the compute dtype (None: none).
Cast = tuple[torch.Tensor, torch.Tensor, Scale, Scale | None, Scale | None, torch.Tensor | None]

#: How many leading obs values the units check samples (as derive does).
_UNITS_SAMPLE = 4096
#: Relative tolerance for "the count scale maps whole obs to whole counts": eight
#: float32 roundings (the rounding of sqrt, square and product).
_COUNTS_WHOLE_REL = whole_tolerance(torch.float32)


def widest_dtype(device: torch.device) -> torch.dtype:
    """float64, or float32 on Apple's MPS backend, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def eps_value(eps: Any) -> float:
    """The rate floor: a finite number of photon counts >= 0 (0: no floor)."""
    out = real_number(eps, "eps", "a real number >= 0 (photon counts; 0 means no floor)")
    if out < 0.0:
        raise NegativeValueError(
            f"eps must be >= 0 (a floor on the rate in photon counts; 0 means no floor), "
            f"got {out!r}"
        )
    return out


# --------------------------------------------------------------------------- always checked


class LossInputs:
    """One call's inputs, checked without reading a value, ready to cast.

    ``scale``, ``count_scale`` (None: counts use ``scale``) and ``background``
    are each a tensor on the data's device or a Python float known on the
    host; ``mask`` is a detached bool or 0/1-weight tensor (``weights``) on
    the data's device. ``validate``: the value checks run for this call;
    ``traced``: under ``torch.compile`` or a ``torch.func`` transform.
    """

    __slots__ = (
        "background",
        "count_scale",
        "domain",
        "eps",
        "form",
        "mask",
        "obs",
        "pred",
        "reduction",
        "scale",
        "traced",
        "validate",
        "weights",
    )

    def __init__(
        self,
        pred: torch.Tensor,
        obs: torch.Tensor,
        scale: Scale,
        count_scale: Scale | None,
        background: Scale,
        mask: torch.Tensor | None,
        weights: bool,
        domain: Domain,
        form: Form,
        reduction: Reduction,
        eps: float,
        validate: bool,
        traced: bool,
    ) -> None:
        self.pred, self.obs = pred, obs
        self.scale, self.count_scale, self.background = scale, count_scale, background
        self.mask, self.weights = mask, weights
        self.domain, self.form, self.reduction, self.eps = domain, form, reduction, eps
        self.validate, self.traced = validate, traced

    def host_size(self) -> float:
        """The largest squared scale or background known on the host (tensors count 0)."""
        s, t, b = self.scale, self.count_scale, self.background
        s_host = s if type(s) is float else 0.0
        t_host = s_host if t is None else t if type(t) is float else 0.0
        return max(_square(s_host), _square(t_host), b if type(b) is float else 0.0)

    def cast(self, dtype: torch.dtype, select: bool) -> Cast:
        """The inputs in ``dtype``, ``p`` and ``o`` zeroed where the mask is 0.

        ``select`` zeroes them with ``torch.where``, so that a NaN or Inf in a
        dead pixel stays out (``0 * NaN`` is NaN); otherwise they are
        multiplied by the mask, which is faster (a NaN there is caught by the
        value checks, which then cast again with ``select``).
        """
        s, t, b, m = self.scale, self.count_scale, self.background, self.mask
        if isinstance(s, torch.Tensor):
            s = s.to(dtype)
        if isinstance(t, torch.Tensor):
            t = t.to(dtype)
        b_cast = b.to(dtype) if isinstance(b, torch.Tensor) else b if b != 0.0 else None
        if m is not None:
            m = m.to(dtype)
        p = self.pred if self.pred.dtype == dtype else self.pred.to(dtype)
        o = self.obs if self.obs.dtype == dtype else self.obs.to(dtype)
        if m is not None:
            if select:
                keep = m != 0
                p, o = torch.where(keep, p, 0.0), torch.where(keep, o, 0.0)
            else:
                p, o = p * m, o * m
        return p, o, s, t, b_cast, m


def loss_inputs(
    pred: Any,
    obs: Any,
    scale: Any,
    domain: Any,
    form: Any,
    reduction: Any,
    mask: Any,
    background: Any,
    eps: Any,
    count_scale: Any,
) -> LossInputs:
    """Check everything about the loss's inputs that needs no tensor value.

    Types, shapes, dtypes, devices and options, in the order the arguments
    are documented in [`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll]. A
    ``count_scale``
    object that names the data's scale as ``data_scale`` (a
    [`ScaleRecord`][physscale.ScaleRecord]; a trained one gives its initial value)
    gives that; any other scale gives its ``float()``.

    Raises:
        OptionError, DtypeError, BroadcastError, EmptyInputError, MaskError,
        NonFiniteError or NegativeValueError: what is wrong, in the message.
    """
    # Fast paths first: this runs on every training step.
    if type(domain) is not str or domain not in DOMAINS:
        domain = check_option(domain, DOMAINS, "domain")
    if type(form) is not str or form not in FORMS:
        form = check_option(form, FORMS, "form")
    if type(reduction) is not str or reduction not in REDUCTIONS:
        reduction = check_option(reduction, REDUCTIONS, "reduction")
    pred = _input_tensor(pred, "pred", domain)
    obs = _input_tensor(obs, "obs", domain)
    if obs.requires_grad and not pred.requires_grad and torch.is_grad_enabled():
        _refuse_swapped()
    if pred.shape != obs.shape:
        raise BroadcastError(
            f"pred has shape {tuple(pred.shape)} but obs has shape {tuple(obs.shape)}; the "
            f"prediction and the observation must have the same shape"
        )
    if pred.device != obs.device:
        raise BroadcastError(f"pred is on {pred.device} but obs is on {obs.device}")
    if pred.numel() == 0:
        raise EmptyInputError(f"pred and obs are empty (shape {tuple(pred.shape)})")
    if reduction == "per_sample" and pred.ndim == 0:
        raise BroadcastError("reduction='per_sample' needs a batch axis; pred is 0-d")
    if type(eps) is not float or not 0.0 <= eps < math.inf:
        eps = eps_value(eps)

    shape, device = pred.shape, pred.device
    # Inside torch.func transforms a data-dependent check is impossible; under
    # torch.compile the checks would break the graph, so they follow the switch too.
    compiling = is_compiling()
    transformed = not compiling and under_functorch()
    validate = is_validation_enabled() and not transformed
    if validate and device.type == "meta":
        raise DtypeError(
            "pred and obs are on the meta device, which holds no values, so the value "
            "checks cannot run; give real tensors, or turn the checks off with "
            "ps.validation(False) to trace shapes and dtypes"
        )

    s = _scale_input(scale, "scale", shape, device)
    t: Scale | None = None
    if count_scale is not None:
        if type(count_scale) is not float and not isinstance(count_scale, torch.Tensor):
            # Counts live at the data's scale: an object that names it gives it.
            count_scale = getattr(count_scale, "data_scale", count_scale)
        t = _scale_input(count_scale, "count_scale", shape, device)
    b = _background_input(background, shape, device)
    m, weights = (None, False) if mask is None else _mask_input(mask, shape, device)
    return LossInputs(
        pred, obs, s, t, b, m, weights, domain, form, reduction, eps, validate,
        traced=transformed or compiling,
    )  # fmt: skip


def _refuse_swapped() -> None:
    """The arguments came in the order ``(obs, pred)``: refuse, do not compute a wrong number.

    The tell is Python attributes only (no host sync): with grad mode on, the
    observation requires grad and the prediction does not. A prediction that
    does not require grad (evaluation, ``torch.no_grad``) is legitimate; a
    measurement never needs a gradient.
    """
    raise ArgumentOrderError(
        "obs requires grad but pred does not: the arguments look swapped. physscale's "
        "order is scaled_poisson_nll(pred, obs, ...): the model's prediction first, the "
        "measured data second (cdtools and others call loss(measured, simulated); the "
        "swapped order gives a plausible but wrong loss). Call it as "
        "scaled_poisson_nll(simulated, measured, ...); if obs requires grad on purpose, "
        "pass obs.detach()"
    )


def _dense(x: torch.Tensor, name: str, error: type[Exception] = DtypeError) -> None:
    if x.layout != torch.strided:
        raise error(
            f"{name} must be a dense tensor, got layout {x.layout}; convert it with "
            f"{name}.to_dense()"
        )


def _input_tensor(x: Any, name: str, domain: str) -> torch.Tensor:
    kind = "amplitudes" if domain == "amplitude" else "intensities"
    if not isinstance(x, torch.Tensor):
        raise DtypeError(
            f"{name} must be a torch.Tensor of normalized {kind}, got {type(x).__name__}; "
            f"use torch.as_tensor(...) for numpy data"
        )
    _dense(x, name)
    check_materializable(x, name)
    if x.is_complex():
        if domain == "amplitude":
            modulus = f"its modulus: pass {name}.abs()"
        else:
            modulus = f"its squared modulus: pass {name}.abs()**2"
        raise DtypeError(
            f"{name} must hold real floating-point normalized {kind}, got the complex dtype "
            f"{x.dtype}; a complex wavefield's {kind[:-1]} is {modulus}"
        )
    if not x.is_floating_point():
        if name == "obs":
            hint = (
                f". Integer values are raw detector counts. {counts_next_step()}; or use "
                "the count-native loss: domain='intensity', scale=1.0, obs=counts.float(), "
                "with pred the predicted counts"
            )
        else:
            hint = f"; {name} is the model's output, which is floating point"
        raise DtypeError(
            f"{name} must hold real floating-point normalized {kind} (float16, bfloat16, "
            f"float32 or float64), got dtype {x.dtype}{hint}"
        )
    return x


def _per_batch_tensor(x: torch.Tensor, name: str, shape: torch.Size) -> torch.Tensor:
    """A scale tensor: one element, or the data's rank with each size 1 or the data's."""
    _dense(x, name)
    if x.is_complex() or not x.is_floating_point():
        raise DtypeError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 1:
        return x.reshape(())
    fits = x.ndim == len(shape) and all(a in (1, n) for a, n in zip(x.shape, shape, strict=True))
    if not fits:
        hint = (
            f"; for one scale per sample use {name}.view(-1{', 1' * (len(shape) - 1)})"
            if x.ndim == 1 and len(shape) > 1 and x.shape[0] == shape[0]
            else ""
        )
        raise BroadcastError(
            f"{name} of shape {tuple(x.shape)} does not line up with the data of shape "
            f"{tuple(shape)}: a {name} tensor must have one element or the data's "
            f"{len(shape)} dimensions, each of size 1 or the data's size (e.g. a per-sample "
            f"{name} of shape ({shape[0] if shape else 'B'}{', 1' * max(len(shape) - 1, 0)})), "
            f"because trailing-axis broadcasting would silently apply it along the wrong "
            f"axis{hint}"
        )
    return x


def _meta_mismatch(x: torch.Tensor, name: str, device: torch.device) -> None:
    if (x.device.type == "meta") != (device.type == "meta"):
        raise DtypeError(
            f"{name} is on {x.device} but the data are on {device}; a meta tensor holds no "
            f"values, so both must be real tensors (or both meta, with checks off)"
        )


def _on_device(x: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    """``x`` on the data's device. A copy from the CPU is asynchronous: no host sync."""
    if x.device == device:
        return x
    _meta_mismatch(x, name, device)
    return x.to(device, non_blocking=x.device.type == "cpu")


def _scale_input(scale: Any, name: str, shape: torch.Size, device: torch.device) -> Scale:
    """A scale tensor that lines up with the data, or a scale known on the host."""
    if isinstance(scale, torch.Tensor):
        t = _per_batch_tensor(scale, name, shape)
        if t.device != device:
            _meta_mismatch(t, name, device)
            if t.ndim != 0:
                raise BroadcastError(
                    f"{name} is on {t.device} but the data are on {device}; move it with "
                    f"{name}.to(pred.device)"
                )
            # A 0-d CPU tensor is a scalar to every device's kernels: no copy, no sync.
            if t.device.type != "cpu":
                t = t.to(device)
        return t
    return scalar_scale(scale, name)


def _background_input(background: Any, shape: torch.Size, device: torch.device) -> Scale:
    """A background tensor on the data's device, or a number of counts >= 0."""
    if type(background) is float and 0.0 <= background < math.inf:
        return background
    if isinstance(background, torch.Tensor):
        _dense(background, "background")
        if background.is_complex() or not background.is_floating_point():
            raise DtypeError(
                f"background must be a real floating-point tensor (photon counts), got dtype "
                f"{background.dtype}"
            )
        if not _broadcasts_to(background.shape, shape):
            raise BroadcastError(
                f"background of shape {tuple(background.shape)} does not broadcast to the data "
                f"shape {tuple(shape)}; give a scalar, a per-pixel (H, W) map, or a tensor "
                f"broadcastable to the data"
            )
        return _on_device(background, "background", device)
    if isinstance(background, bool | np.bool_) or not isinstance(background, numbers.Real):
        raise DtypeError(
            f"background must be a real number or tensor of photon counts, got "
            f"{type(background).__name__} {background!r}"
        )
    try:
        value = float(background)
    except OverflowError:  # a Python int beyond the float range
        value = math.inf
    if not math.isfinite(value) or value < 0.0:
        err = NonFiniteError if not math.isfinite(value) else NegativeValueError
        raise err(f"background must be a finite number of photon counts >= 0, got {value!r}")
    return value


def _mask_input(mask: Any, shape: torch.Size, device: torch.device) -> tuple[torch.Tensor, bool]:
    """``(mask on the data's device, holds_weights)``: bool, or real 0/1 weights."""
    if isinstance(mask, np.ndarray):
        if mask.dtype != np.bool_ and mask.dtype.kind != "f":
            raise MaskError(f"mask must be boolean or 0/1 floats, got numpy dtype {mask.dtype}")
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise MaskError(
            f"mask must be a boolean (True = valid pixel) torch.Tensor or numpy.ndarray, "
            f"got {type(mask).__name__}"
        )
    _dense(mask, "mask", MaskError)
    if mask.dtype != torch.bool and (mask.is_complex() or not mask.is_floating_point()):
        raise MaskError(
            f"mask must be boolean (True = valid pixel) or 0/1 floating weights, got dtype "
            f"{mask.dtype}; use mask.bool()"
        )
    if not _broadcasts_to(mask.shape, shape):
        raise MaskError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the data shape {tuple(shape)}"
        )
    if mask.device != device and (mask.device.type == "meta") != (device.type == "meta"):
        raise MaskError(
            f"mask is on {mask.device} but the data are on {device}; a meta tensor holds no "
            f"values, so both must be real tensors (or both meta, with checks off)"
        )
    return _on_device(mask.detach(), "mask", device), mask.dtype != torch.bool


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without changing it."""
    try:
        out: torch.Size = torch.broadcast_shapes(shape, target)  # type: ignore[no-untyped-call]
    except RuntimeError:
        return False
    return out == target


def _square(x: float) -> float:
    return x * x  # inf on overflow, never OverflowError


# --------------------------------------------------------------------------- the module's inputs


def loss_mask(mask: Any) -> torch.Tensor:
    """A loss module's mask, checked (boolean or 0/1 floats, not all excluded), detached.

    The data shape is unknown here: the mask is checked against its own shape,
    keeps its dtype and device (each call converts it), and its values are
    checked now, once, when validation is on (a host sync).
    """
    shape = torch.Size(getattr(mask, "shape", ()))
    device = mask.device if isinstance(mask, torch.Tensor) else torch.device("cpu")
    tensor, weights = _mask_input(mask, shape, device)
    if tensor.numel() == 0:
        raise MaskError(f"mask of shape {tuple(tensor.shape)} is empty; give an (H, W) mask")
    if is_validation_enabled() and tensor.device.type != "meta":
        zero = torch.zeros((), device=tensor.device)
        _check_values(zero, zero, "amplitude", [], tensor.to(torch.float64), weights)
    return tensor


def loss_background(background: Any) -> tuple[torch.Tensor | None, float]:
    """A loss module's background: ``(map, 0.0)`` for a tensor, ``(None, counts)`` for a
    number; a map's values are checked now, once, when validation is on (a host sync)."""
    if isinstance(background, torch.Tensor):
        b = _background_input(background, background.shape, background.device)
        assert isinstance(b, torch.Tensor)
        if is_validation_enabled() and b.device.type != "meta":
            zero = torch.zeros((), device=b.device)
            _check_values(zero, zero, "amplitude", [("background", b, "background counts", False)])
        return b.detach(), 0.0
    value = _background_input(background, torch.Size(()), torch.device("cpu"))
    assert isinstance(value, float)
    return None, value


# --------------------------------------------------------------------------- value checks


class Seen(NamedTuple):
    """What the value checks measured: the precision the math needs follows from it."""

    unmasked: float | None  # how many elements the mask keeps (None without a mask)
    max_rate: float  # the largest rate, (s * |pred|)**2 + background (or s**2 |pred| + b)
    max_counts: float  # the largest counts


def check_loss_values(x: LossInputs, cast: Cast) -> tuple[Cast, Seen]:
    """Check the values of a call's inputs cast for the math, in one host sync.

    NaN/Inf (in unmasked pixels), negative observations (and predictions in
    the intensity domain), scales that are not > 0, a negative background,
    mask weights other than 0 or 1, an all-excluding mask, rates or counts
    beyond float64; then warns ([`UnitsWarning`][physscale.UnitsWarning]) when ``obs``
    look like raw photon counts. Returns the cast (again with ``select`` when
    a masked pixel held a NaN) and what was measured.
    """
    p, o, s, t, b, m = cast
    extras: list[tuple[str, torch.Tensor, str, bool]] = []
    if isinstance(s, torch.Tensor):
        extras.append(("scale", s, "intensity scale", True))
    if isinstance(t, torch.Tensor):
        extras.append(("count_scale", t, "intensity scale", True))
    if isinstance(b, torch.Tensor):
        extras.append(("background", b, "background counts", False))
    # The scale that turns obs into counts, and its name in the checks. The units check
    # allows for the rounding of the data as given (float32 data computed in float64
    # still carry float32's).
    u, u_name = (s, "scale") if t is None else (t, "count_scale")
    try:
        checked = _check_values(p, o, x.domain, extras, m, x.weights, u)
    except NonFiniteError:
        if m is None:
            raise
        # Raises again if an unmasked pixel is bad.
        cast = p, o, s, t, b, m = x.cast(p.dtype, select=True)
        checked = _check_values(p, o, x.domain, extras, m, x.weights, u)

    big_s = checked.abs_max["scale"] if isinstance(s, torch.Tensor) else s
    big_t = checked.abs_max[u_name] if isinstance(u, torch.Tensor) else u
    big_b = checked.abs_max["background"] if isinstance(b, torch.Tensor) else b or 0.0
    if x.domain == "amplitude":
        max_rate = _square(big_s * checked.abs_max["pred"]) + big_b
        max_counts = _square(big_t * checked.abs_max["obs"])
    else:
        max_rate = _square(big_s) * checked.abs_max["pred"] + big_b
        max_counts = _square(big_t) * checked.abs_max["obs"]
    if not (math.isfinite(max_rate) and math.isfinite(max_counts)):
        raise NonFiniteError(
            f"the rate or the counts overflow float64: scale {big_s:.6g} on "
            f"predictions up to {checked.abs_max['pred']:.6g} and count scale "
            f"{big_t:.6g} on observations up to {checked.abs_max['obs']:.6g}; "
            "pred and obs must be normalized values, with the scale that maps "
            "them to photon counts"
        )
    # Whole obs are raw counts unless the count scale keeps them counts: exactly 1
    # (count-native use), or a deliberate scale that maps them to whole counts, such as
    # an integer detector gain's gain**-0.5. Whole amplitudes are counts given as
    # amplitudes, whatever the scale.
    u_is_one = checked.exactly_one[u_name] if isinstance(u, torch.Tensor) else u == 1.0
    counts_kept = u_is_one or checked.counts_whole
    if checked.looks_like_counts and (checked.obs_whole or not counts_kept):
        _warn_raw_counts(x.domain, None if isinstance(u, torch.Tensor) else u, checked.obs_whole)
    elif checked.obs_quantized and not checked.obs_whole:
        # Three frames up: the caller of scaled_poisson_nll.
        warnings.warn(intensities_message("obs"), UnitsWarning, stacklevel=3)
    return cast, Seen(checked.unmasked, max_rate, max_counts)


class _Checked(NamedTuple):
    """What the one host sync of `_check_values` learned."""

    unmasked: float | None  # how many elements the mask keeps (None without a mask)
    abs_max: dict[str, float]  # largest magnitude of each checked tensor
    exactly_one: dict[str, bool]  # whether a checked tensor is 1 everywhere
    looks_like_counts: bool  # obs's sampled intensities are whole numbers
    counts_whole: bool  # ... and the count scale turns them into whole counts
    obs_whole: bool  # obs itself is whole-valued (counts given as amplitudes)
    obs_quantized: bool  # amplitudes that are multiples of a quantum: intensities


def _whole(v: torch.Tensor, rel: float) -> torch.Tensor:
    """True if every value of ``v`` is within ``1e-4 + rel*|v|`` of a whole number,
    and that is evidence (derive's rule, ``kernels.sums.WHOLE_CHANCE``)."""
    tol = 1e-4 + rel * v.abs()
    within = (v - v.round()).abs().le(tol).all()
    chance = torch.where(v >= 1.0, (2.0 * tol).clamp(max=1.0).log(), 0.0).sum()
    return within & chance.le(math.log(WHOLE_CHANCE))


def quantum_parts(a: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """Device-side statistics of the intensity rule (no sync): are amplitudes quantized?

    ``a``: a flat sample of values given as amplitudes, >= 0; ``dtype``: the
    dtype whose rounding they carry. Amplitudes of counts are ``f * sqrt(k)``:
    their *squares* are whole multiples of a quantum, not the values
    themselves. Intensities of counts are ``g * k`` (a gain, or a
    normalization constant such as PtyRAD's ``max_at_one`` ``1/c``): the
    values are whole multiples of the smallest positive one. Returns
    ``[how many q = a / a_min are >= 1, max(q), whether every q is within
    1e-4 + whole_tolerance(dtype) * q of a whole number]`` (the units guard's
    tolerance); `looks_like_intensities` reads them.
    """
    low = torch.where(a > 0, a, math.inf).amin()
    q = a / low  # 0 everywhere when nothing is positive (a / inf)
    off = (q - q.round()).abs_()
    within = off.le_(torch.add(q, 1e-4 / whole_tolerance(dtype)).mul_(whole_tolerance(dtype)))
    return [q.ge(1.0).sum(), q.amax(), within.all()]


def looks_like_intensities(stats: Sequence[float], dtype: torch.dtype) -> bool:
    """The intensity rule on `quantum_parts`' three values (read on the host).

    The units guard's "too little signal" bar (16 values, a largest of at
    least 2 quanta) and every value a whole multiple of the smallest positive
    one. Whole needs evidence (``kernels.sums.WHOLE_CHANCE``): with the
    largest tolerance at most 0.05, 16 values land that close to whole
    numbers by chance with probability below ``0.1**16``; above it (float32
    beyond ~5e4 quanta) the values say nothing. Amplitudes of counts pass only
    when every sampled count is a perfect square times the smallest (``k /
    k_min`` in 1, 4, 9...); continuous data never pass.
    """
    n_ge1, q_max, whole = stats
    tolerance = 1e-4 + whole_tolerance(dtype) * q_max
    return n_ge1 >= 16 and q_max >= 2.0 and whole == 1.0 and tolerance <= 0.05


def intensities_message(name: str) -> str:
    """The warning for intensities that reached ``domain='amplitude'`` (loss and derive)."""
    return (
        f"{name} look like intensities, not amplitudes: every sampled value is a whole "
        f"multiple of the smallest (intensities of counts, g * k, such as PtyRAD's "
        f"max_at_one data or cdtools' measured intensities), while amplitudes of counts, "
        f"f * sqrt(k), are not; in the amplitude domain they would be squared. Pass "
        f"domain='intensity' (or their square roots as amplitudes). If these are amplitudes, "
        f"silence physscale.UnitsWarning"
    )


def _units_parts(o: torch.Tensor, amplitude: bool, t: Scale) -> list[torch.Tensor]:
    """Device-side statistics of obs's leading values for the raw-counts heuristic.

    The rule is derive's (``physscale.accumulator``): at least 16 sampled
    intensities >= 1, the largest >= 2, and every one a whole number. Also:
    whether the count scale ``t`` turns them into whole counts (a deliberate
    scale, e.g. ``gain**-0.5`` of an integer detector gain), and whether
    amplitudes are themselves whole (counts given as amplitudes). The counts
    get a tolerance of a few float32 roundings (the rounding of sqrt, square
    and product), tighter than derive's, so that bright raw counts times an
    arbitrary scale are not mistaken for whole counts.
    """
    x = o.detach()
    if x.ndim > 0 and x.numel() > _UNITS_SAMPLE:
        # Leading patterns only: the reshapes below then copy at most that slice.
        per_item = x.numel() // x.shape[0]
        x = x[: max(1, -(-_UNITS_SAMPLE // per_item))]
    if isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] > 1:
        t = t[: x.shape[0]]  # a per-sample scale, for the same leading patterns
    a = x.reshape(-1)[:_UNITS_SAMPLE]
    v = a * a if amplitude else a
    k = (x * t) ** 2 if amplitude else x * (t * t)
    k_whole = _whole(k.reshape(-1)[:_UNITS_SAMPLE], rel=_COUNTS_WHOLE_REL)
    parts = [v.ge(1.0).sum(), v.amax(), _whole(v, rel=whole_tolerance(o.dtype)), k_whole]
    if amplitude:
        parts.append(_whole(a, rel=whole_tolerance(o.dtype)))
        parts += quantum_parts(a, o.dtype)
    return parts


def _check_values(
    p: torch.Tensor,
    o: torch.Tensor,
    domain: str,
    extras: list[tuple[str, torch.Tensor, str, bool]],
    m: torch.Tensor | None = None,
    weights: bool = False,
    count_scale: Scale | None = None,
) -> _Checked:
    """One host sync for every value check.

    Checks NaN/Inf in ``p`` and ``o`` (already masked), negatives in ``o`` (and
    in ``p`` in the intensity domain), each ``(name, tensor, what,
    strictly_positive)`` in ``extras``, and that mask weights are 0 or 1; given
    the ``count_scale``, also samples obs for the raw-counts heuristic.
    """
    amplitude = domain == "amplitude"
    kind = "amplitudes" if amplitude else "intensities"
    checked = [("pred", p, f"predicted {kind}", False), ("obs", o, f"observed {kind}", False)]
    checked += extras
    wide = widest_dtype(p.device)
    parts: list[torch.Tensor] = []
    for _, x, _, _ in checked:
        parts += torch.aminmax(x.detach().to(device=p.device))
    n_mask = len(parts)
    if m is not None:
        # The unmasked count in float64 (exact for any realistic size) where the device has it.
        parts.append(m.sum(dtype=wide) * (p.numel() / m.numel()))
        if weights:
            parts.append((m * (1.0 - m)).abs().amax())
    n_units = len(parts)
    if count_scale is not None:
        parts += _units_parts(o, amplitude, count_scale)
    # One stack, one device-to-host transfer for every check.
    stats = torch.stack([q.to(wide) for q in parts]).tolist()

    abs_max: dict[str, float] = {}
    exactly_one: dict[str, bool] = {}
    for i, (name, x, what, strict) in enumerate(checked):
        lo, hi = stats[2 * i], stats[2 * i + 1]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(torch.isinf(x).sum())
            where = " in unmasked pixels" if m is not None and name in ("pred", "obs") else ""
            raise NonFiniteError(
                f"{name} ({what}) holds {n_nan} NaN and {n_inf} infinite value(s){where}; "
                f"every value must be finite"
            )
        signed = name == "pred" and amplitude  # (s * pred)**2 is a rate for any real pred
        if not signed and (lo < 0.0 or (strict and lo <= 0.0)):
            bound = "> 0" if strict else ">= 0"
            if name == "pred":
                hint = (
                    " (a model predicting intensities must end in a non-negative activation "
                    "such as torch.nn.functional.softplus, or predict amplitudes and use "
                    "domain='amplitude', where any real output squares to a rate)"
                )
            elif name == "obs":
                hint = " (clip detector noise with .clamp(min=0), or mask those pixels)"
            else:
                hint = ""
            raise NegativeValueError(
                f"{name} ({what}) must be {bound} everywhere, got a minimum of {lo!r}{hint}"
            )
        abs_max[name] = max(-lo, hi)
        exactly_one[name] = lo == 1.0 and hi == 1.0
    count = None
    if m is not None:
        count = stats[n_mask]
        if weights and stats[n_mask + 1] != 0.0:
            raise MaskError(
                "mask weights must be exactly 0 or 1 (or give a boolean mask); fractional "
                "weights are not a valid-pixel mask"
            )
        if count == 0.0:
            raise MaskError("the mask excludes every element; there is nothing to compare")
    looks_like_counts = counts_whole = obs_whole = obs_quantized = False
    if count_scale is not None:
        n_ge1, v_max, whole, k_whole = stats[n_units : n_units + 4]
        looks_like_counts = n_ge1 >= 16 and v_max >= 2.0 and whole == 1.0
        counts_whole = k_whole == 1.0
        obs_whole = amplitude and stats[n_units + 4] == 1.0
        obs_quantized = amplitude and looks_like_intensities(
            stats[n_units + 5 : n_units + 8], o.dtype
        )
    return _Checked(
        count, abs_max, exactly_one, looks_like_counts, counts_whole, obs_whole, obs_quantized
    )


def _warn_raw_counts(domain: str, count_scale: float | None, obs_whole: bool) -> None:
    """The loss's UnitsWarning; ``count_scale`` is None when it is a tensor."""
    kind = "amplitudes" if domain == "amplitude" else "intensities"
    k = "(count_scale * obs)**2" if domain == "amplitude" else "count_scale**2 * obs"
    scale = "a tensor" if count_scale is None else f"{count_scale:.6g}"
    if domain == "amplitude" and obs_whole:
        what = (
            "obs look like raw photon counts given as amplitudes: they are whole numbers, "
            f"and with domain='amplitude' the counts are {k}, their squares"
        )
    else:
        what = (
            f"obs look like raw photon counts, not normalized {kind}: the sampled "
            f"{'squared amplitudes' if domain == 'amplitude' else 'intensities'} are whole "
            f"numbers, and the counts the loss makes of them, {k} with count scale "
            f"{scale}, are not"
        )
    # Four frames up: the caller of scaled_poisson_nll, past check_loss_values.
    warnings.warn(
        f"{what}. {counts_next_step()}; or use the count-native loss on the counts "
        "themselves: domain='intensity', scale=1.0, pred the predicted counts. If these are "
        "normalized values, silence physscale.UnitsWarning",
        UnitsWarning,
        stacklevel=4,
    )
