"""The scale record inside torch.save checkpoints, as plain JSON text."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.io import record_from_checkpoint, record_to_checkpoint
from physscale.nn import IntensityScaler


def _record(nphotons: float = 1e6) -> ps.ScaleRecord:
    x = torch.rand(6, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    return ps.derive_scale_record(x, nphotons=nphotons, data_source="train.npz")


def test_record_is_stored_as_json_text_and_the_checkpoint_returned() -> None:
    record = _record()
    checkpoint: dict[str, Any] = {"epoch": 3}
    out = record_to_checkpoint(checkpoint, record)
    assert out is checkpoint
    assert isinstance(checkpoint["physscale_record"], str)
    assert json.loads(checkpoint["physscale_record"])["intensity_scale"] == record.intensity_scale
    assert checkpoint["epoch"] == 3


def test_record_survives_torch_save_and_weights_only_load(tmp_path: Path) -> None:
    record = _record()
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "ckpt.pt"
    torch.save(record_to_checkpoint({"model": model.state_dict()}, record), path)
    loaded = torch.load(path, weights_only=True)
    assert record_from_checkpoint(loaded) == record


@given(nphotons=st.floats(min_value=1e-3, max_value=1e15, allow_nan=False))
def test_checkpoint_round_trip_is_exact_for_any_nphotons(nphotons: float) -> None:
    record = _record(nphotons)
    assert record_from_checkpoint(record_to_checkpoint({}, record)) == record


def test_trained_scaler_record_survives_checkpoint_round_trip(tmp_path: Path) -> None:
    record = _record()
    scaler = IntensityScaler.from_record(record, trainable=True)
    optimizer = torch.optim.SGD(scaler.parameters(), lr=0.5)
    # d/dlog_scale = -0.4 at the start, so one step of lr 0.5 moves it by +0.2.
    (scaler.log_scale - math.log(record.intensity_scale) - 0.2).square().backward()
    optimizer.step()
    trained = scaler.to_record()
    assert trained.method == "trained"
    assert trained.intensity_scale == pytest.approx(
        record.intensity_scale * math.exp(0.2), rel=1e-6
    )
    path = tmp_path / "ckpt.pt"
    torch.save(record_to_checkpoint({"scaler": scaler.state_dict()}, trained), path)
    loaded = torch.load(path, weights_only=True)
    back = record_from_checkpoint(loaded)
    assert back == trained
    assert back.initial_intensity_scale == record.intensity_scale
    # The reloaded module reports the same trained record.
    fresh = IntensityScaler(1.0)
    fresh.load_state_dict(loaded["scaler"])
    assert fresh.scale.item() == pytest.approx(trained.intensity_scale, rel=1e-6)
    assert fresh.to_record().intensity_scale == trained.intensity_scale


def test_missing_record_is_a_record_error_naming_the_keys() -> None:
    with pytest.raises(ps.errors.RecordError, match=r"no 'physscale_record' key; keys: 'model'"):
        record_from_checkpoint({"model": {}})


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (b"{not json", "not a valid physscale ScaleRecord"),
        ('{"intensity_scale": 2.0}', "not a valid physscale ScaleRecord: nphotons: Field required"),
        ({"intensity_scale": 2.0}, "must be the record's JSON text"),
        (3.0, "must be the record's JSON text"),
    ],
)
def test_invalid_record_is_a_record_error(value: Any, match: str) -> None:
    with pytest.raises(ps.errors.RecordError, match=match):
        record_from_checkpoint({"physscale_record": value})


def test_record_with_wrong_scale_for_its_statistics_is_refused() -> None:
    data = json.loads(_record().model_dump_json())
    data["intensity_scale"] *= 1.5
    with pytest.raises(ps.errors.RecordError, match=r"is not sqrt\(nphotons / mean_intensity\)"):
        record_from_checkpoint({"physscale_record": json.dumps(data)})


def test_unknown_record_schema_version_is_refused() -> None:
    data = json.loads(_record().model_dump_json())
    data["schema_version"] = 3
    with pytest.raises(ps.errors.RecordError, match="schema_version"):
        record_from_checkpoint({"physscale_record": json.dumps(data)})


@pytest.mark.parametrize(
    ("checkpoint", "record", "match"),
    [
        ([], None, "checkpoint must be a dict"),
        ({}, {"intensity_scale": 2.0}, "record must be a physscale.ScaleRecord, got dict"),
    ],
)
def test_record_to_checkpoint_rejects_non_dict_and_non_record(
    checkpoint: Any, record: Any, match: str
) -> None:
    with pytest.raises(ps.errors.RecordError, match=match):
        record_to_checkpoint(checkpoint, record if record is not None else _record())


def test_record_from_checkpoint_rejects_a_non_mapping() -> None:
    with pytest.raises(ps.errors.RecordError, match=r"checkpoint must be a dict.*got list"):
        record_from_checkpoint([])  # type: ignore[arg-type]
