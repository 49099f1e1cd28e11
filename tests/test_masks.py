"""Valid-pixel masks: pattern-shaped masks in any layout, masked arrays, and what a mask does
to nphotons (the masked fractions in the record, the warning when most intensity is masked).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.cli import main

# The mask guard's warning is asserted where it is under test, ignored elsewhere.
pytestmark = [
    pytest.mark.filterwarnings("ignore::physscale.errors.UnitsWarning"),
    pytest.mark.filterwarnings("ignore::physscale.errors.MaskWarning"),
]


def _reference(x: np.ndarray, nphotons: float, keep: np.ndarray, spatial: tuple[int, int]) -> float:
    """sqrt(nphotons / mean per-pattern sum of the kept x**2); keep broadcast to x."""
    x64 = np.where(np.broadcast_to(keep, x.shape), x.astype(np.float64), 0.0)
    total = math.fsum((x64 * x64).ravel().tolist())
    n_patterns = x.size // (x.shape[spatial[0]] * x.shape[spatial[1]])
    return math.sqrt(nphotons / (total / n_patterns))


def _beamstop(h: int, w: int, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - h // 2) ** 2 + (xx - w // 2) ** 2 > radius**2  # True = valid pixel


def _speckle(b: int, h: int, w: int, c: int | None = None, seed: int = 1) -> np.ndarray:
    """Bright centre, dim edges, like a diffraction pattern; NHWC when c is given."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    envelope = np.exp(-((yy - h // 2) ** 2 + (xx - w // 2) ** 2) / (0.02 * h * w))
    x = rng.gamma(2.0, 0.5, size=(b, h, w)) * (0.02 + envelope)
    return (x[..., None].repeat(c, axis=-1) if c else x).astype(np.float32)


# ------------------------------------------------------------------ pattern-shaped masks
def test_a_pattern_shaped_mask_applies_along_the_spatial_axes_of_nhwc_data() -> None:
    # Reported: an (H, W) mask with layout="NHWC" was refused ("does not broadcast to
    # (32, 64, 64, 1)"), although README shows exactly that pairing.
    x = _speckle(32, 64, 64, c=1)
    mask = _beamstop(64, 64, 6)
    got = float(ps.derive_intensity_scale(x, 1e6, layout="NHWC", mask=mask))
    assert got == pytest.approx(_reference(x, 1e6, mask[:, :, None], (1, 2)), rel=1e-12)


