"""The BLAS path (physscale.core.kernels.blas): sums exact to rounding without the native kernel."""

from __future__ import annotations

import math

import pytest
import torch
from _reference import rel
from hypothesis import given
from hypothesis import strategies as st

from physscale.core.kernels import blas, eager, native, sums
from physscale.errors import NegativeValueError, NonFiniteError

ROW = 4096  # blas.ROW, spelled out: the row sums are what the tests aim at


def fsum_reference(x: torch.Tensor, square: bool) -> float:
    v = x.detach().double().reshape(-1)
    return math.fsum((v * v if square else v).tolist())


def reduce(x: torch.Tensor, square: bool, n_threads: int = 1) -> tuple[float, float]:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(native, "thread_count", lambda numel: n_threads)
        result = blas.reduce_dense(x, square=square)
    assert result is not None
    partials, minimum = result
    return math.fsum(partials), minimum


@st.composite
def flat_arrays(draw: st.DrawFn) -> torch.Tensor:
    """1-D float32/float64 arrays around the row and block sizes, at any element offset."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n = draw(
        st.one_of(
            st.integers(1, 100),  # all tail
            st.integers(ROW - 40, ROW + 40),  # around one row
            st.integers(1, 3 * ROW + 100),
        )
    )
    offset = draw(st.integers(0, 7))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-20, 1e-3, 1.0, 1e3, 1e20]))
    base = torch.rand(offset + n, generator=gen, dtype=torch.float64) * scale
    return base.to(dtype)[offset:]


@given(flat_arrays(), st.booleans(), st.integers(1, 4))
def test_the_blas_sum_matches_fsum_at_any_length_alignment_and_thread_count(
    x: torch.Tensor, square: bool, n_threads: int
) -> None:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(blas, "BLOCK_NUMEL", ROW)  # several blocks and items even for small x
        m.setattr(blas, "ITEM_NUMEL", 2 * ROW)
        total, minimum = reduce(x, square, n_threads)
    expected = fsum_reference(x, square)
    assert total == expected if expected == 0 else rel(total, expected) <= 1e-14
    assert minimum == float(x.min())


def test_the_result_does_not_depend_on_the_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "BLOCK_NUMEL", ROW)
    monkeypatch.setattr(blas, "ITEM_NUMEL", 3 * ROW)
    x = torch.rand(41 * ROW + 77, dtype=torch.float64) * 1e3
    results = []
    for k in (1, 2, 3, 4):
        monkeypatch.setattr(native, "thread_count", lambda numel, k=k: k)
        results.append(blas.reduce_dense(x, square=True))
    assert all(r == results[0] for r in results)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_squares_are_exact(dtype: torch.dtype) -> None:
    # (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24: a square rounded to float32 loses
    # the last term.
    x = torch.full((3, ROW), 1 + 2**-12, dtype=dtype)
    total, _ = reduce(x, True)
    assert total == 3 * ROW * (1 + 2**-11 + 2**-24)


def test_row_sums_are_added_exactly_so_small_rows_survive_a_large_one() -> None:
    # One row sums to 1e16, then 1000 rows each to 1: plain float64 addition
    # rounds every 1e16 + 1 back to 1e16 and loses all of them.
    x = torch.zeros(1001 * ROW)
    x[0] = 1e8
    x[ROW::ROW] = 1.0
    total, _ = reduce(x, True, n_threads=2)
    assert total == 1e16 + 1000


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", [0, 17, ROW - 1, ROW, 2 * ROW + 5, 3 * ROW + 2])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1e-3, -0.0])
def test_a_special_value_anywhere_shows_in_the_sum_or_the_minimum(
    dtype: torch.dtype, where: int, value: float
) -> None:
    x = (torch.rand(3 * ROW + 4, dtype=torch.float64) + 0.5).to(dtype)[1:]
    x[where] = value
    total, minimum = reduce(x, True, n_threads=2)
    if math.isnan(value):
        assert math.isnan(total) and math.isnan(minimum)
    elif math.isinf(value):
        assert math.isinf(total)
    else:
        assert minimum == float(x[where])
        assert rel(total, fsum_reference(x, True)) <= 1e-14


@pytest.mark.parametrize(
    "x",
    [
        torch.rand(4, 8, 8, dtype=torch.bfloat16),  # numpy has no bfloat16
        torch.rand(4, 8, 8, dtype=torch.float16),  # measured faster on the eager path
        torch.rand(4, 8, 8)[:, :, ::2],  # a gap between elements
        torch.rand(4, 8, 9)[:, :, :8],  # a gap at the end of each row
        torch.rand(1, 8, 8).expand(4, 8, 8),  # overlapping (stride 0)
        torch.rand(4, 8, 8).to_sparse(),
    ],
    ids=["bfloat16", "float16", "strided", "row-gap", "expanded", "sparse"],
)
def test_inputs_the_blas_path_cannot_read_are_left_to_the_eager_path(x: torch.Tensor) -> None:
    assert blas.reduce_dense(x, square=True) is None


def test_dense_tensors_in_any_axis_order_and_with_grad_are_read() -> None:
    x = torch.rand(2, 3, 8, 8)
    views = (x, x.permute(0, 2, 3, 1), x.transpose(2, 3), x[1:], x[0, 1], x.requires_grad_())
    for view in views:
        total, _ = reduce(view, True)
        assert rel(total, fsum_reference(view, True)) <= 1e-14


# ------------------------------------------------------------ per-pattern (per-row) sums
@st.composite
def row_stacks(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    """C-contiguous stacks of rows of any length, short or cut into shorter rows."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    row_len = draw(
        st.one_of(
            st.integers(1, 70),
            st.integers(ROW - 3, ROW),
            # cut into sub-rows of 2049, 4096, 2500 and 4000 elements
            st.sampled_from([ROW + 2, 2 * ROW, 10_000, 12_000]),
        )
    )
    rows = draw(st.integers(1, 12))
    offset = draw(st.integers(0, 7))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e2]))
    base = torch.rand(offset + rows * row_len, generator=gen, dtype=torch.float64) * scale
    return base.to(dtype)[offset:].reshape(rows, row_len), row_len


