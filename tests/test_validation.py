"""The validation switch (set_validation, validation, is_validation_enabled) and the loss path."""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.nn import IntensityScaler, ScaledPoissonNLLLoss


def test_validation_is_on_by_default() -> None:
    assert ps.is_validation_enabled() is True


def test_set_validation_switches_globally_and_back() -> None:
    try:
        ps.set_validation(False)
        assert ps.is_validation_enabled() is False
        # Process-wide, as torch.distributions' default: another thread sees it too.
        seen: list[bool] = []
        t = threading.Thread(target=lambda: seen.append(ps.is_validation_enabled()))
        t.start()
        t.join()
        assert seen == [False]
    finally:
        ps.set_validation(True)
    assert ps.is_validation_enabled() is True


def test_context_manager_restores_the_previous_state_even_on_error() -> None:
    seen: list[bool] = []

    def fails() -> None:
        with ps.validation(False):
            seen.append(ps.is_validation_enabled())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert seen == [False]
    assert ps.is_validation_enabled() is True


def test_context_manager_nests_and_restores_each_level() -> None:
    with ps.validation(False):
        with ps.validation(True):
            assert ps.is_validation_enabled() is True
        assert ps.is_validation_enabled() is False
    assert ps.is_validation_enabled() is True


def test_context_manager_changes_nothing_until_entered() -> None:
    scope = ps.validation(False)
    assert ps.is_validation_enabled() is True
    with scope:
        assert ps.is_validation_enabled() is False
    assert ps.is_validation_enabled() is True


def test_it_also_decorates_a_function() -> None:
    @ps.validation(False)
    def inside() -> bool:
        return ps.is_validation_enabled()

    assert inside() is False
    assert ps.is_validation_enabled() is True


@pytest.mark.parametrize("bad", [0, 1, None, "off"])
def test_non_bool_flags_are_refused(bad: object) -> None:
    with pytest.raises(ps.errors.OptionError, match="True or False"):
        ps.set_validation(bad)  # type: ignore[arg-type]
    with pytest.raises(ps.errors.OptionError, match="True or False"):
        ps.validation(bad)  # type: ignore[arg-type]
    assert ps.is_validation_enabled() is True


# --------------------------------------------------------------------------- the loss path
# With checks off the loss, ScaledPoissonNLLLoss and IntensityScaler read no tensor value.
# On the CPU the proof is the meta device: its tensors have shapes and dtypes but no data,
# so any .item(), .tolist(), bool(tensor) or float(tensor) raises there. (The fullgraph
# compile in test_hot_path.py is the second proof; the CUDA sync checks are there too.)

FORMS = ("tf", "stirling", "exact", "deviance")
REDUCTIONS = ("mean", "sum", "none", "per_sample")


def meta_batch(shape: tuple[int, ...] = (4, 1, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.empty(shape, device="meta", requires_grad=True)
    return pred, torch.empty(shape, device="meta")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("domain", ["amplitude", "intensity"])
def test_with_checks_off_the_loss_reads_no_tensor_value(
    form: str, reduction: str, domain: str
) -> None:
    pred, obs = meta_batch()
    mask = torch.ones(8, 8, dtype=torch.bool, device="meta")
    background = torch.empty(8, 8, device="meta")
    scale = torch.empty((), device="meta", requires_grad=True)
    with ps.validation(False):
        for kwargs in (
            {},
            {"mask": mask, "background": background},
            {"mask": mask.float(), "background": 0.5, "count_scale": 31.25},
            {"eps": 0.0},
        ):
            out = ps.scaled_poisson_nll(
                pred, obs, scale, form=form, reduction=reduction, domain=domain, **kwargs
            )
            assert out.device.type == "meta"
            out.sum().backward()
    assert pred.grad is not None
    assert pred.grad.shape == pred.shape


def test_with_checks_off_the_modules_read_no_tensor_value() -> None:
    pred, obs = meta_batch()
    with ps.validation(False):
        scaler = IntensityScaler(31.25, trainable=True).to("meta")
        loss_fn = ScaledPoissonNLLLoss(
            scaler, mask=torch.ones(8, 8, dtype=torch.bool), background=torch.ones(8, 8)
        ).to("meta")
        fixed = ScaledPoissonNLLLoss(
            ps.closed_form_scale_record(1e6, 8), mask=torch.ones(8, 8).to("meta")
        ).to("meta")
        value = loss_fn(scaler.denormalize(scaler.normalize(pred)), obs) + fixed(pred, obs)
        value.backward()
    assert value.device.type == "meta"
    assert scaler.log_scale.grad is not None
    assert scaler.log_scale.grad.device.type == "meta"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"form": "full"}, ps.errors.OptionError, r"form must be one of"),
        ({"pred": torch.ones(2, 1, 3, 4)}, ps.errors.BroadcastError, r"pred has shape"),
        ({"obs": torch.ones(2, 1, 3, 3, dtype=torch.int64)}, ps.errors.DtypeError, r"int64"),
        ({"scale": torch.ones(2)}, ps.errors.BroadcastError, r"use scale.view\(-1, 1, 1, 1\)"),
        ({"scale": -1.0}, ps.errors.NegativeValueError, r"scale must be > 0"),
        ({"eps": -1.0}, ps.errors.NegativeValueError, r"eps must be >= 0"),
        ({"mask": torch.ones(2, 2, dtype=torch.bool)}, ps.errors.MaskError, r"does not broadcast"),
        ({"mask": torch.ones(3, 3, dtype=torch.int8)}, ps.errors.MaskError, r"use mask.bool\(\)"),
        ({"background": torch.ones(4)}, ps.errors.BroadcastError, r"does not broadcast"),
        ({"background": -1.0}, ps.errors.NegativeValueError, r"background must be a finite"),
        ({"pred": torch.ones(2, 1, 3, 3).to_sparse()}, ps.errors.DtypeError, r"to_dense\(\)"),
    ],
)
def test_with_checks_off_types_shapes_devices_and_options_are_still_checked(
    kwargs: dict[str, Any], error: type, match: str
) -> None:
    args: dict[str, Any] = {"pred": torch.ones(2, 1, 3, 3), "obs": torch.ones(2, 1, 3, 3)}
    args["scale"] = 2.0
    args.update(kwargs)
    with ps.validation(False), pytest.raises(error, match=match):
        ps.scaled_poisson_nll(**args)


