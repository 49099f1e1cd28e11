"""derive_intensity_scale: the worked example, its laws, the closed form, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _reference import fsum_scale, rel
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.core import scale as core_scale
from physscale.core.kernels import eager

# Random nphotons can land on a scale near 1, which the units guard flags, and
# random masks can hide most of the intensity, which the mask guard flags; the
# guards have their own tests (test_units_guard.py, test_masks.py).
pytestmark = [
    pytest.mark.filterwarnings("ignore::physscale.errors.UnitsWarning"),
    pytest.mark.filterwarnings("ignore::physscale.errors.MaskWarning"),
    pytest.mark.usefixtures("kernel"),  # every test runs on each CPU path: native, BLAS, eager
]

NP_DTYPES = [np.float16, np.float32, np.float64]
TORCH_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@st.composite
def datasets(draw: st.DrawFn, max_pixels: int = 64) -> np.ndarray:
    """Non-negative float64 stacks: 1-4 leading axes, patterns 1x1 .. 64x64."""
    lead = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    h = draw(st.integers(1, max_pixels))
    w = draw(st.integers(1, max_pixels))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["uniform", "heavy", "sparse"]))
    rng = np.random.default_rng(seed)
    shape = (*lead, h, w)
    if kind == "uniform":
        x = rng.uniform(0.0, 3.0, shape)
    elif kind == "heavy":
        x = np.minimum(rng.lognormal(0.0, 2.5, shape), 3e4)  # fits float16
    else:
        x = rng.uniform(0.0, 1.0, shape) * (rng.uniform(size=shape) < 0.1)
    x.flat[0] = 0.5  # never all zero
    return x


def as_input(x64: np.ndarray, dtype: object, kind: str) -> object:
    if kind == "numpy":
        return x64.astype(dtype)
    return torch.from_numpy(x64).to(dtype)


def values_of(x: object) -> np.ndarray:
    """The float64 values the function actually sees (after dtype rounding)."""
    if isinstance(x, torch.Tensor):
        return x.double().numpy()
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------- worked example
def test_worked_example_two_2x2_patterns_of_ones_with_100_photons_give_5() -> None:
    x = torch.ones(2, 1, 2, 2)
    s = ps.derive_intensity_scale(x, 100)
    assert s.shape == ()
    assert s.dtype == torch.float64
    assert float(s) == 5.0


def test_result_is_0d_float64_on_the_input_device_for_every_dtype() -> None:
    for dtype in TORCH_DTYPES:
        s = ps.derive_intensity_scale(torch.full((3, 4, 4), 0.5, dtype=dtype), 16.0)
        assert s.shape == () and s.dtype == torch.float64 and s.device.type == "cpu"
        assert float(s) == pytest.approx(math.sqrt(16.0 / (16 * 0.25)), rel=1e-15)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_gives_a_cuda_result_equal_to_the_cpu_one() -> None:  # pragma: no cover
    x = torch.rand(8, 3, 32, 32, dtype=torch.float32)
    s_gpu = ps.derive_intensity_scale(x.cuda(), 1e6)
    assert s_gpu.device.type == "cuda"
    assert float(s_gpu) == pytest.approx(float(ps.derive_intensity_scale(x, 1e6)), rel=1e-12)


# ---------------------------------------------------------------- laws
@given(datasets(), st.sampled_from([*[("numpy", d) for d in NP_DTYPES],
                                     *[("torch", d) for d in TORCH_DTYPES]]),
       st.floats(1.0, 1e12))  # fmt: skip
def test_scale_matches_an_exactly_rounded_float64_reference_for_every_dtype(
    x64: np.ndarray, kind_dtype: tuple[str, object], nphotons: float
) -> None:
    kind, dtype = kind_dtype
    x = as_input(x64, dtype, kind)
    seen = values_of(x)
    if not (seen > 0).any():
        return  # dtype underflow flushed everything to zero
    got = float(ps.derive_intensity_scale(x, nphotons))
    # Squares of <= float32 values are exact in float64, so every dtype meets
    # the float64 bound (stricter than the 1e-7 the contract asks for float32).
    assert rel(got, fsum_scale(seen, nphotons, (seen.ndim - 2, seen.ndim - 1))) <= 1e-12


@given(datasets(), st.floats(1e-3, 1e3))
def test_scale_is_inverse_homogeneous_in_amplitude(x64: np.ndarray, c: float) -> None:
    # derive(c*x) == derive(x)/c for c > 0 (negative amplitudes are rejected).
    x = torch.from_numpy(x64)
    assert rel(float(ps.derive_intensity_scale(c * x, 1e6)),
               float(ps.derive_intensity_scale(x, 1e6)) / c) <= 1e-12  # fmt: skip


@given(datasets(), st.floats(1e-6, 1e6), st.floats(1.0, 1e9))
def test_scale_grows_as_the_square_root_of_nphotons(x64: np.ndarray, k: float, n: float) -> None:
    x = torch.from_numpy(x64)
    assert rel(float(ps.derive_intensity_scale(x, k * n)),
               math.sqrt(k) * float(ps.derive_intensity_scale(x, n))) <= 1e-12  # fmt: skip


@given(datasets(), st.integers(0, 2**32 - 1))
def test_scale_is_invariant_to_permuting_patterns(x64: np.ndarray, seed: int) -> None:
    flat = x64.reshape(-1, *x64.shape[-2:])
    perm = np.random.default_rng(seed).permutation(flat.shape[0])
    # Named axes: flattening can make a stack look channels-last (the layout guard).
    a = float(ps.derive_intensity_scale(flat, 1e4, layout="NCHW"))
    b = float(ps.derive_intensity_scale(flat[perm], 1e4, layout="NCHW"))
    assert rel(a, b) <= 1e-12


@given(datasets())
def test_nchw_and_nhwc_layouts_agree_strided_and_contiguous(x64: np.ndarray) -> None:
    nchw = torch.from_numpy(x64)
    n = nchw.ndim
    order = (*range(n - 3), n - 2, n - 1, n - 3) if n >= 3 else None
    if order is None:
        return
    nhwc_view = nchw.permute(*order)  # a strided view: exercises non-contiguous input
    expected = float(ps.derive_intensity_scale(nchw, 1e5, layout="NCHW"))
    for nhwc in (nhwc_view, nhwc_view.contiguous()):
        assert rel(float(ps.derive_intensity_scale(nhwc, 1e5, layout="NHWC")), expected) <= 1e-12
        assert rel(float(ps.derive_intensity_scale(nhwc, 1e5, spatial_dims=(-3, -2))),
                   expected) <= 1e-12  # fmt: skip


def test_small_patterns_are_not_mistaken_for_channels() -> None:
    # The PyTorch port guessed the channel axis as the smallest non-batch
    # axis; with 2x2 patterns and 9 channels that guess is wrong.
    x = torch.rand(5, 9, 2, 2, dtype=torch.float64)
    got = float(ps.derive_intensity_scale(x, 1e3))
    assert rel(got, fsum_scale(x.numpy(), 1e3, (2, 3))) <= 1e-12
    per_channel_guess = fsum_scale(x.numpy(), 1e3, (1,))
    assert rel(got, per_channel_guess) > 1e-3


@given(datasets(), st.integers(1, 64))
def test_blocked_reduction_is_invariant_to_block_size(x64: np.ndarray, block: int) -> None:
    x = torch.from_numpy(x64).to(torch.float32)
    expected = fsum_scale(x.double().numpy(), 1e6, (x.ndim - 2, x.ndim - 1))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(eager, "BLOCK_NUMEL", block)
        got = float(ps.derive_intensity_scale(x, 1e6))
    assert rel(got, expected) <= 1e-12


def test_inputs_larger_than_one_block_and_rows_larger_than_one_block() -> None:
    rng = np.random.default_rng(0)
    for shape in [(3, 700, 1000), (2, 1100, 1000)]:  # 2nd: each leading slice > one block
        x = rng.uniform(0, 2, shape).astype(np.float32)
        expected = fsum_scale(x, 1e9, (1, 2))
        assert rel(float(ps.derive_intensity_scale(x, 1e9)), expected) <= 1e-12


@given(datasets(), st.integers(0, 3), st.integers(0, 3))
def test_masked_pixels_behave_as_if_cropped(x64: np.ndarray, top: int, left: int) -> None:
    h, w = x64.shape[-2:]
    if top >= h or left >= w:
        return
    cropped = x64[..., top:, left:]
    if not (cropped > 0).any():
        return
    mask = np.zeros((h, w), dtype=bool)
    mask[top:, left:] = True
    masked = float(ps.derive_intensity_scale(x64, 1e6, mask=mask))
    assert rel(masked, float(ps.derive_intensity_scale(cropped, 1e6))) <= 1e-12


def test_masked_pixels_ignore_nan_and_negative_values_there() -> None:
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64) + 0.1
    dirty = x.clone()
    dirty[..., 0, 0] = float("nan")
    dirty[..., 1, 1] = -5.0
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = False
    clean = x.clone()
    clean[..., 0, 0] = clean[..., 1, 1] = 0.0
    assert float(ps.derive_intensity_scale(dirty, 1e3, mask=mask)) == pytest.approx(
        float(ps.derive_intensity_scale(clean, 1e3)), rel=1e-14
    )


@given(datasets(), st.floats(1.0, 1e12))
def test_intensity_domain_sums_values_not_squares(x64: np.ndarray, n: float) -> None:
    got = float(ps.derive_intensity_scale(x64, n, domain="intensity"))
    assert rel(got, fsum_scale(x64, n, (x64.ndim - 2, x64.ndim - 1), "intensity")) <= 1e-12
    # and the amplitude domain on sqrt(I) is the same physics
    amp = float(ps.derive_intensity_scale(np.sqrt(x64), n))
    assert rel(got, amp) <= 1e-12


def test_a_single_2d_pattern_counts_as_one_pattern() -> None:
    x = np.full((4, 4), 0.5)
    assert float(ps.derive_intensity_scale(x, 4.0)) == pytest.approx(1.0, rel=1e-15)


def test_gradients_do_not_flow_and_input_is_not_modified() -> None:
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    before = x.detach().clone()
    s = ps.derive_intensity_scale(x, 10.0)
    assert not s.requires_grad
    assert torch.equal(x.detach(), before)


def test_read_only_numpy_memory_maps_are_accepted(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "x.npy"
    np.save(path, np.full((3, 8, 8), 0.25, dtype=">f4"))  # big-endian on disk
    x = np.load(path, mmap_mode="r")
    assert float(ps.derive_intensity_scale(x, 4.0)) == pytest.approx(1.0, rel=1e-15)  # sum x**2 = 4


# ---------------------------------------------------------------- normalization
@given(datasets(), st.floats(1.0, 1e12))
def test_closed_form_equals_derived_scale_after_amplitude_normalization(
    x64: np.ndarray, nphotons: float
) -> None:
    h, w = x64.shape[-2:]
    x, factor = ps.normalize_amplitudes(x64)
    assert factor > 0
    mean_sum = math.fsum((x.ravel() ** 2).tolist()) / (x.size / (h * w))
    assert rel(mean_sum, h * w / 4) <= 1e-12  # (N/2)**2 for square patterns
    derived = float(ps.derive_intensity_scale(x, nphotons))
    assert rel(derived, ps.closed_form_intensity_scale(nphotons, (h, w))) <= 1e-12


def test_normalization_target_is_half_side_squared_not_side_squared() -> None:
    # SPEC failure mode 6: (N/2)**2, not N**2.
    assert core_scale.normalization_target((64, 64)) == 32.0**2
    assert ps.closed_form_intensity_scale(1e6, 64) == pytest.approx(1e3 / 32, rel=1e-15)


def test_normalize_amplitudes_keeps_array_type_and_dtype() -> None:
    raw = np.random.default_rng(1).uniform(0, 30, (5, 16, 16)).astype(np.float32)
    x, factor = ps.normalize_amplitudes(raw)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    t, factor_t = ps.normalize_amplitudes(torch.from_numpy(raw))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert factor == factor_t
    ref = math.sqrt(64.0 / (math.fsum((raw.astype(np.float64).ravel() ** 2).tolist()) / 5))
    assert rel(float(ps.amplitude_normalization_factor(raw)), ref) <= 1e-12


# ---------------------------------------------------------------- bad input
def _x() -> torch.Tensor:
    return torch.rand(2, 1, 4, 4) + 0.1


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.empty(0, 1, 4, 4), ps.errors.EmptyInputError, "empty"),
        (np.zeros((3, 0, 4)), ps.errors.EmptyInputError, "empty"),
        (torch.tensor([[[1.0, float("nan")]]]), ps.errors.NonFiniteError, "1 NaN"),
        (torch.tensor([[[1.0, float("inf")]]]), ps.errors.NonFiniteError, "infinite"),
        (np.array([[[1.0, -0.5]]]), ps.errors.NegativeValueError, "negative amplitudes"),
        (torch.zeros(2, 1, 4, 4), ps.errors.ZeroIntensityError, "zero"),
        (torch.ones(2, 4, 4, dtype=torch.complex64), ps.errors.DtypeError, "complex64"),
        (np.ones((2, 4, 4), dtype=np.int32), ps.errors.DtypeError, "int32"),
        (torch.ones(2, 4, 4, dtype=torch.int64), ps.errors.DtypeError, "int64"),
        (torch.ones(2, 4, 4, dtype=torch.bool), ps.errors.DtypeError, "bool"),
        (np.ones((2, 4, 4), dtype=bool), ps.errors.DtypeError, "bool"),
        ([[1.0, 2.0]], ps.errors.DtypeError, "list"),
        (np.array([["a"]]), ps.errors.DtypeError, "<U1"),
        (torch.ones(2, 4, 4).to_sparse(), ps.errors.DtypeError, "dense tensor.*sparse_coo"),
    ],
)
def test_bad_data_raises_a_specific_error(x: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ps.derive_intensity_scale(x, 1e6)


@pytest.mark.parametrize(
    ("x", "hint", "not_hint"),
    [
        # Reported: complex input was told to "convert integer counts".
        (torch.ones(2, 4, 4, dtype=torch.complex64), "magnitude", "integer"),
        (np.ones((2, 4, 4), dtype=np.complex128), "abs", "integer"),
        # Reported: integer counts were told x.float(), which gives raw counts.
        (np.ones((2, 4, 4), dtype=np.uint16), "physscale.normalize_counts", "float()"),
        (torch.ones(2, 4, 4, dtype=torch.int32), "raw detector counts", "float()"),
        (torch.ones(2, 4, 4, dtype=torch.bool), "mask=", "counts"),
    ],
)
def test_dtype_errors_give_the_hint_that_fits_the_dtype(
    x: object, hint: str, not_hint: str
) -> None:
    with pytest.raises(ps.errors.DtypeError) as info:
        ps.derive_intensity_scale(x, 1e6)
    assert hint in str(info.value) and not_hint not in str(info.value)


def test_meta_device_input_is_a_clear_error() -> None:
    with pytest.raises(ps.errors.DtypeError, match="meta device"):
        ps.derive_intensity_scale(torch.ones(2, 4, 4, device="meta"), 1e6)


def test_numpy_negative_stride_on_a_length_1_axis_is_read_correctly() -> None:
    # Reported: torch's ValueError (numpy calls such an array contiguous).
    base = np.random.default_rng(0).random((1, 3, 5, 5))
    flipped = base[::-1]  # stride -600 on the length-1 axis; numpy still says C-contiguous
    assert flipped.strides[0] < 0 and flipped.flags["C_CONTIGUOUS"]
    got = float(ps.derive_intensity_scale(flipped, 1e4))
    assert rel(got, fsum_scale(base, 1e4, (2, 3))) <= 1e-12


def test_error_classes_are_also_builtin_value_and_type_errors() -> None:
    with pytest.raises(ValueError, match="zero"):
        ps.derive_intensity_scale(torch.zeros(1, 2, 2), 1.0)
    with pytest.raises(TypeError, match="int32"):
        ps.derive_intensity_scale(torch.ones(1, 2, 2, dtype=torch.int32), 1.0)


def test_overflowing_float64_amplitudes_are_reported_not_returned_as_zero_scale() -> None:
    with pytest.raises(ps.errors.NonFiniteError, match="overflows float64"):
        ps.derive_intensity_scale(np.full((1, 2, 2), 1e200), 1.0)


def test_negative_intensities_name_the_domain() -> None:
    with pytest.raises(ps.errors.NegativeValueError, match="negative intensities"):
        ps.derive_intensity_scale(np.array([[[1.0, -1.0]]]), 1.0, domain="intensity")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"spatial_dims": (-2, 5)}, ps.errors.AxisError, "out of range"),
        ({"spatial_dims": (1, 1)}, ps.errors.AxisError, "same axis twice"),
        ({"spatial_dims": (-1, 3)}, ps.errors.AxisError, "same axis twice"),
        ({"spatial_dims": ()}, ps.errors.AxisError, "at least one axis"),
        ({"spatial_dims": -1}, ps.errors.AxisError, "sequence of axis indices"),
        ({"spatial_dims": (1.0, 2)}, ps.errors.AxisError, "integers"),
        ({"layout": "NWHC"}, ps.errors.OptionError, "layout must be one of 'NCHW', 'NHWC'"),
        ({"layout": "NHWC", "spatial_dims": (1, 2, 3)}, ps.errors.AxisError, "contradicts"),
        ({"domain": "counts"}, ps.errors.OptionError, "domain must be one of"),
        ({"mask": np.ones((3, 3), dtype=bool)}, ps.errors.MaskError, "does not fit the data"),
        ({"mask": np.ones((4, 4))}, ps.errors.MaskError, "must be boolean"),
        ({"mask": torch.ones(4, 4, dtype=torch.uint8)}, ps.errors.MaskError, "must be boolean"),
        ({"mask": [[True]]}, ps.errors.MaskError, "torch.Tensor or numpy.ndarray"),
    ],
)
def test_bad_options_raise_a_specific_error(
    kwargs: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        ps.derive_intensity_scale(_x(), 1e6, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("nphotons", "match"),
    [
        (0, "got 0.0"),
        (-1.0, "got -1.0"),
        (float("nan"), "got nan"),
        (float("inf"), "got inf"),
        (True, "boolean"),
        ("lots", "string 'lots'"),
        (1 + 2j, "complex"),
        (None, "NoneType"),
        ([1e6], "list"),
        (np.array([1.0, 2.0]), "single number"),
    ],
)
def test_bad_nphotons_raises_nphotons_error(nphotons: object, match: str) -> None:
    with pytest.raises(ps.errors.NphotonsError, match=match):
        ps.derive_intensity_scale(_x(), nphotons)


def test_nphotons_accepts_numpy_and_tensor_scalars() -> None:
    x = torch.full((2, 4, 4), 0.5)
    for n in (np.float32(16.0), np.int64(16), torch.tensor(16.0), np.array(16.0)):
        assert float(ps.derive_intensity_scale(x, n)) == pytest.approx(2.0, rel=1e-7)


# ---------------------------------------------------------------- review fixes
def test_numpy_views_with_negative_strides_are_accepted() -> None:
    x = np.random.default_rng(7).uniform(0, 1, (6, 5, 5))
    flipped = x[::-1, :, ::-1]
    assert rel(float(ps.derive_intensity_scale(flipped, 1e5)), fsum_scale(x, 1e5, (1, 2))) <= 1e-12


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize == 8, reason="longdouble is float64 here")
def test_extended_precision_numpy_is_a_dtype_error() -> None:
    with pytest.raises(ps.errors.DtypeError, match=r"longdouble|float128|float96"):
        ps.derive_intensity_scale(np.ones((2, 3, 3), dtype=np.longdouble), 1e6)


def test_an_integer_nphotons_beyond_the_float_range_is_an_nphotons_error() -> None:
    with pytest.raises(ps.errors.NphotonsError, match="positive finite"):
        ps.derive_intensity_scale(_x(), 10**400)


def test_explicit_spatial_dims_contradicting_the_layout_are_an_error() -> None:
    # (-2, -1) passed explicitly is not the default: with layout="NHWC" it contradicts.
    with pytest.raises(ps.errors.AxisError, match="contradicts"):
        ps.derive_intensity_scale(_x(), 1e6, layout="NHWC", spatial_dims=(-2, -1))
    ps.derive_intensity_scale(_x(), 1e6, layout="NCHW", spatial_dims=(-2, -1))  # consistent


def test_errors_from_derive_name_the_argument_x() -> None:
    with pytest.raises(ps.errors.NonFiniteError, match=r"^x holds 1 NaN"):
        ps.derive_intensity_scale(torch.tensor([[[1.0, float("nan")]]]), 1.0)


def test_normalizing_float16_numpy_data_is_not_biased_by_a_rounded_factor() -> None:
    raw = np.random.default_rng(8).uniform(0, 40, (64, 32, 32)).astype(np.float16)
    x, _ = ps.normalize_amplitudes(raw)
    assert x.dtype == np.float16
    derived = float(ps.derive_intensity_scale(x, 1e9))
    # Only per-element float16 rounding remains, which averages out; a factor
    # rounded to float16 would bias the scale by up to ~5e-4.
    assert rel(derived, ps.closed_form_intensity_scale(1e9, 32)) <= 5e-5


def test_closed_form_accepts_numpy_integers_and_rejects_bools() -> None:
    assert ps.closed_form_intensity_scale(1e6, np.int64(64)) == pytest.approx(31.25, rel=1e-15)
    assert ps.closed_form_intensity_scale(1e6, (np.int32(64), 64)) == pytest.approx(31.25)
    with pytest.raises(ps.errors.AxisError, match="boolean"):
        ps.closed_form_intensity_scale(1e6, True)
    with pytest.raises(ps.errors.AxisError, match="sequence of sizes"):
        ps.closed_form_intensity_scale(1e6, 64.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the formula, by name
@given(
    st.floats(1e-300, 1e300),
    st.integers(1, 2**53),
    st.floats(1e-300, 1e300),
)
def test_scale_from_totals_is_the_root_of_target_over_the_mean(
    total: float, n: int, target: float
) -> None:
    # The mean first, then the root (0.2.0's rounding), in float64.
    expected = math.sqrt(target / (total / n))
    if math.isfinite(expected):
        assert core_scale.scale_from_totals(total, n, target) == expected
    else:
        with pytest.raises(ps.errors.ZeroIntensityError, match="too small for a finite scale"):
            core_scale.scale_from_totals(total, n, target)


def test_scale_from_totals_refuses_no_patterns_and_zero_intensity() -> None:
    with pytest.raises(ps.errors.EmptyInputError, match="n_patterns is 0"):
        core_scale.scale_from_totals(1.0, 0, 1.0)
    with pytest.raises(ps.errors.ZeroIntensityError, match="all 3 pattern"):
        core_scale.scale_from_totals(0.0, 3, 1.0)


def test_derive_and_the_accumulator_give_the_bits_of_scale_from_totals() -> None:
    x = np.random.default_rng(3).lognormal(0.0, 1.0, (7, 2, 9, 5))
    acc = ps.IntensityAccumulator().update(x)
    expected = core_scale.scale_from_totals(acc.total_intensity, acc.n_patterns, 1e6)
    assert acc.scale_for(1e6) == expected
    assert float(acc.intensity_scale(1e6)) == expected
    assert float(ps.derive_intensity_scale(x, 1e6)) == expected
    target = core_scale.normalization_target((9, 5))
    factor = core_scale.scale_from_totals(acc.total_intensity, acc.n_patterns, target)
    assert float(ps.amplitude_normalization_factor(x)) == factor


def test_the_closed_form_is_scale_from_totals_of_the_normalization_target() -> None:
    for shape in [(64, 64), (32, 48), (1, 1)]:
        target = core_scale.normalization_target(shape)
        # On normalized data the mean is the target: n patterns of total n * target.
        from_totals = core_scale.scale_from_totals(5 * target, 5, 1e6)
        assert rel(core_scale.closed_form_intensity_scale(1e6, shape), from_totals) <= 1e-15
