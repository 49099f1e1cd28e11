"""ScaleRecord: exact JSON round trip, published schema, validation, derive_scale_record."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch
from _reference import fsum_scale, rel
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import physscale as ps

pytestmark = pytest.mark.filterwarnings("ignore::physscale.errors.UnitsWarning")

finite_pos = st.floats(1e-300, 1e300, allow_nan=False, allow_infinity=False)


def derived(**change: object) -> dict[str, object]:
    base: dict[str, object] = {
        "intensity_scale": 5.0,
        "nphotons": 100.0,
        "nphotons_source": "explicit",
        "method": "derived",
        "n_patterns": 2,
        "pattern_shape": (2, 2),
        "mean_intensity": 4.0,
    }
    base.update(change)
    return base


@given(
    st.floats(1e-6, 1e6),
    st.floats(1e-3, 1e12),
    st.integers(1, 10**9),
    st.sampled_from(["explicit", "metadata", "config", "default"]),
    st.sampled_from(["amplitude", "intensity"]),
)
def test_derived_record_json_round_trip_is_exact(
    mean: float, nphotons: float, n: int, source: str, domain: str
) -> None:
    r = ps.ScaleRecord(
        intensity_scale=math.sqrt(nphotons / mean),
        nphotons=nphotons,
        nphotons_source=source,  # type: ignore[arg-type]
        nphotons_candidates={source: nphotons},  # type: ignore[dict-item]
        method="derived",
        domain=domain,  # type: ignore[arg-type]
        n_patterns=n,
        pattern_shape=(64, 64),
        spatial_dims=(-2, -1),
        mean_intensity=mean,
        data_source="some/file.npz",
    )
    again = ps.ScaleRecord.model_validate_json(r.model_dump_json())
    assert again == r
    assert again.created_utc == r.created_utc
    assert again.implied_nphotons == r.implied_nphotons


@given(finite_pos, finite_pos)
def test_explicit_and_trained_records_round_trip(s: float, s0: float) -> None:
    explicit = ps.ScaleRecord(intensity_scale=s, nphotons=1e9, nphotons_source="default",
                              method="explicit")  # fmt: skip
    assert ps.ScaleRecord.model_validate_json(explicit.model_dump_json()) == explicit
    trained = ps.ScaleRecord(intensity_scale=s, nphotons=1e9, nphotons_source="config",
                             method="trained", initial_intensity_scale=s0)  # fmt: skip
    assert ps.ScaleRecord.model_validate_json(trained.model_dump_json()) == trained


def test_schema_is_published_with_version_and_forbids_extra_fields() -> None:
    schema = ps.ScaleRecord.model_json_schema()
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    for field in ("intensity_scale", "nphotons", "nphotons_source", "method", "n_patterns",
                  "pattern_shape", "mean_intensity", "domain", "physscale_version",
                  "schema_version", "created_utc", "implied_nphotons"):  # fmt: skip
        assert field in props
    assert props["schema_version"]["default"] == ps.record.SCHEMA_VERSION == 2
    assert props["schema_version"]["enum"] == [1, 2]  # version 1 records are still read
    json.dumps(schema)  # serializable as published


def test_a_version_1_record_is_still_read() -> None:
    data = json.loads(ps.ScaleRecord(**derived()).model_dump_json())  # type: ignore[arg-type]
    data["schema_version"] = 1
    old = ps.ScaleRecord.model_validate_json(json.dumps(data))
    assert old.schema_version == 1 and old.intensity_scale == data["intensity_scale"]


@pytest.mark.parametrize(
    "change",
    [
        {"intensity_scale": 1e200, "mean_intensity": 1e200, "nphotons": 1e200},
        {"intensity_scale": 10**400},
        {"pattern_shape": (10**400, 2)},
        {"pattern_shape": tuple([2**31] * 2)},
        {"n_patterns": 10**30},
        {"method": "closed_form", "pattern_shape": tuple([2**30] * 8)},
    ],
)
def test_extreme_numbers_are_a_validation_error_not_an_overflow(
    change: dict[str, object],
) -> None:
    data = {**derived(), **change}
    with pytest.raises(ValidationError):
        ps.ScaleRecord(**data)  # type: ignore[arg-type]
    text = json.dumps({k: v for k, v in data.items() if k != "created_utc"}, default=str)
    with pytest.raises(ValidationError):
        ps.ScaleRecord.model_validate_json(text)


def test_record_is_frozen_and_stamped() -> None:
    r = ps.ScaleRecord(**derived())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="frozen"):
        r.intensity_scale = 2.0  # type: ignore[misc]
    assert r.physscale_version == ps.__version__
    assert r.created_utc.utcoffset() == timedelta(0)
    assert abs((datetime.now(timezone.utc) - r.created_utc).total_seconds()) < 60


def test_implied_dose_is_filled_in_and_follows_the_scale() -> None:
    r = ps.ScaleRecord(**derived())  # type: ignore[arg-type]
    assert r.implied_nphotons == 100.0  # 5**2 * 4
    t = r.trained(10.0)
    assert t.method == "trained"
    assert t.initial_intensity_scale == 5.0
    assert t.implied_nphotons == 400.0  # the dose the trained scale gives this data
    assert t.nphotons == 100.0
    assert t.trained(2.0).initial_intensity_scale == 5.0  # initial stays the first value


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"intensity_scale": float("nan")}, "finite"),
        ({"intensity_scale": float("inf")}, "finite"),
        ({"intensity_scale": 0.0}, "greater than 0"),
        ({"intensity_scale": -5.0}, "greater than 0"),
        ({"nphotons": 0.0}, "greater than 0"),
        ({"intensity_scale": 6.0}, r"not sqrt\(nphotons / mean_intensity\)"),
        ({"mean_intensity": None}, "needs mean_intensity"),
        ({"n_patterns": 0}, "greater than or equal to 1"),
        ({"pattern_shape": (0, 4)}, "greater than or equal to 1"),
        ({"method": "trained"}, "initial_intensity_scale is required"),
        ({"initial_intensity_scale": 3.0}, "only for it"),
        ({"implied_nphotons": 99.0}, "implied_nphotons"),
        ({"nphotons_candidates": {"explicit": 7.0}}, "differs from the explicit candidate"),
        ({"method": "guessed"}, "method"),
        ({"nphotons_source": "file"}, "nphotons_source"),
        ({"schema_version": 3}, "schema_version"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
        ({"created_utc": datetime(2026, 1, 1)}, "timezone"),
        ({"created_utc": datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))}, "UTC"),
    ],
)
def test_invalid_or_inconsistent_records_are_rejected(
    change: dict[str, object], match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        ps.ScaleRecord(**derived(**change))  # type: ignore[arg-type]


def test_closed_form_record_checks_its_formula() -> None:
    r = ps.closed_form_scale_record(1e6, 64)
    assert r.intensity_scale == pytest.approx(1e3 / 32, rel=1e-15)
    assert r.pattern_shape == (64, 64)
    with pytest.raises(ValidationError, match="N/2"):
        ps.ScaleRecord(intensity_scale=1.0, nphotons=1e6, nphotons_source="explicit",
                       method="closed_form", pattern_shape=(64, 64))  # fmt: skip
    with pytest.raises(ValidationError, match="needs pattern_shape"):
        ps.ScaleRecord(intensity_scale=1.0, nphotons=1e6, nphotons_source="explicit",
                       method="closed_form")  # fmt: skip


def test_trained_rejects_a_bad_scale() -> None:
    r = ps.ScaleRecord(**derived())  # type: ignore[arg-type]
    with pytest.raises(ps.errors.RecordError, match="positive finite"):
        r.trained(float("nan"))


# ---------------------------------------------------------------- derive_scale_record
def test_derive_scale_record_from_data_resolves_nphotons_and_records_statistics() -> None:
    x = np.random.default_rng(0).uniform(0, 1, (6, 4, 16, 16))
    metadata = {"physics_parameters": {"nphotons": 1e6}}
    r = ps.derive_scale_record(x, metadata=metadata, config={"nphotons": 1e9},
                               data_source="train.npz")  # fmt: skip
    assert r.method == "derived"
    assert r.nphotons == 1e6
    assert r.nphotons_source == "metadata"
    assert r.nphotons_candidates == {"metadata": 1e6, "config": 1e9}
    assert r.n_patterns == 24
    assert r.pattern_shape == (16, 16)
    assert r.spatial_dims == (-2, -1)
    assert r.masked is False
    assert rel(r.intensity_scale, fsum_scale(x, 1e6, (2, 3))) <= 1e-12
    assert rel(r.mean_intensity or 0.0, math.fsum((x**2).ravel().tolist()) / 24) <= 1e-12
    assert rel(r.implied_nphotons or 0.0, 1e6) <= 1e-12
    assert r.data_source == "train.npz"


def test_derive_scale_record_passes_layout_domain_and_mask() -> None:
    x = torch.rand(3, 8, 8, 4, dtype=torch.float64)
    mask = torch.ones(8, 8, 1, dtype=torch.bool)
    r = ps.derive_scale_record(x, nphotons=1e4, layout="NHWC", domain="intensity", mask=mask)
    assert r.pattern_shape == (8, 8)
    assert r.n_patterns == 12
    assert r.domain == "intensity"
    assert r.masked is True
    assert r.spatial_dims == (-3, -2)
    assert rel(r.intensity_scale, fsum_scale(x.numpy(), 1e4, (1, 2), "intensity")) <= 1e-12


def test_derive_scale_record_from_an_accumulator_equals_from_data() -> None:
    x = torch.rand(10, 1, 12, 12, dtype=torch.float64)
    acc = ps.IntensityAccumulator()
    for chunk in x.split(3):
        acc.update(chunk)
    from_acc = ps.derive_scale_record(acc, nphotons=1e5)
    from_data = ps.derive_scale_record(x, nphotons=1e5)
    assert rel(from_acc.intensity_scale, from_data.intensity_scale) <= 1e-12
    assert from_acc.n_patterns == from_data.n_patterns
    with pytest.raises(ps.errors.RecordError, match="belong to the accumulator"):
        ps.derive_scale_record(acc, nphotons=1e5, layout="NHWC")


def test_derive_scale_record_without_any_nphotons_is_an_error() -> None:
    with pytest.raises(ps.errors.NphotonsError, match="was not given"):
        ps.derive_scale_record(np.ones((2, 3, 3)), metadata={"physics_parameters": {}})
    r = ps.derive_scale_record(np.ones((2, 3, 3)) * 0.5, metadata={"physics_parameters": {}},
                               default=1e9)  # fmt: skip
    assert r.nphotons_source == "default"  # never mislabelled "metadata"


def test_records_are_made_above_the_record_module_which_holds_types_only() -> None:
    import physscale.derive
    import physscale.record

    for name in ("derive_scale_record", "record_from_accumulator", "closed_form_scale_record"):
        assert not hasattr(physscale.record, name)
        assert name in physscale.derive.__all__
    assert ps.derive_scale_record is physscale.derive.derive_scale_record
    assert ps.closed_form_scale_record is physscale.derive.closed_form_scale_record
