"""ps.infer_gain: the quantum g of data stored as g * whole counts (issue 20, slip 3)."""

from __future__ import annotations

import math
from functools import reduce

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.errors import DtypeError, NegativeValueError, NonFiniteError, NotCountsError


def _common_factor(k: np.ndarray) -> int:
    """The gcd of the nonzero counts: the data cannot tell g from g times it."""
    return reduce(math.gcd, (int(v) for v in np.unique(k[k > 0])))


@given(
    log_g=st.floats(-8.0, 8.0),
    log_mean=st.floats(-0.5, 4.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_gain_of_float64_poisson_counts_is_exact(log_g: float, log_mean: float, seed: int) -> None:
    g = 10.0**log_g
    k = np.random.default_rng(seed).poisson(10.0**log_mean, size=(3, 8, 8))
    if np.unique(k[k > 0]).size < 2:
        return  # one distinct value: no quantum to find (tested below)
    found = ps.infer_gain(g * k)
    assert found == pytest.approx(g * _common_factor(k), rel=1e-12)


@given(
    log_g=st.floats(-8.0, 8.0),
    log_mean=st.floats(0.5, 3.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_gain_of_float32_poisson_counts_is_exact_to_float32(
    log_g: float, log_mean: float, seed: int
) -> None:
    g = 10.0**log_g
    k = np.random.default_rng(seed).poisson(10.0**log_mean, size=(3, 8, 8))
    if np.unique(k[k > 0]).size < 4:
        return  # float32 rounding leaves two or three values too little evidence
    found = ps.infer_gain((g * k).astype(np.float32))
    assert found == pytest.approx(g * _common_factor(k), rel=1e-6)


@given(seed=st.integers(0, 2**32 - 1), span=st.floats(1e-3, 1e6))
def test_continuous_data_have_no_quantum(seed: int, span: float) -> None:
    x = np.random.default_rng(seed).random((2, 16, 16)) * span
    with pytest.raises(NotCountsError, match="no quantum"):
        ps.infer_gain(x)


def test_gain_recovers_the_counts_and_their_record() -> None:
    k = np.random.default_rng(3).poisson(20.0, size=(4, 1, 16, 16))
    y = torch.as_tensor(0.0123 * k)
    g = ps.infer_gain(y)
    assert g == pytest.approx(0.0123, rel=1e-14)
    assert torch.equal(torch.round(y / g), torch.as_tensor(k, dtype=torch.float64))
    _, record = ps.normalize_counts(y / g)
    assert record.nphotons_source == "measured"
    assert record.nphotons == pytest.approx(k.sum() / 4, rel=1e-12)


def test_integer_counts_have_gain_one() -> None:
    assert ps.infer_gain(np.array([[0, 1, 2], [5, 7, 3]])) == 1.0


@pytest.mark.parametrize(
    "data",
    [np.zeros((2, 4, 4)), np.full((2, 4, 4), 0.5)],
    ids=["all zero", "one value"],
)
def test_no_quantum_without_two_distinct_values(data: np.ndarray) -> None:
    with pytest.raises(NotCountsError):
        ps.infer_gain(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (np.array([1.0, -2.0]), NegativeValueError),
        (np.array([1.0, np.nan]), NonFiniteError),
        (np.array([1 + 1j]), DtypeError),
        ([1.0, 2.0], DtypeError),
    ],
)
def test_bad_input_is_refused(data: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        ps.infer_gain(data)  # type: ignore[type-var]
