"""The fused accelerator pass (physscale.core.kernels.device), run on the CPU by forcing it.

On a GPU derive reads the data once through a compiled float64 reduction
instead of the blockwise kernel. The same graph compiles for the CPU with
Inductor's C++ backend, so CI checks its arithmetic, its validation and its
fallbacks here; the ``cuda``-marked tests at the end run it on a GPU
(``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import math
import shutil
import sys
import warnings
from collections.abc import Iterator

import pytest
import torch
from _reference import rel

import physscale as ps
from physscale.core.kernels import device as _device_sum
from physscale.core.kernels import eager
from physscale.core.kernels import native as _native

needs_cxx = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile's CPU backend needs a C++ compiler",
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def on_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the fused pass for CPU tensors of any size, with the native kernel out of the way."""
    monkeypatch.setattr(_device_sum, "DEVICE_TYPES", frozenset({"cpu"}))
    monkeypatch.setattr(_device_sum, "MIN_NUMEL", 1)
    monkeypatch.setattr(_native, "reduce_dense", lambda x, *, square: None)
    monkeypatch.delenv("PHYSSCALE_FUSED", raising=False)
    saved = dict(_device_sum._failed)
    _device_sum._failed.clear()
    yield
    _device_sum._failed.clear()
    _device_sum._failed.update(saved)


def fsum_reference(x: torch.Tensor, square: bool) -> float:
    v = x.detach().double().reshape(-1)
    return math.fsum((v * v if square else v).tolist())


def fused_total(x: torch.Tensor, square: bool) -> float:
    partials = _device_sum.fused_sum(x, square)
    assert partials is not None, "the fused pass did not run"
    return math.fsum(partials)


# ------------------------------------------------------------ arithmetic
@needs_cxx
@pytest.mark.usefixtures("on_cpu")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("square", [True, False], ids=["amplitude", "intensity"])
def test_the_fused_sum_matches_fsum_for_every_dtype(dtype: torch.dtype, square: bool) -> None:
    # 5 rows of 4096 and a tail, starting 3 elements into the storage so the
    # pass needs an unaligned head too.
    x = (torch.rand(5 * 4096 + 10, dtype=torch.float64) * 3).to(dtype)[3:]
    assert x.data_ptr() % 16 != 0
    assert rel(fused_total(x, square), fsum_reference(x, square)) <= 1e-14


@needs_cxx
@pytest.mark.usefixtures("on_cpu")
def test_squares_are_exact_in_the_fused_sum() -> None:
    # (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24: a float32 square loses the last term.
    x = torch.full((3, 4096), 1 + 2**-12)
    assert fused_total(x, True) == 3 * 4096 * (1 + 2**-11 + 2**-24)


@needs_cxx
@pytest.mark.usefixtures("on_cpu")
def test_any_dense_layout_and_any_piece_split_give_the_same_sum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_device_sum, "PIECE_ROWS", 3)  # 11 rows -> 3 balanced pieces
    x = torch.rand(4, 11 * 1024 + 5, 1)
    expected = fsum_reference(x, True)
    for view in (x, x.permute(2, 1, 0), x.transpose(0, 1)):
        assert rel(fused_total(view, True), expected) <= 1e-14


@needs_cxx
@pytest.mark.usefixtures("on_cpu")
def test_derive_through_the_fused_pass_matches_fsum() -> None:
    x = torch.rand(12, 1, 64, 64)
    assert _device_sum.applies(x)
    expected = math.sqrt(1e6 / (fsum_reference(x, True) / 12))
    assert rel(float(ps.derive_intensity_scale(x, 1e6)), expected) <= 1e-14


# ------------------------------------------------------------ validation
@needs_cxx
@pytest.mark.usefixtures("on_cpu")
@pytest.mark.parametrize("where", [0, 4096 * 3 + 7, 5 * 4096 + 2], ids=["head", "row", "tail"])
@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (float("nan"), ps.errors.NonFiniteError, "1 NaN"),
        (float("inf"), ps.errors.NonFiniteError, "1 infinite"),
        (float("-inf"), ps.errors.NonFiniteError, "1 infinite"),
        (-0.25, ps.errors.NegativeValueError, r"minimum -0\.25"),
    ],
)
def test_a_bad_value_anywhere_is_reported_exactly(
    where: int, value: float, error: type, match: str
) -> None:
    x = torch.rand(76 * 13 * 21 + 1)[1:]  # 5 rows of 4096, a tail, an unaligned head
    x[where] = value
    partials = _device_sum.fused_sum(x, True)
    assert partials is not None
    assert not all(math.isfinite(p) for p in partials)
    with pytest.raises(error, match=match):
        ps.derive_intensity_scale(x.view(76, 13, 21), 1e6)


@needs_cxx
@pytest.mark.usefixtures("on_cpu")
def test_negative_zero_passes_the_fused_check() -> None:
    x = torch.rand(3 * 4096)
    x[5] = -0.0
    assert math.isfinite(fused_total(x, True))


@needs_cxx
@pytest.mark.usefixtures("on_cpu")
def test_float64_overflow_is_reported_not_mistaken_for_a_bad_value() -> None:
    x = torch.full((3, 4096), 1e200, dtype=torch.float64)
    with pytest.raises(ps.errors.NonFiniteError, match="overflows float64"):
        ps.derive_intensity_scale(x, 1.0)


