"""SPEC §3 against TensorFlow: every NLL form, every reduction, and the gradients.

TF references (``_tfref``): ``tf.nn.log_poisson_loss`` with
``compute_full_loss=False`` (form ``"tf"``) and ``True`` (``"stirling"``), the
exact Poisson log-probability from ``tf.math.lgamma`` (``"exact"``), the half
deviance with ``tf.math.xlogy`` (``"deviance"``); ``reduce_mean`` / ``reduce_sum``
/ per-sample ``reduce_sum`` over (H, W, C), and a compiled Keras model's
``evaluate`` for ``"mean"``; ``tf.GradientTape`` for d loss / d pred.

Inputs: float32 NHWC normalized amplitudes (or intensities) with scales 1 to
1e5 and counts 0 to 1e7, as a model would see them. The TF reference runs in
float64 ops on those same float32 values (the exact TF expression, without
float32 rounding); the forms ``tf``/``stirling``/``exact`` are also compared
with TF's own float32 evaluation. The deviance is compared with float64 ops
only: TF float32's ``lam - k - k*log(lam/k)`` keeps no digits at high counts.

Tolerance: ``|physscale - TF| <= 1e-5 * |TF| + floor``; the floor is 1e-5 times
the (reduced) size of the terms the TF expression adds (``_tfref.term_magnitude``,
``gradient_magnitude``), and DEVIANCE_ATOL (1e-6 nats) for the deviance value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps

from ._tfref import (
    FORMS,
    LOSS_RTOL,
    NllCase,
    check_close,
    grad_floor,
    keras_compiled_mean,
    keras_loss,
    loss_floor,
    nll_case,
    tf,
    tf_nll,
    tf_nll_grad,
)

pytestmark = pytest.mark.tf


@st.composite
def nll_cases(draw: st.DrawFn, masks: bool = True) -> NllCase:
    shape = (
        draw(st.integers(1, 4)),
        draw(st.integers(1, 8)),
        draw(st.integers(1, 8)),
        draw(st.sampled_from([1, 4, 9])),
    )
    return nll_case(
        np.random.default_rng(draw(st.integers(0, 2**32 - 1))),
        shape,
        # Exact scales (1, powers of 2) keep whole counts whole in float32.
        scale=draw(
            st.one_of(
                st.floats(0.0, 5.0).map(lambda e: 10.0**e),
                st.sampled_from([1.0, 2.0, 16.0, 1024.0]),
            )
        ),
        max_counts=draw(st.one_of(st.just(0.0), st.floats(0.0, 7.0).map(lambda e: 10.0**e))),
        integer_counts=draw(st.booleans()),
        spread=10.0 ** draw(st.floats(-3.0, 0.0)),
        domain=draw(st.sampled_from(["amplitude", "intensity"])),
        background=draw(st.one_of(st.just(0.0), st.floats(-3.0, 1.0).map(lambda e: 10.0**e))),
        mask_kind=draw(st.sampled_from(["none", "full", "pattern"] if masks else ["none"])),
        dark=draw(st.floats(0.0, 0.9)),
    )


def _scale_arg(case: NllCase, kind: str) -> object:
    if kind == "tensor":
        return torch.tensor(case.scale, dtype=torch.float64)
    if kind == "record":
        return ps.ScaleRecord(
            intensity_scale=case.scale, nphotons=1e9, nphotons_source="explicit", method="explicit"
        )
    return case.scale


def _physscale(
    case: NllCase,
    form: str,
    reduction: str,
    *,
    scale_kind: str = "float",
    nchw: bool = False,
    requires_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, pred tensor) from physscale on the case's float32 data."""
    perm = (0, 3, 1, 2)
    pred_np = case.pred.transpose(perm) if nchw else case.pred
    obs_np = case.obs.transpose(perm) if nchw else case.obs
    pred = torch.tensor(np.ascontiguousarray(pred_np), requires_grad=requires_grad)
    obs = torch.from_numpy(np.ascontiguousarray(obs_np))
    mask = None
    if case.mask is not None:
        mask = torch.from_numpy(np.ascontiguousarray(case.mask.transpose(perm) if nchw
                                                     else case.mask))  # fmt: skip
    loss = ps.scaled_poisson_nll(
        pred,
        obs,
        _scale_arg(case, scale_kind),
        domain=case.domain,
        form=form,
        reduction=reduction,
        mask=mask,
        background=case.background,
    )
    return loss, pred