@given(row_stacks(), st.booleans(), st.integers(1, 4))
def test_every_row_gets_its_fsum_sum(
    case: tuple[torch.Tensor, int], square: bool, n_threads: int
) -> None:
    x, row_len = case
    with pytest.MonkeyPatch.context() as m:
        m.setattr(native, "thread_count", lambda numel: n_threads)
        m.setattr(blas, "BLOCK_NUMEL", 3 * row_len)  # blocks of 3 rows, items of 6
        m.setattr(blas, "ITEM_NUMEL", 6 * row_len)
        result = blas.reduce_rows(x, row_len, square=square)
    assert result is not None
    partials, minimum, rows = result
    assert rows.dtype == torch.float64 and rows.shape == (x.shape[0],)
    for row, values in zip(rows.tolist(), x, strict=True):
        expected = fsum_reference(values, square)
        assert row == expected if expected == 0 else rel(row, expected) <= 1e-14
    assert rel(math.fsum(partials), fsum_reference(x, square)) <= 1e-14
    assert minimum == float(x.min())


def test_inputs_the_row_path_cannot_read_are_left_to_the_eager_path() -> None:
    x = torch.rand(4, 6, 5)
    assert blas.reduce_rows(x.transpose(1, 2), 30, square=True) is None  # not C order
    assert blas.reduce_rows(x, 7, square=True) is None  # rows that do not divide it
    assert blas.reduce_rows(x.bfloat16(), 30, square=True) is None
    prime = 4099  # longer than a row, and no divisor to cut it into shorter ones
    assert blas.reduce_rows(torch.rand(2, prime), prime, square=True) is None
    assert blas.reduce_rows(torch.rand(0, 5), 5, square=True) is None


# ------------------------------------------------------------ dispatch
@pytest.fixture
def without_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "reduce_dense", lambda x, *, square: None)
    monkeypatch.setattr(native, "reduce_rows", lambda x, row_len, *, square: None)


def no_eager(*args: object) -> None:
    raise AssertionError("the eager path ran")


@pytest.mark.usefixtures("without_native")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_pattern", [False, True])
def test_without_the_native_kernel_dense_cpu_data_take_the_blas_path(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, per_pattern: bool
) -> None:
    x = (torch.rand(5, 2, 16, 16, dtype=torch.float64) + 0.01).to(dtype)
    monkeypatch.setattr(eager, "block_sums", no_eager)
    monkeypatch.setattr(eager, "pattern_block_sums", no_eager)
    got = sums.intensity_sum(x, (2, 3), "amplitude", per_pattern=per_pattern)
    assert rel(got.total, fsum_reference(x, True)) <= 1e-14
    if per_pattern:
        assert got.pattern_totals is not None
        expected = [fsum_reference(p, True) for p in x.reshape(10, -1)]
        assert got.pattern_totals.tolist() == pytest.approx(expected, rel=1e-14)


@pytest.mark.usefixtures("without_native")
@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (float("nan"), NonFiniteError, "1 NaN"),
        (float("inf"), NonFiniteError, "1 infinite"),
        (-0.25, NegativeValueError, r"minimum -0\.25"),
    ],
)
@pytest.mark.parametrize("per_pattern", [False, True])
def test_a_bad_value_is_reported_as_by_the_other_paths(
    monkeypatch: pytest.MonkeyPatch, value: float, error: type, match: str, per_pattern: bool
) -> None:
    x = torch.rand(3, 40, 200)
    x[2, 17, 3] = value
    monkeypatch.setattr(eager, "block_sums", no_eager)
    monkeypatch.setattr(eager, "pattern_block_sums", no_eager)
    with pytest.raises(error, match=match):
        sums.intensity_sum(x, (1, 2), "amplitude", per_pattern=per_pattern)


@pytest.mark.usefixtures("without_native")
@pytest.mark.filterwarnings("error")  # numpy's own overflow warnings would add noise
@pytest.mark.parametrize("per_pattern", [False, True])
def test_float64_overflow_is_reported(per_pattern: bool) -> None:
    x = torch.full((4, 8, 8), 1e200, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="overflows float64"):
        sums.intensity_sum(x, (1, 2), "amplitude", per_pattern=per_pattern)


@pytest.mark.usefixtures("without_native")
def test_masks_half_precision_and_strided_views_still_take_the_eager_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []

    def spy(name: str) -> object:
        real = getattr(eager, name)
        return lambda *args: ran.append(name) or real(*args)

    monkeypatch.setattr(eager, "block_sums", spy("block_sums"))
    monkeypatch.setattr(eager, "pattern_block_sums", spy("pattern_block_sums"))
    x = torch.rand(3, 8, 8)
    mask = torch.rand(3, 8, 8) > 0.2
    for per_pattern in (False, True):
        masked = sums.intensity_sum(x, (1, 2), "amplitude", mask, per_pattern=per_pattern)
        assert rel(masked.total, fsum_reference(x[mask], True)) <= 1e-14
        for half in (torch.float16, torch.bfloat16):
            sums.intensity_sum(x.to(half), (1, 2), "amplitude", per_pattern=per_pattern)
        sums.intensity_sum(x[:, :, ::2], (1, 2), "amplitude", per_pattern=per_pattern)
    assert ran == ["block_sums"] * 4 + ["pattern_block_sums"] * 4
