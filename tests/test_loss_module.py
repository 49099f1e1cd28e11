"""ScaledPoissonNLLLoss: the loss as a module, with a fixed scale or a learning IntensityScaler."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import physscale as ps
from physscale.errors import (
    DtypeError,
    MaskError,
    NegativeValueError,
    NonFiniteError,
    OptionError,
    PhysscaleError,
)
from physscale.nn import IntensityScaler, ScaledPoissonNLLLoss


def batch(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.rand(3, 2, 5, 5, generator=gen, dtype=dtype)
    pred = obs + 0.2 * torch.rand(3, 2, 5, 5, generator=gen, dtype=dtype)
    return pred, obs


def reference_tf_mean(
    pred: torch.Tensor, obs: torch.Tensor, rate_s: float, count_s: float
) -> float:
    """mean of lam - k log lam, written out in Python floats."""
    terms = []
    for p, o in zip(pred.flatten().tolist(), obs.flatten().tolist(), strict=True):
        lam, k = (rate_s * p) ** 2, (count_s * o) ** 2
        terms.append(lam - k * math.log(lam))
    return math.fsum(terms) / len(terms)


def test_fixed_scale_is_a_float64_buffer_saved_in_state_dict() -> None:
    loss = ScaledPoissonNLLLoss(31.25)
    assert dict(loss.named_buffers())["scale"].dtype == torch.float64
    assert float(loss.state_dict()["scale"]) == 31.25
    assert list(loss.parameters()) == []


def test_buffers_move_with_to_device() -> None:
    mask = torch.ones(5, 5, dtype=torch.bool)
    loss = ScaledPoissonNLLLoss(2.0, mask=mask, background=torch.zeros(5, 5)).to("meta")
    assert loss.scale is not None
    assert loss.scale.device.type == "meta"
    assert loss.mask is not None
    assert loss.mask.device.type == "meta"
    assert loss.background_map is not None
    assert loss.background_map.device.type == "meta"


def test_mask_and_background_maps_are_not_saved_the_scale_is() -> None:
    loss = ScaledPoissonNLLLoss(2.0, mask=torch.ones(5, 5, dtype=torch.bool))
    assert set(loss.state_dict()) == {"scale"}


def test_forward_equals_the_function_with_the_same_options() -> None:
    pred, obs = batch()
    mask = torch.rand(5, 5, generator=torch.Generator().manual_seed(9)) > 0.2
    for form in ("tf", "stirling", "exact", "deviance"):
        for reduction in ("mean", "sum", "none", "per_sample"):
            module = ScaledPoissonNLLLoss(
                7.0, form=form, reduction=reduction, mask=mask, background=0.3
            )
            got = module(pred, obs)
            want = ps.scaled_poisson_nll(
                pred, obs, 7.0, form=form, reduction=reduction, mask=mask, background=0.3
            )
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_fixed_scale_value_matches_the_written_out_formula() -> None:
    pred, obs = batch(1)
    got = ScaledPoissonNLLLoss(ps.closed_form_scale_record(1e4, 5))(pred, obs)
    s = ps.closed_form_scale_record(1e4, 5).intensity_scale
    assert float(got) == pytest.approx(reference_tf_mean(pred, obs, s, s), rel=1e-12)


def test_with_a_trainable_scaler_the_rate_learns_and_the_counts_stay_at_the_data_scale() -> None:
    pred, obs = batch(2)
    scaler = IntensityScaler(4.0, trainable=True, dtype=torch.float64)
    loss = ScaledPoissonNLLLoss(scaler)
    assert [n for n, _ in loss.named_parameters()] == ["scaler.log_scale"]
    with torch.no_grad():
        scaler.log_scale.fill_(math.log(5.0))  # the scale has learned: 4 -> 5
    value = loss(pred, obs)
    # Rate at the learned scale, counts at the data's scale (TF: targets (s X)**2).
    assert float(value) == pytest.approx(reference_tf_mean(pred, obs, 5.0, 4.0), rel=1e-12)
    value.backward()
    # d/dlog_s mean((s p)^2 - k log (s p)^2) = mean(2 lam - 2 k), s = 5 on the rate only.
    lam = (5.0 * pred) ** 2
    k = (4.0 * obs) ** 2
    want = float((2 * lam - 2 * k).mean())
    assert scaler.log_scale.grad is not None
    assert float(scaler.log_scale.grad) == pytest.approx(want, rel=1e-12)


def test_a_trainable_scale_learns_the_amplitude_the_model_gets_wrong() -> None:
    # The model predicts 1.2x the data's amplitudes; counts are at the data's scale 3,
    # so the loss is smallest where s * 1.2 == 3: the learned scale goes to 2.5.
    _, obs = batch(3, torch.float32)
    scaler = IntensityScaler(3.0, trainable=True)
    loss_fn = ScaledPoissonNLLLoss(scaler, form="deviance")
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.01)
    values = []
    for _ in range(200):
        opt.zero_grad()
        value = loss_fn(1.2 * obs, obs)
        values.append(float(value.detach()))
        value.backward()
        opt.step()
    assert values[-1] < values[0]
    assert float(scaler.scale) == pytest.approx(2.5, rel=1e-4)
    record = scaler.to_record(nphotons=1e6)
    assert (record.method, record.initial_intensity_scale) == ("trained", 3.0)
    assert record.intensity_scale == pytest.approx(2.5, rel=1e-4)


def test_a_frozen_scaler_gets_no_gradient() -> None:
    pred, obs = batch(4, torch.float32)
    scaler = IntensityScaler(3.0)
    p = pred.clone().requires_grad_()
    ScaledPoissonNLLLoss(scaler)(p, obs).backward()
    assert scaler.log_scale.grad is None
    assert p.grad is not None


def test_module_state_dict_round_trips_through_weights_only_load() -> None:
    scaler = IntensityScaler(ps.closed_form_scale_record(1e6, 64), trainable=True)
    loss = ScaledPoissonNLLLoss(scaler)
    with torch.no_grad():
        scaler.log_scale.add_(0.1)
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    fresh = ScaledPoissonNLLLoss(IntensityScaler(1.0, trainable=True))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.scaler is not None
    assert fresh.scaler.initial_scale == 31.25
    pred, obs = batch(5, torch.float32)
    torch.testing.assert_close(fresh(pred, obs), loss(pred, obs), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"form": "poisson"}, OptionError, r"form must be one of .*got 'poisson'"),
        ({"reduction": "batchmean"}, OptionError, r"reduction must be one of"),
        ({"domain": "photons"}, OptionError, r"domain must be one of"),
    ],
)
def test_bad_options_fail_at_construction(kwargs: dict[str, str], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ScaledPoissonNLLLoss(2.0, **kwargs)  # type: ignore[arg-type]


def test_bad_scales_fail_at_construction() -> None:
    with pytest.raises(NegativeValueError, match=r"ScaledPoissonNLLLoss scale must be > 0"):
        ScaledPoissonNLLLoss(-1.0)
    trainable = torch.tensor(2.0, requires_grad=True)
    with pytest.raises(
        DtypeError, match=r"a trainable scale must be a physscale.nn.IntensityScaler"
    ):
        ScaledPoissonNLLLoss(trainable)


ODD = ps.ScaleRecord(
    intensity_scale=68.285, nphotons=1e6, nphotons_source="explicit", method="explicit"
)

CASTS = {
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.bfloat16(),
    "to_float16": lambda m: m.to(torch.float16),
    "float": lambda m: m.float(),
    "double": lambda m: m.double(),
    "to_cpu": lambda m: m.to(torch.device("cpu")),
}


@pytest.mark.parametrize("cast", list(CASTS))
def test_a_cast_keeps_the_fixed_scale_an_exact_float64_buffer(cast: str) -> None:
    loss = CASTS[cast](ScaledPoissonNLLLoss(ODD))
    assert loss.scale is not None
    assert loss.scale.dtype == torch.float64
    assert float(loss.scale) == 68.285
    assert float(loss.state_dict()["scale"]) == 68.285


def test_a_half_cast_loss_with_a_scale_beyond_float16_stays_finite_and_exact() -> None:
    pred, obs = batch(6, torch.float32)
    value = ScaledPoissonNLLLoss(1e5).half()(pred, obs)
    assert math.isfinite(float(value))
    s = 1e5
    assert float(value) == pytest.approx(reference_tf_mean(pred, obs, s, s), rel=1e-5)


def test_a_cast_keeps_a_background_map_in_float32_or_better_and_a_mask_usable() -> None:
    background = torch.full((5, 5), 3.7)
    mask = torch.rand(5, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    loss = ScaledPoissonNLLLoss(2.0, background=background, mask=mask).bfloat16()
    assert loss.background_map is not None
    assert loss.background_map.dtype == torch.float32
    assert torch.equal(loss.background_map, background)
    pred, obs = batch(7, torch.float32)
    want = ps.scaled_poisson_nll(pred, obs, 2.0, background=background, mask=mask)
    torch.testing.assert_close(loss(pred, obs), want, rtol=0, atol=0)


def test_a_scaler_in_a_half_cast_loss_keeps_its_parameter_and_scale() -> None:
    scaler = IntensityScaler(ODD, trainable=True)
    loss = ScaledPoissonNLLLoss(scaler)
    param = scaler.log_scale
    loss.half()
    assert scaler.log_scale is param
    assert scaler.log_scale.dtype == torch.float32
    assert float(scaler.scale) == pytest.approx(68.285, rel=4 * torch.finfo(torch.float32).eps)


def test_resuming_from_a_trained_record_keeps_the_counts_at_the_data_scale() -> None:
    data = ps.closed_form_scale_record(1e6, 64)  # the data's scale: 31.25
    trained = data.trained(40.0)
    scaler = IntensityScaler.from_record(trained, trainable=True)
    pred, obs = batch(8)
    value = ScaledPoissonNLLLoss(scaler)(pred, obs)
    rate_s = float(scaler.scale.detach())  # 40 in float32
    assert rate_s == pytest.approx(40.0, rel=1e-6)
    assert float(value) == pytest.approx(reference_tf_mean(pred, obs, rate_s, 31.25), rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": "a"}, DtypeError, r"eps must be a real number >= 0 .*got str 'a'"),
        ({"eps": -1.0}, NegativeValueError, r"eps must be >= 0 .*got -1.0"),
        ({"eps": float("nan")}, NonFiniteError, r"eps must be finite"),
        ({"mask": [1, 2]}, MaskError, r"mask must be a boolean .*got list"),
        ({"mask": torch.tensor([1, 0])}, MaskError, r"got dtype torch.int64; use mask.bool\(\)"),
        ({"mask": torch.tensor([0.0, 2.0])}, MaskError, r"mask weights must be exactly 0 or 1"),
        ({"mask": np.array([0.0, 0.5])}, MaskError, r"mask weights must be exactly 0 or 1"),
        ({"mask": torch.zeros(3, dtype=torch.bool)}, MaskError, r"excludes every element"),
        ({"mask": torch.zeros(0)}, MaskError, r"mask of shape \(0,\) is empty"),
        ({"background": -1.0}, NegativeValueError, r"background must be .* >= 0, got -1.0"),
        ({"background": float("inf")}, NonFiniteError, r"background must be a finite number"),
        ({"background": "1"}, DtypeError, r"background must be a real number or tensor"),
        ({"background": True}, DtypeError, r"background must be a real number or tensor"),
        (
            {"background": torch.tensor([0.5, -1.0])},
            NegativeValueError,
            r"background \(background counts\) must be >= 0 everywhere, got a minimum of -1.0",
        ),
        (
            {"background": torch.tensor([0.5, float("nan")])},
            NonFiniteError,
            r"background \(background counts\) holds 1 NaN",
        ),
        ({"background": torch.tensor([1, 2])}, DtypeError, r"real floating-point tensor"),
    ],
)
def test_bad_eps_mask_and_background_fail_at_construction(
    kwargs: dict[str, object], error: type, match: str
) -> None:
    assert issubclass(error, PhysscaleError)
    with pytest.raises(error, match=match):
        ScaledPoissonNLLLoss(2.0, **kwargs)  # type: ignore[arg-type]


def test_valid_numpy_and_float_masks_are_accepted_and_used() -> None:
    pred, obs = batch(9)
    keep = np.random.default_rng(2).random((5, 5)) > 0.3
    want = ps.scaled_poisson_nll(pred, obs, 3.0, mask=torch.from_numpy(keep))
    for mask in (keep, keep.astype(np.float32), torch.from_numpy(keep).double()):
        got = ScaledPoissonNLLLoss(3.0, mask=mask)(pred, obs)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- in a host model


class HostModel(torch.nn.Module):
    """A stand-in for a host code's model with a loss slot (PtychoPINN's port has one)."""

    def __init__(self, loss: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.net = torch.nn.Conv2d(2, 2, 3, padding=1)
        if loss is not None:
            self.Loss = loss  # the host's attribute name


def test_a_non_persistent_fixed_scale_adds_no_key_to_a_host_models_state_dict() -> None:
    # An existing checkpoint, saved before physscale was in the model.
    old = HostModel()
    buffer = io.BytesIO()
    torch.save(old.state_dict(), buffer)
    record = ps.closed_form_scale_record(1e6, 64)
    new = HostModel(ScaledPoissonNLLLoss(record, form="exact", persistent=False))
    assert set(new.state_dict()) == set(old.state_dict())
    buffer.seek(0)
    new.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    # ... and the other direction: the new model's checkpoint loads into the old one.
    old.load_state_dict(new.state_dict(), strict=True)
    # The scale is still a buffer that moves with the model, and the loss is unchanged.
    assert new.Loss.scale is not None
    assert float(new.Loss.scale) == 31.25
    assert new.Loss.scale.dtype == torch.float64
    pred, obs = batch(10)
    want = ps.scaled_poisson_nll(pred, obs, 31.25, form="exact")
    torch.testing.assert_close(new.Loss(pred, obs), want, rtol=0, atol=0)


def test_the_default_keeps_saving_the_fixed_scale() -> None:
    model = HostModel(ScaledPoissonNLLLoss(31.25))
    assert "Loss.scale" in model.state_dict()
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*Loss.scale"):
        model.load_state_dict(HostModel().state_dict(), strict=True)


def test_persistent_must_be_a_bool_and_is_only_for_a_fixed_scale() -> None:
    with pytest.raises(OptionError, match=r"persistent must be True or False"):
        ScaledPoissonNLLLoss(2.0, persistent="no")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"Register the scaler on the host model"):
        ScaledPoissonNLLLoss(IntensityScaler(2.0, trainable=True), persistent=False)


def test_the_module_takes_eps_0_like_the_function() -> None:
    pred, obs = batch(11)
    pred[0, 0, 0, 0] = 0.0
    obs[0, 0, 0, 0] = 0.0
    got = ScaledPoissonNLLLoss(3.0, form="exact", eps=0.0, reduction="per_sample")(pred, obs)
    want = -torch.distributions.Independent(
        torch.distributions.Poisson((3.0 * pred) ** 2, validate_args=False), 3
    ).log_prob((3.0 * obs) ** 2)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
