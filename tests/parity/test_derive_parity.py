"""SPEC §1 against TensorFlow: the derived scale, the amplitude normalization, the closed form.

The TF side is TF's own expression in TF ops on NHWC data
(``sqrt(nphotons / reduce_mean(reduce_sum(x**2, (1, 2))))``), computed in
float32 as TF does (tolerance DERIVE_RTOL = 2e-6) and in float64 ops (the same
expression without float32 rounding: 1e-12). physscale gets the same data as
NHWC (``layout="NHWC"``) and transposed to NCHW (default axes, and a
non-contiguous torch view), so layout handling is proven together with the math.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps

from ._tfref import (
    DERIVE_RTOL,
    DERIVE_RTOL_F64,
    check_close,
    pattern_stack,
    tf,
    tf_closed_form,
    tf_normalize_amplitudes,
    tf_scale_nphotons,
)

pytestmark = pytest.mark.tf

seeds = st.integers(0, 2**32 - 1)
nphotons_st = st.floats(0.0, 12.0).map(lambda e: 10.0**e)  # 1 to 1e12
scales_st = st.floats(0.0, 5.0).map(lambda e: 10.0**e)  # 1 to 1e5
channels_st = st.sampled_from([1, 4, 9])  # gridsize 1, 2, 3


def _derive(x: object, nphotons: float, **kwargs: object) -> float:
    # The units guard (scale about 1, whole-number data) is tested elsewhere; a
    # parity draw may legitimately land on it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.UnitsWarning)
        return float(ps.derive_intensity_scale(x, nphotons, **kwargs))  # type: ignore[arg-type]


@st.composite
def nhwc_amplitudes(draw: st.DrawFn) -> tuple[np.ndarray, float, float]:
    """(x NHWC float32, nphotons, target scale): x normalized so its scale is about s."""
    b = draw(st.integers(1, 5))
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    c = draw(channels_st)
    rng = np.random.default_rng(draw(seeds))
    nphotons = draw(nphotons_st)
    scale = draw(scales_st)
    x = np.sqrt(pattern_stack(rng, (b, h, w, c), dark=draw(st.floats(0.0, 0.9))))
    # Bring the mean per-pattern sum(x**2) to nphotons / s**2.
    x *= math.sqrt(nphotons / scale**2 / ((x**2).sum() / (b * c)))
    return x.astype(np.float32), nphotons, scale


@given(case=nhwc_amplitudes())
def test_derived_scale_equals_tf_scale_nphotons_on_nhwc_data(
    case: tuple[np.ndarray, float, float],
) -> None:
    x, nphotons, _ = case
    got = _derive(x, nphotons, layout="NHWC")
    check_close(got, tf_scale_nphotons(x, nphotons), rtol=DERIVE_RTOL, what="derive NHWC vs TF f32")
    check_close(
        got,
        tf_scale_nphotons(x, nphotons, tf.float64),
        rtol=DERIVE_RTOL_F64,
        what="derive NHWC vs TF f64",
    )
    # spatial_dims spelled out is the same as the layout shortcut.
    assert _derive(torch.from_numpy(x), nphotons, spatial_dims=(1, 2)) == got


@given(case=nhwc_amplitudes())
def test_derived_scale_of_nchw_transpose_equals_tf_on_nhwc(
    case: tuple[np.ndarray, float, float],
) -> None:
    x, nphotons, _ = case
    ref32 = tf_scale_nphotons(x, nphotons)
    ref64 = tf_scale_nphotons(x, nphotons, tf.float64)
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    strided = torch.from_numpy(x).permute(0, 3, 1, 2)  # an NCHW view of NHWC memory
    cases: list[tuple[str, Any, dict[str, Any]]] = [
        ("numpy NCHW layout", nchw, {"layout": "NCHW"}),
        ("torch NCHW strided view", strided, {"layout": "NCHW"}),
    ]
    _, c, h, w = nchw.shape
    if w <= 4 and h >= 8 and c >= 8:
        # Patterns a few pixels wide look channels-last: defaulted axes are refused.
        with pytest.raises(ps.AmbiguousLayoutError):
            _derive(nchw, nphotons)
    else:
        cases.append(("numpy NCHW default axes", nchw, {}))
    for label, data, kwargs in cases:
        got = _derive(data, nphotons, **kwargs)
        check_close(got, ref32, rtol=DERIVE_RTOL, what=f"derive {label} vs TF f32")
        check_close(got, ref64, rtol=DERIVE_RTOL_F64, what=f"derive {label} vs TF f64")


@given(case=nhwc_amplitudes(), dtype=st.sampled_from([np.float16, np.float64]))
def test_derived_scale_of_other_float_dtypes_equals_tf_in_that_data(
    case: tuple[np.ndarray, float, float], dtype: type[np.floating]
) -> None:
    x32, nphotons, _ = case
    if dtype is np.float16:  # keep the amplitudes inside float16's range
        x32 = x32 * np.float32(min(1.0, 1e3 / float(x32.max())))
    x = x32.astype(dtype)
    if not (x.astype(np.float64) ** 2).sum() > 0:
        return  # every value underflowed float16: nothing left to compare
    got = _derive(x, nphotons, layout="NHWC")
    # TF in float64 on exactly the values physscale was given.
    ref = tf_scale_nphotons(x.astype(np.float64), nphotons, tf.float64)
    check_close(got, ref, rtol=DERIVE_RTOL_F64, what=f"derive {np.dtype(dtype)} vs TF f64")


@st.composite
def raw_count_amplitudes(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    """(raw amplitudes sqrt(counts), NHWC N x N float32, counts up to 1e7; nphotons)."""
    b = draw(st.integers(1, 5))
    n = draw(st.integers(2, 16))
    c = draw(channels_st)
    rng = np.random.default_rng(draw(seeds))
    peak = 10.0 ** draw(st.floats(0.0, 7.0))
    pattern = pattern_stack(rng, (b, n, n, c), dark=draw(st.floats(0.0, 0.9)))
    counts = rng.poisson(peak * pattern / pattern.max()).astype(np.float64)
    if not counts.any():
        counts.flat[0] = 1.0
    return np.sqrt(counts).astype(np.float32), draw(nphotons_st)


@given(case=raw_count_amplitudes())
def test_normalize_amplitudes_equals_tf_normalization(case: tuple[np.ndarray, float]) -> None:
    x_raw, _ = case
    x, factor = ps.normalize_amplitudes(x_raw, layout="NHWC")
    assert x.dtype == np.float32
    check_close(x, tf_normalize_amplitudes(x_raw), rtol=DERIVE_RTOL, what="normalized x vs TF")
    n = x_raw.shape[1]
    ref = math.sqrt((n / 2) ** 2 / float(tf.reduce_mean(tf.reduce_sum(
        tf.constant(x_raw, tf.float64) ** 2, axis=(1, 2)))))  # fmt: skip
    check_close(factor, ref, rtol=DERIVE_RTOL_F64, what="normalization factor vs TF f64")


@given(case=raw_count_amplitudes())
def test_closed_form_equals_tf_scale_after_tf_normalization(case: tuple[np.ndarray, float]) -> None:
    x_raw, nphotons = case
    n = x_raw.shape[1]
    x_tf = tf_normalize_amplitudes(x_raw)  # TF's float32 normalized data
    closed = ps.closed_form_intensity_scale(nphotons, n)
    check_close(closed, tf_closed_form(nphotons, n), rtol=DERIVE_RTOL, what="closed form vs TF")
    check_close(
        closed, tf_closed_form(nphotons, n, tf.float64), rtol=1e-14, what="closed form vs TF f64"
    )
    # On TF-normalized data TF's derived scale is the closed form, and so is physscale's.
    check_close(
        closed, tf_scale_nphotons(x_tf, nphotons), rtol=DERIVE_RTOL, what="closed vs TF derived"
    )
    check_close(
        _derive(x_tf, nphotons, layout="NHWC"),
        closed,
        rtol=DERIVE_RTOL,
        what="physscale derived on TF-normalized data vs closed form",
    )
    nchw = np.ascontiguousarray(x_tf.transpose(0, 3, 1, 2))
    check_close(
        _derive(nchw, nphotons),
        closed,
        rtol=DERIVE_RTOL,
        what="physscale derived on TF-normalized NCHW data vs closed form",
    )
