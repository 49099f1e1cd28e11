"""The layout guard: defaulted axes on channels-last-looking data never give a number.

Issue 10, item 1: PtychoPINN's data and its PyTorch port's container are
channels-last, ``(B, N, N, C)`` with C = 1 or 4. Read with the default NCHW
axes, each "pattern" is ``N x C`` pixels and the scale is silently wrong
(9729.5 instead of 1719.9 was seen). Everywhere axes default, such data are
refused with a message naming what to pass; explicit axes are always trusted.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _reference import fsum_scale, rel
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import physscale as ps
from physscale.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::physscale.errors.UnitsWarning")


def _nhwc(b: int = 8, n: int = 32, c: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 0.3, size=(b, n, n, c)).astype(np.float32)


def test_the_reported_case_is_refused_and_the_message_says_what_to_pass() -> None:
    x = _nhwc(8, 32, 1)
    with pytest.raises(ps.AmbiguousLayoutError) as info:
        ps.derive_intensity_scale(x, 1e6)
    message = str(info.value)
    assert "(8, 32, 32, 1)" in message and "channels-last" in message
    assert "layout='NHWC'" in message and "layout='NCHW'" in message
    assert "32 x 1 pixels" in message
    # An AxisError (and so a ValueError), caught by existing handlers.
    assert isinstance(info.value, ps.errors.AxisError) and isinstance(info.value, ValueError)
    assert info.value.nhwc_pattern == (32, 32) and info.value.nchw_pattern == (32, 1)


def test_with_layout_nhwc_the_same_data_give_the_right_scale() -> None:
    x = _nhwc(8, 32, 1)
    got = float(ps.derive_intensity_scale(x, 1e6, layout="NHWC"))
    assert rel(got, fsum_scale(x, 1e6, (1, 2))) <= 1e-12


@pytest.mark.parametrize(
    "kwargs", [{"layout": "NCHW"}, {"spatial_dims": (-2, -1)}, {"spatial_dims": (2, 3)}]
)
def test_explicit_axes_are_always_trusted(kwargs: dict[str, object]) -> None:
    x = _nhwc(4, 16, 4)
    got = float(ps.derive_intensity_scale(x, 1e6, **kwargs))  # type: ignore[arg-type]
    assert rel(got, fsum_scale(x, 1e6, (2, 3))) <= 1e-12


@given(
    b=st.integers(1, 3),
    h=st.integers(8, 40),
    w=st.integers(8, 40),
    c=st.integers(1, 4),
    lead=st.lists(st.integers(1, 3), max_size=2),
)
def test_every_channels_last_looking_shape_is_refused_with_defaulted_axes(
    b: int, h: int, w: int, c: int, lead: list[int]
) -> None:
    x = torch.rand(*lead, b, h, w, c)
    with pytest.raises(ps.AmbiguousLayoutError):
        ps.derive_intensity_scale(x, 1e4)
    # ... and never when the layout is named: NHWC reads H x W patterns.
    got = float(ps.derive_intensity_scale(x, 1e4, layout="NHWC"))
    assert rel(got, fsum_scale(x.numpy(), 1e4, (x.ndim - 3, x.ndim - 2))) <= 1e-12


@given(
    lead=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    h=st.integers(1, 40),
    w=st.integers(5, 40),
)
def test_patterns_at_least_five_pixels_wide_are_never_refused(
    lead: list[int], h: int, w: int
) -> None:
    x = torch.rand(*lead, h, w) + 0.01
    got = float(ps.derive_intensity_scale(x, 1e4))
    assert rel(got, fsum_scale(x.numpy(), 1e4, (x.ndim - 2, x.ndim - 1))) <= 1e-12


@pytest.mark.parametrize("shape", [(8, 4, 4, 2), (2, 3, 9, 2), (9, 3, 4), (1, 1, 3, 3), (64, 2)])
def test_small_or_non_spatial_shapes_pass_the_guard(shape: tuple[int, ...]) -> None:
    # Toy patterns (fewer than 8 pixels on a side before the last axis) are not flagged.
    x = torch.rand(*shape) + 0.01
    assert float(ps.derive_intensity_scale(x, 1e4)) > 0


def test_the_accumulator_guards_every_update_with_defaulted_axes() -> None:
    acc = ps.IntensityAccumulator()
    with pytest.raises(ps.AmbiguousLayoutError, match="layout='NHWC'"):
        acc.update(_nhwc(2, 16, 4))
    assert acc.n_patterns == 0  # nothing was folded in
    ps.IntensityAccumulator(layout="NHWC").update(_nhwc(2, 16, 4))
    ps.IntensityAccumulator(spatial_dims=(-2, -1)).update(_nhwc(2, 16, 4))


def test_normalize_amplitudes_is_guarded_too() -> None:
    with pytest.raises(ps.AmbiguousLayoutError):
        ps.normalize_amplitudes(_nhwc(2, 16, 1))
    x, factor = ps.normalize_amplitudes(_nhwc(2, 16, 1), layout="NHWC")
    assert math.isfinite(factor) and x.shape == (2, 16, 16, 1)


def test_attach_on_the_ports_channels_last_container_is_refused_not_125() -> None:
    # The port's container: X is (n, 64, 64, 4) with metadata; 125 was returned for 31.25.
    x = _nhwc(6, 64, 4, seed=3)
    container = SimpleNamespace(X=x, metadata={"physics_parameters": {"nphotons": 1e6}})
    with pytest.raises(ps.AmbiguousLayoutError, match="layout='NHWC'"):
        ps.attach_intensity_scale(container)
    assert not hasattr(container, "physscale_record")
    record = ps.attach_intensity_scale(container, layout="NHWC")
    assert record.pattern_shape == (64, 64)
    assert rel(record.intensity_scale, fsum_scale(x, 1e6, (1, 2))) <= 1e-12


def test_derive_from_dataloader_is_guarded() -> None:
    loader = DataLoader(TensorDataset(torch.from_numpy(_nhwc(6, 16, 1))), batch_size=2)
    with pytest.raises(ps.AmbiguousLayoutError):
        ps.derive_from_dataloader(loader, nphotons=1e5)
    record = ps.derive_from_dataloader(loader, nphotons=1e5, layout="NHWC")
    assert record.n_patterns == 6 and record.pattern_shape == (16, 16)


def test_the_lightning_callback_is_guarded() -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from physscale.lightning import PhysicsScaleCallback

    class Module(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
            return self.w * 0.0

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = DataLoader(TensorDataset(torch.from_numpy(_nhwc(4, 16, 1))), batch_size=2)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PhysicsScaleCallback(nphotons=1e5)],
    )
    with pytest.raises(ps.AmbiguousLayoutError):
        trainer.fit(Module(), loader)


def test_cli_refuses_with_the_flag_to_pass_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = _nhwc(32, 64, 1)  # reported: "2048 of 64 x 1 pixels" and exit 0
    np.save(tmp_path / "scan.npy", x)
    code = main(["derive", str(tmp_path / "scan.npy"), "--nphotons", "1e6"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("physscale: error: ")
    assert "--layout NHWC" in err and "--layout NCHW" in err and "64 x 1" in err
    assert "layout='NHWC'" not in err  # the CLI names its flags, not the API's keywords
    code = main(["derive", str(tmp_path / "scan.npy"), "--nphotons", "1e6", "--layout", "NHWC"])
    assert code == 0
    assert "32 of 64 x 64 pixels" in capsys.readouterr().out
