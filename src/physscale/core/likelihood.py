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
``eps=0`` removes the floor: ``k*log(lam)`` is then taken as 0 where ``k == 0``
(``xlogy``), so the value and every gradient are the unfloored formula's,
``torch.distributions.Poisson``'s included, except that a pixel with rate and
counts both 0 contributes 0 with a finite gradient (the distribution's
autograd gives NaN there).

The work is one :class:`torch.autograd.Function` with the analytic gradient:
no chain of autograd temporaries, two saved tensors (the floored rate and the
counts). ``tf``, ``stirling`` and ``exact`` compute in float32 (float64 for
float64 inputs, or where float32 cannot hold the rate: see
:func:`scaled_poisson_nll`); ``deviance`` always computes in float64 (float32
on Apple MPS, which has no float64) because its value is a small difference of
large numbers. Autocast is switched off inside: the loss is float32 or better
whatever the ambient autocast dtype.

Value checks (NaN, negatives, mask weights, units) need one device-to-host
transfer and run only while :func:`physscale.is_validation_enabled`; with them
off the call makes no host sync and takes no branch on tensor values, so it
compiles with ``torch.compile(fullgraph=True)`` and can be captured in a CUDA
graph. See ``docs/validation.md``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from physscale.core.checks import check_option
from physscale.core.kernels.sums import WHOLE_CHANCE, whole_tolerance
from physscale.core.validation import is_validation_enabled
from physscale.errors import (
    BroadcastError,
    DtypeError,
    EmptyInputError,
    MaskError,
    NegativeValueError,
    NonFiniteError,
    UnitsWarning,
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

#: A scale, count scale (squared) or background known on the host above which
#: the loss computes in float64 even for float32 inputs, without looking at the
#: data: normalized per-pixel intensities stay far below 1e6, so float32 then
#: holds every rate and the sum of 1e10 elements' terms with a wide margin.
_HOST_FLOAT32_LIMIT = 1e18
#: Bound on the reduced value below which float32 is used (checks on: measured).
_FLOAT32_SAFE_TOTAL = float(torch.finfo(torch.float32).max) / 8.0
#: How many leading obs values the units check samples (as derive does).
_UNITS_SAMPLE = 4096
#: Relative tolerance for "the count scale maps whole obs to whole counts": eight
#: float32 roundings (the rounding of sqrt, square and product).
_COUNTS_WHOLE_REL = whole_tolerance(torch.float32)


_compiler_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)


def _is_compiling() -> bool:
    """Whether torch.compile is tracing this call (False on a torch without it)."""
    return bool(_compiler_is_compiling()) if _compiler_is_compiling is not None else False


def _positive_real(value: Any, where: str, what: str) -> float:
    """``value`` as a positive finite float; DtypeError/NonFiniteError/NegativeValueError."""
    out = _real(value, where, what)
    if out <= 0.0:
        raise NegativeValueError(f"{where} must be > 0, got {out!r}")
    return out


def _real(value: Any, where: str, what: str) -> float:
    """``value`` as a finite float; DtypeError/NonFiniteError."""
    raw = value
    if isinstance(value, torch.Tensor | np.ndarray):
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != 1):
            raise DtypeError(
                f"{where} must be a single number here, got an array of shape {tuple(value.shape)}"
            )
        if value.dtype in (torch.bool, np.bool_) or (
            isinstance(value, torch.Tensor) and (value.is_complex() or value.device.type == "meta")
        ):
            raise DtypeError(f"{where} must be a real number, got a {value.dtype} {value!r}")
        value = value.reshape(()).item() if isinstance(value, np.ndarray) else value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise DtypeError(f"{where} must be {what}, got {type(raw).__name__} {raw!r}")
    try:
        out = float(value)
    except OverflowError:  # a Python int beyond the float range
        raise NonFiniteError(f"{where} must be finite, got {raw!r}") from None
    if not math.isfinite(out):
        raise NonFiniteError(f"{where} must be finite, got {out!r}")
    return out


