"""The optional native kernel: agreement with the eager kernel, thread splits, fallbacks."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from _reference import rel
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.core.kernels import blas, eager, sums
from physscale.core.kernels import native as _native

needs_native = pytest.mark.skipif(
    not _native.available() and os.environ.get("PHYSSCALE_REQUIRE_NATIVE") != "1",
    reason="the native kernel is not built in this installation",
)


def fsum_reference(x: torch.Tensor, square: bool) -> float:
    v = x.detach().double().reshape(-1)
    return math.fsum((v * v if square else v).tolist())


def native_total(x: torch.Tensor, square: bool) -> tuple[float, float]:
    result = _native.reduce_dense(x, square=square)
    assert result is not None
    partials, minimum = result
    return math.fsum(partials), minimum


def test_the_native_kernel_is_built_when_ci_requires_it() -> None:
    if os.environ.get("PHYSSCALE_REQUIRE_NATIVE") != "1":
        pytest.skip("PHYSSCALE_REQUIRE_NATIVE is not set")
    assert _native.available(), "PHYSSCALE_REQUIRE_NATIVE=1 but physscale._native_kernel is absent"


# ------------------------------------------------------------ kernels
def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), read independently of the kernel."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


@needs_native
def test_the_widest_kernel_the_cpu_runs_is_the_default() -> None:
    usable = _native.kernels()
    assert usable[0] == "portable"
    assert set(usable) <= set(_native.KERNELS)
    assert _native.kernel() == usable[-1]


@needs_native
@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not cpu_flags(),
    reason="the SIMD kernels are x86-64 only (flags read from /proc/cpuinfo)",
)
def test_x86_cpus_get_the_simd_kernel_they_support() -> None:
    # The hook builds them with GCC and Clang; only a compiler without the
    # intrinsics falls back to the portable loop alone.
    flags = cpu_flags()
    assert ("avx2" in _native.kernels()) == ({"avx2", "fma"} <= flags)
    assert ("avx512" in _native.kernels()) == ("avx512f" in flags)


@needs_native
def test_an_unavailable_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match="not available here"):
        _native.reduce_dense(torch.rand(10), square=True, kernel="sse9")


every_kernel = pytest.mark.parametrize(
    "kernel", _native.kernels() or ["portable"], ids=lambda k: f"kernel={k}"
)


@st.composite
def flat_arrays(draw: st.DrawFn) -> torch.Tensor:
    """1-D float32/float64 arrays across the kernels' step, chunk and tail sizes, any offset."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n = draw(
        st.one_of(
            st.integers(0, 100),  # shorter than one SIMD step: all in the scalar tail
            st.integers(4096 - 40, 4096 + 40),  # around one chunk
            st.integers(0, 3 * 4096 + 100),
        )
    )
    offset = draw(st.integers(0, 15))  # any element alignment
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-20, 1e-3, 1.0, 1e3, 1e20]))
    base = torch.rand(offset + n, generator=gen, dtype=torch.float64) * scale
    return base.to(dtype)[offset:]


def kernel_reduce(x: torch.Tensor, square: bool, kernel: str) -> tuple[float, float]:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_native, "thread_count", lambda numel: 1)
        result = _native.reduce_dense(x, square=square, kernel=kernel)
    assert result is not None
    partials, minimum = result
    return math.fsum(partials), minimum


@needs_native
@every_kernel
@given(flat_arrays(), st.booleans())
def test_every_kernel_matches_fsum_at_any_length_and_alignment(
    kernel: str, x: torch.Tensor, square: bool
) -> None:
    total, minimum = kernel_reduce(x, square, kernel)
    expected = fsum_reference(x, square)
    assert total == expected if expected == 0 else rel(total, expected) <= 1e-14
    assert minimum == (float(x.min()) if x.numel() else math.inf)