# ------------------------------------------------------------ when it applies
@pytest.mark.usefixtures("on_cpu")
@pytest.mark.parametrize(
    "x",
    [
        torch.rand(4096 + 5),  # under two rows
        torch.rand(8, 4096)[:, ::2],  # not one run of memory
        torch.rand(1, 8192).expand(3, 8192),  # overlapping
        torch.randint(0, 5, (3, 4096)),  # not floating
        torch.rand(3, 4096).to_sparse(),
    ],
    ids=["short", "strided", "expanded", "integer", "sparse"],
)
def test_inputs_the_fused_pass_cannot_read_are_left_to_the_blockwise_kernel(
    x: torch.Tensor,
) -> None:
    assert not _device_sum.applies(x)
    assert _device_sum.fused_sum(x, True) is None


def test_only_accelerators_and_large_inputs_take_the_fused_pass() -> None:
    assert "cpu" not in _device_sum.DEVICE_TYPES
    assert not _device_sum.applies(torch.rand(3, 4096))
    assert _device_sum.MIN_NUMEL > eager.BLOCK_NUMEL  # more than one CPU block


@pytest.mark.usefixtures("on_cpu")
def test_masked_sums_stay_blockwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_device_sum, "fused_sum", lambda x, square: pytest.fail("fused"))
    x = torch.rand(4, 64, 64)
    mask = torch.ones(64, 64, dtype=torch.bool)
    assert float(ps.derive_intensity_scale(x, 1e6, mask=mask)) > 0


@pytest.mark.usefixtures("on_cpu")
def test_it_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHYSSCALE_FUSED", "0")
    assert not _device_sum.applies(torch.rand(3, 4096))


@pytest.mark.usefixtures("on_cpu")
def test_it_never_runs_where_it_would_run_uncompiled(monkeypatch: pytest.MonkeyPatch) -> None:
    # Uncompiled, the pass would materialize a float64 copy of the input.
    import torch._dynamo

    x = torch.rand(3, 4096)
    assert _device_sum.applies(x)
    with torch._dynamo.config.patch(disable=True):
        assert not _device_sum.applies(x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not _device_sum.applies(x)


def test_hitting_the_recompile_limit_raises_instead_of_running_eagerly() -> None:
    import torch._dynamo

    with _device_sum._no_silent_fallback():
        assert torch._dynamo.config.fail_on_recompile_limit_hit is True


@pytest.mark.usefixtures("on_cpu")
def test_a_compiler_failure_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(square: bool) -> object:
        def fn(rows: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no backend here\nsecond line")

        return fn

    monkeypatch.setattr(_device_sum, "_compiled", broken)
    x = torch.rand(6, 64, 64)
    expected = math.sqrt(1e6 / (fsum_reference(x, True) / 6))
    with pytest.warns(
        RuntimeWarning, match=r"could not compile .*\(RuntimeError: no backend here\)"
    ):
        assert rel(float(ps.derive_intensity_scale(x, 1e6)), expected) <= 1e-14
    assert "cpu" in _device_sum._failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rel(float(ps.derive_intensity_scale(x, 1e6)), expected) <= 1e-14


# ------------------------------------------------------------ memory
def _rss_peak_extra_mib(fn: object) -> float:
    import gc

    def status_kib(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(next(ln for ln in f if ln.startswith(field + ":")).split()[1])

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kib("VmRSS")
    fn()  # type: ignore[operator]
    return (status_kib("VmHWM") - before) / 1024.0


@needs_cxx
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
@pytest.mark.usefixtures("on_cpu")
def test_the_fused_pass_allocates_no_float64_copy() -> None:
    x = torch.rand(16, 1 << 20)  # 64 MiB of float32; a float64 copy would be 128 MiB
    _device_sum.fused_sum(x[:2], True)  # compile outside the measurement
    extra = _rss_peak_extra_mib(lambda: _device_sum.fused_sum(x, True))
    assert extra < 16, f"{extra:.1f} MiB extra"


# ------------------------------------------------------------ on a GPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("square", [True, False], ids=["amplitude", "intensity"])
@pytest.mark.cuda
@needs_cuda
def test_cuda_fused_sum_matches_fsum(dtype: torch.dtype, square: bool) -> None:  # pragma: no cover
    base = (torch.rand(_device_sum.MIN_NUMEL + 4099, dtype=torch.float64) * 2).to(dtype)
    x = base.cuda()[3:]  # unaligned start, a tail
    assert rel(fused_total(x, square), fsum_reference(x.cpu(), square)) <= 1e-14


@pytest.mark.cuda
@needs_cuda
def test_cuda_derive_takes_the_fused_pass_within_64_mib() -> None:  # pragma: no cover
    x = torch.rand(64, 1, 512, 512, device="cuda")  # 64 MiB of float32
    assert _device_sum.applies(x)
    ps.derive_intensity_scale(x[:40], 1e6)  # compile first
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    s = ps.derive_intensity_scale(x, 1e6)
    extra = torch.cuda.max_memory_allocated() - before
    assert extra <= 64 * 2**20, f"{extra / 2**20:.1f} MiB extra"
    expected = math.sqrt(1e6 / (fsum_reference(x.cpu(), True) / 64))
    assert rel(float(s), expected) <= 1e-14


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(
    ("value", "error"),
    [(float("nan"), ps.errors.NonFiniteError), (-1.0, ps.errors.NegativeValueError)],
)
def test_cuda_bad_values_are_reported(value: float, error: type) -> None:  # pragma: no cover
    x = torch.rand(40, 1, 512, 512, device="cuda")
    x[17, 0, 3, 9] = value
    with pytest.raises(error):
        ps.derive_intensity_scale(x, 1e6)