def _unmasked(values: np.ndarray, case: NllCase) -> np.ndarray:
    if case.mask is None:
        return values.ravel()
    return values[np.broadcast_to(case.mask, values.shape)]


@given(
    case=nll_cases(),
    form=st.sampled_from(FORMS),
    scale_kind=st.sampled_from(["float", "tensor", "record"]),
)
def test_elementwise_nll_of_each_form_equals_tf_reference(
    case: NllCase, form: str, scale_kind: str
) -> None:
    loss, _ = _physscale(case, form, "none", scale_kind=scale_kind)
    assert loss.shape == case.pred.shape
    assert loss.dtype in (torch.float32, torch.float64)
    got = _unmasked(loss.detach().numpy(), case)
    floor = _unmasked(loss_floor(case, form, "none"), case)
    ref64 = _unmasked(tf_nll(case, form, "none", tf.float64), case)
    check_close(got, ref64, rtol=LOSS_RTOL, atol=floor, what=f"form={form} vs TF float64 ops")
    if form != "deviance":
        ref32 = _unmasked(tf_nll(case, form, "none", tf.float32), case)
        check_close(got, ref32, rtol=LOSS_RTOL, atol=floor, what=f"form={form} vs TF float32")


@given(
    case=nll_cases(),
    form=st.sampled_from(FORMS),
    reduction=st.sampled_from(["mean", "sum", "per_sample"]),
)
def test_reductions_equal_tf_reduce_mean_sum_and_per_sample_sum(
    case: NllCase, form: str, reduction: str
) -> None:
    loss, _ = _physscale(case, form, reduction)
    ref = tf_nll(case, form, reduction, tf.float64)
    floor = loss_floor(case, form, reduction)
    what = f"form={form} reduction={reduction} vs TF"
    check_close(loss.detach().numpy(), ref, rtol=LOSS_RTOL, atol=floor, what=what)
    if reduction == "per_sample":
        # The same data as NCHW: per-sample sums do not depend on the layout.
        nchw, _ = _physscale(case, form, reduction, nchw=True)
        check_close(nchw.detach().numpy(), ref, rtol=LOSS_RTOL, atol=floor, what=f"{what} NCHW")


@given(case=nll_cases(masks=False), form=st.sampled_from(FORMS), data=st.data())
def test_mean_reduction_equals_what_a_compiled_keras_model_reports(
    case: NllCase, form: str, data: st.DataObject
) -> None:
    batch_size = data.draw(st.integers(1, case.pred.shape[0]), label="batch_size")
    keras_value = keras_compiled_mean(
        case.pred,
        case.obs,
        keras_loss(case.scale, case.domain, case.background, form),
        batch_size,
    )
    loss, _ = _physscale(case, form, "mean")
    floor = loss_floor(case, form, "mean")
    # Keras reduces in float32: add its rounding of the mean of |values|.
    keras_rounding = (
        4
        * float(np.finfo(np.float32).eps)
        * float(np.abs(tf_nll(case, form, "none", tf.float64)).mean())
    )
    check_close(
        loss.detach().numpy(),
        keras_value,
        rtol=LOSS_RTOL,
        atol=floor + keras_rounding,
        what=f"form={form} mean vs Keras evaluate (batch_size={batch_size})",
    )
    # And Keras' number is the mean over every element, not of per-sample sums.
    check_close(
        keras_value,
        tf_nll(case, form, "mean", tf.float64),
        rtol=LOSS_RTOL,
        atol=floor + keras_rounding,
        what="Keras evaluate vs reduce_mean",
    )


@given(
    case=nll_cases(),
    form=st.sampled_from(FORMS),
    reduction=st.sampled_from(["mean", "sum", "per_sample"]),
)
def test_gradient_wrt_pred_equals_tf_gradient_tape(
    case: NllCase, form: str, reduction: str
) -> None:
    loss, pred = _physscale(case, form, reduction, requires_grad=True)
    loss.sum().backward()
    assert pred.grad is not None
    ref = tf_nll_grad(case, form, reduction, tf.float64)
    check_close(
        pred.grad.numpy(),
        ref,
        rtol=LOSS_RTOL,
        atol=grad_floor(case, reduction),
        what=f"d loss / d pred, form={form} reduction={reduction} vs GradientTape",
    )
