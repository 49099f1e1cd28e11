"""The TensorFlow reference expressions, written in TensorFlow ops, and the tolerances.

Everything TF-side of the parity suite lives here, so the tests and
``scripts/make_golden_vectors.py`` compute the reference the same way. The
expressions follow SPEC.md, not physscale: NHWC data, ``reduce_sum`` over
axes (1, 2), ``tf.nn.log_poisson_loss``, ``tf.math.lgamma``, a compiled
Keras model for the ``"mean"`` reduction, a ``tf.Variable`` log-scale.

Importing this module without TensorFlow skips the importing test module
(the parity conftest turns that into a failure when ``PHYSSCALE_REQUIRE_TF=1``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

SKIP_REASON = "TensorFlow not installed: pip install physscale[parity]"

try:
    import keras
    import tensorflow as tf
except ImportError as exc:  # pragma: no cover - depends on the environment
    import pytest

    pytest.skip(f"{SKIP_REASON} ({exc})", allow_module_level=True)

FORMS = ("tf", "stirling", "exact", "deviance")
REDUCTIONS = ("mean", "sum", "none", "per_sample")

# ----------------------------------------------------------------- tolerances
#: derive / closed form / normalization against TF float32: relative.
DERIVE_RTOL = 2e-6
#: derive against the same expression in TF float64 ops: relative (exact layout math).
DERIVE_RTOL_F64 = 1e-12
#: losses and gradients: relative ...
LOSS_RTOL = 1e-5
#: ... plus an absolute floor of LOSS_RTOL times the size of the terms the
#: TF expression adds (see term_magnitude): near a zero crossing the value is
#: a difference of those terms, and float32 rounding of the terms is all any
#: float32 implementation (TF's own included) can promise there.
FLOOR_FACTOR = 1e-5
#: the deviance is kept to full relative precision; below this many nats it is
#: compared absolutely (a deviance that small is zero for every purpose).
DEVIANCE_ATOL = 1e-6
#: the Stirling term's jump at k = 1 (it is 0 for k <= 1): 1 - 0.5 log(2 pi).
STIRLING_JUMP = 1.0 - 0.5 * math.log(2 * math.pi)


def check_close(
    got: Any,
    ref: Any,
    *,
    rtol: float,
    atol: Any = 0.0,
    what: str,
) -> None:
    """Assert ``|got - ref| <= rtol * |ref| + atol`` elementwise, naming the worst element."""
    g = np.asarray(got, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    a = np.broadcast_to(np.asarray(atol, dtype=np.float64), r.shape)
    assert g.shape == r.shape, f"{what}: shape {g.shape} != TF shape {r.shape}"
    assert np.isfinite(g).all(), f"{what}: physscale gave non-finite values {g[~np.isfinite(g)]}"
    err = np.abs(g - r)
    allowed = rtol * np.abs(r) + a
    bad = err > allowed
    if bad.any():
        i = np.unravel_index(int(np.argmax(np.where(bad, err - allowed, -np.inf))), r.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {r.size} element(s) differ from TensorFlow; worst at "
            f"{tuple(int(j) for j in i)}: physscale {g[i]!r}, TF {r[i]!r}, "
            f"|diff| {err[i]!r} > allowed {allowed[i]!r} (rtol {rtol}, atol {a[i]!r})"
        )


def term_magnitude(lam: np.ndarray, k: np.ndarray, form: str) -> np.ndarray:
    """Elementwise sum of |terms| the reference expression adds for ``form`` (float64).

    ``tf``: lam + |k log lam|; ``stirling`` adds |k log k| + k + |0.5 log 2 pi k|
    for k > 1 (and the jump of the k > 1 switch where k is within 1e-6 of 1, not 1);
    ``exact`` adds lgamma(k + 1). The deviance is not a sum of large terms in
    physscale (SPEC §3), so its floor is DEVIANCE_ATOL instead.
    """
    lam = np.asarray(lam, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    mag = lam + np.abs(k * np.log(lam))
    if form == "stirling":
        # The switch at k = 1 jumps by 1 - log(2 pi)/2 = 0.081 nats; counts within
        # float32 rounding of 1 (but not exactly 1) may land on either side, in
        # TF float32 too. A count of exactly 1 must take the k <= 1 branch.
        near_one = (np.abs(k - 1.0) <= 1e-6) & (k != 1.0)
        mag = mag + np.where(near_one, STIRLING_JUMP / FLOOR_FACTOR, 0.0)
        kk = np.where(k > 1, k, 1.0)
        mag = mag + np.where(
            k > 1, np.abs(kk * np.log(kk)) + kk + np.abs(0.5 * np.log(2 * np.pi * kk)), 0.0
        )
    elif form == "exact":
        mag = mag + np.vectorize(math.lgamma)(k + 1.0)
    return mag


def gradient_magnitude(dlam_dpred: np.ndarray, lam: np.ndarray, k: np.ndarray) -> np.ndarray:
    """|d lam / d pred| * (1 + k / lam): the size of the two terms of d loss / d pred."""
    return np.abs(dlam_dpred) * (1.0 + np.asarray(k, np.float64) / np.asarray(lam, np.float64))


# ----------------------------------------------------------------- §1: the scale
def tf_scale_nphotons(x_nhwc: np.ndarray, nphotons: float, dtype: Any = None) -> float:
    """TF ``scale_nphotons``: sqrt(nphotons / reduce_mean(reduce_sum(x**2, (1, 2))))."""
    dtype = dtype or tf.float32
    x = tf.constant(x_nhwc, dtype=dtype)
    per_pattern = tf.reduce_sum(x**2, axis=(1, 2))  # (B, C)
    s = tf.sqrt(tf.constant(nphotons, dtype=dtype) / tf.reduce_mean(per_pattern))
    return float(s.numpy())


def tf_normalize_amplitudes(x_raw_nhwc: np.ndarray, dtype: Any = None) -> np.ndarray:
    """TF-style amplitude normalization: x_raw * sqrt((N/2)**2 / mean(sum(x_raw**2)))."""
    dtype = dtype or tf.float32
    x = tf.constant(x_raw_nhwc, dtype=dtype)
    n = x_raw_nhwc.shape[1]
    mean_sum = tf.reduce_mean(tf.reduce_sum(x**2, axis=(1, 2)))
    factor = tf.sqrt(tf.constant((n / 2) ** 2, dtype=dtype) / mean_sum)
    return np.asarray((x * factor).numpy())


def tf_closed_form(nphotons: float, n: int, dtype: Any = None) -> float:
    """TF ``calculate_intensity_scale`` on normalized data: sqrt(nphotons) / (N/2)."""
    dtype = dtype or tf.float32
    return float((tf.sqrt(tf.constant(nphotons, dtype=dtype)) / (n / 2)).numpy())


# ----------------------------------------------------------------- §3: the NLL
def tf_rate_and_counts(
    pred: Any, obs: Any, scale: float, domain: str, background: float, dtype: Any
) -> tuple[Any, Any]:
    """lam = (s pred)**2 + b, k = (s obs)**2 (amplitude) or s**2 pred + b, s**2 obs."""
    p = tf.cast(pred, dtype)
    o = tf.cast(obs, dtype)
    s = tf.constant(scale, dtype=dtype)
    if domain == "amplitude":
        return tf.square(s * p) + background, tf.square(s * o)
    return s * s * p + background, s * s * o


def tf_elementwise_nll(lam: Any, k: Any, form: str) -> Any:
    """Each form's elementwise value, in the TF construct SPEC §3 names for it."""
    if form == "tf":
        return tf.nn.log_poisson_loss(k, tf.math.log(lam), compute_full_loss=False)
    if form == "stirling":
        return tf.nn.log_poisson_loss(k, tf.math.log(lam), compute_full_loss=True)
    if form == "exact":
        # -log Poisson(k; lam), the log-probability built from lgamma.
        log_prob = tf.math.xlogy(k, lam) - lam - tf.math.lgamma(k + 1.0)
        return -log_prob
    if form == "deviance":
        # Half the Poisson deviance; xlogy makes k*log(.) zero at k = 0.
        return lam - k - tf.math.xlogy(k, lam) + tf.math.xlogy(k, k)
    raise ValueError(form)


