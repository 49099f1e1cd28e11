"""The scaled Poisson negative log-likelihood (SPEC §3).

Elementwise, with the rate ``lam`` and counts ``k`` in photons::

    amplitude domain:  lam = (s * pred)**2 + background,  k = (t * obs)**2
    intensity domain:  lam = s**2 * pred + background,    k = t**2 * obs

where ``s`` is ``scale`` and ``t`` the count scale (``scale`` unless
``count_scale`` is given). The forms differ only by terms constant in ``lam``:

============  ====================================================  ===========================
form          value                                                 reproduces
============  ====================================================  ===========================
``tf``        ``lam - k*log(lam)``                                  ``tf.nn.log_poisson_loss``
``stirling``  ``tf + k*log(k) - k + 0.5*log(2*pi*k)`` where ``k>1`` ``compute_full_loss=True``
``exact``     ``tf + lgamma(k + 1)``                                ``Poisson.log_prob``
``deviance``  ``lam - k - k*log(lam/k)`` (``lam`` where ``k == 0``) half the Poisson deviance
============  ====================================================  ===========================

Where ``eps`` enters: only inside the logarithm of the rate, as
``log(max(lam, eps))``. Wherever ``lam >= eps`` every form is exactly its
formula. Below ``eps`` the value is frozen at ``log(eps)`` but the gradient
in ``lam`` stays ``1 - k / max(lam, eps)``, finite and pointing towards the
data, so a pixel predicted dark where photons were seen can recover.

The work is one :class:`torch.autograd.Function` with the analytic gradient:
no chain of autograd temporaries, two saved tensors (the floored rate and the
counts). ``tf``, ``stirling`` and ``exact`` compute in float32 (float64 for
float64 inputs); ``deviance`` always computes in float64 (float32 on Apple MPS,
which has no float64) because its value is a small difference of large numbers.
Autocast is switched off inside: the loss is float32 or better whatever the
ambient autocast dtype.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Literal

import numpy as np
import torch

from physscale._checks import check_option
from physscale.errors import (
    BroadcastError,
    DtypeError,
    EmptyInputError,
    MaskError,
    NegativeValueError,
    NonFiniteError,
)
from physscale.record import ScaleRecord

__all__ = ["DOMAINS", "FORMS", "REDUCTIONS", "scalar_scale", "scaled_poisson_nll"]

Domain = Literal["amplitude", "intensity"]
Form = Literal["tf", "stirling", "exact", "deviance"]
Reduction = Literal["mean", "sum", "none", "per_sample"]

DOMAINS: tuple[Domain, ...] = ("amplitude", "intensity")
FORMS: tuple[Form, ...] = ("tf", "stirling", "exact", "deviance")
REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none", "per_sample")

#: |lam/k - 1| below which the deviance uses its series (float64; the
#: truncation error there is below 3e-11 relative).
_DEVIANCE_SERIES_BELOW = 1e-2
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _positive_real(value: Any, where: str, what: str) -> float:
    """``value`` as a positive finite float; DtypeError/NonFiniteError/NegativeValueError."""
    raw = value
    if isinstance(value, torch.Tensor | np.ndarray):
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != 1):
            raise DtypeError(
                f"{where} must be a single number here, got an array of shape {tuple(value.shape)}"
            )
        if value.dtype in (torch.bool, np.bool_) or (
            isinstance(value, torch.Tensor) and value.is_complex()
        ):
            raise DtypeError(f"{where} must be a real number, got dtype {value.dtype}")
        value = value.reshape(()).item() if isinstance(value, np.ndarray) else value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise DtypeError(f"{where} must be {what}, got {type(raw).__name__} {raw!r}")
    out = float(value)
    if not math.isfinite(out):
        raise NonFiniteError(f"{where} must be finite, got {out!r}")
    if out <= 0.0:
        raise NegativeValueError(f"{where} must be > 0, got {out!r}")
    return out


def scalar_scale(value: Any, where: str = "scale") -> float:
    """Return a single intensity scale as a positive finite Python float.

    Accepts a real number, a 0-d (or one-element) tensor or array, or a
    :class:`~physscale.ScaleRecord` (its ``intensity_scale``).

    Raises:
        DtypeError: not a real number (bool, complex, string, a larger array...).
        NonFiniteError: NaN or infinite.
        NegativeValueError: zero or negative.
    """
    if isinstance(value, ScaleRecord):
        return float(value.intensity_scale)
    return _positive_real(
        value, where, "a positive real number, a 0-d tensor or a ScaleRecord (amplitude factor)"
    )


# --------------------------------------------------------------------------- the kernel


def _rate_and_counts(
    p: torch.Tensor,
    o: torch.Tensor,
    s: torch.Tensor,
    t: torch.Tensor,
    b: torch.Tensor | None,
    amplitude: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    if amplitude:
        # mul_ with itself, not square_: vmap has a batching rule for mul_.
        lam = torch.mul(p, s)
        lam = lam.mul_(lam)
        k = torch.mul(o, t)
        k = k.mul_(k)
    else:
        lam = torch.mul(p, s * s)
        k = torch.mul(o, t * t)
    if b is not None:
        lam = lam.add_(b)
    return lam, k


def _deviance(
    p: torch.Tensor,
    o: torch.Tensor,
    s: torch.Tensor,
    t: torch.Tensor,
    b: torch.Tensor | None,
    lam_c: torch.Tensor,
    k: torch.Tensor,
    amplitude: bool,
    same_scale: bool,
) -> torch.Tensor:
    """``k * (u - log1p(u))`` with ``u = (lam - k) / k`` formed without cancellation.

    In-place where possible: a handful of temporaries instead of a chain of them.
    """
    # lam - k straight from the inputs: no difference of two large squares.
    if amplitude:
        if same_scale:
            d = torch.sub(p, o).mul_(p + o).mul_(s * s)
        else:
            a, a_obs = p * s, o * t
            d = torch.sub(a, a_obs).mul_(a.add_(a_obs))
    elif same_scale:
        d = torch.sub(p, o).mul_(s * s)
    else:
        d = torch.mul(p, s * s).sub_(o * (t * t))
    if b is not None:
        d = d.add_(b)
    # k == 0: with k floored at 1e-150, k * (u - log(lam/k)) = lam - 1e-150 * log(lam/1e-150),
    # which is lam to float64 precision (the k*log(...) term taken as 0, SPEC §3). Blends by
    # 0/1 float weights instead of torch.where, which is many times slower on CPU.
    k_safe = k.clamp_min(1e-150)
    u = d.div_(k_safe)
    small = u.abs().le_(_DEVIANCE_SERIES_BELOW)  # 1.0 where the series applies, else 0.0
    # u - log1p(u) = u**2 (1/2 - u/3 + u**2/4 - u**3/5 + u**4/6): no cancellation.
    us = u.clamp(-_DEVIANCE_SERIES_BELOW, _DEVIANCE_SERIES_BELOW)
    series = us.mul(-1.0 / 6.0).add_(0.2)
    for coefficient in (0.25, 1.0 / 3.0, 0.5):
        series = series.mul_(us).neg_().add_(coefficient)
    series = series.mul_(us).mul_(us).mul_(small)
    # Elsewhere u - log(max(lam, eps) / k), directly.
    general = torch.div(lam_c, k_safe).log_().neg_().add_(u)
    general = general.mul_(small.neg_().add_(1.0)).add_(series)
    return general.mul_(k_safe)


def _d_value_d_counts(form: str, k: torch.Tensor, lam_c: torch.Tensor, eps: float) -> torch.Tensor:
    """Derivative of the elementwise value in the counts ``k`` (differs between forms)."""
    out = torch.log(lam_c).neg_()
    if form == "stirling":
        kc = k.clamp_min(1.0)
        out = out + (k > 1).to(k.dtype) * (torch.log(kc) + 0.5 / kc)
    elif form == "exact":
        out = out + torch.digamma(k + 1.0)
    elif form == "deviance":
        # d/dk (-k log(lam/k) - k) = log k - log lam; -inf at k == 0, floored like lam.
        out = out + torch.log(k.clamp_min(eps))
    return out


def _sum_to(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``x`` summed down to ``shape``, never a view of ``x``.

    ``sum_to_size`` returns ``x`` itself when there is nothing to sum, and the
    backward pass reuses its buffers in place afterwards: a full-shape
    background's gradient would silently become the prediction's.
    """
    if len(shape) == 0:
        return x.sum()
    return x.clone() if x.shape == shape else x.sum_to_size(shape)