@needs_native
@every_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("square", [True, False])
@pytest.mark.parametrize(
    "where", [0, 17, 31, 32, 4095, 4096, 4096 + 40, 3 * 4096 + 1], ids=lambda w: f"at={w}"
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1e-30, -0.0, 0.0])
def test_every_kernel_reports_a_special_value_anywhere(
    kernel: str, dtype: torch.dtype, square: bool, where: int, value: float
) -> None:
    # Offset by one element so the SIMD loads are unaligned, with a scalar tail.
    x = (torch.rand(3 * 4096 + 3, dtype=torch.float64) + 0.5).to(dtype)[1:]
    x[where] = value
    total, minimum = kernel_reduce(x, square, kernel)
    if math.isnan(value):
        assert math.isnan(total)  # the sum carries a NaN; the minimum never picks it
        assert minimum == float(x[~x.isnan()].min())
    elif math.isinf(value):
        assert not math.isfinite(total)  # inf, or NaN once the compensation sees it
    else:
        assert minimum == float(x[where])  # the value as stored (float32-rounded)
        assert rel(total, fsum_reference(x, square)) <= 1e-14


@needs_native
@every_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_kernel_squares_exactly(kernel: str, dtype: torch.dtype) -> None:
    # (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24: the last term is lost if the
    # square is rounded to float32 or the multiply-add to anything but float64.
    # 4096 of them sum exactly in float64 (no bits beyond 2**-24 * 4096).
    x = torch.full((4096,), 1 + 2**-12, dtype=dtype)
    total, _ = kernel_reduce(x, True, kernel)
    assert total == 4096 * (1 + 2**-11 + 2**-24)


@needs_native
@every_kernel
@pytest.mark.parametrize("offset", [0, 1, 5])
def test_every_kernel_compensates_chunk_sums(kernel: str, offset: int) -> None:
    # One chunk sums to 1e16, then 1000 chunks each sum to 1: plain float64
    # addition rounds every 1e16 + 1 back to 1e16 and loses all of them.
    chunk = 4096  # CHUNK in src/physscale/core/kernels/native.c
    x = torch.zeros(offset + 1001 * chunk)[offset:]
    x[0] = 1e8
    x[chunk::chunk] = 1.0
    total, _ = kernel_reduce(x, True, kernel)
    assert total == 1e16 + 1000


# ------------------------------------------------------------ agreement
@st.composite
def dense_tensors(draw: st.DrawFn) -> torch.Tensor:
    """Dense float32/float64 tensors in any axis order, maybe offset into their storage."""
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=4)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    base = torch.rand((2, *shape), generator=gen, dtype=torch.float64) * scale
    x = base.to(dtype)[draw(st.integers(0, 1)) :]  # a storage offset, still dense
    perm = draw(st.permutations(range(x.ndim)))
    return x.permute(*perm)


@needs_native
@given(dense_tensors(), st.booleans(), st.integers(1, 5))
def test_native_sum_and_minimum_match_fsum_for_any_thread_split(
    x: torch.Tensor, square: bool, n_threads: int
) -> None:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_native, "thread_count", lambda numel: n_threads)
        total, minimum = native_total(x, square)
    assert rel(total, fsum_reference(x, square)) <= 1e-14
    assert minimum == float(x.min())


@needs_native
@pytest.mark.parametrize("fallback", ["blas", "eager"])
@given(x=dense_tensors(), square=st.booleans())
def test_native_and_fallback_kernels_agree(x: torch.Tensor, square: bool, fallback: str) -> None:
    domain = "amplitude" if square else "intensity"
    axes = (x.ndim - 1,)
    native = sums.intensity_sum(x, axes, domain)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_native, "reduce_dense", lambda x, *, square: None)
        if fallback == "eager":
            m.setattr(blas, "reduce_dense", lambda x, *, square: None)
        other = sums.intensity_sum(x, axes, domain)
    assert rel(native.total, other.total) <= 1e-13
    assert native.n_patterns == other.n_patterns
    assert native.integer_like == other.integer_like


@needs_native
@pytest.mark.parametrize("where", [0, 1000, 4095, 4096, 99_999])
@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (float("nan"), ps.errors.NonFiniteError, "1 NaN"),
        (float("inf"), ps.errors.NonFiniteError, "infinite"),
        (-1e-30, ps.errors.NegativeValueError, "negative amplitudes"),
    ],
)
def test_a_bad_value_in_any_thread_slice_is_caught(
    monkeypatch: pytest.MonkeyPatch, where: int, value: float, error: type, match: str
) -> None:
    monkeypatch.setattr(_native, "thread_count", lambda numel: 4)
    x = torch.rand(25, 40, 100)
    x.view(-1)[where] = value
    assert _native.reduce_dense(x, square=True) is not None  # the native path runs
    with pytest.raises(error, match=match):
        ps.derive_intensity_scale(x, 1e6)