def tf_reduce(values: Any, reduction: str, mask: np.ndarray | None) -> Any:
    """Reduce an NHWC elementwise loss the way each reference does."""
    m = None if mask is None else tf.cast(tf.broadcast_to(mask, tf.shape(values)), values.dtype)
    kept = values if m is None else values * m
    if reduction == "mean":
        count = tf.cast(tf.size(values), values.dtype) if m is None else tf.reduce_sum(m)
        return tf.reduce_sum(kept) / count
    if reduction == "sum":
        return tf.reduce_sum(kept)
    if reduction == "per_sample":
        # tfd.Independent(..., reinterpreted_batch_ndims=3): a sum over (H, W, C).
        axes = list(range(1, len(values.shape)))
        return tf.reduce_sum(kept, axis=axes)
    if reduction == "none":
        return values
    raise ValueError(reduction)


@dataclass(frozen=True)
class NllCase:
    """One NLL input set (NHWC numpy arrays) and how to call the loss."""

    pred: np.ndarray
    obs: np.ndarray
    scale: float
    domain: str
    background: float
    mask: np.ndarray | None


def tf_nll(case: NllCase, form: str, reduction: str, dtype: Any) -> np.ndarray:
    """The reduced loss, in TF ops of ``dtype``."""
    lam, k = tf_rate_and_counts(
        case.pred, case.obs, case.scale, case.domain, case.background, dtype
    )
    return np.asarray(tf_reduce(tf_elementwise_nll(lam, k, form), reduction, case.mask).numpy())


