"""IntensityScaler: the scale as a registered log-scale parameter (SPEC §2, failure modes 2-3)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.errors import DtypeError, NegativeValueError, NonFiniteError, RecordError
from physscale.nn import IntensityScaler

RECORD = ps.closed_form_scale_record(1e6, 64)  # intensity_scale = 31.25


def sgd_step(scaler: IntensityScaler, lr: float = 0.01) -> None:
    """One optimizer step on a loss that depends on the scale (d loss / d log_scale != 0)."""
    opt = torch.optim.SGD(scaler.parameters(), lr=lr)
    opt.zero_grad()
    loss = scaler.denormalize(torch.ones(3)).sum()
    if loss.requires_grad:
        loss.backward()
    opt.step()


def test_log_scale_is_a_registered_parameter_in_parameters_and_state_dict() -> None:
    scaler = IntensityScaler(RECORD, trainable=True)
    params = list(scaler.parameters())
    assert len(params) == 1
    assert params[0] is scaler.log_scale
    assert isinstance(scaler.log_scale, torch.nn.Parameter)
    assert "log_scale" in scaler.state_dict()
    assert float(scaler.log_scale) == pytest.approx(math.log(31.25), rel=1e-7)


def test_frozen_scaler_has_no_grad_and_an_optimizer_step_leaves_it() -> None:
    scaler = IntensityScaler(RECORD, trainable=False)
    assert scaler.log_scale.requires_grad is False
    assert scaler.trainable is False
    before = scaler.log_scale.detach().clone()
    sgd_step(scaler)
    assert torch.equal(scaler.log_scale.detach(), before)


def test_trainable_scaler_moves_under_an_optimizer_step() -> None:
    scaler = IntensityScaler(2.0, trainable=True)
    sgd_step(scaler, lr=0.01)
    # d/dlog_s sum(3 * exp(log_s)) = 3 * 2 = 6; one SGD step of 0.01.
    assert float(scaler.log_scale) == pytest.approx(math.log(2.0) - 0.06, rel=1e-6)


@given(st.floats(1e-3, 1e6))
def test_normalize_divides_and_denormalize_multiplies_like_tf(s: float) -> None:
    scaler = IntensityScaler(s, dtype=torch.float64)
    x = torch.tensor([0.0, 1.0, 2.5], dtype=torch.float64)
    torch.testing.assert_close(scaler.normalize(x), x / s, rtol=1e-14, atol=0)
    torch.testing.assert_close(scaler.denormalize(x), x * s, rtol=1e-14, atol=0)
    torch.testing.assert_close(scaler(x), x / s, rtol=1e-14, atol=0)
    assert scaler.scale.ndim == 0
    assert float(scaler.scale) == pytest.approx(s, rel=1e-14)


def test_scale_of_exactly_one_still_applies_no_truthiness_check() -> None:
    # log_scale == 0.0 must not disable the layer (SPEC failure mode 2).
    scaler = IntensityScaler(1.0, trainable=True)
    assert float(scaler.log_scale) == 0.0
    y = scaler.denormalize(torch.tensor([3.0]))
    y.sum().backward()
    assert scaler.log_scale.grad is not None
    assert float(scaler.log_scale.grad) == 3.0  # d/dlog_s 3 exp(log_s) at 0
    with torch.no_grad():
        scaler.log_scale.fill_(math.log(4.0))
    assert float(scaler.normalize(torch.tensor([8.0]))) == pytest.approx(2.0)


def test_record_after_training_holds_the_trained_value_and_the_initial_one() -> None:
    scaler = IntensityScaler.from_record(RECORD, trainable=True)
    sgd_step(scaler, lr=0.001)
    current = math.exp(float(scaler.log_scale.detach().double()))
    record = scaler.to_record()
    assert record.method == "trained"
    assert record.intensity_scale == pytest.approx(current, rel=1e-12)
    assert record.intensity_scale != pytest.approx(RECORD.intensity_scale, rel=1e-6)
    assert record.initial_intensity_scale == RECORD.intensity_scale
    assert record.nphotons == RECORD.nphotons
    assert record.pattern_shape == RECORD.pattern_shape


def test_frozen_scaler_returns_its_original_record_unchanged() -> None:
    scaler = IntensityScaler.from_record(RECORD)
    assert scaler.to_record() is RECORD


def test_scaler_from_a_bare_float_needs_nphotons_for_a_record() -> None:
    scaler = IntensityScaler(5.0)
    with pytest.raises(RecordError, match=r"built from a bare scale.*to_record\(nphotons=\.\.\.\)"):
        scaler.to_record()
    record = scaler.to_record(nphotons=1e4)
    assert (record.method, record.intensity_scale, record.nphotons) == ("explicit", 5.0, 1e4)
    assert record.nphotons_source == "explicit"
    trained = IntensityScaler(5.0, trainable=True, nphotons=1e4)
    sgd_step(trained)
    rec = trained.to_record()
    assert rec.method == "trained"
    assert rec.initial_intensity_scale == 5.0
    with pytest.raises(RecordError, match=r"contradicts the nphotons=10000.0"):
        trained.to_record(nphotons=2e4)


def test_state_dict_round_trip_restores_trained_value_and_record() -> None:
    scaler = IntensityScaler.from_record(RECORD, trainable=True)
    sgd_step(scaler, lr=0.002)
    state = scaler.state_dict()
    fresh = IntensityScaler(1.0)  # a placeholder, frozen, no record
    fresh.load_state_dict(state)
    assert torch.equal(fresh.log_scale.detach(), scaler.log_scale.detach())
    assert fresh.initial_scale == RECORD.intensity_scale
    restored = fresh.to_record()
    # Frozen now, but the value moved away from the record: still reported as trained.
    assert restored.method == "trained"
    assert restored.intensity_scale == scaler.to_record().intensity_scale
    assert restored.initial_intensity_scale == RECORD.intensity_scale


def test_state_dict_survives_torch_save_and_load_weights_only() -> None:
    scaler = IntensityScaler.from_record(RECORD, trainable=True)
    sgd_step(scaler)
    buffer = io.BytesIO()
    torch.save(scaler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert isinstance(state["_extra_state"], str)
    fresh = IntensityScaler(1.0, trainable=True)
    fresh.load_state_dict(state)
    assert fresh.to_record().model_dump(exclude={"created_utc"}) == scaler.to_record().model_dump(
        exclude={"created_utc"}
    )


def test_scaler_inside_a_model_reaches_the_optimizer_and_moves_with_it() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.scaler = IntensityScaler(3.0, trainable=True)
    names = [n for n, _ in model.named_parameters()]
    assert "scaler.log_scale" in names
    model.to(torch.float64)
    assert model.scaler.log_scale.dtype == torch.float64


def test_malformed_extra_state_is_a_record_error() -> None:
    scaler = IntensityScaler(2.0)
    state = scaler.state_dict()
    state["_extra_state"] = '{"format": "something else"}'
    with pytest.raises(RecordError, match=r"extra state in this state_dict is malformed"):
        scaler.load_state_dict(state)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0.0, NegativeValueError, r"IntensityScaler scale must be > 0"),
        (-2.0, NegativeValueError, r"must be > 0"),
        (float("inf"), NonFiniteError, r"must be finite"),
        (torch.ones(2), DtypeError, r"single number .* shape \(2,\)"),
        ("2.0", DtypeError, r"got str"),
    ],
)
def test_bad_scales_are_refused(value: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        IntensityScaler(value)  # type: ignore[arg-type]


def test_record_and_nphotons_together_are_refused() -> None:
    with pytest.raises(RecordError, match=r"nphotons comes from the ScaleRecord"):
        IntensityScaler(RECORD, nphotons=1e6)
    with pytest.raises(RecordError, match=r"from_record needs a physscale.ScaleRecord"):
        IntensityScaler.from_record(3.0)  # type: ignore[arg-type]


def test_trainable_must_be_a_bool() -> None:
    with pytest.raises(DtypeError, match=r"trainable must be True or False, got 'yes'"):
        IntensityScaler(2.0, trainable="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dtype", "kept"), [(torch.float64, torch.float64), (torch.bfloat16, torch.float32)]
)
def test_casting_the_module_does_not_make_a_frozen_scale_look_trained(
    dtype: torch.dtype, kept: torch.dtype
) -> None:
    scaler = IntensityScaler.from_record(RECORD).to(dtype)
    assert scaler.log_scale.dtype == kept
    assert scaler.to_record() is RECORD


# A derived-like record whose scale bfloat16 rounds 0.4% away (68.285 -> 68.0).
ODD = ps.ScaleRecord(
    intensity_scale=68.285, nphotons=1e6, nphotons_source="explicit", method="explicit"
)
FLOAT32_REL = 4 * torch.finfo(torch.float32).eps

CASTS = {
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.bfloat16(),
    "to_float16": lambda m: m.to(torch.float16),
    "to_bfloat16_cpu": lambda m: m.to(torch.device("cpu"), torch.bfloat16),
    "float": lambda m: m.float(),
    "to_cpu": lambda m: m.to(torch.device("cpu")),
}


@pytest.mark.parametrize("cast", list(CASTS))
def test_a_low_precision_cast_keeps_the_scale_exact_and_the_record_consistent(cast: str) -> None:
    scaler = IntensityScaler.from_record(ODD)
    param = scaler.log_scale
    CASTS[cast](scaler)
    assert scaler.log_scale is param  # an optimizer's reference stays valid
    assert scaler.log_scale.dtype == torch.float32
    assert float(scaler.scale) == pytest.approx(68.285, rel=FLOAT32_REL)
    record = scaler.to_record()
    assert record is ODD
    assert float(scaler.scale) == pytest.approx(record.intensity_scale, rel=FLOAT32_REL)
    assert "scale=68.285" in repr(scaler)


def test_double_then_half_keeps_float64_and_float_returns_to_float32() -> None:
    scaler = IntensityScaler(68.285, trainable=True)
    param = scaler.log_scale
    scaler.double()
    assert (scaler.log_scale.dtype, scaler.log_scale is param) == (torch.float64, True)
    scaler.half()
    assert (scaler.log_scale.dtype, scaler.log_scale is param) == (torch.float64, True)
    scaler.float()
    assert (scaler.log_scale.dtype, scaler.log_scale is param) == (torch.float32, True)
    assert float(scaler.scale) == pytest.approx(68.285, rel=FLOAT32_REL)
    assert scaler.trainable


def test_a_cast_keeps_an_existing_gradient_usable() -> None:
    scaler = IntensityScaler(2.0, trainable=True)
    scaler.denormalize(torch.ones(3)).sum().backward()
    scaler.bfloat16()
    assert scaler.log_scale.grad is not None
    assert scaler.log_scale.grad.dtype == torch.float32
    assert float(scaler.log_scale.grad) == pytest.approx(6.0, rel=1e-2)
    torch.optim.SGD(scaler.parameters(), lr=0.01).step()
    assert float(scaler.scale) == pytest.approx(2.0 * math.exp(-0.06), rel=1e-2)


def test_a_model_cast_to_bfloat16_still_trains_its_net_and_its_scale() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.scaler = IntensityScaler(RECORD, trainable=True)
    model.loss = ps.ScaledPoissonNLLLoss(model.scaler)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    param = model.scaler.log_scale
    model.bfloat16()
    assert model.scaler.log_scale is param
    assert model[0].weight.dtype == torch.bfloat16
    x = torch.rand(8, 4, generator=torch.Generator().manual_seed(0)).bfloat16()
    weight, log_scale = model[0].weight.detach().clone(), float(param.detach())
    # The scaler normalizes a bfloat16 batch without promoting it.
    assert model.scaler.normalize(x).dtype == torch.bfloat16
    opt.zero_grad()
    value = model.loss(model[0](model.scaler.normalize(x)).abs(), x)
    assert value.dtype == torch.float32
    value.backward()
    opt.step()
    assert float(param.detach()) != log_scale
    assert not torch.equal(model[0].weight.detach(), weight)
    assert model.scaler.to_record().method == "trained"


def test_a_log_scale_dtype_below_float32_is_refused() -> None:
    with pytest.raises(DtypeError, match=r"dtype must be torch.float32 or torch.float64"):
        IntensityScaler(2.0, dtype=torch.float16)


TRAINED = RECORD.trained(40.0)  # trained from the data's 31.25


def test_a_scaler_from_a_trained_record_starts_trained_and_keeps_the_data_scale() -> None:
    scaler = IntensityScaler.from_record(TRAINED)
    assert float(scaler.scale) == pytest.approx(40.0, rel=FLOAT32_REL)
    assert scaler.initial_scale == 31.25  # the data's scale, for the counts
    assert scaler.to_record() is TRAINED  # frozen and unmoved: the record itself


def test_resuming_from_a_trained_record_keeps_the_first_initial_value() -> None:
    scaler = IntensityScaler.from_record(TRAINED, trainable=True)
    sgd_step(scaler, lr=0.001)
    record = scaler.to_record()
    assert record.method == "trained"
    assert record.initial_intensity_scale == 31.25
    assert record.intensity_scale == pytest.approx(40.0 * math.exp(-0.001 * 3 * 40.0), rel=1e-5)
    fresh = IntensityScaler(1.0)
    fresh.load_state_dict(scaler.state_dict())
    assert fresh.initial_scale == 31.25
    assert fresh.to_record().initial_intensity_scale == 31.25


@pytest.mark.parametrize("log_value", [float("nan"), float("inf"), float("-inf"), 800.0, -800.0])
def test_a_diverged_log_scale_is_a_record_error_not_an_overflow(log_value: float) -> None:
    scaler = IntensityScaler(ps.closed_form_scale_record(1e6, 64), trainable=True)
    with torch.no_grad():
        scaler.log_scale.fill_(log_value)
    with pytest.raises(ps.errors.RecordError, match="training diverged"):
        scaler.to_record()


# --------------------------------------------------------------------------- range


def far_record(scale: float) -> ps.ScaleRecord:
    return ps.ScaleRecord(
        intensity_scale=scale, nphotons=1e6, nphotons_source="explicit", method="explicit"
    )


@pytest.mark.parametrize("value", [1e39, 5e38, 1e-39, 1e-46, 1e300, 1e-300])
def test_a_record_beyond_float32_keeps_its_scale_representable(value: float) -> None:
    # Issue 11: float32's exp turned valid records of 1e39 into inf and 1e-46 into 0.
    record = far_record(value)
    scaler = IntensityScaler.from_record(record)
    assert scaler.log_scale.dtype == torch.float64
    # exp of a float64 log: relative error up to |log s| times float64's eps.
    rel = 2 * abs(math.log(value)) * torch.finfo(torch.float64).eps
    assert float(scaler.scale) == pytest.approx(value, rel=rel)
    assert scaler.to_record() is record
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(scaler.denormalize(x), x * value, rtol=rel, atol=0)
    # A float32 cast of the module keeps the float64 log-scale: float32 cannot hold it.
    scaler.float()
    assert scaler.log_scale.dtype == torch.float64
    assert float(scaler.scale) == pytest.approx(value, rel=rel)


def test_a_scale_within_float32_keeps_the_float32_log_scale() -> None:
    for value in (1e-30, 1.0, 1e30):
        assert IntensityScaler(value).log_scale.dtype == torch.float32


def test_asking_for_a_float32_log_scale_that_cannot_hold_the_scale_is_refused() -> None:
    with pytest.raises(DtypeError, match=r"float32 cannot hold .*1e\+39.*torch.float64"):
        IntensityScaler(1e39, dtype=torch.float32)


def test_a_loss_with_a_scaler_beyond_float32_gives_the_float64_value() -> None:
    s = 1e39
    scaler = IntensityScaler.from_record(far_record(s), trainable=True)
    obs = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(3)) + 0.5
    pred = obs * 1.1
    value = ps.ScaledPoissonNLLLoss(scaler)(pred, obs)
    assert value.dtype == torch.float64
    p64, o64 = pred.double().flatten().tolist(), obs.double().flatten().tolist()
    terms = [
        (s * p) ** 2 - (s * o) ** 2 * math.log((s * p) ** 2) for p, o in zip(p64, o64, strict=True)
    ]
    assert float(value) == pytest.approx(math.fsum(terms) / len(terms), rel=1e-12)
    value.backward()
    assert scaler.log_scale.grad is not None
    assert math.isfinite(float(scaler.log_scale.grad))
    with ps.validation(False):
        assert float(ps.ScaledPoissonNLLLoss(scaler)(pred, obs)) == float(value)