def _eps_value(eps: Any) -> float:
    """The rate floor: a finite number of photon counts >= 0 (0: no floor)."""
    out = _real(eps, "eps", "a real number >= 0 (photon counts; 0 means no floor)")
    if out < 0.0:
        raise NegativeValueError(
            f"eps must be >= 0 (a floor on the rate in photon counts; 0 means no floor), "
            f"got {out!r}"
        )
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
    if type(value) is float and 0.0 < value < math.inf:
        return value
    if isinstance(value, ScaleRecord):
        return float(value.intensity_scale)
    return _positive_real(
        value, where, "a positive real number, a 0-d tensor or a ScaleRecord (amplitude factor)"
    )


# --------------------------------------------------------------------------- the kernel
#
# Arguments, in order: p, o (prediction and observation, compute dtype, masked),
# s (a Python float, or a 0-d or per-batch tensor scale), t (the count scale, the
# same kinds, or None when it is s), b (the background: a Python float, a tensor,
# or None), m (0/1 mask, only when a background needs masking), domain, form,
# reduction, eps, count (the number of unmasked elements for "mean": a Python
# float, or a 0-d tensor when it is known only on the device).


#: A scale inside the kernel: a tensor, or a Python number when the host knows it (no
#: fill kernel to make a 0-d tensor, and scalar arithmetic on the host).
Scale = torch.Tensor | float


def _rate_and_counts(
    p: torch.Tensor,
    o: torch.Tensor,
    s: Scale,
    t: Scale,
    b: Scale | None,
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
    s: Scale,
    t: Scale | None,
    b: Scale | None,
    lam_c: torch.Tensor,
    k: torch.Tensor,
    amplitude: bool,
    eps: float,
) -> torch.Tensor:
    """``k * (u - log1p(u))`` with ``u = (lam - k) / k`` formed without cancellation.

    In-place where possible: a handful of temporaries instead of a chain of them.
    """
    # lam - k straight from the inputs: no difference of two large squares.
    if amplitude:
        if t is None:
            d = torch.sub(p, o).mul_(p + o).mul_(s * s)
        else:
            a, a_obs = p * s, o * t
            d = torch.sub(a, a_obs).mul_(a.add_(a_obs))
    elif t is None:
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
    out = general.mul_(k_safe)
    if eps == 0.0:
        # No floor: log(0) is -inf, and 0 * inf above is NaN where rate and counts are
        # both 0; the deviance is exactly 0 there (and +inf where only the rate is 0).
        out = out.masked_fill_((lam_c == 0).logical_and_(k == 0), 0.0)
    return out


def _log_rate_weight(k: torch.Tensor, lam_c: torch.Tensor, eps: float) -> torch.Tensor:
    """``k * log(lam_c)``; with no floor (eps == 0), 0 where ``k == 0`` (``xlogy``)."""
    if eps > 0.0:
        return k * torch.log(lam_c)
    return torch.xlogy(k, lam_c)


def _counts_over_rate(k: torch.Tensor, lam_c: torch.Tensor, eps: float) -> torch.Tensor:
    """``k / lam_c``, a new tensor; with no floor, 0 where ``k == 0`` (xlogy's gradient)."""
    ratio = torch.div(k, lam_c)
    if eps == 0.0:
        ratio = ratio.masked_fill_(k == 0, 0.0)
    return ratio