def test_with_checks_off_values_are_not_checked_which_is_what_a_user_gives_up() -> None:
    good = torch.ones(2, 1, 3, 3)
    nan = torch.full((2, 1, 3, 3), math.nan)
    with ps.validation(False):
        assert math.isnan(float(ps.scaled_poisson_nll(nan, good, 2.0)))
        assert math.isfinite(float(ps.scaled_poisson_nll(good, -good, 2.0)))
        assert math.isnan(float(ps.scaled_poisson_nll(good, good, torch.tensor(math.nan))))
        # A mask that excludes everything leaves nothing to average: 0 / 0.
        empty = torch.zeros(3, 3, dtype=torch.bool)
        assert math.isnan(float(ps.scaled_poisson_nll(good, good, 2.0, mask=empty)))
    with pytest.raises(ps.errors.NonFiniteError):
        ps.scaled_poisson_nll(nan, good, 2.0)
    with pytest.raises(ps.errors.MaskError, match="excludes every element"):
        ps.scaled_poisson_nll(good, good, 2.0, mask=torch.zeros(3, 3, dtype=torch.bool))


def test_with_checks_off_the_raw_counts_warning_is_not_given() -> None:
    gen = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.full((4, 1, 8, 8), 40.0), generator=gen)
    with ps.validation(False):
        ps.scaled_poisson_nll(counts, counts, 31.25, domain="intensity")  # no UnitsWarning
    with pytest.warns(ps.UnitsWarning):
        ps.scaled_poisson_nll(counts, counts, 31.25, domain="intensity")


def test_with_checks_off_dead_pixels_holding_nan_still_add_nothing() -> None:
    gen = torch.Generator().manual_seed(1)
    obs = torch.rand(2, 1, 4, 4, generator=gen)
    pred = obs + 0.1
    mask = torch.rand(4, 4, generator=gen) > 0.3
    want_p = pred.clone().requires_grad_()
    want = ps.scaled_poisson_nll(want_p, obs, 5.0, mask=mask, background=0.1)
    want.backward()
    dead_pred, dead_obs = pred.clone(), obs.clone()
    dead_pred[..., ~mask] = math.nan
    dead_obs[..., ~mask] = math.inf
    dead_pred.requires_grad_()
    with ps.validation(False):
        got = ps.scaled_poisson_nll(dead_pred, dead_obs, 5.0, mask=mask, background=0.1)
    got.backward()
    # Checks on divide by the element count on the host, off by a device tensor: the same
    # to float32 rounding.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert dead_pred.grad is not None
    assert torch.all(dead_pred.grad[..., ~mask] == 0)
    torch.testing.assert_close(dead_pred.grad, want_p.grad, rtol=1e-6, atol=0)


@st.composite
def loss_cases(draw: st.DrawFn) -> dict[str, Any]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 2)), 4, 4)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    case: dict[str, Any] = {
        "pred": torch.tensor(rng.random(shape) + 0.05, dtype=dtype),
        "obs": torch.tensor(rng.random(shape), dtype=dtype),
        "scale": draw(
            st.sampled_from(
                [
                    31.25,
                    torch.tensor(7.5, dtype=torch.float64),
                    torch.tensor(rng.random((shape[0], 1, 1, 1)) * 10 + 1, dtype=dtype),
                ]
            )
        ),
        "form": draw(st.sampled_from(FORMS)),
        "reduction": draw(st.sampled_from(REDUCTIONS)),
        "domain": draw(st.sampled_from(["amplitude", "intensity"])),
        "eps": draw(st.sampled_from([1e-12, 0.0])),
    }
    if draw(st.booleans()):
        case["mask"] = torch.tensor(rng.random((4, 4)) > 0.3)
        case["mask"][0, 0] = True
        if draw(st.booleans()):
            case["mask"] = case["mask"].to(dtype)
    if draw(st.booleans()):
        case["background"] = draw(st.sampled_from([0.5, torch.tensor(rng.random((4, 4)))]))
    if draw(st.booleans()):
        case["count_scale"] = draw(st.sampled_from([20.0, torch.tensor(3.0)]))
    return case


@given(loss_cases())
def test_checks_off_gives_the_same_values_and_gradients_as_checks_on(case: dict[str, Any]) -> None:
    results = []
    for enabled in (True, False):
        pred = case["pred"].clone().requires_grad_()
        with ps.validation(enabled):
            value = ps.scaled_poisson_nll(pred, **{k: v for k, v in case.items() if k != "pred"})
        value.sum().backward()
        results.append((value.detach(), pred.grad))
    (on, grad_on), (off, grad_off) = results
    assert on.dtype == off.dtype
    # The mean's element count is a float64 host number with checks on and a device
    # tensor in the compute dtype with them off: equal to rounding.
    torch.testing.assert_close(off, on, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_off, grad_on, rtol=1e-6, atol=0)
