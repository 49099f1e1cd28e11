"""The slips that gave a plausible wrong number with no word (issue 20 item 3; issue 21 item 4).

Swapped loss arguments, non-whole data into ``normalize_counts``, and the one
next step every message about counts gives.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.core.checks import COUNTS_NEXT_STEP_CLI, counts_next_step
from physscale.errors import ArgumentOrderError, DtypeError, NotCountsError

SHAPE = (4, 1, 16, 16)


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(SHAPE, generator=gen) + 0.1, torch.rand(SHAPE, generator=gen) + 0.1


# --------------------------------------------------------------------------- argument order


@pytest.mark.parametrize("as_module", [False, True])
def test_swapped_arguments_are_refused(as_module: bool) -> None:
    simulated, measured = _pair()
    simulated.requires_grad_(True)
    loss = ps.ScaledPoissonNLLLoss(scale=30.0) if as_module else ps.scaled_poisson_nll
    # cdtools' order: loss(measured, simulated).
    with pytest.raises(ArgumentOrderError, match=r"scaled_poisson_nll\(pred, obs"):
        loss(measured, simulated, 30.0) if not as_module else loss(measured, simulated)


def test_swapped_arguments_are_refused_with_checks_off() -> None:
    simulated, measured = _pair()
    simulated.requires_grad_(True)
    with ps.validation(False), pytest.raises(ArgumentOrderError):
        ps.scaled_poisson_nll(measured, simulated, 30.0)


def test_swapped_arguments_error_is_a_type_error() -> None:
    assert issubclass(ArgumentOrderError, TypeError)
    assert issubclass(ArgumentOrderError, ps.PhysscaleError)


@pytest.mark.parametrize(
    ("pred_grad", "obs_grad", "grad_mode"),
    [
        (True, False, True),  # training
        (False, False, True),  # evaluation without no_grad
        (True, True, True),  # both: no tell
        (False, True, False),  # under no_grad no gradient flows: no tell
    ],
)
def test_legitimate_calls_never_fire(pred_grad: bool, obs_grad: bool, grad_mode: bool) -> None:
    pred, obs = _pair()
    pred.requires_grad_(pred_grad)
    obs.requires_grad_(obs_grad)
    with torch.set_grad_enabled(grad_mode):
        value = ps.scaled_poisson_nll(pred, obs, 30.0)
    assert torch.isfinite(value)


# --------------------------------------------------------------------------- non-whole counts


def test_normalize_counts_refuses_normalized_data() -> None:
    x = np.random.default_rng(0).random(SHAPE)  # max_at_one-like normalized intensities
    with pytest.raises(NotCountsError, match="not whole photon counts"):
        ps.normalize_counts(x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_normalize_counts_names_the_gain_of_gain_times_counts(dtype: type) -> None:
    k = np.random.default_rng(1).poisson(30.0, size=SHAPE)
    y = (0.37 * k).astype(dtype)
    with pytest.raises(NotCountsError, match=r"whole multiples of 0\.3[67]\d*.*infer_gain"):
        ps.normalize_counts(y)
    g = ps.infer_gain(y)
    _, record = ps.normalize_counts(np.rint(y / g))
    assert record.nphotons_source == "measured"


def test_normalize_counts_refuses_values_below_one_count() -> None:
    # Every value is within 1e-4 of 0, but a nonzero count is at least 1.
    x = np.full(SHAPE, 3e-5)
    with pytest.raises(NotCountsError):
        ps.normalize_counts(x)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_whole_float_counts_pass(dtype: type) -> None:
    k = np.random.default_rng(2).poisson(3.0, size=SHAPE).astype(dtype)
    _, record = ps.normalize_counts(k)
    assert record.nphotons_source == "measured"


def test_masked_pixels_need_not_be_whole() -> None:
    k = np.random.default_rng(2).poisson(3.0, size=SHAPE).astype(np.float64)
    k[..., 0, 0] = 0.25
    mask = np.ones(SHAPE[-2:], dtype=bool)
    mask[0, 0] = False
    _, record = ps.normalize_counts(k, mask=mask)
    assert record.nphotons_source == "measured"


# --------------------------------------------------------------------------- one voice


def test_the_next_step_names_normalize_counts_and_the_command() -> None:
    assert "physscale.normalize_counts(counts)" in counts_next_step()
    cli = counts_next_step(COUNTS_NEXT_STEP_CLI)
    assert "`physscale normalize`" in cli
    assert cli.replace("`physscale normalize`", "") == counts_next_step().replace(
        "physscale.normalize_counts(counts)", ""
    )


def test_derive_integer_error_gives_the_next_step() -> None:
    counts = torch.randint(0, 50, SHAPE)
    with pytest.raises(DtypeError) as info:
        ps.derive_intensity_scale(counts, nphotons=1e4)
    assert counts_next_step() in str(info.value)


def test_derive_units_warning_gives_the_next_step() -> None:
    counts = torch.poisson(torch.full(SHAPE, 50.0)).sqrt()  # float counts as amplitudes
    with pytest.warns(ps.UnitsWarning) as record:
        ps.derive_intensity_scale(counts, nphotons=1e4)
    assert any(counts_next_step() in str(w.message) for w in record)
    assert not any("normalize_amplitudes" in str(w.message) for w in record)


def test_loss_integer_error_and_units_warning_give_the_next_step() -> None:
    pred = torch.rand(SHAPE, requires_grad=True)
    with pytest.raises(DtypeError) as info:
        ps.scaled_poisson_nll(pred, torch.randint(0, 50, SHAPE), 30.0)
    assert counts_next_step() in str(info.value)
    counts = torch.poisson(torch.full(SHAPE, 50.0)).sqrt()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ps.scaled_poisson_nll(pred, counts, 0.37)
    units = [w for w in caught if issubclass(w.category, ps.UnitsWarning)]
    assert units and counts_next_step() in str(units[0].message)


# --------------------------------------------------------------------------- intensities


def _max_at_one(seed: int = 0) -> np.ndarray:
    """PtyRAD's normalization: float32 counts over the mean pattern's maximum."""
    rate = np.linspace(0.2, 40.0, 256).reshape(16, 16)
    k = np.random.default_rng(seed).poisson(rate, size=SHAPE).astype(np.float32)
    return k / np.float32(k.mean(axis=0).max())


def test_derive_warns_on_max_at_one_intensities_in_the_amplitude_domain() -> None:
    intensities = _max_at_one()
    with pytest.warns(ps.UnitsWarning, match=r"look like intensities.*domain='intensity'"):
        ps.derive_intensity_scale(intensities, nphotons=1e4)
    with pytest.warns(ps.UnitsWarning, match="look like intensities"):
        ps.derive_scale_record(intensities, nphotons=1e4)
    ps.derive_intensity_scale(intensities, nphotons=1e4, domain="intensity")  # quiet


def test_loss_warns_on_max_at_one_intensities_in_the_amplitude_domain() -> None:
    obs = torch.as_tensor(_max_at_one())
    pred = torch.rand(SHAPE, requires_grad=True)
    with pytest.warns(ps.UnitsWarning, match="obs look like intensities"):
        ps.scaled_poisson_nll(pred, obs, 3.0)
    ps.scaled_poisson_nll(pred, obs, 3.0, domain="intensity")  # quiet


def test_counts_as_intensities_in_the_amplitude_domain_get_the_counts_warning() -> None:
    # cdtools' measured intensities are counts: the counts warning, and only it.
    k = torch.poisson(torch.full(SHAPE, 20.0))
    pred = torch.rand(SHAPE, requires_grad=True)
    for call in (
        lambda: ps.derive_intensity_scale(k, nphotons=1e4),
        lambda: ps.scaled_poisson_nll(pred, k, 3.0),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        messages = [str(w.message) for w in caught if issubclass(w.category, ps.UnitsWarning)]
        assert len(messages) == 1
        assert "raw photon counts" in messages[0]


@given(
    seed=st.integers(0, 2**32 - 1),
    log_mean=st.floats(-0.3, 4.0),
    continuous=st.booleans(),
    log_factor=st.sampled_from([0.0, -2.5, 1.7]),
)
def test_the_intensity_rule_never_fires_on_ptychopinn_amplitudes(
    seed: int, log_mean: float, continuous: bool, log_factor: float
) -> None:
    # PtychoPINN-normalized (derive exempts those outright), and rescaled (it does not).
    rng = np.random.default_rng(seed)
    if continuous:
        raw = rng.random(SHAPE) * 10.0**log_mean
        x, _ = ps.normalize_amplitudes(raw)
    else:
        k = rng.poisson(10.0**log_mean, size=SHAPE)
        if not k.any():
            return
        x, _ = ps.normalize_counts(k)
    x = x * 10.0**log_factor
    pred = torch.rand(SHAPE, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.UnitsWarning)
        ps.derive_intensity_scale(x, nphotons=1e4)
        ps.scaled_poisson_nll(pred, torch.as_tensor(x), 30.0)


def test_the_integer_error_speaks_the_command_lines_words() -> None:
    with pytest.raises(DtypeError) as info:
        ps.derive_intensity_scale(np.zeros((2, 8, 8), dtype=np.int32), nphotons=1e4)
    wording = info.value.wording
    assert wording is not None
    assert wording.render() == str(info.value)
    assert counts_next_step(COUNTS_NEXT_STEP_CLI) in wording.render(COUNTS_NEXT_STEP_CLI)
