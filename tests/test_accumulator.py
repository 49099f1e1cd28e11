"""IntensityAccumulator: streaming equals one call, exact merge laws, state round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _reference import fsum_scale, rel
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale import accumulator as functional

pytestmark = [
    pytest.mark.filterwarnings("ignore::physscale.errors.UnitsWarning"),
    pytest.mark.usefixtures("kernel"),  # every test runs on each CPU path: native, BLAS, eager
]


@st.composite
def stacks(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(1, 40))
    c = draw(st.integers(1, 4))
    h = draw(st.integers(1, 24))
    w = draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.lognormal(0.0, 1.5, (n, c, h, w))
    return x.astype(draw(st.sampled_from([np.float32, np.float64])))


def split_points(n: int, data: st.DataObject) -> list[int]:
    cuts = data.draw(st.lists(st.integers(0, n), max_size=6))
    return sorted(set(cuts))


@given(stacks(), st.data())
def test_streaming_in_any_chunking_equals_one_call(x: np.ndarray, data: st.DataObject) -> None:
    acc = ps.IntensityAccumulator()
    for chunk in np.split(x, split_points(x.shape[0], data)):
        acc.update(chunk)  # empty chunks included
    expected = fsum_scale(x, 1e7, (2, 3))
    assert acc.n_patterns == x.shape[0] * x.shape[1]
    assert rel(float(acc.intensity_scale(1e7)), expected) <= 1e-12
    assert rel(float(acc.intensity_scale(1e7)), float(ps.derive_intensity_scale(x, 1e7))) <= 1e-12


@given(stacks(), stacks(), stacks())
def test_merge_is_exactly_associative_and_commutative(
    a: np.ndarray, b: np.ndarray, c: np.ndarray
) -> None:
    shape = a.shape[-2:]
    b, c = b[..., : shape[0], : shape[1]], c[..., : shape[0], : shape[1]]
    if b.shape[-2:] != shape or c.shape[-2:] != shape:
        return

    def acc(x: np.ndarray) -> ps.IntensityAccumulator:
        return ps.IntensityAccumulator().update(x)

    left = acc(a).merge(acc(b)).merge(acc(c))
    right = acc(a).merge(acc(b).merge(acc(c)))
    swapped = acc(c).merge(acc(a)).merge(acc(b))
    for other in (right, swapped):
        assert other.total_intensity == left.total_intensity  # exact, not approximate
        assert other.n_patterns == left.n_patterns
    assert left.n_patterns == (a.shape[0] * a.shape[1] + b.shape[0] * b.shape[1]
                               + c.shape[0] * c.shape[1])  # fmt: skip


def test_merge_sums_exactly_where_naive_float_addition_loses_digits() -> None:
    big = ps.IntensityAccumulator().update(np.full((1, 1, 1), 1e8))  # sum 1e16
    tiny = [ps.IntensityAccumulator().update(np.full((1, 1, 1), 1.0)) for _ in range(10)]
    for t in tiny:
        big.merge(t)
    assert big.total_intensity == 1e16 + 10  # naive 1e16 + 1.0 repeatedly stays 1e16
    assert big.n_patterns == 11


def test_empty_accumulator_merges_as_identity() -> None:
    x = np.random.default_rng(0).uniform(size=(3, 5, 5))
    a = ps.IntensityAccumulator().update(x)
    before = a.state_dict()
    a.merge(ps.IntensityAccumulator())
    assert a.state_dict() == before
    b = ps.IntensityAccumulator().merge(a)
    assert b.state_dict() == before


@given(stacks())
def test_state_dict_round_trips_through_json_and_torch_weights_only(x: np.ndarray) -> None:
    import io

    acc = ps.IntensityAccumulator().update(x, mask=np.ones(x.shape[-2:], dtype=bool))
    state = acc.state_dict()
    restored = ps.IntensityAccumulator()
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert restored.state_dict() == state
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    again = ps.IntensityAccumulator()
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert float(again.intensity_scale(1e5)) == float(acc.intensity_scale(1e5))
    assert again.masked


def test_spatial_dims_resolve_per_batch_rank() -> None:
    acc = ps.IntensityAccumulator(layout="NHWC")
    x = np.random.default_rng(3).uniform(size=(4, 6, 6, 9))
    acc.update(x[:3]).update(x[3])  # a (B,H,W,C) batch then one (H,W,C) sample
    assert acc.n_patterns == 36 and acc.pattern_shape == (6, 6)
    assert rel(float(acc.intensity_scale(1e3)), fsum_scale(x, 1e3, (1, 2))) <= 1e-12


def test_mean_intensity_and_total_are_float64_statistics() -> None:
    x = np.array([[[1.0, 2.0]], [[3.0, 4.0]]])  # per-pattern sums 5 and 25
    acc = ps.IntensityAccumulator().update(x)
    assert acc.total_intensity == 30.0
    assert acc.mean_intensity == 15.0
    assert acc.scale_for(60.0) == 2.0


def test_reset_forgets_everything() -> None:
    acc = ps.IntensityAccumulator().update(np.ones((2, 3, 3)))
    acc.reset()
    assert acc.n_patterns == 0 and acc.pattern_shape is None
    with pytest.raises(ps.errors.EmptyInputError, match="no patterns"):
        acc.intensity_scale(1.0)


def test_patterns_of_different_shapes_cannot_be_mixed() -> None:
    acc = ps.IntensityAccumulator().update(np.ones((2, 8, 8)))
    with pytest.raises(ps.errors.StateError, match=r"\(4, 4\) differs from the \(8, 8\)"):
        acc.update(np.ones((2, 4, 4)))
    with pytest.raises(ps.errors.StateError, match="differs"):
        acc.merge(ps.IntensityAccumulator().update(np.ones((1, 4, 4))))


def test_incompatible_accumulators_cannot_merge() -> None:
    a = ps.IntensityAccumulator()
    with pytest.raises(ps.errors.StateError, match="'intensity'-domain"):
        a.merge(ps.IntensityAccumulator(domain="intensity"))
    with pytest.raises(ps.errors.StateError, match="spatial_dims"):
        a.merge(ps.IntensityAccumulator(layout="NHWC"))
    with pytest.raises(ps.errors.StateError, match="IntensityAccumulator"):
        a.merge({"n_patterns": 3})  # type: ignore[arg-type]


def test_all_reduce_without_a_process_group_is_a_clear_error() -> None:
    with pytest.raises(ps.errors.StateError, match="init_process_group"):
        ps.IntensityAccumulator().all_reduce()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": 99}, "version 99"),
        ({"n_patterns": -1}, "non-negative int"),
        ({"n_patterns": True}, "non-negative int"),
        ({"total_partials": [math.nan]}, "finite"),
        ({"total_partials": [-5.0]}, "non-negative"),
        ({"pattern_shape": None}, "pattern_shape"),
        ({"integer_like": "yes"}, "integer_like"),
        ({"domain": "intensity"}, "domain"),
        ({"bogus": 1}, "keys"),
        # Reported: accepted, or raw TypeError/ValueError/OverflowError.
        ({"pattern_shape": [-8, 8]}, "pattern_shape"),
        ({"pattern_shape": [3, 10**40]}, "pattern_shape"),
        ({"n_patterns": 10**30}, "non-negative int"),
        ({"total_partials": ["a"]}, "total_partials"),
        ({"total_partials": None}, "total_partials"),
        ({"total_partials": [10**400]}, "total_partials"),
        ({"total_partials": [1.7e308, 1.7e308]}, "total_partials"),
        ({"total_partials": [True]}, "total_partials"),
        ({"spatial_dims": "ab"}, "spatial_dims"),
        ({"pixels": 5}, "pixels"),
        ({"masked_pixels": 3}, "masked_pixels"),
        ({"masked_partials": [math.inf]}, "masked_partials"),
        ({"masked": "no"}, "masked"),
        ({"version": True}, "version True"),
    ],
)
def test_load_state_dict_rejects_bad_state(change: dict[str, object], match: str) -> None:
    acc = ps.IntensityAccumulator().update(np.ones((2, 3, 3)))
    before = acc.state_dict()
    state = dict(before)
    state.update(change)
    with pytest.raises(ps.errors.StateError, match=match):
        acc.load_state_dict(state)
    assert acc.state_dict() == before  # a refused state changes nothing


def test_an_exact_total_beyond_float64_is_a_clear_error_not_an_fsum_crash() -> None:
    # Reported: ValueError("-inf + inf in fsum"), also through merge.
    big = np.full((1, 1, 1), 1e154)  # 1e308 per pattern: one fits, two do not
    acc = ps.IntensityAccumulator().update(big)
    with pytest.raises(ps.errors.NonFiniteError, match="exceeds the float64 range"):
        acc.update(big)
    assert acc.n_patterns == 1 and acc.total_intensity == 1e308  # unchanged
    other = ps.IntensityAccumulator().update(big)
    with pytest.raises(ps.errors.NonFiniteError, match="exceeds the float64 range"):
        acc.merge(other)
    assert acc.n_patterns == 1


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ps.errors.OptionError, match="domain"):
        ps.IntensityAccumulator(domain="photons")  # type: ignore[arg-type]
    with pytest.raises(ps.errors.AxisError, match="same axis twice"):
        ps.IntensityAccumulator(spatial_dims=(-1, -1))
    with pytest.raises(ps.errors.OptionError, match="layout"):
        ps.IntensityAccumulator(layout="HWC")


def test_update_all_consumes_an_iterable_of_batches() -> None:
    x = torch.rand(10, 2, 5, 5, dtype=torch.float64)
    acc = ps.IntensityAccumulator().update_all(iter(x.split(3)))
    assert rel(float(acc.intensity_scale(1e4)), fsum_scale(x.numpy(), 1e4, (2, 3))) <= 1e-12


# ------------------------------------------------------------------ the functional form
def _batch(x: np.ndarray, keep: bool = False) -> functional.AccumulatorState:
    return functional.batch_state(
        x,
        None,
        "batch",
        domain="amplitude",
        spatial_dims=(-2, -1),
        axes_explicit=True,
        per_pattern=keep,
        units_check=True,
    )


@given(stacks(), stacks())
def test_fold_is_pure_and_equals_the_class_update(a: np.ndarray, b: np.ndarray) -> None:
    b = b[..., : a.shape[-2], : a.shape[-1]]
    if b.shape[-2:] != a.shape[-2:]:
        return
    first, second = _batch(a), _batch(b)
    before = (first, second)
    both = functional.fold(functional.fold(functional.empty_state(False), first), second)
    assert (first, second) == before  # neither input changed (frozen states)
    acc = ps.IntensityAccumulator().update(a).update(b)
    assert acc.state_dict() == functional.state_to_dict(both, "amplitude", (-2, -1))
    assert acc.scale_for(1e7) == both.scale_for(1e7)


def test_the_state_of_a_refused_fold_is_unchanged() -> None:
    state = _batch(np.ones((2, 4, 4)))
    with pytest.raises(ps.errors.StateError, match="pattern shape"):
        functional.fold(state, _batch(np.ones((2, 3, 3))))
    assert state == _batch(np.ones((2, 4, 4)))


def test_kept_totals_stay_few_pieces_over_many_batches_and_keep_every_bit() -> None:
    rng = np.random.default_rng(5)
    batches = [rng.lognormal(0.0, 2.0, (int(rng.integers(0, 4)), 3, 3)) for _ in range(500)]
    acc = ps.IntensityAccumulator(keep_pattern_totals=True)
    for batch in batches:
        acc.update(batch)
    pieces = acc._state.pattern_totals
    assert pieces is not None and 1 < len(pieces) <= 64  # joined in one copy past 64
    expected = torch.cat([_batch(b, keep=True).pattern_totals[0] for b in batches if len(b)])
    assert torch.equal(acc.pattern_totals, expected)
    assert len(acc._state.pattern_totals) == 1  # joined once, on read