@needs_native
def test_chunk_sums_are_compensated_so_small_chunks_are_not_lost_after_a_large_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One chunk sums to 1e16, then 1000 chunks each sum to 1: plain float64
    # addition rounds every 1e16 + 1 back to 1e16 and loses all of them.
    monkeypatch.setattr(_native, "thread_count", lambda numel: 1)
    chunk = 4096  # CHUNK in src/physscale/core/kernels/native.c
    x = torch.zeros(1001 * chunk)
    x[0] = 1e8
    x[chunk::chunk] = 1.0
    total, _ = native_total(x, True)
    assert total == 1e16 + 1000


@needs_native
def test_negative_zero_is_a_valid_amplitude() -> None:
    x = torch.rand(3, 8, 8)
    x[0, 0, 0] = -0.0
    _, minimum = native_total(x, True)
    assert minimum == 0.0
    assert math.isfinite(float(ps.derive_intensity_scale(x, 1e4)))


@needs_native
def test_float64_overflow_is_reported() -> None:
    with pytest.raises(ps.errors.NonFiniteError, match="overflows float64"):
        ps.derive_intensity_scale(torch.full((4, 8, 8), 1e200, dtype=torch.float64), 1.0)


# ------------------------------------------------------------ eligibility
@needs_native
@pytest.mark.parametrize(
    "x",
    [
        torch.rand(4, 8, 8, dtype=torch.float16),
        torch.rand(4, 8, 8, dtype=torch.bfloat16),
        torch.rand(4, 8, 8)[:, :, ::2],  # a gap between elements
        torch.rand(4, 8, 9)[:, :, :8],  # a gap at the end of each row
        torch.rand(1, 8, 8).expand(4, 8, 8),  # overlapping (stride 0)
        torch.rand(4, 8, 8).to_sparse(),
    ],
    ids=["float16", "bfloat16", "strided", "row-gap", "expanded", "sparse"],
)
def test_inputs_the_native_kernel_cannot_read_fall_back_to_eager(x: torch.Tensor) -> None:
    assert _native.reduce_dense(x, square=True) is None


@needs_native
def test_dense_tensors_in_any_axis_order_are_read_natively() -> None:
    x = torch.rand(2, 3, 8, 8)
    for view in (x, x.permute(0, 2, 3, 1), x.transpose(2, 3), x[1:], x[0, 1], x.view(-1)):
        total, _ = native_total(view, True)
        assert rel(total, fsum_reference(view, True)) <= 1e-14


# ------------------------------------------------------------ threads
runners = pytest.mark.parametrize("runner", ["openmp", "python"])


@pytest.fixture
def use_runner(monkeypatch: pytest.MonkeyPatch, runner: str) -> str:
    """Run threaded reductions on torch's OpenMP team, or on Python threads."""
    if runner == "python":
        monkeypatch.setattr(_native, "openmp_parallel", lambda: None)
    elif _native.openmp_parallel() is None:
        pytest.skip("torch does not run on an OpenMP runtime here")
    return runner


def test_torch_s_openmp_team_is_found_when_torch_runs_on_openmp() -> None:
    info = torch.__config__.parallel_info()
    assert (_native.openmp_parallel() is not None) == ("parallel backend: OpenMP" in info)


def test_python_threads_can_be_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHYSSCALE_NATIVE_THREADS", "python")
    _native.openmp_parallel.cache_clear()
    try:
        assert _native.openmp_parallel() is None
    finally:
        monkeypatch.delenv("PHYSSCALE_NATIVE_THREADS")
        _native.openmp_parallel.cache_clear()


@needs_native
@runners
@pytest.mark.usefixtures("use_runner")
def test_the_result_does_not_depend_on_the_thread_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Work items are fixed slices, whichever thread reduces them.
    monkeypatch.setattr(_native, "PIECE_NUMEL", 256)
    x = torch.rand(10_007, dtype=torch.float64) * 1e3
    results = []
    for n_threads in (1, 2, 3, 4):
        monkeypatch.setattr(_native, "thread_count", lambda numel, k=n_threads: k)
        results.append(_native.reduce_dense(x, square=True))
    assert all(r == results[0] for r in results)
    partials, minimum = results[0]
    assert len(partials) == 2 * 40  # 40 items of 256 (the last one short)
    assert rel(math.fsum(partials), fsum_reference(x, True)) <= 1e-14
    assert minimum == float(x.min())


