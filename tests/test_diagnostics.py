"""Per-pattern diagnostics: per-pattern totals, their spread, outlier frames, exclusion."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _reference import fsum_scale
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.core.kernels import eager
from physscale.diagnostics import MAX_LISTED_FRAMES, OutlierRule, pattern_stats

pytestmark = [
    pytest.mark.filterwarnings("ignore::physscale.errors.UnitsWarning"),
    pytest.mark.filterwarnings("ignore::physscale.errors.MaskWarning"),
]


def _reference_totals(x: np.ndarray, spatial: tuple[int, ...], keep: np.ndarray | None = None):
    """Each pattern's fsum of x**2, patterns in C order of the non-spatial axes."""
    x64 = x.astype(np.float64)
    if keep is not None:
        x64 = np.where(np.broadcast_to(keep, x.shape), x64, 0.0)
    lead = [d for d in range(x.ndim) if d not in spatial]
    moved = np.transpose(x64, (*lead, *spatial))
    flat = moved.reshape(-1, math.prod(x.shape[d] for d in spatial))
    return [math.fsum((row * row).tolist()) for row in flat]


@st.composite
def stacks(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int]]:
    """Small stacks with the spatial axes anywhere."""
    ndim = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    spatial = tuple(sorted(draw(st.permutations(range(ndim)))[:2]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random(shape) + 0.01, spatial  # type: ignore[return-value]


@given(stacks(), st.integers(1, 40))
def test_per_pattern_totals_match_fsum_for_any_axes_and_block_size(
    case: tuple[np.ndarray, tuple[int, int]], block: int
) -> None:
    x, spatial = case
    old = eager.BLOCK_NUMEL
    eager.BLOCK_NUMEL = block  # patterns split across blocks, blocks across patterns
    try:
        acc = ps.IntensityAccumulator(spatial_dims=spatial, keep_pattern_totals=True).update(x)
    finally:
        eager.BLOCK_NUMEL = old
    totals = acc.pattern_totals
    assert totals is not None and totals.dtype == torch.float64
    assert totals.tolist() == pytest.approx(_reference_totals(x, spatial), rel=1e-14)
    assert math.fsum(totals.tolist()) == pytest.approx(acc.total_intensity, rel=1e-14)


def test_per_pattern_totals_honour_a_mask_and_nhwc() -> None:
    x = np.random.default_rng(3).random((4, 9, 9, 2))
    keep = np.ones((9, 9), bool)
    keep[4, 4] = False
    acc = ps.IntensityAccumulator(layout="NHWC", keep_pattern_totals=True).update(x, mask=keep)
    expected = _reference_totals(x, (1, 2), keep[:, :, None])
    assert acc.pattern_totals is not None
    assert acc.pattern_totals.tolist() == pytest.approx(expected, rel=1e-14)


def test_keeping_totals_does_not_change_the_scale() -> None:
    # TF parity holds when nothing is excluded: the same scale, whatever is kept.
    x = torch.rand(30, 2, 16, 16)
    plain = float(ps.derive_intensity_scale(x, 1e5))
    record = ps.derive_scale_record(x, nphotons=1e5, diagnostics=True)
    assert record.intensity_scale == pytest.approx(plain, rel=1e-15)  # float64 rounding
    assert record.pattern_stats is not None and record.excluded_frames is None
    assert record.pattern_stats.n_patterns == 60


def test_totals_follow_batches_merges_and_state_dicts_in_order() -> None:
    x = torch.rand(11, 1, 6, 6, dtype=torch.float64)
    whole = ps.IntensityAccumulator(keep_pattern_totals=True).update(x)
    a = ps.IntensityAccumulator(keep_pattern_totals=True).update(x[:4])
    b = ps.IntensityAccumulator(keep_pattern_totals=True)
    for part in x[4:].split(3):
        b.update(part)
    merged = a.merge(b)
    restored = ps.IntensityAccumulator(keep_pattern_totals=True)
    restored.load_state_dict(json.loads(json.dumps(merged.state_dict())))
    for acc in (merged, restored):
        assert acc.pattern_totals is not None and whole.pattern_totals is not None
        assert torch.equal(acc.pattern_totals, whole.pattern_totals)


def test_an_accumulator_keeping_totals_refuses_a_state_without_them() -> None:
    keeping = ps.IntensityAccumulator(keep_pattern_totals=True).update(torch.ones(2, 4, 4))
    plain = ps.IntensityAccumulator().update(torch.ones(2, 4, 4))
    with pytest.raises(ps.errors.StateError, match="keep_pattern_totals"):
        keeping.merge(plain)
    assert keeping.n_patterns == 2
    # The other way round loses nothing that was promised.
    assert plain.merge(keeping).n_patterns == 4 and plain.pattern_totals is None
    with pytest.raises(ps.errors.StateError, match="keep_pattern_totals=True"):
        plain.pattern_stats()


@pytest.mark.parametrize(
    "bad",
    [[1.0], [1.0, -1.0], [1.0, float("nan")], "x", [True, 1.0]],
)
def test_bad_pattern_totals_in_a_state_are_refused(bad: object) -> None:
    state = ps.IntensityAccumulator(keep_pattern_totals=True).update(torch.ones(2, 4, 4))
    data = state.state_dict()
    data["pattern_totals"] = bad
    with pytest.raises(ps.errors.StateError, match="pattern_totals"):
        ps.IntensityAccumulator(keep_pattern_totals=True).load_state_dict(data)


# ------------------------------------------------------------------ statistics and the rule
def _beamline_run(seed: int = 0) -> tuple[torch.Tensor, list[int], list[int]]:
    """200 frames with a slow 2 % drift, 3 beam dumps and 2 hot frames."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(200, 1, 16, 16, generator=g, dtype=torch.float64) * 0.2 + 1.0
    x *= torch.linspace(1.0, 1.01, 200, dtype=torch.float64).reshape(-1, 1, 1, 1)
    dumps, hot = [17, 18, 150], [60, 121]
    x[dumps] *= 0.01
    x[hot] *= 3.0
    return x, dumps, hot


def test_beam_dumps_and_hot_frames_are_flagged_and_the_drift_is_not() -> None:
    x, dumps, hot = _beamline_run()
    stats = ps.IntensityAccumulator(keep_pattern_totals=True).update(x).pattern_stats()
    assert stats.flagged_frames == sorted(dumps + hot)
    assert stats.near_zero_count == len(dumps) and stats.flagged_count == 5
    assert not stats.flagged_frames_truncated


def test_statistics_match_a_numpy_reference() -> None:
    x, _, _ = _beamline_run(1)
    acc = ps.IntensityAccumulator(keep_pattern_totals=True).update(x)
    t = np.array(_reference_totals(x.numpy(), (2, 3)))
    stats = acc.pattern_stats()
    assert stats.n_patterns == 200
    assert (stats.minimum, stats.maximum) == pytest.approx((t.min(), t.max()), rel=1e-14)
    assert stats.mean == pytest.approx(t.mean(), rel=1e-14)
    assert stats.median == pytest.approx(np.median(t), rel=1e-14)
    assert stats.std == pytest.approx(t.std(), rel=1e-12)
    assert stats.cv == pytest.approx(t.std() / t.mean(), rel=1e-12)
    for key, q in (("p01", 1), ("p25", 25), ("p99", 99)):
        assert stats.quantiles[key] == pytest.approx(np.percentile(t, q), rel=1e-14)
    mad = 1.4826 * np.median(np.abs(t - np.median(t)))
    assert stats.robust_std == pytest.approx(mad, rel=1e-12)


@given(
    st.lists(st.floats(0.0, 1e3, allow_subnormal=False), min_size=1, max_size=40),
    st.integers(-900, 900),
)
def test_the_statistics_scale_with_the_totals_over_the_whole_float64_range(
    base: list[float], k: int
) -> None:
    # A byte-flipped file held one value of 2.8e120: its total (7.6e240) was
    # finite, but the variance overflowed and PatternStats refused std=inf.
    totals = np.array(base)
    c = 2.0**k  # a power of two: scaling is exact, so every figure scales exactly too
    big = totals * c
    if not np.isfinite(big).all() or not np.isfinite(math.fsum(big)):
        return
    plain, scaled = pattern_stats(totals), pattern_stats(big)
    if plain.std == 0.0 or scaled.mean == 0.0:
        return
    assert math.isfinite(scaled.std) and math.isfinite(scaled.cv)
    assert scaled.std == pytest.approx(plain.std * c, rel=1e-12)
    assert scaled.cv == pytest.approx(plain.cv, rel=1e-12)
    assert scaled.flagged_frames == plain.flagged_frames


def test_one_huge_frame_gives_a_finite_spread_and_is_flagged() -> None:
    totals = np.array([1.0] * 9 + [7.6e240])
    stats = pattern_stats(totals)
    assert stats.std == pytest.approx(7.6e240 * 0.3, rel=1e-12)  # std of [0]*9 + [1] is 0.3
    assert stats.cv == pytest.approx(3.0, rel=1e-12)
    assert stats.flagged_frames == [9]


@pytest.mark.parametrize("totals", [[1e308, 1e308], [1.7e308, 1.7e308, 0.0]])
def test_totals_whose_sum_is_beyond_float64_are_refused_clearly(totals: list[float]) -> None:
    # Were a raw OverflowError from math.fsum (and a numpy overflow warning).
    with pytest.raises(ps.errors.StateError, match="beyond float64"):
        pattern_stats(totals)


def test_the_scale_ratio_stays_finite_when_the_remaining_frames_are_nearly_dark() -> None:
    # mean / rest overflowed (4 / 2.2e-308) and PatternStats refused the ratio inf.
    tiny = 2.2250738585072014e-308
    stats = pattern_stats([0.0, 12.0, tiny])
    assert stats.flagged_frames == [0, 1]
    assert stats.scale_ratio_without_flagged is not None
    expected = math.exp(0.5 * (math.log(4.0) - math.log(tiny)))
    assert stats.scale_ratio_without_flagged == pytest.approx(expected, rel=1e-12)


def test_the_ratio_is_none_when_excluding_the_flagged_frames_leaves_no_intensity() -> None:
    stats = pattern_stats([0.0, 0.0, 0.0, 0.0, 100.0])
    assert stats.flagged_frames == [4]
    assert stats.scale_ratio_without_flagged is None


def test_the_scale_ratio_says_how_far_excluding_the_flagged_frames_would_move_it() -> None:
    x, dumps, hot = _beamline_run(2)
    acc = ps.IntensityAccumulator(keep_pattern_totals=True).update(x)
    stats = acc.pattern_stats()
    kept = [i for i in range(200) if i not in dumps + hot]
    expected = fsum_scale(x[kept].numpy(), 1e6, (2, 3)) / fsum_scale(x.numpy(), 1e6, (2, 3))
    assert stats.scale_ratio_without_flagged == pytest.approx(expected, rel=1e-12)


def test_identical_frames_flag_nothing_and_the_rule_is_tunable() -> None:
    stats = pattern_stats([5.0] * 10 + [5.0 * (1 + 1e-9)])
    assert stats.flagged_count == 0 and stats.scale_ratio_without_flagged == 1.0
    # median 1.05, robust std 1.4826 * 0.05: 2.0 is 12.8 of them away, 0.9 is 2.02.
    totals = [1.0, 1.1, 0.9, 1.05, 2.0]
    assert pattern_stats(totals).flagged_frames == [4]
    assert pattern_stats(totals, OutlierRule(threshold=2.0)).flagged_frames == [2, 4]
    with pytest.raises(ValueError, match="threshold"):
        OutlierRule(threshold=-1.0)


def test_flag_lists_are_bounded_and_the_counts_exact() -> None:
    totals = [1.0] * 5000 + [0.0] * 1500
    stats = pattern_stats(totals)
    assert stats.flagged_count == 1500 and stats.near_zero_count == 1500
    assert len(stats.flagged_frames) == MAX_LISTED_FRAMES and stats.flagged_frames_truncated
    assert stats.flagged_frames[0] == 5000


# ------------------------------------------------------------------ excluding, explicitly
def test_excluding_outliers_gives_the_scale_of_the_remaining_frames_and_says_so() -> None:
    x, dumps, hot = _beamline_run(3)
    record = ps.derive_scale_record(x, nphotons=1e6, exclude="outliers")
    kept = [i for i in range(200) if i not in dumps + hot]
    assert record.intensity_scale == pytest.approx(fsum_scale(x[kept].numpy(), 1e6, (2, 3)),
                                                   rel=1e-12)  # fmt: skip
    excluded = record.excluded_frames
    assert excluded is not None and excluded.reason == "outliers"
    assert excluded.frames == sorted(dumps + hot) and excluded.count == 5
    assert record.n_patterns == 195 and excluded.n_patterns_before == 200
    assert record.pattern_stats is not None and record.pattern_stats.n_patterns == 200
    full = float(ps.derive_intensity_scale(x, 1e6))
    assert excluded.scale_ratio == pytest.approx(record.intensity_scale / full, rel=1e-12)
    assert ps.ScaleRecord.model_validate_json(record.model_dump_json()) == record


def test_an_explicit_frame_list_is_excluded_and_recorded() -> None:
    x = torch.rand(10, 1, 8, 8, dtype=torch.float64) + 0.1
    record = ps.derive_scale_record(x, nphotons=1e4, exclude=[9, 2])
    assert record.excluded_frames is not None
    assert (record.excluded_frames.reason, record.excluded_frames.frames) == ("explicit", [2, 9])
    kept = [0, 1, 3, 4, 5, 6, 7, 8]
    assert record.intensity_scale == pytest.approx(fsum_scale(x[kept].numpy(), 1e4, (2, 3)),
                                                   rel=1e-12)  # fmt: skip


def test_excluding_nothing_is_the_plain_scale() -> None:
    x = torch.rand(10, 1, 8, 8) + 0.1  # no outliers
    record = ps.derive_scale_record(x, nphotons=1e4, exclude="outliers")
    assert record.excluded_frames is None
    # The per-pattern kernel sums in another order: equal to float64 rounding.
    assert record.intensity_scale == pytest.approx(
        float(ps.derive_intensity_scale(x, 1e4)), rel=1e-15
    )


@pytest.mark.parametrize(
    ("frames", "match"),
    [([10], r"in \[0, 10\)"), ([-1], r"in \[0, 10\)"), ([1, 1], "distinct"),
     (list(range(10)), "leaves nothing"), (torch.tensor([0.5]), "integer")],
)  # fmt: skip
def test_bad_frame_lists_are_refused(frames: object, match: str) -> None:
    acc = ps.IntensityAccumulator(keep_pattern_totals=True).update(torch.rand(10, 4, 4) + 0.1)
    with pytest.raises(ps.errors.StateError, match=match):
        acc.excluding(frames)  # type: ignore[arg-type]


@given(
    hot=st.sampled_from([1.0, 1e3, 1e6, 1e8, 1e9, 1e12, 1e100]),
    frame=st.integers(0, 19),
    seed=st.integers(0, 2**16),
    batches=st.integers(1, 4),
)
def test_excluding_a_hot_frame_gives_the_scale_of_the_rest_however_bright_it_was(
    hot: float, frame: int, seed: int, batches: int
) -> None:
    # The remaining total was the whole total minus the excluded frame's: a frame
    # 1e8 times brighter (in amplitude) moved the excluded scale by 0.1 %, 1e9 by
    # 28 %, 1e10 left "zero intensity", as the batch totals had rounded the rest away.
    x = np.random.default_rng(seed).random((20, 1, 8, 8)) + 0.01
    x[frame] *= hot
    acc = ps.IntensityAccumulator(keep_pattern_totals=True)
    for part in np.array_split(x, batches):
        acc.update(part)
    kept = np.delete(x, frame, axis=0)
    assert acc.excluding([frame]).scale_for(1e6) == pytest.approx(
        fsum_scale(kept, 1e6, (2, 3)), rel=1e-13
    )


def test_excluding_never_changes_the_original_accumulator() -> None:
    x = torch.rand(6, 4, 4, dtype=torch.float64) + 0.1
    acc = ps.IntensityAccumulator(keep_pattern_totals=True).update(x)
    before = acc.state_dict()
    fewer = acc.excluding([0])
    fewer.update(x[:1])
    assert acc.state_dict() == before
    assert fewer.n_patterns == 6


# ------------------------------------------------------------------ patterns larger than a piece
@given(
    shape=st.sampled_from([(3, 5, 7), (2, 3, 4, 5), (4, 6, 5, 2), (1, 9, 8), (5, 4, 3, 2)]),
    layout=st.sampled_from([None, "NHWC"]),
    masked=st.booleans(),
    max_bytes=st.integers(4, 400),
    fortran=st.booleans(),
)
def test_per_pattern_totals_of_a_file_folded_in_pieces_match_fsum(
    shape: tuple[int, ...], layout: str | None, masked: bool, max_bytes: int, fortran: bool
) -> None:
    # Pieces smaller than one pattern go through update_fragments, which must still
    # give every pattern its own total (the pieces of an entry belong to known patterns).
    import tempfile
    from pathlib import Path

    from physscale.io.readers import pattern_source
    from physscale.io.streaming import fold_patterns

    rng = np.random.default_rng(sum(shape) + max_bytes)
    x = rng.gamma(2.0, 0.5, size=shape).astype(np.float32)
    last = len(shape) - 1
    spatial = (last - 2, last - 1) if layout == "NHWC" else (last - 1, last)
    keep = rng.random(tuple(shape[a] for a in spatial)) > 0.3 if masked else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, np.asfortranarray(x) if fortran else x)
        acc = fold_patterns(
            ps.IntensityAccumulator(layout=layout, keep_pattern_totals=True),
            pattern_source(path),
            mask=keep,
            max_bytes=max_bytes,
        )
    placed = None
    if keep is not None:
        placed = keep.reshape((*keep.shape, 1)) if layout == "NHWC" else keep
    expected = _reference_totals(x, spatial, placed)
    assert acc.pattern_totals is not None
    assert acc.pattern_totals.tolist() == pytest.approx(expected, rel=1e-13)
    assert math.fsum(acc.pattern_totals.tolist()) == pytest.approx(acc.total_intensity, rel=1e-13)
