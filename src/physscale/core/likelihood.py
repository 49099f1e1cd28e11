"""The scaled Poisson negative log-likelihood (SPEC §3): its value and gradient.

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

Where to read what: `_value` is the value (the forms:
`_poisson`, `_deviance`; then `_reduce`), `_gradient`
the analytic gradient (``d value / d lam = 1 - k / max(lam, eps)`` for every
form, `_d_value_d_counts` per form), both joined in one
`torch.autograd.Function`: no chain of autograd temporaries, two saved
tensors (the floored rate and the counts).
[`scaled_poisson_nll`][physscale.core.likelihood.scaled_poisson_nll] checks
its inputs in `physscale.core.loss_inputs` (value checks only while
[`physscale.is_validation_enabled`][physscale.is_validation_enabled]; with them off no host sync
and no
branch on tensor values, so it compiles with ``torch.compile(fullgraph=True)``
and can be captured in a CUDA graph; see ``docs/validation.md``), picks the
precision and calls the math. ``tf``, ``stirling`` and ``exact`` compute in
float32 (float64 for float64 inputs, or where float32 cannot hold the rate);
``deviance`` always in float64 (float32 on Apple MPS, which has no float64)
because its value is a small difference of large numbers. Autocast is switched
off inside: the loss is float32 or better whatever the ambient autocast dtype.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from physscale.core.loss_inputs import (
    DOMAINS,
    FORMS,
    REDUCTIONS,
    Domain,
    Form,
    Reduction,
    Scale,
    check_loss_values,
    loss_inputs,
    widest_dtype,
)
from physscale.core.validation import is_compiling

__all__ = ["DOMAINS", "FORMS", "REDUCTIONS", "Domain", "Form", "Reduction", "scaled_poisson_nll"]

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


# --------------------------------------------------------------------------- the forms
#
# Arguments, in order: p, o (prediction and observation, compute dtype, masked),
# s (a Python float, or a 0-d or per-batch tensor scale), t (the count scale, the
# same kinds, or None when it is s), b (the background: a Python float, a tensor,
# or None), m (0/1 mask, only when a background needs masking), domain, form,
# reduction, eps, count (the number of unmasked elements for "mean": a Python
# float, or a 0-d tensor when it is known only on the device).


def _rate_and_counts(
    p: torch.Tensor,
    o: torch.Tensor,
    s: Scale,
    t: Scale,
    b: Scale | None,
    amplitude: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rate ``lam = (s p)**2 + b`` and counts ``k = (t o)**2`` (intensity:
    ``s**2 p + b``, ``t**2 o``), each a new tensor."""
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


# --------------------------------------------------------------------------- value and gradient