def _through_scaling(
    g_y: torch.Tensor,
    x: torch.Tensor,
    c: torch.Tensor,
    amplitude: bool,
    need_x: bool,
    need_c: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients in ``x`` and ``c`` given the gradient ``g_y`` in ``y = (c*x)**2`` or ``c**2*x``.

    The rate (``p``, ``s``) and the counts (``o``, ``t``) are the same function of their
    inputs. The gradient in ``x`` is written over ``g_y``.
    """
    g_c = g_x = None
    if need_c:
        dy_dc = x * x if amplitude else x
        g_c = _sum_to(g_y * dy_dc, c.shape) * (2.0 * c)
    if need_x:
        g_x = g_y.mul_(x).mul_(2.0 * c * c) if amplitude else g_y.mul_(c * c)
    return g_x, g_c


def _nll_forward(
    p: torch.Tensor,
    o: torch.Tensor,
    s: torch.Tensor,
    t: torch.Tensor,
    b: torch.Tensor | None,
    m: torch.Tensor | None,
    domain: str,
    form: str,
    reduction: str,
    eps: float,
    count: float,
    same_scale: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The value, and the floored rate and counts the backward pass needs."""
    amplitude = domain == "amplitude"
    lam, k = _rate_and_counts(p, o, s, t, b, amplitude)
    if form == "deviance":
        lam_c = lam.clamp_min_(eps)  # in place: the deviance needs only the floored rate
        elem = _deviance(p, o, s, t, b, lam_c, k, amplitude, same_scale)
    elif form == "tf" and m is None and reduction in ("mean", "sum"):
        # The common case: sum(lam) - k . log(max(lam, eps)), no elementwise temporary.
        lam_sum = lam.sum()
        lam_c = lam.clamp_min_(eps)
        total = lam_sum - torch.dot(k.reshape(-1), torch.log(lam_c).reshape(-1))
        return (total / count if reduction == "mean" else total), lam_c, k
    else:
        # lam - k * log(max(lam, eps)), written over lam.
        lam_c = lam.clamp_min(eps)
        elem = lam.addcmul_(k, torch.log(lam_c), value=-1.0)
        if form == "stirling":
            # (k + 1/2) log k - k + log(2 pi)/2 where k > 1 (k floored at 1 so log is finite).
            kc = k.clamp_min(1.0)
            extra = torch.add(kc, 0.5).mul_(torch.log(kc)).sub_(kc).add_(_HALF_LOG_2PI)
            elem = elem.addcmul_(extra, k.gt(1.0).to(k.dtype))
        elif form == "exact":
            elem = elem.add_(torch.lgamma(k + 1.0))
    if m is not None:
        # Masked pixels hold p = o = 0, so only the background term survives there.
        elem = elem * m
    if reduction == "none":
        out = elem
    elif reduction == "per_sample":
        out = elem.reshape(elem.shape[0], -1).sum(1)
    else:
        total = elem.sum()
        out = total / count if reduction == "mean" else total
    return out, lam_c, k


def _save(ctx: Any, args: tuple[Any, ...], lam_c: torch.Tensor, k: torch.Tensor) -> None:
    p, o, s, t, b, m, domain, form, reduction, eps, count, _ = args
    ctx.save_for_backward(p, o, s, t, b, m, lam_c, k)
    ctx.config = (domain, form, reduction, eps, count, p.shape)


def _nll_backward(ctx: Any, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Analytic gradients of :func:`_nll_forward` for the inputs that need one."""
    p, o, s, t, b, m, lam_c, k = ctx.saved_tensors
    domain, form, reduction, eps, count, shape = ctx.config
    amplitude = domain == "amplitude"
    need = ctx.needs_input_grad
    if grad is None:
        return (None,) * 12
    if reduction == "mean":
        g = grad / count
    elif reduction == "per_sample":
        g = grad.reshape(grad.shape[0], *([1] * (len(shape) - 1)))
    else:
        g = grad
    gp = go = gs = gt = gb = None

    if need[2] or need[4]:
        # d value / d lam = 1 - k / max(lam, eps), the same for every form.
        g_lam = torch.div(k, lam_c).sub_(1.0).mul_(-g)
        if m is not None:
            g_lam = g_lam.mul_(m)
        if need[4]:
            assert b is not None
            gb = _sum_to(g_lam, b.shape)
        gp, gs = _through_scaling(g_lam, p, s, amplitude, need[0], need[2])
    elif need[0]:
        # Only the prediction, in one buffer: (1 - k/lam) * 2 s**2 p g (amplitude) or
        # (1 - k/lam) s**2 g (intensity). Masked pixels have p = 0, so no mask here.
        gp = torch.div(k, lam_c).sub_(1.0)
        gp = gp.mul_(p).mul_(-2.0 * s * s * g) if amplitude else gp.mul_(-(s * s) * g)

    if need[1] or need[3]:
        g_k = _d_value_d_counts(form, k, lam_c, eps).mul_(g)
        if m is not None:
            g_k = g_k.mul_(m)
        go, gt = _through_scaling(g_k, o, t, amplitude, need[1], need[3])

    return gp, go, gs, gt, gb, None, None, None, None, None, None, None


class _ScaledPoissonNLL(torch.autograd.Function):
    """Fused value and analytic gradient of the scaled Poisson NLL.

    Inputs are already validated, cast to the compute dtype and masked
    (``p``, ``o`` zero where the mask is 0). Old-style (``forward(ctx, ...)``)
    because its ``apply`` skips the per-call signature binding that
    ``setup_context`` Functions pay; :class:`_ScaledPoissonNLLTransformable`
    is the same computation for ``torch.func`` transforms.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any) -> torch.Tensor:
        out, lam_c, k = _nll_forward(*args)
        _save(ctx, args, lam_c, k)
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[torch.Tensor | None, ...]:
        return _nll_backward(ctx, grads[0])


class _ScaledPoissonNLLTransformable(torch.autograd.Function):
    """:class:`_ScaledPoissonNLL` in the ``setup_context`` style ``torch.func`` needs.

    Returns ``(loss, lam_c, k)``; the last two are non-differentiable
    intermediates kept for the backward pass.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(*args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _nll_forward(*args)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        _, lam_c, k = output
        ctx.mark_non_differentiable(lam_c, k)
        # No zero-filled gradients for the two intermediates (saves two passes).
        ctx.set_materialize_grads(False)
        _save(ctx, inputs, lam_c, k)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[torch.Tensor | None, ...]:
        return _nll_backward(ctx, grads[0])


# --------------------------------------------------------------------------- validation


def _input_tensor(x: Any, name: str, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise DtypeError(
            f"{name} must be a torch.Tensor of {what}, got {type(x).__name__}; "
            f"use torch.as_tensor(...) for numpy data"
        )
    if x.is_complex() or not x.is_floating_point():
        raise DtypeError(
            f"{name} must hold real floating-point {what} (float16, bfloat16, float32 or "
            f"float64), got dtype {x.dtype}"
            + ("; take .abs() of complex wavefields first" if x.is_complex() else "")
        )
    return x


def _per_batch_tensor(
    x: torch.Tensor, name: str, shape: torch.Size, dtype: torch.dtype
) -> torch.Tensor:
    """A scale tensor: one element, or the data's rank with each size 1 or the data's."""
    if x.is_complex() or not x.is_floating_point():
        raise DtypeError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 1:
        return x.reshape(()).to(dtype)
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
    return x.to(dtype)


def _scale_tensor(
    scale: Any, name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, bool]:
    """``(tensor, needs_value_check)`` for a scale given in any accepted way.

    Tensors are checked later, in the one host sync of :func:`_check_values`.
    """
    if isinstance(scale, torch.Tensor):
        t = _per_batch_tensor(scale, name, shape, dtype)
        if t.device != device:
            if t.ndim != 0:
                raise BroadcastError(
                    f"{name} is on {t.device} but the data are on {device}; move it with "
                    f"{name}.to(pred.device)"
                )
            t = t.to(device)
        return t, True
    value = scalar_scale(scale, name)
    return torch.scalar_tensor(value, dtype=dtype, device=device), False


def _background_tensor(
    background: Any, shape: torch.Size, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    if isinstance(background, torch.Tensor):
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
        return background.to(device=device, dtype=dtype), True
    if isinstance(background, bool | np.bool_) or not isinstance(background, numbers.Real):
        raise DtypeError(
            f"background must be a real number or tensor of photon counts, got "
            f"{type(background).__name__} {background!r}"
        )
    value = float(background)
    if not math.isfinite(value) or value < 0.0:
        err = NonFiniteError if not math.isfinite(value) else NegativeValueError
        raise err(f"background must be a finite number of photon counts >= 0, got {value!r}")
    if value == 0.0:
        return None, False
    return torch.scalar_tensor(value, dtype=dtype, device=device), False


def _mask_tensor(
    mask: Any, shape: torch.Size, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, bool]:
    """``(0/1 float mask, needs_value_check)``; bool, or real 0/1 weights."""
    if isinstance(mask, np.ndarray):
        if mask.dtype != np.bool_ and mask.dtype.kind != "f":
            raise MaskError(f"mask must be boolean or 0/1 floats, got numpy dtype {mask.dtype}")
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise MaskError(
            f"mask must be a boolean (True = valid pixel) torch.Tensor or numpy.ndarray, "
            f"got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool and (mask.is_complex() or not mask.is_floating_point()):
        raise MaskError(
            f"mask must be boolean (True = valid pixel) or 0/1 floating weights, got dtype "
            f"{mask.dtype}; use mask.bool()"
        )
    if not _broadcasts_to(mask.shape, shape):
        raise MaskError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the data shape {tuple(shape)}"
        )
    return mask.detach().to(device=device, dtype=dtype), mask.dtype != torch.bool


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without changing it."""
    try:
        return _broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _broadcast_shapes(*shapes: torch.Size) -> torch.Size:
    out: torch.Size = torch.broadcast_shapes(*shapes)  # type: ignore[no-untyped-call]
    return out


def _widest(device: torch.device) -> torch.dtype:
    # Apple's MPS backend has no float64; float32 is the best it can do.
    return torch.float32 if device.type == "mps" else torch.float64


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # torch < 2.4, or a device autocast does not know
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else False
    if enabled:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _under_functorch() -> bool:
    # Inside vmap/grad/jacrev: data-dependent checks (a host sync) are impossible there.
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def _check_values(
    p: torch.Tensor,
    o: torch.Tensor,
    domain: str,
    extras: list[tuple[str, torch.Tensor, str, bool]],
    m: torch.Tensor | None,
    weights: bool,
) -> float | None:
    """One host sync for every value check; returns the unmasked element count.

    Checks NaN/Inf and negatives in ``p``, ``o`` (already masked) and each
    ``(name, tensor, what, strictly_positive)`` in ``extras``, and that mask
    weights are 0 or 1.
    """
    kind = "amplitudes" if domain == "amplitude" else "intensities"
    checked = [("pred", p, f"predicted {kind}", False), ("obs", o, f"observed {kind}", False)]
    checked += extras
    parts: list[torch.Tensor] = []
    for _, x, _, _ in checked:
        parts += torch.aminmax(x.detach())
    if m is not None:
        # The unmasked count in float64 (exact for any realistic size) where the device has it.
        wide = _widest(p.device)
        parts = [q.to(wide) for q in parts]
        parts.append(m.sum(dtype=wide) * (p.numel() / m.numel()))
        if weights:
            parts.append((m * (1.0 - m)).abs().amax().to(wide))
    # One stack, one device-to-host transfer for every check.
    stats = torch.stack(parts).tolist()

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
        if lo < 0.0 or (strict and lo <= 0.0):
            bound = "> 0" if strict else ">= 0"
            hint = (
                " (clip detector noise with .clamp(min=0), or mask those pixels)"
                if name in ("pred", "obs")
                else ""
            )
            raise NegativeValueError(
                f"{name} ({what}) must be {bound} everywhere, got a minimum of {lo!r}{hint}"
            )
    if m is None:
        return None
    count = stats[2 * len(checked)]
    if weights and stats[2 * len(checked) + 1] != 0.0:
        raise MaskError(
            "mask weights must be exactly 0 or 1 (or give a boolean mask); fractional "
            "weights are not a valid-pixel mask"
        )
    if count == 0.0:
        raise MaskError("the mask excludes every element; there is nothing to compare")
    return float(count)


# --------------------------------------------------------------------------- public API


def scaled_poisson_nll(
    pred: torch.Tensor,
    obs: torch.Tensor,
    scale: Any,
    *,
    domain: Domain = "amplitude",
    form: Form = "tf",
    reduction: Reduction = "mean",
    mask: Any = None,
    background: Any = 0.0,
    eps: float = 1e-12,
    count_scale: Any = None,
) -> torch.Tensor:
    """Poisson negative log-likelihood of observed counts under a predicted rate.

    Rate ``lam = (s*pred)**2 + background`` and counts ``k = (t*obs)**2``
    (amplitude domain) or ``lam = s**2*pred + background``, ``k = t**2*obs``
    (intensity domain), with ``s = scale`` and ``t = count_scale`` (default
    ``scale``). See the module docstring and ``docs/poisson-nll.md`` for the forms.

    Args:
        pred: (B, ...) predicted normalized amplitudes (``domain="amplitude"``)
            or normalized intensities (``"intensity"``); real floating tensor,
            >= 0, any device. Gradients flow to it.
        obs: observed normalized amplitudes or intensities, same shape and
            units as ``pred``, >= 0.
        scale: the intensity scale ``s`` (amplitude factor, counts are
            ``(s*x)**2``): a positive float, a 0-d tensor (may require grad), a
            :class:`~physscale.ScaleRecord`, or a tensor with the data's rank
            and each size 1 or the data's, e.g. ``(B, 1, 1, 1)`` per sample. A
            ``(B,)`` tensor is refused (it would broadcast along the last axis).
        domain: ``"amplitude"`` or ``"intensity"``.
        form: ``"tf"`` (default; what TF training minimizes), ``"stirling"``,
            ``"exact"`` or ``"deviance"`` (float64 internally; 0 where
            ``lam == k``, full relative precision at high counts).
        reduction: ``"mean"`` over unmasked elements (Keras), ``"sum"``,
            ``"none"`` (elementwise, 0 where masked), or ``"per_sample"`` (sum
            over every axis but the first, shape ``(B,)``).
        mask: optional valid-pixel mask broadcastable to the data: boolean
            (True = use the pixel) or 0/1 floats. Masked pixels add nothing to
            the value or the gradient, whatever they hold (NaN included).
        background: expected background photons per pixel added to the rate
            (not to the counts): a number >= 0 or a tensor broadcastable to the
            data (e.g. a per-pixel ``(H, W)`` map), in counts.
        eps: floor on the rate inside the logarithm, ``log(max(lam, eps))``, in
            counts; positive.
        count_scale: the scale ``t`` that turns ``obs`` into counts, if it is
            not ``scale`` (e.g. the data's fixed scale while ``scale`` is a
            trainable one, as in TF). Same accepted types as ``scale``; a
            trained ``ScaleRecord`` gives its ``initial_intensity_scale`` (the
            data's derived scale), any other record its ``intensity_scale``.

    Returns:
        float32 tensor (float64 if ``pred`` or ``obs`` is float64): 0-d for
        ``"mean"``/``"sum"``, ``(B,)`` for ``"per_sample"``, the data shape for
        ``"none"``. Values are in nats.

    Raises:
        PhysscaleError: a subclass that says what was wrong: DtypeError,
            BroadcastError, NonFiniteError, NegativeValueError, MaskError,
            OptionError or EmptyInputError.
    """
    domain = check_option(domain, DOMAINS, "domain")
    form = check_option(form, FORMS, "form")
    reduction = check_option(reduction, REDUCTIONS, "reduction")
    kind = "amplitudes" if domain == "amplitude" else "intensities"
    pred = _input_tensor(pred, "pred", f"normalized {kind}")
    obs = _input_tensor(obs, "obs", f"normalized {kind}")
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
    eps = _positive_real(eps, "eps", "a positive real number (photon counts)")

    shape, device = pred.shape, pred.device
    wide = pred.dtype == torch.float64 or obs.dtype == torch.float64
    out_dtype = torch.float64 if wide else torch.float32
    dtype = _widest(device) if form == "deviance" else out_dtype

    with _autocast_off(device.type):
        s, s_check = _scale_tensor(scale, "scale", shape, dtype, device)
        if isinstance(count_scale, ScaleRecord):
            # Counts live at the data's scale: for a trained record, where training began.
            count_scale = count_scale.data_scale
        same_scale = count_scale is None
        if same_scale:
            t, t_check = s, False
        else:
            t, t_check = _scale_tensor(count_scale, "count_scale", shape, dtype, device)
        b, b_check = _background_tensor(background, shape, dtype, device)
        m, weights = (None, False) if mask is None else _mask_tensor(mask, shape, dtype, device)

        p = pred if pred.dtype == dtype else pred.to(dtype)
        o = obs if obs.dtype == dtype else obs.to(dtype)
        if m is not None:
            # A float multiply zeroes masked pixels fast; NaN/Inf there is handled below.
            p, o = p * m, o * m

        extras: list[tuple[str, torch.Tensor, str, bool]] = []
        for name, x, check in (("scale", s, s_check), ("count_scale", t, t_check)):
            if check:
                extras.append((name, x, "intensity scale", True))
        if b is not None and b_check:
            extras.append(("background", b, "background counts", False))
        count = float(pred.numel())
        transformed = _under_functorch()
        if not transformed:
            try:
                unmasked = _check_values(p, o, domain, extras, m, weights)
            except NonFiniteError:
                if m is None:
                    raise
                # Dead pixels may hold NaN/Inf (0 * NaN is NaN): select instead of
                # multiplying, then check again (raises if an unmasked pixel is bad).
                keep = m != 0
                zero = torch.zeros((), dtype=dtype, device=device)
                p = torch.where(keep, pred.to(dtype), zero)
                o = torch.where(keep, obs.to(dtype), zero)
                unmasked = _check_values(p, o, domain, extras, m, weights)
            count = count if unmasked is None else unmasked
        elif m is not None:
            count = float(m.sum(dtype=_widest(device))) * (p.numel() / m.numel())

        # The mask already zeroed p and o; the kernel needs it only for the background.
        m_kernel = m if b is not None else None
        args = (p, o, s, t, b, m_kernel, domain, form, reduction, eps, count, same_scale)
        out: torch.Tensor
        if transformed:
            out = _ScaledPoissonNLLTransformable.apply(*args)[0]  # type: ignore[no-untyped-call]
        else:
            out = _ScaledPoissonNLL.apply(*args)  # type: ignore[no-untyped-call]
    return out if out.dtype == out_dtype else out.to(out_dtype)