@needs_native
@runners
@pytest.mark.usefixtures("use_runner")
def test_concurrent_calls_from_several_threads_each_get_their_own_sum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(_native, "PIECE_NUMEL", 512)
    monkeypatch.setattr(_native, "thread_count", lambda numel: 2)
    xs = [torch.rand(20_000 + 999 * k) for k in range(8)]
    with ThreadPoolExecutor(4) as pool:
        totals = list(pool.map(lambda x: native_total(x, True), xs))
    for x, (total, minimum) in zip(xs, totals, strict=True):
        assert rel(total, fsum_reference(x, True)) <= 1e-14
        assert minimum == float(x.min())


def test_thread_count_follows_torch_and_the_minimum_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    minimum = _native.MIN_NUMEL_PER_THREAD
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert _native.thread_count(0) == 1
    assert _native.thread_count(minimum - 1) == 1
    assert _native.thread_count(2 * minimum) == 2
    assert _native.thread_count(100 * minimum) == 4
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert _native.thread_count(100 * minimum) == 1


# ------------------------------------------------------------ loading
def test_the_kernel_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHYSSCALE_NATIVE", "0")
    _native.library.cache_clear()
    try:
        assert _native.library() is None
        x = torch.rand(4, 8, 8)
        assert _native.reduce_dense(x, square=True) is None
        assert float(ps.derive_intensity_scale(x, 1e4)) > 0
    finally:
        monkeypatch.delenv("PHYSSCALE_NATIVE")
        _native.library.cache_clear()


def test_a_missing_library_means_the_eager_kernel(tmp_path: Path) -> None:
    assert _native.load(tmp_path / "absent.so") is None


def test_an_unloadable_library_warns_and_falls_back(tmp_path: Path) -> None:
    bogus = tmp_path / "_native_kernel.so"
    bogus.write_bytes(b"not a shared library")
    with pytest.warns(RuntimeWarning, match="could not be loaded"):
        assert _native.load(bogus) is None


@needs_native
def test_a_stale_build_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(_native.__file__).with_name(_native.LIBRARY_NAME)
    monkeypatch.setattr(_native, "ABI_VERSION", _native.ABI_VERSION + 1)
    with pytest.warns(RuntimeWarning, match="stale build"):
        assert _native.load(path) is None


@needs_native
def test_derive_on_a_large_tensor_matches_fsum_through_the_native_kernel() -> None:
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.uniform(0, 2, (5, 1000, 1000)).astype(np.float32))
    assert _native.thread_count(x.numel()) == min(torch.get_num_threads(), 2)
    expected = math.sqrt(1e9 / (fsum_reference(x, True) / 5))
    assert rel(float(ps.derive_intensity_scale(x, 1e9)), expected) <= 1e-14