def _d_value_d_counts(form: str, k: torch.Tensor, lam_c: torch.Tensor, eps: float) -> torch.Tensor:
    """Derivative of the elementwise value in the counts ``k`` (differs between forms)."""
    # With no floor, d/dk xlogy(k, lam) is log(lam), taken as 0 where k == 0 (torch's rule).
    log_lam = torch.log(lam_c) if eps > 0.0 else torch.xlogy(k.ne(0).to(k.dtype), lam_c)
    out = log_lam.neg_()
    if form == "stirling":
        kc = k.clamp_min(1.0)
        out = out + (k > 1).to(k.dtype) * (torch.log(kc) + 0.5 / kc)
    elif form == "exact":
        out = out + torch.digamma(k + 1.0)
    elif form == "deviance":
        # d/dk (-k log(lam/k) - k) = log k - log lam; -inf at k == 0, floored like lam
        # (0 there with no floor, as xlogy's gradient).
        if eps > 0.0:
            out = out + torch.log(k.clamp_min(eps))
        else:
            out = out + torch.xlogy(k.ne(0).to(k.dtype), k)
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
    c: Scale,
    amplitude: bool,
    need_x: bool,
    need_c: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients in ``x`` and ``c`` given the gradient ``g_y`` in ``y = (c*x)**2`` or ``c**2*x``.

    The rate (``p``, ``s``) and the counts (``o``, ``t``) are the same function of their
    inputs. The gradients are written over ``g_y``.
    """
    if not need_c:
        if not need_x:
            return None, None
        return (g_y.mul_(x).mul_(2.0 * c * c) if amplitude else g_y.mul_(c * c)), None
    assert isinstance(c, torch.Tensor)  # only tensors require grad
    # One shared factor u for both, the way autograd would chain them, so that a compiler
    # computes both gradients in one pass: amplitude dy/dx = 2 c**2 x = u c / g and
    # dy/dc = 2 c x**2 = u x / g with u = 2 c x g; intensity u = c g, dy/dc = 2 u x / g.
    # (The order matters to inductor: the gradient in x first, then the reduction,
    # fuses into one loop; the other way round it takes two.)
    u = g_y.mul_(x).mul_(2.0 * c) if amplitude else g_y.mul_(c)
    g_x = u * c if need_x else None
    g_c = _sum_to(u.mul_(x), c.shape)
    if not amplitude:
        g_c = g_c.mul_(2.0)
    return g_x, g_c


def _nll_forward(
    p: torch.Tensor,
    o: torch.Tensor,
    s: Scale,
    t: Scale | None,
    b: Scale | None,
    m: torch.Tensor | None,
    domain: str,
    form: str,
    reduction: str,
    eps: float,
    count: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The value, and the floored rate and counts the backward pass needs."""
    amplitude = domain == "amplitude"
    lam, k = _rate_and_counts(p, o, s, s if t is None else t, b, amplitude)
    if form == "deviance":
        lam_c = lam.clamp_min_(eps)  # in place: the deviance needs only the floored rate
        elem = _deviance(p, o, s, t, b, lam_c, k, amplitude, eps)
    elif form == "tf" and m is None and reduction in ("mean", "sum") and not _is_compiling():
        # The common case, eagerly: sum(lam) - k . log(max(lam, eps)), no elementwise
        # temporary. (A compiler fuses the plain formula below into one loop instead.)
        lam_sum = lam.sum()
        lam_c = lam.clamp_min_(eps)
        if eps > 0.0:
            k_log = torch.dot(k.reshape(-1), torch.log(lam_c).reshape(-1))
        else:
            k_log = torch.xlogy(k, lam_c).sum()
        total = lam_sum - k_log
        return (total / count if reduction == "mean" else total), lam_c, k
    else:
        # lam - k * log(max(lam, eps)), written over lam.
        lam_c = lam.clamp_min(eps)
        if eps > 0.0:
            elem = lam.addcmul_(k, torch.log(lam_c), value=-1.0)
        else:
            elem = lam.sub_(_log_rate_weight(k, lam_c, eps))
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
    p, o, s, t, b, m, domain, form, reduction, eps, count = args
    # Tensors are saved; Python numbers (a scale known on the host, a count) ride along.
    s_t, s_f = (s, None) if isinstance(s, torch.Tensor) else (None, s)
    t_t, t_f = (t, None) if isinstance(t, torch.Tensor) else (None, t)
    b_t = b if isinstance(b, torch.Tensor) else None  # backward needs only a tensor's shape
    count_t, count_f = (count, None) if isinstance(count, torch.Tensor) else (None, count)
    ctx.save_for_backward(p, o, s_t, t_t, b_t, m, lam_c, k, count_t)
    ctx.config = (domain, form, reduction, eps, count_f, s_f, t_f, p.shape)


