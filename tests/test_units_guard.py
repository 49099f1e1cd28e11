"""The units guard: data that look like raw counts raise UnitsWarning (SPEC failure mode 4)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import physscale as ps


def counts(seed: int = 0, dose: float = 200.0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(dose, (16, 1, 32, 32)).astype(np.float32)


def test_amplitudes_that_are_square_roots_of_counts_warn() -> None:
    x = np.sqrt(counts())
    with pytest.warns(ps.UnitsWarning, match="raw photon counts"):
        ps.derive_intensity_scale(x, 1e9)


def test_intensities_that_are_whole_counts_warn() -> None:
    with pytest.warns(ps.UnitsWarning, match="whole numbers"):
        ps.derive_intensity_scale(counts(), 1e9, domain="intensity")


def test_a_scale_of_about_one_warns() -> None:
    x = np.random.default_rng(1).uniform(0.1, 1.0, (8, 16, 16))
    nphotons = float((x.astype(np.float64) ** 2).sum() / 8) * 1.01  # mean dose ~ nphotons
    with pytest.warns(ps.UnitsWarning, match="about 1"):
        ps.derive_intensity_scale(x, nphotons)


def test_normalized_data_do_not_warn() -> None:
    raw = np.sqrt(counts(2))
    x, _ = ps.normalize_amplitudes(raw)  # normalizing raw counts must not warn either
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.UnitsWarning)
        ps.derive_intensity_scale(x, 1e9)
        ps.derive_intensity_scale(torch.ones(2, 1, 2, 2), 100)  # a toy, not counts


def test_the_warning_can_be_escalated_or_silenced() -> None:
    x = np.sqrt(counts(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.UnitsWarning)
        with pytest.raises(ps.UnitsWarning):
            ps.derive_intensity_scale(x, 1e9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.UnitsWarning)
        ps.derive_intensity_scale(x, 1e9)


def test_the_guard_follows_the_accumulated_state() -> None:
    acc = ps.IntensityAccumulator().update(np.sqrt(counts(4)))
    assert acc.integer_like is True
    acc.update(np.random.default_rng(5).uniform(0, 1, (4, 1, 32, 32)))
    assert acc.integer_like is False  # mixed data are not flagged as counts
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.UnitsWarning)
        acc.intensity_scale(1e9)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_bright_amplitudes_that_are_not_whole_counts_do_not_warn(dtype: type) -> None:
    # Any squared amplitude above ~5e4 passed the old tolerance (1e-4 + 1e-5 * v):
    # derive and the loss said "whole numbers" of 335.83**2 = 112781.1 (found by the
    # parity suite; float16 by the derive_files order test). A few roundings of the
    # input's dtype are the tolerance now, and values the dtype cannot resolve to
    # an integer are no evidence.
    x = np.random.default_rng(3).uniform(300.0, 900.0, (8, 1, 16, 16)).astype(dtype)
    ps.derive_intensity_scale(x, 1e9, layout="NCHW")  # UnitsWarning is an error here
    obs = torch.from_numpy(x)
    ps.scaled_poisson_nll(obs * 0.9, obs, 10.0**0.25)


@pytest.mark.parametrize("dose", [2e3, 2e5])  # float32 resolves whole squares to ~5e5
def test_bright_raw_counts_still_warn_as_amplitudes_and_intensities(dose: float) -> None:
    k = counts(seed=4, dose=dose)
    with pytest.warns(ps.UnitsWarning, match="raw photon counts"):
        ps.derive_intensity_scale(np.sqrt(k), 1e9)
    with pytest.warns(ps.UnitsWarning, match="whole numbers"):
        ps.derive_intensity_scale(k, 1e9, domain="intensity")
    # The loss too: a count scale of 1.7 makes counts float32 cannot call whole at
    # this brightness, so they no longer pass for a deliberate whole-count scale.
    obs = torch.from_numpy(np.sqrt(k))
    with pytest.warns(ps.UnitsWarning, match="raw photon counts"):
        ps.scaled_poisson_nll(obs * 0.9, obs, 1.7)
