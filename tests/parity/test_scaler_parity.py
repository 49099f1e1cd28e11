"""SPEC §2 against TensorFlow: IntensityScaler and a trainable log-scale.

The TF construction (``_tfref.tf_scaler_step``): a float32 ``tf.Variable``
log-scale initialised to ``log(s)``, physical input divided by
``exp(log_scale)`` on the way in, the output multiplied by it on the way out,
a loss on the squared output, one ``keras.optimizers.SGD`` step. physscale
builds the same with ``physscale.nn.IntensityScaler`` and ``torch.optim.SGD``.

Tolerances: normalize/denormalize 1e-6 relative (both divide by the float32
``exp`` of the same float32 log-scale); the gradient reaching the log-scale
1e-5 relative, with an absolute floor of 1e-5 times the size of the two terms
autodiff adds per element (the divide and the multiply nearly cancel, in
float32 in both frameworks); the SGD step moves the log-scale by the same
amount within 1e-5 relative plus the learning rate times that floor plus 4
float32 ulps of the log-scale (the step is the difference of two float32
log-scales).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.nn import IntensityScaler

from ._tfref import (
    FLOOR_FACTOR,
    LOSS_RTOL,
    ScalerStep,
    check_close,
    pattern_stack,
    tf,
    tf_scaler_step,
)

pytestmark = pytest.mark.tf

SCALER_RTOL = 1e-6
F32_EPS = float(np.finfo(np.float32).eps)


@st.composite
def scaler_cases(draw: st.DrawFn) -> tuple[np.ndarray, float, float, float]:
    """(physical amplitudes s*X NHWC float32, s, weight, bias); s includes exactly 1."""
    b = draw(st.integers(1, 4))
    h = draw(st.integers(1, 10))
    w = draw(st.integers(1, 10))
    c = draw(st.sampled_from([1, 4, 9]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.one_of(st.just(1.0), st.floats(0.0, 5.0).map(lambda e: 10.0**e)))
    x = np.sqrt(pattern_stack(rng, (b, h, w, c), dark=draw(st.floats(0.0, 0.9))))
    x_phys = (scale * x).astype(np.float32)
    return x_phys, scale, draw(st.floats(0.5, 2.0)), draw(st.floats(0.05, 1.0))


def _torch_step(
    scaler: IntensityScaler, x_phys: np.ndarray, weight: float, bias: float, lr: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    x = torch.from_numpy(x_phys)
    optimizer = torch.optim.SGD(scaler.parameters(), lr=lr)
    optimizer.zero_grad()
    h = scaler.normalize(x)
    out = scaler.denormalize(weight * h + bias)
    loss = out.square().mean()
    loss.backward()
    assert scaler.log_scale.grad is not None, "no gradient reached the trainable log-scale"
    grad = float(scaler.log_scale.grad)
    before = float(scaler.log_scale.detach())
    optimizer.step()
    return h.detach(), out.detach(), loss.detach(), grad, before


def _lr_for(ref: ScalerStep) -> float:
    # A step of about 0.1 in log-scale: large enough to see, whatever the loss size.
    return 0.1 / abs(ref.grad_log_scale) if ref.grad_log_scale else 0.1


@given(case=scaler_cases())
def test_trainable_log_scale_gets_tf_gradient_and_sgd_moves_it_as_tf_does(
    case: tuple[np.ndarray, float, float, float],
) -> None:
    x_phys, scale, weight, bias = case
    probe = tf_scaler_step(x_phys, scale, weight, bias, lr=0.0)
    lr = _lr_for(probe)
    ref = tf_scaler_step(x_phys, scale, weight, bias, lr=lr)
    scaler = IntensityScaler(scale, trainable=True)
    h, out, loss, grad, before = _torch_step(scaler, x_phys, weight, bias, lr)

    check_close(before, ref.log_scale_before, rtol=0.0, atol=F32_EPS * max(1.0, abs(before)),
                what="initial log-scale")  # fmt: skip
    check_close(h, ref.normalized, rtol=SCALER_RTOL, what="normalize (TF IntensityScaler)")
    check_close(out, ref.denormalized, rtol=SCALER_RTOL, what="denormalize (IntensityScaler_inv)")
    check_close(loss, ref.loss, rtol=LOSS_RTOL, what="loss on the squared output")
    # Autodiff adds two terms of size |w h e^ls| and |out| per element (the bias
    # term is what remains); float32 rounding of those is the floor.
    e = math.exp(ref.log_scale_before)
    terms = 2 * np.abs(ref.denormalized) * (weight * np.abs(ref.normalized) * e
                                            + np.abs(ref.denormalized))  # fmt: skip
    grad_floor = FLOOR_FACTOR * float(terms.mean())
    check_close(grad, ref.grad_log_scale, rtol=LOSS_RTOL, atol=grad_floor,
                what="d loss / d log_scale")  # fmt: skip
    after = float(scaler.log_scale.detach())
    ulps = 4 * F32_EPS * max(1.0, abs(ref.log_scale_before))
    check_close(
        after - before,
        ref.log_scale_after - ref.log_scale_before,
        rtol=LOSS_RTOL,
        atol=lr * grad_floor + ulps,
        what="one SGD step's move of the log-scale",
    )
    # The saved scale is the trained exp(log_scale), the one TF would save.
    record = scaler.to_record(nphotons=1e9)
    assert record.method == "trained"
    check_close(record.intensity_scale, math.exp(ref.log_scale_after),
                rtol=LOSS_RTOL, what="saved trained scale")  # fmt: skip
    check_close(record.initial_intensity_scale, scale, rtol=1e-12, what="initial scale kept")


@given(case=scaler_cases())
def test_scaler_from_record_normalizes_like_tf_layers(
    case: tuple[np.ndarray, float, float, float],
) -> None:
    x_phys, scale, _, _ = case
    nphotons = 1e6
    x_norm = x_phys.astype(np.float64) / scale
    mean_intensity = float((x_norm**2).sum() / (x_norm.size / (x_norm.shape[1] * x_norm.shape[2])))
    record = ps.ScaleRecord(
        intensity_scale=math.sqrt(nphotons / mean_intensity),
        nphotons=nphotons,
        nphotons_source="explicit",
        method="explicit",
    )
    scaler = IntensityScaler.from_record(record)
    log_scale = tf.Variable(math.log(record.intensity_scale), dtype=tf.float32, trainable=False)
    x = tf.constant(x_phys)
    check_close(
        scaler.normalize(torch.from_numpy(x_phys)).detach(),
        (x / tf.exp(log_scale)).numpy(),
        rtol=SCALER_RTOL,
        what="normalize from a record",
    )
    check_close(
        scaler.denormalize(torch.from_numpy(x_phys)).detach(),
        (x * tf.exp(log_scale)).numpy(),
        rtol=SCALER_RTOL,
        what="denormalize from a record",
    )
    check_close(scaler.scale.detach(), tf.exp(log_scale).numpy(), rtol=SCALER_RTOL,
                what="scaler.scale")  # fmt: skip


@given(case=scaler_cases())
def test_frozen_log_scale_gets_no_gradient_as_a_non_trainable_tf_variable(
    case: tuple[np.ndarray, float, float, float],
) -> None:
    x_phys, scale, weight, bias = case
    log_scale = tf.Variable(math.log(scale), dtype=tf.float32, trainable=False)
    with tf.GradientTape() as tape:
        out = (weight * tf.constant(x_phys) / tf.exp(log_scale) + bias) * tf.exp(log_scale)
        tf_loss = tf.reduce_mean(tf.square(out))
    assert tape.gradient(tf_loss, log_scale) is None

    scaler = IntensityScaler(scale, trainable=False)
    out_t = scaler.denormalize(weight * scaler.normalize(torch.from_numpy(x_phys)) + bias)
    assert not out_t.requires_grad
    assert scaler.log_scale.grad is None
    check_close(out_t.square().mean(), tf_loss.numpy(), rtol=LOSS_RTOL, what="frozen loss")


@given(case=scaler_cases(), via=st.sampled_from(["function", "module"]))
def test_trainable_log_scale_learns_through_the_scaled_nll_as_tf_training_does(
    case: tuple[np.ndarray, float, float, float], via: str
) -> None:
    """TF training: lam = (net(x / e^ls) e^ls)**2 against fixed counts (s0 X)**2.

    physscale: ``scaled_poisson_nll(net(scaler.normalize(x)), X, scaler.scale,
    count_scale=s0)``, or ``ScaledPoissonNLLLoss(scaler)(net(...), X)``; the
    same gradient reaches the log-scale and one SGD step moves it as TF's does.
    """
    x_phys, scale, weight, bias = case
    probe = tf_scaler_step(x_phys, scale, weight, bias, lr=0.0, loss_kind="poisson")
    lr = _lr_for(probe)
    ref = tf_scaler_step(x_phys, scale, weight, bias, lr=lr, loss_kind="poisson")

    scaler = IntensityScaler(scale, trainable=True)
    optimizer = torch.optim.SGD(scaler.parameters(), lr=lr)
    obs = torch.from_numpy(x_phys) / scale  # normalized observed amplitudes X
    pred = weight * scaler.normalize(torch.from_numpy(x_phys)) + bias
    if via == "module":
        loss = ps.ScaledPoissonNLLLoss(scaler, form="tf")(pred, obs)
    else:
        loss = ps.scaled_poisson_nll(pred, obs, scaler.scale, count_scale=scale, form="tf")
    loss.backward()
    assert scaler.log_scale.grad is not None, "no gradient reached the trainable log-scale"
    grad = float(scaler.log_scale.grad)

    # Floors: the value is lam - k log lam (TERM floor); the gradient is
    # (1 - k/lam) d lam/d ls with d out/d ls a difference of two float32 terms.
    out = ref.denormalized.astype(np.float64)
    lam, k = out**2, x_phys.astype(np.float64) ** 2
    e = math.exp(ref.log_scale_before)
    loss_floor = FLOOR_FACTOR * float(np.mean(lam + np.abs(k * np.log(lam))))
    terms = (1 + k / lam) * 2 * np.abs(out) * (weight * np.abs(ref.normalized) * e + np.abs(out))
    grad_floor = FLOOR_FACTOR * float(terms.mean())
    check_close(loss.detach(), ref.loss, rtol=LOSS_RTOL, atol=loss_floor, what=f"NLL ({via})")
    check_close(grad, ref.grad_log_scale, rtol=LOSS_RTOL, atol=grad_floor,
                what=f"d NLL / d log_scale ({via})")  # fmt: skip
    before = float(scaler.log_scale.detach())
    optimizer.step()
    check_close(
        float(scaler.log_scale.detach()) - before,
        ref.log_scale_after - ref.log_scale_before,
        rtol=LOSS_RTOL,
        atol=lr * grad_floor + 4 * F32_EPS * max(1.0, abs(ref.log_scale_before)),
        what=f"one SGD step of the log-scale through the NLL ({via})",
    )