def tf_nll_grad(case: NllCase, form: str, reduction: str, dtype: Any) -> np.ndarray:
    """d(reduced loss summed to a scalar)/d pred by tf.GradientTape."""
    pred = tf.Variable(tf.cast(case.pred, dtype))
    with tf.GradientTape() as tape:
        lam, k = tf_rate_and_counts(pred, case.obs, case.scale, case.domain, case.background, dtype)
        loss = tf.reduce_sum(tf_reduce(tf_elementwise_nll(lam, k, form), reduction, case.mask))
    return np.asarray(tape.gradient(loss, pred).numpy())


def rate_counts_np(case: NllCase) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 numpy lam, k and d lam / d pred, for the tolerance floors."""
    p = case.pred.astype(np.float64)
    o = case.obs.astype(np.float64)
    s2 = case.scale**2
    if case.domain == "amplitude":
        return s2 * p * p + case.background, s2 * o * o, 2.0 * s2 * p
    return s2 * p + case.background, s2 * o, np.full_like(p, s2)


def loss_floor(case: NllCase, form: str, reduction: str) -> np.ndarray:
    """The absolute floor for a reduced loss: FLOOR_FACTOR times the reduced |terms|."""
    lam, k, _ = rate_counts_np(case)
    if form == "deviance":
        mag = np.full_like(lam, DEVIANCE_ATOL / FLOOR_FACTOR)
    else:
        mag = term_magnitude(lam, k, form)
    m = np.ones_like(mag) if case.mask is None else np.broadcast_to(case.mask, mag.shape)
    mag = mag * m
    if reduction == "none":
        return FLOOR_FACTOR * mag
    if reduction == "sum":
        return np.asarray(FLOOR_FACTOR * mag.sum())
    if reduction == "mean":
        return np.asarray(FLOOR_FACTOR * mag.sum() / m.sum())
    return FLOOR_FACTOR * mag.reshape(mag.shape[0], -1).sum(axis=1)


def grad_floor(case: NllCase, reduction: str) -> np.ndarray:
    """The absolute floor for d loss / d pred, elementwise (same for every form)."""
    lam, k, dlam = rate_counts_np(case)
    mag = gradient_magnitude(dlam, lam, k)
    if case.mask is not None:
        m = np.broadcast_to(case.mask, mag.shape)
        mag = mag * m
        n = m.sum()
    else:
        n = mag.size
    return FLOOR_FACTOR * mag / (n if reduction == "mean" else 1)


def keras_compiled_mean(
    pred: np.ndarray,
    obs: np.ndarray,
    elementwise: Callable[[Any, Any], Any],
    batch_size: int,
) -> float:
    """What a compiled Keras model reports for a loss: identity model, compile, evaluate.

    ``elementwise(y_true, y_pred)`` returns the elementwise loss (NHWC); Keras
    reduces it itself (SPEC: the mean over every element).
    """
    inputs = keras.Input(shape=pred.shape[1:])
    model = keras.Model(inputs, inputs)
    model.compile(loss=elementwise, run_eagerly=True)
    return float(model.evaluate(x=pred, y=obs, batch_size=batch_size, verbose=0))


def keras_loss(
    scale: float, domain: str, background: float, form: str
) -> Callable[[Any, Any], Any]:
    """A Keras loss ``f(y_true, y_pred)`` computing the elementwise NLL in float64 ops."""

    def loss(y_true: Any, y_pred: Any) -> Any:
        lam, k = tf_rate_and_counts(y_pred, y_true, scale, domain, background, tf.float64)
        return tf_elementwise_nll(lam, k, form)

    return loss


# ----------------------------------------------------------------- §2: the scaler
@dataclass(frozen=True)
class ScalerStep:
    """The TF IntensityScaler construction and one SGD step on its log-scale."""

    normalized: np.ndarray  # x_phys / exp(log_scale)
    denormalized: np.ndarray  # net(normalized) * exp(log_scale)
    loss: float
    grad_log_scale: float
    log_scale_before: float
    log_scale_after: float


def tf_scaler_step(
    x_phys: np.ndarray,
    scale0: float,
    weight: float,
    bias: float,
    lr: float,
    loss_kind: str = "squared",
) -> ScalerStep:
    """TF: a ``tf.Variable`` log-scale, divide on the way in, multiply on the way out.

    The "network" between the two layers is ``weight * h + bias`` (the bias
    makes the loss depend on the log-scale). ``loss_kind="squared"``: the mean
    of the squared output (the predicted counts). ``"poisson"``: TF training's
    loss, ``reduce_mean(log_poisson_loss(k, log(out**2)))`` with the fixed
    counts ``k = x_phys**2`` (the data pipeline's targets). One
    ``keras.optimizers.SGD`` step.
    """
    log_scale = tf.Variable(math.log(scale0), dtype=tf.float32)
    x = tf.constant(x_phys, dtype=tf.float32)
    with tf.GradientTape() as tape:
        h = x / tf.exp(log_scale)  # IntensityScaler
        out = (weight * h + bias) * tf.exp(log_scale)  # IntensityScaler_inv
        if loss_kind == "poisson":
            counts = tf.square(x)
            loss = tf.reduce_mean(tf.nn.log_poisson_loss(counts, tf.math.log(tf.square(out))))
        else:
            loss = tf.reduce_mean(tf.square(out))
    grad = tape.gradient(loss, log_scale)
    before = float(log_scale.numpy())
    keras.optimizers.SGD(learning_rate=lr).apply_gradients([(grad, log_scale)])
    return ScalerStep(
        normalized=np.asarray(h.numpy()),
        denormalized=np.asarray(out.numpy()),
        loss=float(loss.numpy()),
        grad_log_scale=float(grad.numpy()),
        log_scale_before=before,
        log_scale_after=float(log_scale.numpy()),
    )


# ----------------------------------------------------------------- test data (numpy)
def pattern_stack(rng: np.random.Generator, shape: tuple[int, ...], dark: float) -> np.ndarray:
    """Diffraction-like non-negative float64 values: a bright centre, speckle, dark pixels."""
    _, h, w, _ = shape
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    envelope = np.exp(-(yy**2 + xx**2) / (2 * max(h * w, 1) / 8))[None, :, :, None]
    values = envelope * rng.gamma(1.0, 1.0, size=shape) + 1e-3 * rng.random(size=shape)
    values[rng.random(size=shape) < dark] = 0.0
    if not values.any():
        values.flat[0] = 1.0
    return values


def nll_case(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    *,
    scale: float,
    max_counts: float,
    spread: float,
    domain: str,
    background: float,
    mask_kind: str,
    dark: float,
    integer_counts: bool = False,
) -> NllCase:
    """Normalized float32 pred/obs whose counts (s obs)**2 reach ``max_counts``.

    ``obs`` carries counts from 0 to ``max_counts`` (Poisson-drawn whole
    counts with ``integer_counts``: with a scale of 1 or a power of 2 they stay
    exact, so k = 0, 1, 2 ... reach the forms' switches exactly); ``pred`` is
    ``obs`` times a log-normal factor of width ``spread`` (so lam tracks k, as
    in training), kept at a rate of at least 0.01 counts where obs is dark.
    """
    pattern = pattern_stack(rng, shape, dark)
    counts = max_counts * pattern / pattern.max()
    if integer_counts:
        counts = rng.poisson(counts).astype(np.float64)
    ratio = np.exp(spread * rng.standard_normal(size=shape))
    lam = np.maximum(counts * ratio, 0.01 + rng.random(size=shape))
    s2 = scale * scale
    if domain == "amplitude":
        obs, pred = np.sqrt(counts / s2), np.sqrt(lam / s2)
    else:
        obs, pred = counts / s2, lam / s2
    mask: np.ndarray | None = None
    if mask_kind == "full":
        mask = rng.random(size=shape) < 0.8
        mask.flat[0] = True
    elif mask_kind == "pattern":  # one valid-pixel map for every pattern and channel
        mask = rng.random(size=(1, shape[1], shape[2], 1)) < 0.8
        mask.flat[0] = True
    return NllCase(
        pred=pred.astype(np.float32),
        obs=obs.astype(np.float32),
        scale=scale,
        domain=domain,
        background=background,
        mask=mask,
    )