@given(
    b=st.integers(1, 3),
    h=st.integers(2, 9),
    w=st.integers(2, 9),
    c=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_a_pattern_mask_gives_the_same_scale_in_either_layout(
    b: int, h: int, w: int, c: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    nchw = rng.random((b, c, h, w)) + 0.01
    mask = rng.random((h, w)) < 0.7
    mask[0, 0] = True
    nhwc = np.ascontiguousarray(np.moveaxis(nchw, 1, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.MaskWarning)
        a = float(ps.derive_intensity_scale(nchw, 1e4, layout="NCHW", mask=mask))
        b_ = float(ps.derive_intensity_scale(nhwc, 1e4, layout="NHWC", mask=mask))
    assert a == pytest.approx(b_, rel=1e-12)
    assert a == pytest.approx(_reference(nchw, 1e4, mask, (2, 3)), rel=1e-12)


def test_a_mask_that_fits_neither_reading_says_which_shapes_would() -> None:
    x = np.ones((4, 16, 16, 2), np.float32)
    with pytest.raises(ps.errors.MaskError) as info:
        ps.derive_intensity_scale(x, 1e4, layout="NHWC", mask=np.ones((16, 15), bool))
    message = str(info.value)
    assert "(16, 15)" in message and "the pattern shape (16, 16)" in message
    assert "spatial axes (1, 2)" in message and "(16, 16, 2)" in message


def test_the_cli_applies_a_pattern_mask_to_channels_last_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = _speckle(8, 32, 32, c=1)
    mask = _beamstop(32, 32, 3)
    np.save(tmp_path / "scan.npy", x)
    np.save(tmp_path / "mask.npy", mask)
    args = ["derive", str(tmp_path / "scan.npy"), "--nphotons", "1e6", "--layout", "NHWC"]
    code = main([*args, "--mask", str(tmp_path / "mask.npy"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = ps.ScaleRecord.model_validate_json(out)
    assert record.intensity_scale == pytest.approx(
        _reference(x, 1e6, mask[:, :, None], (1, 2)), rel=1e-12
    )
    assert record.masked_pixel_fraction == pytest.approx(1 - mask.mean(), rel=1e-15)
    code = main([*args, "--mask", str(tmp_path / "mask.npy")])
    assert "excludes" in capsys.readouterr().out


# ------------------------------------------------------------------ numpy masked arrays
def test_a_masked_arrays_mask_is_honoured_like_mask_equals() -> None:
    # Reported: 0.177 where passing the same mask as mask= gives 353.6.
    x = _speckle(4, 16, 16)
    x[:, 8, 8] = 1e4  # a hot pixel
    hot = np.zeros(x.shape, bool)
    hot[:, 8, 8] = True
    masked = np.ma.MaskedArray(x, mask=hot)  # numpy: True = invalid
    expected = float(ps.derive_intensity_scale(x, 1e6, mask=~hot))
    assert float(ps.derive_intensity_scale(masked, 1e6)) == pytest.approx(expected, rel=1e-15)
    assert expected == pytest.approx(_reference(x, 1e6, ~hot, (1, 2)), rel=1e-12)
    record = ps.derive_scale_record(masked, nphotons=1e6)
    assert record.masked and record.masked_pixel_fraction == pytest.approx(1 / 256)


def test_a_masked_array_and_mask_equals_combine() -> None:
    x = _speckle(2, 8, 8)
    invalid = np.zeros(x.shape, bool)
    invalid[:, 0, :] = True
    valid_cols = np.ones((8, 8), bool)
    valid_cols[:, 0] = False
    got = float(ps.derive_intensity_scale(np.ma.MaskedArray(x, invalid), 1e4, mask=valid_cols))
    both = ~invalid & valid_cols
    assert got == pytest.approx(_reference(x, 1e4, both, (1, 2)), rel=1e-12)


def test_a_masked_array_with_nothing_masked_is_plain_data() -> None:
    x = _speckle(2, 8, 8)
    record = ps.derive_scale_record(np.ma.MaskedArray(x), nphotons=1e4)
    assert not record.masked
    assert record.intensity_scale == float(ps.derive_intensity_scale(x, 1e4))


def test_the_loss_and_other_tensor_paths_refuse_a_masked_array_naming_mask() -> None:
    from physscale.core.checks import as_float_tensor

    with pytest.raises(ps.errors.DtypeError, match=r"mask=~numpy\.ma\.getmaskarray"):
        as_float_tensor(np.ma.MaskedArray(np.ones((2, 2))), "x")


# ------------------------------------------------------------------ what a mask does to nphotons
def test_the_record_gives_the_masked_fractions_of_pixels_and_intensity() -> None:
    x = _speckle(6, 32, 32)
    mask = _beamstop(32, 32, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.MaskWarning)
        record = ps.derive_scale_record(x, nphotons=1e5, mask=mask)
    x64 = x.astype(np.float64)
    inside = math.fsum((x64[:, ~mask] ** 2).ravel().tolist())
    everything = math.fsum((x64**2).ravel().tolist())
    assert record.masked
    assert record.masked_pixel_fraction == pytest.approx((~mask).sum() / mask.size, rel=1e-15)
    assert record.masked_intensity_fraction == pytest.approx(inside / everything, rel=1e-12)
    again = ps.ScaleRecord.model_validate_json(record.model_dump_json())
    assert again == record


def test_masked_pixels_holding_nan_or_negative_flags_are_left_out_of_the_fraction() -> None:
    x = np.full((2, 4, 4), 1.0)
    x[:, 0, 0] = np.nan
    x[:, 0, 1] = -1.0
    x[:, 0, 2] = 3.0
    mask = np.ones((4, 4), bool)
    mask[0, :3] = False
    record = ps.derive_scale_record(x, nphotons=1e4, mask=mask)
    # Removed: only the finite, non-negative 3.0 (9 per pattern); kept: 13 ones.
    assert record.masked_intensity_fraction == pytest.approx(9 / (9 + 13), rel=1e-15)
    assert record.masked_pixel_fraction == pytest.approx(3 / 16)


def test_a_mask_that_removes_most_of_the_intensity_is_warned_about() -> None:
    # Reported: with a beamstop mask the scale moved from 13.25 to 1199 and nobody was told.
    x = _speckle(4, 64, 64)
    stop = _beamstop(64, 64, 10)
    plain = float(ps.derive_intensity_scale(x, 1e5))
    with pytest.warns(ps.MaskWarning, match=r"removes \d+\.\d% of the data's intensity") as w:
        masked = float(ps.derive_intensity_scale(x, 1e5, mask=stop))
    fraction = ps.derive_scale_record(x, nphotons=1e5, mask=stop).masked_intensity_fraction
    assert fraction is not None and fraction > 0.5
    assert f"{masked / plain:.3g}x" in str(w[0].message)


def test_a_mask_that_removes_little_intensity_is_not_warned_about() -> None:
    x = _speckle(4, 64, 64)
    edge = np.ones((64, 64), bool)
    edge[0, :] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.MaskWarning)
        record = ps.derive_scale_record(x, nphotons=1e5, mask=edge)
    assert record.masked_intensity_fraction is not None
    assert record.masked_intensity_fraction < 0.01


def test_records_without_a_mask_have_no_fractions_and_fractions_need_masked() -> None:
    record = ps.derive_scale_record(_speckle(2, 8, 8), nphotons=1e4)
    assert record.masked_pixel_fraction is None and record.masked_intensity_fraction is None
    data = json.loads(record.model_dump_json())
    data["masked_pixel_fraction"] = 0.1
    with pytest.raises(ValueError, match="need masked=True"):
        ps.ScaleRecord.model_validate_json(json.dumps(data))


def test_masked_fractions_survive_merge_state_dict_and_chunking() -> None:
    x = _speckle(9, 16, 16)
    mask = _beamstop(16, 16, 2)
    whole = ps.IntensityAccumulator().update(x, mask=mask)
    a = ps.IntensityAccumulator().update(x[:4], mask=mask)
    b = ps.IntensityAccumulator().update(x[4:], mask=mask)
    merged = a.merge(b)
    restored = ps.IntensityAccumulator()
    restored.load_state_dict(json.loads(json.dumps(merged.state_dict())))
    for acc in (merged, restored):
        assert acc.masked_pixel_fraction == whole.masked_pixel_fraction
        assert acc.masked_intensity_fraction == pytest.approx(
            whole.masked_intensity_fraction, rel=1e-15
        )


def test_a_version_1_state_loads_with_unknown_mask_fractions() -> None:
    acc = ps.IntensityAccumulator().update(_speckle(2, 8, 8), mask=_beamstop(8, 8, 1))
    state = acc.state_dict()
    new_in_v2 = ("pixels", "masked_pixels", "masked_partials", "pattern_totals")
    v1 = {k: state[k] for k in state if k not in new_in_v2}
    v1["version"] = 1
    old = ps.IntensityAccumulator()
    old.load_state_dict(v1)
    assert old.masked and old.masked_pixel_fraction is None
    assert old.masked_intensity_fraction is None
    assert old.mean_intensity == acc.mean_intensity


def test_torch_masks_of_the_pattern_shape_work_on_any_device_layout() -> None:
    x = torch.from_numpy(_speckle(3, 16, 16, c=2))
    mask = torch.from_numpy(_beamstop(16, 16, 1))
    got = float(ps.derive_intensity_scale(x, 1e4, layout="NHWC", mask=mask))
    ref = _reference(x.numpy(), 1e4, mask.numpy()[:, :, None], (1, 2))
    assert got == pytest.approx(ref, rel=1e-12)
