"""normalize_counts, scale_from_gain and gain_from_scale: raw counts and other conventions.

The laws: normalized amplitudes times the record's scale, squared, give back
the counts (to the rounding of the output dtype); the mean per-pattern
``sum(x**2)`` is ``(N/2)**2``; the record's nphotons is the measured mean
counts; ``s = gain ** -0.5`` and back. References are float64 / math.fsum,
written here, never the function under test called twice.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps

F64_EPS = float(np.finfo(np.float64).eps)
F32_EPS = float(np.finfo(np.float32).eps)


def fsum_mean_per_pattern(a: np.ndarray, axes: tuple[int, int]) -> float:
    """Mean over patterns of the per-pattern sum, in exact (fsum) arithmetic."""
    moved = np.moveaxis(np.asarray(a, dtype=np.float64), axes, (-2, -1))
    flat = moved.reshape(-1, moved.shape[-2] * moved.shape[-1])
    return math.fsum(math.fsum(row) for row in flat) / flat.shape[0]


def poisson_counts(shape: tuple[int, ...], mean: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(mean, size=shape)


# --------------------------------------------------------------------------- the round trip


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint32, np.float64])
def test_scale_times_x_squared_gives_back_the_counts_to_float64_rounding(dtype: type) -> None:
    counts = poisson_counts((6, 2, 24, 24), 40.0).astype(dtype)
    x, record = ps.normalize_counts(counts)
    assert isinstance(x, np.ndarray)
    assert x.dtype == np.float64
    back = (record.intensity_scale * x.astype(np.float64)) ** 2
    expected = counts.astype(np.float64)
    # sqrt, two products and a square: a few float64 roundings per pixel.
    np.testing.assert_allclose(back, expected, rtol=8 * F64_EPS, atol=0)
    assert np.all(back[expected == 0] == 0)


def test_float32_counts_give_float32_amplitudes_exact_to_float32_rounding() -> None:
    counts = poisson_counts((5, 1, 32, 32), 200.0).astype(np.float32)
    x, record = ps.normalize_counts(counts)
    assert x.dtype == np.float32
    back = (record.intensity_scale * x.astype(np.float64)) ** 2
    np.testing.assert_allclose(back, counts.astype(np.float64), rtol=4 * F32_EPS, atol=0)


@pytest.mark.parametrize(
    ("dtype", "out"),
    [
        (torch.int16, torch.float64),
        (torch.int64, torch.float64),
        (torch.uint8, torch.float64),
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
    ],
)
def test_torch_in_gives_torch_out_with_the_documented_dtype(
    dtype: torch.dtype, out: torch.dtype
) -> None:
    counts = torch.from_numpy(poisson_counts((4, 1, 8, 8), 20.0)).to(dtype)
    x, record = ps.normalize_counts(counts)
    assert isinstance(x, torch.Tensor)
    assert x.dtype == out
    assert x.shape == counts.shape
    back = (record.intensity_scale * x.double()) ** 2
    rtol = 8 * (F64_EPS if out == torch.float64 else F32_EPS)
    torch.testing.assert_close(back, counts.double(), rtol=rtol, atol=0)


def test_torch_counts_that_require_grad_are_read_not_differentiated() -> None:
    counts = torch.full((2, 1, 4, 4), 9.0, requires_grad=True)
    x, _ = ps.normalize_counts(counts)
    assert not x.requires_grad


# --------------------------------------------------------------------------- normalization


@pytest.mark.parametrize(("h", "w"), [(64, 64), (32, 48), (7, 5)])
def test_mean_per_pattern_sum_of_squares_is_the_pattern_area_over_four(h: int, w: int) -> None:
    counts = poisson_counts((9, h, w), 30.0, seed=h * w)
    x, record = ps.normalize_counts(counts)
    mean_sq = fsum_mean_per_pattern(x.astype(np.float64) ** 2, (-2, -1))
    assert mean_sq == pytest.approx(h * w / 4.0, rel=16 * F64_EPS)
    assert record.mean_intensity == pytest.approx(h * w / 4.0, rel=16 * F64_EPS)
    assert record.pattern_shape == (h, w)
    assert record.n_patterns == 9


def test_record_is_measured_derived_and_consistent() -> None:
    counts = poisson_counts((10, 1, 16, 16), 75.0)
    x, record = ps.normalize_counts(counts, data_source="scan 7")
    measured = math.fsum(counts.reshape(-1).tolist()) / 10
    assert record.nphotons == pytest.approx(measured, rel=F64_EPS)
    assert record.nphotons_source == "measured"
    assert record.nphotons_candidates == {"measured": record.nphotons}
    assert record.method == "derived"
    assert record.domain == "amplitude"
    assert record.data_source == "scan 7"
    assert record.intensity_scale == pytest.approx(
        math.sqrt(record.nphotons / record.mean_intensity), rel=F64_EPS
    )
    # The closed form of normalized data: s = sqrt(nphotons) / (N/2).
    assert record.intensity_scale == pytest.approx(math.sqrt(measured) / 8.0, rel=8 * F64_EPS)
    # ...and the core derives the same scale from x for the measured nphotons.
    derived = float(ps.derive_intensity_scale(x, record.nphotons))
    assert derived == pytest.approx(record.intensity_scale, rel=4 * F64_EPS)
    assert ps.ScaleRecord.model_validate_json(record.model_dump_json()) == record


def test_no_units_warning_when_the_scale_is_about_one() -> None:
    # Mean counts per pattern == (N/2)**2 makes s == 1, which derive would flag
    # as "already counts"; here the caller said they are counts, so no warning
    # (pytest turns UnitsWarning into an error).
    counts = np.zeros((3, 1, 8, 8), dtype=np.int64)
    counts[..., 0, :] = 2  # 16 counts per pattern
    _, record = ps.normalize_counts(counts)
    assert record.intensity_scale == pytest.approx(1.0, rel=4 * F64_EPS)


def test_nhwc_layout_uses_the_named_axes() -> None:
    counts_nchw = poisson_counts((4, 3, 16, 12), 25.0)
    counts_nhwc = np.moveaxis(counts_nchw, 1, -1)
    x_nchw, r_nchw = ps.normalize_counts(counts_nchw)
    x_nhwc, r_nhwc = ps.normalize_counts(counts_nhwc, layout="NHWC")
    assert r_nhwc.pattern_shape == (16, 12)
    assert r_nhwc.n_patterns == 12
    assert r_nhwc.intensity_scale == pytest.approx(r_nchw.intensity_scale, rel=4 * F64_EPS)
    np.testing.assert_allclose(np.moveaxis(x_nchw, 1, -1), x_nhwc, rtol=4 * F64_EPS)


# --------------------------------------------------------------------------- masks


def test_mask_excludes_sentinels_and_defines_nphotons_on_valid_pixels() -> None:
    counts = poisson_counts((6, 1, 16, 16), 50.0).astype(np.float64)
    valid = np.ones((16, 16), dtype=bool)
    valid[6:10, 6:10] = False  # a beamstop
    counts[..., 6, 6] = -1.0  # detector sentinels in excluded pixels
    counts[..., 7, 7] = np.nan
    counts[..., 8, 8] = np.inf
    x, record = ps.normalize_counts(counts, mask=valid)
    assert record.masked
    kept = np.where(valid, counts, 0.0)
    measured = fsum_mean_per_pattern(kept, (-2, -1))
    assert record.nphotons == pytest.approx(measured, rel=F64_EPS)
    assert np.isfinite(x).all()
    assert np.all(x[..., 6, 6] == 0) and np.all(x[..., 7, 7] == 0) and np.all(x[..., 8, 8] == 0)
    # Valid pixels round-trip; every excluded pixel is 0 (SPEC section 6: no
    # sentinel or masked value survives into data saved without its mask).
    back = (record.intensity_scale * x) ** 2
    full = np.broadcast_to(valid, counts.shape)
    np.testing.assert_allclose(back[full], counts[full], rtol=8 * F64_EPS, atol=0)
    assert np.all(x[~full] == 0)
    assert record.masked_pixel_fraction == pytest.approx(16 / 256)
    # Mean per-pattern sum(x**2) over the valid pixels is the normalization target.
    assert fsum_mean_per_pattern(np.where(valid, x, 0.0) ** 2, (-2, -1)) == pytest.approx(
        64.0, rel=16 * F64_EPS
    )


def test_a_masked_array_brings_its_own_mask() -> None:
    counts = poisson_counts((4, 1, 8, 8), 30.0)
    invalid = np.zeros(counts.shape, dtype=bool)
    invalid[..., 0, 0] = True
    data = counts.copy()
    data[..., 0, 0] = 10**6  # a hot pixel the mask hides
    x_ma, r_ma = ps.normalize_counts(np.ma.MaskedArray(data, mask=invalid))
    x_plain, r_plain = ps.normalize_counts(data, mask=~invalid)
    assert r_ma.nphotons == r_plain.nphotons
    assert r_ma.masked
    assert type(x_ma) is np.ndarray
    np.testing.assert_array_equal(x_ma, x_plain)


def test_a_masked_array_with_mask_too_is_refused() -> None:
    counts = np.ma.MaskedArray(poisson_counts((2, 1, 4, 4), 9.0))
    with pytest.raises(ps.errors.MaskError, match="mask one way"):
        ps.normalize_counts(counts, mask=np.ones((4, 4), dtype=bool))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (np.full((2, 1, 4, 4), -3), ps.errors.NegativeValueError, "counts holds negative"),
        (np.full((2, 1, 4, 4), np.nan), ps.errors.NonFiniteError, "counts holds"),
        (np.full((2, 1, 4, 4), np.inf), ps.errors.NonFiniteError, "counts holds"),
        (np.zeros((0, 1, 4, 4)), ps.errors.EmptyInputError, "no patterns"),
        (np.zeros((2, 1, 0, 4)), ps.errors.EmptyInputError, "no pixels"),
        (np.zeros((2, 1, 4, 4), dtype=np.int32), ps.errors.ZeroIntensityError, "zero"),
        (np.ones((2, 1, 4, 4), dtype=bool), ps.errors.DtypeError, "boolean"),
        (np.ones((2, 1, 4, 4), dtype=np.complex64), ps.errors.DtypeError, "complex"),
        (torch.ones((2, 1, 4, 4), dtype=torch.bool), ps.errors.DtypeError, "boolean"),
        ([[1.0, 2.0]], ps.errors.DtypeError, "list"),
    ],
)
def test_bad_counts_get_a_physscale_error(bad: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ps.normalize_counts(bad)  # type: ignore[type-var]


def test_bad_axes_and_layout_are_refused() -> None:
    counts = poisson_counts((2, 4, 4), 9.0)
    with pytest.raises(ps.errors.AxisError):
        ps.normalize_counts(counts, spatial_dims=(3, 4))
    with pytest.raises(ps.errors.OptionError):
        ps.normalize_counts(counts, layout="HWNC")


# --------------------------------------------------------------------------- laws


@given(
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    mean=st.floats(0.05, 1e5),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_and_normalization_hold_for_any_counts(
    lead: list[int], h: int, w: int, mean: float, seed: int
) -> None:
    counts = poisson_counts((*lead, h, w), mean, seed)
    counts.flat[0] += 1  # never all zero
    x, record = ps.normalize_counts(counts, spatial_dims=(-2, -1))
    back = (record.intensity_scale * x) ** 2
    np.testing.assert_allclose(back, counts.astype(np.float64), rtol=8 * F64_EPS, atol=0)
    assert fsum_mean_per_pattern(x**2, (-2, -1)) == pytest.approx(h * w / 4, rel=16 * F64_EPS)
    assert record.nphotons == pytest.approx(fsum_mean_per_pattern(counts, (-2, -1)), rel=F64_EPS)


def test_likelihood_on_normalized_data_equals_the_count_native_likelihood() -> None:
    # Normalized amplitudes with the record's scale, or counts with scale 1
    # (the count-native way): the same Poisson likelihood.
    rng = np.random.default_rng(3)
    rate = rng.uniform(5.0, 80.0, (4, 1, 16, 16))
    counts = rng.poisson(rate)
    x, record = ps.normalize_counts(counts)
    s = record.intensity_scale
    pred = torch.from_numpy(np.sqrt(rate) / s)  # the normalized amplitude of the rate
    normalized = ps.scaled_poisson_nll(pred, torch.from_numpy(x), record, form="exact")
    native = ps.scaled_poisson_nll(
        torch.from_numpy(rate),
        torch.from_numpy(counts.astype(np.float64)),
        1.0,
        domain="intensity",
        form="exact",
    )
    assert float(normalized) == pytest.approx(float(native), rel=1e-12)


@given(gain=st.floats(1e-150, 1e150))
def test_gain_and_scale_are_inverse_and_s_squared_times_gain_is_one(gain: float) -> None:
    s = ps.scale_from_gain(gain)
    assert s * s * gain == pytest.approx(1.0, rel=4 * F64_EPS)
    assert ps.gain_from_scale(s) == pytest.approx(gain, rel=4 * F64_EPS)


@given(scale=st.floats(1e-150, 1e150))
def test_scale_to_gain_and_back_is_the_identity(scale: float) -> None:
    assert ps.scale_from_gain(ps.gain_from_scale(scale)) == pytest.approx(scale, rel=4 * F64_EPS)


def test_gain_law_matches_the_poisson_model_y_equals_gain_times_poisson() -> None:
    # y = gain * Poisson(x / gain): the likelihood of the photons y / gain under
    # the rate x / gain is the scaled likelihood with s = gain ** -0.5.
    gain = 0.37
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.uniform(1.0, 9.0, (3, 1, 8, 8)))
    y = gain * torch.from_numpy(rng.poisson(x.numpy() / gain).astype(np.float64))
    ours = ps.scaled_poisson_nll(
        x, y, ps.scale_from_gain(gain), domain="intensity", form="exact", reduction="sum"
    )
    reference = -torch.distributions.Poisson(x / gain, validate_args=False).log_prob(y / gain).sum()
    assert float(ours) == pytest.approx(float(reference), rel=1e-12)


def test_gain_from_scale_reads_a_record() -> None:
    record = ps.closed_form_scale_record(1e6, 64)  # s = 1000 / 32
    assert ps.gain_from_scale(record) == pytest.approx((32 / 1000) ** 2, rel=F64_EPS)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (0.0, ps.errors.NegativeValueError),
        (-1.0, ps.errors.NegativeValueError),
        (math.nan, ps.errors.NonFiniteError),
        (math.inf, ps.errors.NonFiniteError),
        (True, ps.errors.DtypeError),
        ("2", ps.errors.DtypeError),
        (1j, ps.errors.DtypeError),
        (torch.ones(3), ps.errors.DtypeError),
    ],
)
def test_bad_gains_are_refused(bad: object, error: type) -> None:
    with pytest.raises(error, match="gain"):
        ps.scale_from_gain(bad)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (0.0, ps.errors.NegativeValueError),
        (math.nan, ps.errors.NonFiniteError),
        (1e-200, ps.errors.NonFiniteError),
    ],
)
def test_bad_scales_are_refused(bad: float, error: type) -> None:
    with pytest.raises(error, match="scale"):
        ps.gain_from_scale(bad)