def _nll_backward(ctx: Any, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Analytic gradients of :func:`_nll_forward` for the inputs that need one."""
    p, o, s_t, t_t, b, m, lam_c, k, count_t = ctx.saved_tensors  # b: a tensor or None
    domain, form, reduction, eps, count_f, s_f, t_f, shape = ctx.config
    s = s_f if s_t is None else s_t
    t = t_f if t_t is None else t_t
    amplitude = domain == "amplitude"
    need = ctx.needs_input_grad
    if grad is None:
        return (None,) * 11
    if reduction == "per_sample":
        grad = grad.reshape(grad.shape[0], *([1] * (len(shape) - 1)))
    gp = go = gs = gt = gb = None
    # With one scale for rate and counts (t is None), s also reaches the counts.
    need_s_counts = t is None and need[2]

    def scaled_grad(factor: Any) -> torch.Tensor:
        # factor * grad (/ count for "mean"): one operation when the factor is a number.
        if reduction == "mean":
            factor = factor / (count_f if count_t is None else count_t)
        out: torch.Tensor = grad * factor
        return out

    if need[2] or need[4]:
        # d value / d lam = 1 - k / max(lam, eps), the same for every form.
        g_lam = _counts_over_rate(k, lam_c, eps).sub_(1.0).mul_(scaled_grad(-1.0))
        if m is not None:
            g_lam = g_lam.mul_(m)
        if need[4]:
            assert b is not None  # only a tensor background requires grad
            gb = _sum_to(g_lam, b.shape)
        gp, gs = _through_scaling(g_lam, p, s, amplitude, need[0], need[2])
    elif need[0]:
        # Only the prediction, in one buffer: (1 - k/lam) p 2 s**2 g (amplitude) or
        # (1 - k/lam) s**2 g (intensity). Masked pixels have p = 0, so no mask here.
        gp = _counts_over_rate(k, lam_c, eps).sub_(1.0)
        if amplitude:
            gp = gp.mul_(p).mul_(scaled_grad(-2.0 * s * s))
        else:
            gp = gp.mul_(scaled_grad(-(s * s)))

    if need[1] or need[3] or need_s_counts:
        g_k = _d_value_d_counts(form, k, lam_c, eps).mul_(scaled_grad(1.0))
        if m is not None:
            g_k = g_k.mul_(m)
        go, g_count_scale = _through_scaling(
            g_k, o, s if t is None else t, amplitude, need[1], need[3] or need_s_counts
        )
        if t is None:
            if g_count_scale is not None:
                gs = g_count_scale if gs is None else gs + g_count_scale
        else:
            gt = g_count_scale

    return gp, go, gs, gt, gb, None, None, None, None, None, None


class _ScaledPoissonNLL(torch.autograd.Function):
    """Fused value and analytic gradient of the scaled Poisson NLL.

    Inputs are already validated, cast to the compute dtype and masked
    (``p``, ``o`` zero where the mask is 0). Old-style (``forward(ctx, ...)``)
    because its ``apply`` skips the per-call signature binding that
    ``setup_context`` Functions pay; :class:`_ScaledPoissonNLLTransformable`
    is the same computation for ``torch.func`` transforms and ``torch.compile``.
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
    def forward(
        p: torch.Tensor,
        o: torch.Tensor,
        s: Scale,
        t: Scale | None,
        b: Scale | None,
        m: torch.Tensor | None,
        domain: str,
        form: str,
        reduction: str,
        eps: float,
        count: float | torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Spelled out, not *args: with no input requiring grad, torch.compile inlines
        # forward and passes a ctx unless the parameter count matches the inputs.
        return _nll_forward(p, o, s, t, b, m, domain, form, reduction, eps, count)

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


# --------------------------------------------------------------------------- input coercion
# Everything here looks at types, shapes, dtypes and devices only: no tensor value, so it
# runs whatever the validation switch says.


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
                "; for raw detector counts either normalize them first (ps.normalize_counts "
                "returns normalized amplitudes and the record whose scale maps them back to "
                "the counts) or use the count-native loss: domain='intensity', scale=1.0, "
                "obs=counts.float(), with pred the predicted counts"
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


def _scale_input(
    scale: Any, name: str, shape: torch.Size, device: torch.device
) -> tuple[torch.Tensor | None, float | None]:
    """``(tensor, None)`` for a scale tensor, ``(None, value)`` for a scale known on the host."""
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
        return t, None
    return None, scalar_scale(scale, name)


def _background_input(
    background: Any, shape: torch.Size, device: torch.device
) -> tuple[torch.Tensor | None, float]:
    """``(tensor, 0.0)`` for a background tensor, ``(None, value)`` for a number."""
    if type(background) is float and 0.0 <= background < math.inf:
        return None, background
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
        return _on_device(background, "background", device), 0.0
    if isinstance(background, bool | np.bool_) or not isinstance(background, numbers.Real):
        raise DtypeError(
            f"background must be a real number or tensor of photon counts, got "
            f"{type(background).__name__} {background!r}"
        )
    value = float(background)
    if not math.isfinite(value) or value < 0.0:
        err = NonFiniteError if not math.isfinite(value) else NegativeValueError
        raise err(f"background must be a finite number of photon counts >= 0, got {value!r}")
    return None, value


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


# --------------------------------------------------------------------------- value checks


@dataclass
class _Checked:
    """What the one host sync of :func:`_check_values` learned."""

    count: float | None  # unmasked elements (None without a mask)
    abs_max: dict[str, float]  # largest magnitude of each checked tensor
    exactly_one: dict[str, bool]  # whether a checked tensor is 1 everywhere
    looks_like_counts: bool  # obs's sampled intensities are whole numbers
    counts_whole: bool  # ... and the count scale turns them into whole counts
    obs_whole: bool  # obs itself is whole-valued (counts given as amplitudes)


def _whole(v: torch.Tensor, rel: float) -> torch.Tensor:
    """True if every value of ``v`` is within ``1e-4 + rel*|v|`` of a whole number,
    and that is evidence (derive's rule, ``_intensity_sum.WHOLE_CHANCE``)."""
    tol = 1e-4 + rel * v.abs()
    within = (v - v.round()).abs().le(tol).all()
    chance = torch.where(v >= 1.0, (2.0 * tol).clamp(max=1.0).log(), 0.0).sum()
    return within & chance.le(math.log(WHOLE_CHANCE))


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
    return parts


def _check_values(
    p: torch.Tensor,
    o: torch.Tensor,
    domain: str,
    extras: list[tuple[str, torch.Tensor, str, bool]],
    m: torch.Tensor | None,
    weights: bool,
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
    wide = _widest(p.device)
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
    looks_like_counts = counts_whole = obs_whole = False
    if count_scale is not None:
        n_ge1, v_max, whole, k_whole = stats[n_units : n_units + 4]
        looks_like_counts = n_ge1 >= 16 and v_max >= 2.0 and whole == 1.0
        counts_whole = k_whole == 1.0
        obs_whole = amplitude and stats[n_units + 4] == 1.0
    return _Checked(count, abs_max, exactly_one, looks_like_counts, counts_whole, obs_whole)


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
    warnings.warn(
        f"{what}. Normalize the counts first (ps.normalize_counts returns normalized "
        "amplitudes and the record whose scale maps them back to the counts), or use the "
        "count-native loss on the counts themselves: domain='intensity', scale=1.0, pred the "
        "predicted counts. If these are normalized values, silence physscale.UnitsWarning",
        UnitsWarning,
        stacklevel=3,
    )


def _needs_float64(max_rate: float, max_counts: float, numel: int, eps: float) -> bool:
    """Whether float32 could overflow on these rates and counts (checks on: measured)."""
    biggest = max(max_rate, max_counts)
    if biggest == 0.0:
        return False
    # |value| <= lam + k |log lam| + k log k + ...: at most (2 + 2 |log|) times the larger.
    log_size = max(abs(math.log(biggest)), abs(math.log(eps)) if eps > 0.0 else 0.0, 1.0)
    return numel * biggest * (2.0 + 2.0 * log_size) > _FLOAT32_SAFE_TOTAL


def _square(x: float) -> float:
    return x * x  # inf on overflow, never OverflowError


def _known(x: float | None) -> float:
    assert x is not None  # a scale is either a tensor or known on the host
    return x


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
    ``scale``). See the module docstring and ``docs/poisson-nll.md`` for the
    forms, and ``docs/validation.md`` for what is checked when.

    Args:
        pred: (B, ...) predicted normalized amplitudes (``domain="amplitude"``;
            any real value, since ``(s*pred)**2`` is a rate for any sign) or
            normalized intensities (``"intensity"``; >= 0); real floating
            tensor, any device. Gradients flow to it.
        obs: observed normalized amplitudes or intensities, same shape and
            units as ``pred``, >= 0.
        scale: the intensity scale ``s`` (amplitude factor, counts are
            ``(s*x)**2``): a positive float, a 0-d tensor (may require grad), a
            :class:`~physscale.ScaleRecord`, or a tensor with the data's rank
            and each size 1 or the data's, e.g. ``(B, 1, 1, 1)`` per sample. A
            ``(B,)`` tensor is refused (it would broadcast along the last axis).
            ``scale=1`` with ``domain="intensity"`` is the count-native loss:
            ``pred`` and ``obs`` are then photon counts.
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
            counts, >= 0. ``0`` means no floor, with ``k*log(lam)`` taken as 0
            where ``k == 0``: the unfloored formula's value and gradients
            (``torch.distributions.Poisson``'s, as in PtychoPINN's PyTorch
            port), finite where rate and counts are both 0, ``+inf`` where
            only the rate is.
        count_scale: the scale ``t`` that turns ``obs`` into counts, if it is
            not ``scale`` (e.g. the data's fixed scale while ``scale`` is a
            trainable one, as in TF). Same accepted types as ``scale``; a
            trained ``ScaleRecord`` gives its ``initial_intensity_scale`` (the
            data's derived scale), any other record its ``intensity_scale``.

    Returns:
        float32 tensor (float64 if ``pred`` or ``obs`` is float64, or when
        float32 cannot hold the rates: a scale, count scale or background known
        on the host beyond 1e9, 1e9 or 1e18, or, with validation on, measured
        rates whose sum would pass ~1e37): 0-d for ``"mean"``/``"sum"``,
        ``(B,)`` for ``"per_sample"``, the data shape for ``"none"``. Values
        are in nats.

    Raises:
        PhysscaleError: a subclass that says what was wrong. Always checked
            (types, shapes, devices, options): DtypeError, BroadcastError,
            MaskError, OptionError or EmptyInputError. Only with validation on
            (:func:`physscale.set_validation`, the default): NonFiniteError,
            NegativeValueError, or MaskError for mask weights.

    Warns:
        UnitsWarning: with validation on, when ``obs`` look like raw photon
            counts rather than normalized values (as derive warns), unless the
            count scale keeps them counts (exactly 1, the count-native use, or
            a scale that maps them to whole counts).
    """
    # Fast paths first: this runs on every training step.
    if type(domain) is not str or domain not in DOMAINS:
        domain = check_option(domain, DOMAINS, "domain")
    if type(form) is not str or form not in FORMS:
        form = check_option(form, FORMS, "form")
    if type(reduction) is not str or reduction not in REDUCTIONS:
        reduction = check_option(reduction, REDUCTIONS, "reduction")
    amplitude = domain == "amplitude"
    pred = _input_tensor(pred, "pred", domain)
    obs = _input_tensor(obs, "obs", domain)
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
        eps = _eps_value(eps)

    shape, device = pred.shape, pred.device
    # Inside torch.func transforms a data-dependent check is impossible; under
    # torch.compile the checks would break the graph, so they follow the switch too.
    compiling = _is_compiling()
    transformed = not compiling and _under_functorch()
    validate = is_validation_enabled() and not transformed
    if validate and device.type == "meta":
        raise DtypeError(
            "pred and obs are on the meta device, which holds no values, so the value "
            "checks cannot run; give real tensors, or turn the checks off with "
            "ps.validation(False) to trace shapes and dtypes"
        )

    s_in, s_host = _scale_input(scale, "scale", shape, device)
    if isinstance(count_scale, ScaleRecord):
        # Counts live at the data's scale: for a trained record, where training began.
        count_scale = count_scale.data_scale
    t_in, t_host = (None, s_host)
    if count_scale is not None:
        t_in, t_host = _scale_input(count_scale, "count_scale", shape, device)
    # The tensor (if any) that turns obs into counts, and its name in the checks.
    t_tensor, t_name = (s_in, "scale") if count_scale is None else (t_in, "count_scale")
    b_in, b_host = _background_input(background, shape, device)
    m_in, weights = (None, False) if mask is None else _mask_input(mask, shape, device)

    # Precision from what the host knows: float64 data, or scales (or a background)
    # so large that float32 would overflow on any normalized data.
    host_big = max(_square(s_host or 0.0), _square(t_host or 0.0), b_host) > _HOST_FLOAT32_LIMIT
    wide = pred.dtype == torch.float64 or obs.dtype == torch.float64 or host_big
    out_dtype = torch.float64 if wide else torch.float32

    def cast(dtype: torch.dtype, select: bool) -> tuple[Any, ...]:
        # A scale the host knows stays a Python number (the kernels take it as a scalar).
        s: Scale = _known(s_host) if s_in is None else s_in.to(dtype)
        t: Scale | None = None
        if count_scale is not None:
            t = _known(t_host) if t_in is None else t_in.to(dtype)
        b: Scale | None = None
        if b_in is not None:
            b = b_in.to(dtype)
        elif b_host != 0.0:
            b = b_host
        m = None if m_in is None else m_in.to(dtype)
        p = pred if pred.dtype == dtype else pred.to(dtype)
        o = obs if obs.dtype == dtype else obs.to(dtype)
        if m is not None:
            if select:
                # Dead pixels may hold NaN/Inf (0 * NaN is NaN): select, don't multiply.
                keep = m != 0
                p, o = torch.where(keep, p, 0.0), torch.where(keep, o, 0.0)
            else:
                p, o = p * m, o * m  # faster; a NaN in a dead pixel is caught and redone
        return p, o, s, t, b, m

    count: float | torch.Tensor = float(pred.numel())
    with _autocast_off(device.type):
        dtype = _widest(device) if form == "deviance" else out_dtype
        p, o, s, t, b, m = cast(dtype, select=not validate)
        if validate:
            extras: list[tuple[str, torch.Tensor, str, bool]] = []
            if isinstance(s, torch.Tensor):
                extras.append(("scale", s, "intensity scale", True))
            if isinstance(t, torch.Tensor):
                extras.append(("count_scale", t, "intensity scale", True))
            if isinstance(b, torch.Tensor):
                extras.append(("background", b, "background counts", False))
            # The units check allows for the rounding of the data as given (float32
            # data computed in float64 still carry float32's).
            units = s if t is None else t  # the count scale, for the units check
            try:
                checked = _check_values(p, o, domain, extras, m, weights, units)
            except NonFiniteError:
                if m is None:
                    raise
                # Raises again if an unmasked pixel is bad.
                p, o, s, t, b, m = cast(dtype, select=True)
                checked = _check_values(p, o, domain, extras, m, weights, units)
            if checked.count is not None:
                count = checked.count
            # The measured rates and counts decide the precision float32 inputs need.
            big_s = checked.abs_max["scale"] if s_in is not None else _known(s_host)
            big_t = checked.abs_max[t_name] if t_tensor is not None else _known(t_host)
            big_b = checked.abs_max["background"] if b_in is not None else b_host
            if amplitude:
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
            if out_dtype != torch.float64 and _needs_float64(
                max_rate, max_counts, pred.numel(), eps
            ):
                out_dtype = torch.float64
                dtype = _widest(device)
                p, o, s, t, b, m = cast(dtype, select=True)
            # Whole obs are raw counts unless the count scale keeps them counts: exactly
            # 1 (count-native use), or a deliberate scale that maps them to whole counts,
            # such as an integer detector gain's gain**-0.5. Whole amplitudes are counts
            # given as amplitudes, whatever the scale.
            t_is_one = t_host == 1.0 if t_tensor is None else checked.exactly_one[t_name]
            counts_kept = t_is_one or checked.counts_whole
            if checked.looks_like_counts and (checked.obs_whole or not counts_kept):
                _warn_raw_counts(domain, t_host, checked.obs_whole)
        elif m is not None and reduction == "mean":
            # Known only on the device: the count stays a tensor (no sync), in float64
            # where the device has it, so that it is exact at any size.
            count = m.sum(dtype=_widest(device)) * (pred.numel() / m.numel())

        # The mask already zeroed p and o; the kernel needs it only for the background.
        m_kernel = m if b is not None else None
        args = (p, o, s, t, b, m_kernel, domain, form, reduction, eps, count)
        out: torch.Tensor
        if transformed or compiling:
            out = _ScaledPoissonNLLTransformable.apply(*args)[0]  # type: ignore[no-untyped-call]
        else:
            out = _ScaledPoissonNLL.apply(*args)  # type: ignore[no-untyped-call]
    return out if out.dtype == out_dtype else out.to(out_dtype)