def _value(
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
    """The value, and the floored rate and counts the gradient needs."""
    amplitude = domain == "amplitude"
    lam, k = _rate_and_counts(p, o, s, s if t is None else t, b, amplitude)
    if form == "deviance":
        lam_c = lam.clamp_min_(eps)  # in place: the deviance needs only the floored rate
        elem = _deviance(p, o, s, t, b, lam_c, k, amplitude, eps)
    elif form == "tf" and m is None and reduction in ("mean", "sum") and not is_compiling():
        return _tf_total(lam, k, reduction, eps, count)
    else:
        lam_c, elem = _poisson(form, lam, k, eps)
    return _reduce(elem, m, reduction, count), lam_c, k


def _tf_total(
    lam: torch.Tensor, k: torch.Tensor, reduction: str, eps: float, count: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The common case, eagerly: ``sum(lam) - k . log(max(lam, eps))``, no elementwise
    temporary. (A compiler fuses the elementwise formula of `_poisson` into one
    loop instead.)"""
    lam_sum = lam.sum()
    lam_c = lam.clamp_min_(eps)
    if eps > 0.0:
        k_log = torch.dot(k.reshape(-1), torch.log(lam_c).reshape(-1))
    else:
        k_log = torch.xlogy(k, lam_c).sum()
    total = lam_sum - k_log
    return (total / count if reduction == "mean" else total), lam_c, k


def _poisson(
    form: str, lam: torch.Tensor, k: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The floored rate, and the ``tf``, ``stirling`` or ``exact`` form written over ``lam``."""
    # lam - k * log(max(lam, eps)).
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
    return lam_c, elem


def _reduce(
    elem: torch.Tensor, m: torch.Tensor | None, reduction: str, count: float | torch.Tensor
) -> torch.Tensor:
    """The elementwise values masked, then reduced (``"mean"`` divides by ``count``)."""
    if m is not None:
        # Masked pixels hold p = o = 0, so only the background term survives there.
        elem = elem * m
    if reduction == "none":
        return elem
    if reduction == "per_sample":
        return elem.reshape(elem.shape[0], -1).sum(1)
    total = elem.sum()
    return total / count if reduction == "mean" else total


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


def _save(ctx: Any, args: tuple[Any, ...], lam_c: torch.Tensor, k: torch.Tensor) -> None:
    p, o, s, t, b, m, domain, form, reduction, eps, count = args
    # Tensors are saved; Python numbers (a scale known on the host, a count) ride along.
    s_t, s_f = (s, None) if isinstance(s, torch.Tensor) else (None, s)
    t_t, t_f = (t, None) if isinstance(t, torch.Tensor) else (None, t)
    b_t = b if isinstance(b, torch.Tensor) else None  # backward needs only a tensor's shape
    count_t, count_f = (count, None) if isinstance(count, torch.Tensor) else (None, count)
    ctx.save_for_backward(p, o, s_t, t_t, b_t, m, lam_c, k, count_t)
    ctx.config = (domain, form, reduction, eps, count_f, s_f, t_f, p.shape)


def _gradient(ctx: Any, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Analytic gradients of `_value` for the inputs that need one."""
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
    ``setup_context`` Functions pay; `_ScaledPoissonNLLTransformable`
    is the same computation for ``torch.func`` transforms and ``torch.compile``.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any) -> torch.Tensor:
        out, lam_c, k = _value(*args)
        _save(ctx, args, lam_c, k)
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[torch.Tensor | None, ...]:
        return _gradient(ctx, grads[0])


class _ScaledPoissonNLLTransformable(torch.autograd.Function):
    """`_ScaledPoissonNLL` in the ``setup_context`` style ``torch.func`` needs.

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
        return _value(p, o, s, t, b, m, domain, form, reduction, eps, count)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        _, lam_c, k = output
        ctx.mark_non_differentiable(lam_c, k)
        # No zero-filled gradients for the two intermediates (saves two passes).
        ctx.set_materialize_grads(False)
        _save(ctx, inputs, lam_c, k)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[torch.Tensor | None, ...]:
        return _gradient(ctx, grads[0])


# --------------------------------------------------------------------------- precision


def _needs_float64(max_rate: float, max_counts: float, numel: int, eps: float) -> bool:
    """Whether float32 could overflow on these rates and counts (checks on: measured)."""
    biggest = max(max_rate, max_counts)
    if biggest == 0.0:
        return False
    # |value| <= lam + k |log lam| + k log k + ...: at most (2 + 2 |log|) times the larger.
    log_size = max(abs(math.log(biggest)), abs(math.log(eps)) if eps > 0.0 else 0.0, 1.0)
    return numel * biggest * (2.0 + 2.0 * log_size) > _FLOAT32_SAFE_TOTAL


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # torch < 2.4, or a device autocast does not know
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else False
    if enabled:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


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
            [`ScaleRecord`][physscale.ScaleRecord] (or any object whose ``float()`` is
            the scale), or a tensor with the data's rank
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
            trainable one, as in TF). Same accepted types as ``scale``; an
            object with a ``data_scale`` gives that: a trained ``ScaleRecord``
            its ``initial_intensity_scale`` (the data's derived scale), any
            other record its ``intensity_scale``.

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
            ([`physscale.set_validation`][physscale.set_validation], the default): NonFiniteError,
            NegativeValueError, or MaskError for mask weights.

    Warns:
        UnitsWarning: with validation on, when ``obs`` look like raw photon
            counts rather than normalized values (as derive warns), unless the
            count scale keeps them counts (exactly 1, the count-native use, or
            a scale that maps them to whole counts).

    Examples:
        >>> import torch, physscale as ps
        >>> pred = torch.full((2, 1, 4, 4), 0.5)   # predicted amplitudes
        >>> obs = torch.full((2, 1, 4, 4), 0.5)    # observed amplitudes
        >>> loss = ps.scaled_poisson_nll(pred, obs, scale=4.0)   # counts (4 * 0.5)**2 = 4
        >>> round(loss.item(), 4)   # form='tf': mean of lam - k*log(lam) = 4 - 4*log(4)
        -1.5452
    """
    x = loss_inputs(pred, obs, scale, domain, form, reduction, mask, background, eps, count_scale)
    device, numel = x.pred.device, x.pred.numel()
    # Precision from what the host knows: float64 data, or scales (or a background)
    # so large that float32 would overflow on any normalized data.
    f64 = torch.float64
    wide = x.pred.dtype == f64 or x.obs.dtype == f64 or x.host_size() > _HOST_FLOAT32_LIMIT
    out_dtype = f64 if wide else torch.float32
    count: float | torch.Tensor = float(numel)
    with _autocast_off(device.type):
        dtype = widest_dtype(device) if x.form == "deviance" else out_dtype
        cast = p, o, s, t, b, m = x.cast(dtype, select=not x.validate)
        if x.validate:
            (p, o, s, t, b, m), seen = check_loss_values(x, cast)
            if seen.unmasked is not None:
                count = seen.unmasked
            # The measured rates and counts decide the precision float32 inputs need.
            if out_dtype != f64 and _needs_float64(seen.max_rate, seen.max_counts, numel, x.eps):
                out_dtype = f64
                p, o, s, t, b, m = x.cast(widest_dtype(device), select=True)
        elif m is not None and x.reduction == "mean":
            # Known only on the device: the count stays a tensor (no sync), in float64
            # where the device has it, so that it is exact at any size.
            count = m.sum(dtype=widest_dtype(device)) * (numel / m.numel())
        # The mask already zeroed p and o; the math needs it only for the background.
        m_math = m if b is not None else None
        args = (p, o, s, t, b, m_math, x.domain, x.form, x.reduction, x.eps, count)
        out: torch.Tensor
        if x.traced:
            out = _ScaledPoissonNLLTransformable.apply(*args)[0]  # type: ignore[no-untyped-call]
        else:
            out = _ScaledPoissonNLL.apply(*args)  # type: ignore[no-untyped-call]
    return out if out.dtype == out_dtype else out.to(out_dtype)