# ------------------------------------------------------------ per-pattern (per-row) sums
def row_reduce(
    x: torch.Tensor, row_len: int, square: bool, kernel: str | None = None, n_threads: int = 1
) -> tuple[float, float, list[float]]:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_native, "thread_count", lambda numel: n_threads)
        result = _native.reduce_rows(x, row_len, square=square, kernel=kernel)
    assert result is not None
    partials, minimum, rows = result
    assert rows.dtype == torch.float64 and rows.shape == (x.numel() // row_len,)
    return math.fsum(partials), minimum, rows.tolist()


@st.composite
def row_stacks(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    """C-contiguous stacks of rows of any length (around the kernels' step and chunk)."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    row_len = draw(st.one_of(st.integers(1, 70), st.integers(4096 - 33, 4096 + 33)))
    rows = draw(st.integers(1, 12))
    offset = draw(st.integers(0, 7))  # any element alignment of the first row
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-20, 1e-3, 1.0, 1e3, 1e20]))
    base = torch.rand(offset + rows * row_len, generator=gen, dtype=torch.float64) * scale
    return base.to(dtype)[offset:].reshape(rows, row_len), row_len


@needs_native
@every_kernel
@given(row_stacks(), st.booleans(), st.integers(1, 4))
def test_every_kernel_gives_every_row_its_fsum_sum(
    kernel: str, case: tuple[torch.Tensor, int], square: bool, n_threads: int
) -> None:
    x, row_len = case
    total, minimum, rows = row_reduce(x, row_len, square, kernel, n_threads)
    for row, values in zip(rows, x, strict=True):
        expected = fsum_reference(values, square)
        assert row == expected if expected == 0 else rel(row, expected) <= 1e-14
    assert rel(total, fsum_reference(x, square)) <= 1e-14
    assert minimum == float(x.min())


@needs_native
@every_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_row_squares_exactly(kernel: str, dtype: torch.dtype) -> None:
    # As test_every_kernel_squares_exactly, per row: 1 + 2**-11 + 2**-24 a square.
    x = torch.full((3, 4096), 1 + 2**-12, dtype=dtype)
    total, _, rows = row_reduce(x, 4096, True, kernel)
    assert rows == [4096 * (1 + 2**-11 + 2**-24)] * 3
    assert total == 3 * 4096 * (1 + 2**-11 + 2**-24)


@needs_native
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1e-30])
def test_a_special_value_shows_in_its_row_and_the_total(value: float) -> None:
    x = torch.rand(6, 5000) + 0.5
    x[4, 4097] = value
    total, minimum, rows = row_reduce(x, 5000, True, n_threads=3)
    if value < 0:
        assert minimum == float(x[4, 4097]) and all(math.isfinite(r) for r in rows)
        return
    assert not math.isfinite(total) and not math.isfinite(rows[4])
    assert all(math.isfinite(r) for i, r in enumerate(rows) if i != 4)
    assert minimum == float(x[x.isfinite()].min())  # the minimum never picks a NaN


@needs_native
def test_row_sums_do_not_depend_on_the_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "PIECE_NUMEL", 300)  # 3 rows of 100 per work item
    x = torch.rand(1001, 100, dtype=torch.float64) * 1e3
    results = [row_reduce(x, 100, True, n_threads=k) for k in (1, 2, 3, 4)]
    assert all(r == results[0] for r in results)


@needs_native
def test_inputs_the_row_kernel_cannot_read_are_left_to_the_eager_kernel() -> None:
    x = torch.rand(4, 6, 5)
    assert _native.reduce_rows(x.transpose(1, 2), 30, square=True) is None  # not C order
    assert _native.reduce_rows(x, 7, square=True) is None  # rows that do not divide it
    assert _native.reduce_rows(x.half(), 30, square=True) is None
    assert _native.reduce_rows(torch.rand(0, 5), 5, square=True) is None


@needs_native
@given(
    st.lists(st.integers(1, 6), min_size=2, max_size=4),
    st.sampled_from([torch.float32, torch.float64]),
    st.booleans(),
)
def test_per_pattern_totals_come_from_the_native_kernel_for_stacks(
    shape: list[int], dtype: torch.dtype, square: bool
) -> None:
    # A contiguous stack with its spatial axes last: each pattern is one run of memory,
    # and the per-pattern pass is the native one (neither fallback is called).
    x = (torch.rand(*shape, dtype=torch.float64) + 0.01).to(dtype)
    axes = (x.ndim - 2, x.ndim - 1)
    domain = "amplitude" if square else "intensity"

    def no_fallback(*args: object, **kwargs: object) -> None:
        raise AssertionError("a fallback per-pattern kernel ran")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(eager, "pattern_block_sums", no_fallback)
        m.setattr(blas, "reduce_rows", no_fallback)
        native = sums.intensity_sum(x, axes, domain, per_pattern=True)
    other = sums.intensity_sum(x.transpose(-1, -2), axes, domain, per_pattern=True)
    assert native.pattern_totals is not None and other.pattern_totals is not None
    expected = [fsum_reference(p, square) for p in x.reshape(-1, shape[-2] * shape[-1])]
    assert native.pattern_totals.tolist() == pytest.approx(expected, rel=1e-14)
    assert other.pattern_totals.tolist() == pytest.approx(expected, rel=1e-14)
    assert rel(native.total, other.total) <= 1e-13


@needs_native
def test_a_thread_limit_caps_the_threads_of_this_thread_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    big = 100 * _native.MIN_NUMEL_PER_THREAD
    seen: list[int] = []
    with _native.thread_limit(2):
        assert _native.thread_count(big) == 2
        other = threading.Thread(target=lambda: seen.append(_native.thread_count(big)))
        other.start()
        other.join()
    assert seen == [8] and _native.thread_count(big) == 8
