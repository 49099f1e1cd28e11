"""A trainable scale that never reached an optimizer is never silently frozen (issue 21 item 2)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import physscale as ps
from physscale.errors import FrozenScaleWarning
from physscale.nn import IntensityScaler

NPHOTONS = 1e5
SHAPE = (8, 1, 16, 16)


def _data() -> torch.Tensor:
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0)) + 0.05
    x, _ = ps.normalize_amplitudes(x)
    return x


def _record() -> ps.ScaleRecord:
    return ps.derive_scale_record(_data(), nphotons=NPHOTONS)


class Model(nn.Module):
    def __init__(self, scaler: IntensityScaler | None) -> None:
        super().__init__()
        self.net = nn.Conv2d(1, 1, 3, padding=1)
        if scaler is not None:
            self.scaler = scaler


def _train(model: nn.Module, scaler: IntensityScaler, steps: int = 5) -> None:
    """The README recipe: Adam over model.parameters() and the scaled loss."""
    x = _data()
    loss_fn = ps.ScaledPoissonNLLLoss(scaler)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        pred = nn.functional.softplus(model.net(x))  # type: ignore[operator]
        loss = loss_fn(pred, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _quiet(fn: object) -> ps.ScaleRecord:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrozenScaleWarning)
        return fn()  # type: ignore[operator,no-any-return]


def test_scaler_outside_the_model_warns_and_claims_no_training() -> None:
    record = _record()
    scaler = IntensityScaler(record, trainable=True)
    _train(Model(None), scaler)  # the optimizer never sees the scaler
    with pytest.warns(FrozenScaleWarning, match=r"never updated.*inside the model"):
        frozen = scaler.to_record()
    assert frozen.method == "derived"
    assert frozen == record


def test_bare_scale_outside_the_model_keeps_method_explicit() -> None:
    scaler = IntensityScaler(30.0, trainable=True, nphotons=NPHOTONS)
    with pytest.warns(FrozenScaleWarning):
        assert scaler.to_record().method == "explicit"


def test_scaler_inside_the_model_trains_and_says_so() -> None:
    record = _record()
    scaler = IntensityScaler(record, trainable=True)
    _train(Model(scaler), scaler)
    trained = _quiet(scaler.to_record)
    assert trained.method == "trained"
    assert trained.initial_intensity_scale == record.intensity_scale
    # More than float32 rounding away from the initial value.
    assert abs(trained.intensity_scale / record.intensity_scale - 1.0) > 1e-5


@pytest.mark.parametrize("move", ["double", "float", "load", "deepcopy"])
def test_casts_moves_and_loads_are_no_training(move: str) -> None:
    scaler = IntensityScaler(_record(), trainable=True)
    if move == "double":
        scaler.double()
    elif move == "float":
        scaler.double().float()
    elif move == "load":
        scaler.load_state_dict(IntensityScaler(_record(), trainable=True).state_dict())
    else:
        scaler = copy.deepcopy(scaler)
    with pytest.warns(FrozenScaleWarning):
        assert scaler.to_record().method == "derived"


def test_a_loaded_trained_state_is_trained() -> None:
    record = _record()
    trained = IntensityScaler(record, trainable=True)
    _train(Model(trained), trained)
    resumed = IntensityScaler(record, trainable=True)
    resumed.load_state_dict(trained.state_dict())
    assert _quiet(resumed.to_record).method == "trained"


def test_a_frozen_scaler_never_warns() -> None:
    scaler = IntensityScaler(_record(), trainable=False)
    assert _quiet(scaler.to_record).method == "derived"
