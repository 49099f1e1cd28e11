"""Attaching the scale to a training container; broadcasting it against batches."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from types import MappingProxyType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, default_collate

import physscale as ps
from physscale.attach import attach_intensity_scale, collate_with_scale, scale_for_batch

NPHOTONS = 1e6


def _amplitudes(n: int = 10, brightness: float = 1.0, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, 2, 6, 6)) * math.sqrt(brightness)).astype(np.float32)


def _reference_scale(x: np.ndarray, nphotons: float, spatial: tuple[int, int] = (-2, -1)) -> float:
    """sqrt(nphotons / mean per-pattern sum(x**2)), exact float64 sums per pattern."""
    moved = np.moveaxis(x.astype(np.float64), spatial, (-2, -1))
    patterns = moved.reshape(-1, moved.shape[-2] * moved.shape[-1])
    sums = [math.fsum(p * p) for p in patterns]
    return math.sqrt(nphotons / (math.fsum(sums) / len(sums)))


# ------------------------------------------------------------------ attach
def test_attach_uses_metadata_nphotons_and_sets_three_fields_on_a_dict() -> None:
    x = _amplitudes()
    container = {"X": x, "metadata": {"physics_parameters": {"nphotons": 2e5}}}
    record = attach_intensity_scale(container, config={"nphotons": 1e9})
    assert record.nphotons == 2e5
    assert record.nphotons_source == "metadata"
    assert container["physscale_record"] is record
    assert container["nphotons_source"] == "metadata"
    scale = container["intensity_scale"]
    assert isinstance(scale, torch.Tensor)
    assert (scale.ndim, scale.dtype, scale.device.type) == (0, torch.float64, "cpu")
    assert scale.item() == record.intensity_scale
    assert record.intensity_scale == pytest.approx(_reference_scale(x, 2e5), rel=1e-14)
    assert record.n_patterns == 20


def test_attach_falls_back_to_config_when_metadata_lacks_nphotons() -> None:
    container = SimpleNamespace(diffraction=_amplitudes(), metadata={"physics_parameters": {}})
    record = attach_intensity_scale(container, config=SimpleNamespace(nphotons=3e4))
    assert (record.nphotons, record.nphotons_source) == (3e4, "config")
    assert container.nphotons_source == "config"
    assert container.physscale_record is record


def test_explicit_nphotons_overrides_metadata() -> None:
    container = {"X": _amplitudes(), "metadata": {"physics_parameters": {"nphotons": 2e5}}}
    record = attach_intensity_scale(container, nphotons=NPHOTONS)
    assert (record.nphotons, record.nphotons_source) == (NPHOTONS, "explicit")
    assert record.nphotons_candidates == {"explicit": NPHOTONS, "metadata": 2e5}


def test_attach_without_any_nphotons_is_an_nphotons_error() -> None:
    with pytest.raises(ps.errors.NphotonsError, match="nphotons was not given"):
        attach_intensity_scale({"X": _amplitudes()})


def test_attach_with_nhwc_layout_equals_nchw_on_the_transposed_data() -> None:
    x = _amplitudes()
    nhwc = {"X": np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
    record = attach_intensity_scale(nhwc, nphotons=NPHOTONS, layout="NHWC")
    assert record.intensity_scale == pytest.approx(_reference_scale(x, NPHOTONS), rel=1e-14)
    assert record.pattern_shape == (6, 6)


def test_scale_is_derived_once_and_a_second_attach_is_refused() -> None:
    container = {"X": _amplitudes()}
    first = attach_intensity_scale(container, nphotons=NPHOTONS)
    container["X"] = container["X"] * 2
    with pytest.raises(
        ps.errors.StateError, match=r"already has a physscale_record.*overwrite=True"
    ):
        attach_intensity_scale(container, nphotons=NPHOTONS)
    assert container["physscale_record"] is first
    second = attach_intensity_scale(container, nphotons=NPHOTONS, overwrite=True)
    assert second.intensity_scale == pytest.approx(first.intensity_scale / 2, rel=1e-12)


def test_inference_container_gets_the_training_record_not_its_own_scale() -> None:
    train = {"X": _amplitudes()}
    record = attach_intensity_scale(train, nphotons=NPHOTONS)
    test = SimpleNamespace(X=_amplitudes(seed=9, brightness=10.0))
    attached = attach_intensity_scale(test, record=record)
    assert attached is record
    assert test.intensity_scale.item() == record.intensity_scale
    own = _reference_scale(test.X, NPHOTONS)
    assert own == pytest.approx(record.intensity_scale / math.sqrt(10), rel=0.05)


def test_record_with_derivation_arguments_is_refused() -> None:
    record = attach_intensity_scale({"X": _amplitudes()}, nphotons=NPHOTONS)
    with pytest.raises(ps.errors.StateError, match="nphotons would only apply to a new derivation"):
        attach_intensity_scale({"X": _amplitudes()}, record=record, nphotons=1.0)
    with pytest.raises(
        ps.errors.StateError, match=r"record must be a physscale\.ScaleRecord, got float"
    ):
        attach_intensity_scale({"X": _amplitudes()}, record=2.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("container", "key", "match"),
    [
        ({"X": 1, "diffraction": 2}, None, r"found both 'X' and 'diffraction'\); pass key"),
        ({"amps": 1}, None, r"found none\); pass key"),
        (SimpleNamespace(amps=1), "X", "has no 'X' attribute"),
        ({"amps": 1}, "X", "has no 'X' key"),
    ],
)
def test_data_field_that_is_missing_or_ambiguous_is_a_state_error(
    container: Any, key: str | None, match: str
) -> None:
    with pytest.raises(ps.errors.StateError, match=match):
        attach_intensity_scale(container, nphotons=NPHOTONS, key=key)


def test_read_only_mapping_is_refused() -> None:
    container: Mapping[str, Any] = MappingProxyType({"X": _amplitudes()})
    with pytest.raises(ps.errors.StateError, match="read-only mappingproxy; pass a dict"):
        attach_intensity_scale(container, nphotons=NPHOTONS)


def test_count_domain_data_warns_through_attach() -> None:
    counts = np.random.default_rng(0).poisson(50.0, size=(8, 1, 6, 6)).astype(np.float32)
    with pytest.warns(ps.UnitsWarning, match="raw photon counts"):
        attach_intensity_scale({"X": counts}, nphotons=NPHOTONS)


# ------------------------------------------------------------------ scale_for_batch
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_one_scale_becomes_a_0d_tensor_for_any_layout(layout: str) -> None:
    batch = torch.rand(3, 4, 5, 2)
    record = ps.derive_scale_record(torch.rand(4, 6, 6), nphotons=NPHOTONS)
    for scale in (2.5, torch.tensor(2.5), torch.tensor([2.5]), record):
        out = scale_for_batch(scale, batch, layout)
        assert out.shape == ()
    out = scale_for_batch(2.5, batch, layout)
    assert out.dtype == torch.float64
    assert (batch * out).dtype == torch.float32  # a 0-d scale never upcasts the batch
    assert torch.equal(batch * out, batch * 2.5)


@given(
    b=st.integers(2, 5),
    c=st.integers(1, 3),
    h=st.integers(1, 4),
    layout=st.sampled_from(["NCHW", "NHWC"]),
)
def test_per_sample_scale_multiplies_each_sample_by_its_own_value(
    b: int, c: int, h: int, layout: str
) -> None:
    # The last axis has length b, so a (B,) scale would broadcast silently along it.
    shape = (b, c, h, b) if layout == "NCHW" else (b, h, b, c)
    batch = torch.rand(shape, dtype=torch.float64) + 0.1
    scales = torch.arange(1, b + 1, dtype=torch.float64)
    out = scale_for_batch(scales, batch, layout)
    assert out.shape == (b, 1, 1, 1)
    product = batch * out
    for i in range(b):
        assert torch.equal(product[i], batch[i] * float(i + 1))
    assert torch.equal(scale_for_batch(scales.reshape(b, 1, 1, 1), batch, layout), out)


@pytest.mark.parametrize(
    "shape",
    [(4,), (3, 4), (1, 1, 1, 3), (2, 1, 1, 1), (3, 4, 1, 1), (3, 1, 1, 1, 1), (4, 1)],
)
def test_scale_shapes_that_could_broadcast_wrongly_are_refused(shape: tuple[int, ...]) -> None:
    batch = torch.rand(3, 4, 5, 5)
    with pytest.raises(ps.errors.BroadcastError, match="is ambiguous against a batch of shape"):
        scale_for_batch(torch.ones(shape), batch)


def test_batch_that_does_not_fit_the_layout_is_refused() -> None:
    with pytest.raises(ps.errors.BroadcastError, match="a NHWC batch must have 4 axes"):
        scale_for_batch(torch.ones(3), torch.rand(3, 5, 5), "NHWC")
    with pytest.raises(ps.errors.OptionError, match="layout must be one of"):
        scale_for_batch(torch.ones(3), torch.rand(3, 5, 5, 1), "HWC")
    with pytest.raises(ps.errors.BroadcastError, match=r"must be a torch\.Tensor"):
        scale_for_batch(1.0, np.ones((3, 5, 5, 1)))  # type: ignore[arg-type]


def test_layout_none_accepts_any_rank_with_samples_first() -> None:
    batch = torch.rand(3, 5, 5)
    assert scale_for_batch(torch.ones(3), batch, None).shape == (3, 1, 1)
    assert scale_for_batch(torch.ones(3), torch.rand(3), None).shape == (3,)


@pytest.mark.parametrize(
    ("scale", "error", "match"),
    [
        (torch.tensor([1.0, float("nan"), 1.0]), ps.errors.NonFiniteError, "NaN or infinite"),
        (torch.tensor([1.0, -1.0, 1.0]), ps.errors.NegativeValueError, "must be > 0 everywhere"),
        (torch.tensor(0.0), ps.errors.NegativeValueError, "must be > 0"),
        (-2.0, ps.errors.NegativeValueError, "must be > 0"),
        ("2", ps.errors.DtypeError, "must be a positive real number"),
    ],
)
def test_invalid_scale_values_are_refused(scale: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        scale_for_batch(scale, torch.rand(3, 1, 2, 2))


def test_a_trainable_scale_keeps_its_gradient() -> None:
    from physscale.nn import IntensityScaler

    scaler = IntensityScaler(3.0, trainable=True)
    batch = torch.rand(2, 1, 3, 3)
    (batch * scale_for_batch(scaler.scale, batch)).sum().backward()
    assert scaler.log_scale.grad is not None
    assert scaler.log_scale.grad.item() == pytest.approx(3.0 * batch.sum().item(), rel=1e-5)


# ------------------------------------------------------------------ collate
class _PerSampleScales(Dataset[dict[str, Any]]):
    def __init__(self, n: int, side: int) -> None:
        self.x = torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(1))
        self.scales = torch.linspace(1.0, 4.0, n)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"X": self.x[i], "intensity_scale": self.scales[i]}


def test_default_collate_would_broadcast_a_per_sample_scale_wrongly() -> None:
    """The failure mode itself: (B,) against (B, C, H, W) with W == B scales along W."""
    ds = _PerSampleScales(4, side=4)
    batch = default_collate([ds[i] for i in range(4)])
    assert batch["intensity_scale"].shape == (4,)
    wrong = batch["X"] * batch["intensity_scale"]  # no error, wrong numbers
    right = torch.stack([ds.x[i] * ds.scales[i] for i in range(4)])
    assert wrong.shape == right.shape
    assert not torch.allclose(wrong, right)


@given(b=st.integers(1, 6), side=st.integers(1, 6))
def test_collated_scale_multiplies_each_sample_by_its_own_value(b: int, side: int) -> None:
    ds = _PerSampleScales(b, side)
    loader = DataLoader(ds, batch_size=b, collate_fn=collate_with_scale)
    batch = next(iter(loader))
    assert batch["intensity_scale"].shape == (b, 1, 1, 1)
    product = batch["X"] * batch["intensity_scale"]
    for i in range(b):
        assert torch.equal(product[i], ds.x[i] * ds.scales[i])
    # And the batch helper agrees with what collate produced.
    assert torch.equal(
        scale_for_batch(batch["intensity_scale"], batch["X"]), batch["intensity_scale"]
    )


def test_collate_matches_the_rank_of_the_named_data_field() -> None:
    samples = [{"X": torch.ones(5, 5), "intensity_scale": float(i + 1)} for i in range(3)]
    batch = collate_with_scale(samples, like="X")
    assert batch["intensity_scale"].shape == (3, 1, 1)
    assert batch["intensity_scale"].flatten().tolist() == [1.0, 2.0, 3.0]
    collate = functools.partial(collate_with_scale, scale_key="s", ndim=2)
    assert collate([{"s": 2.0}, {"s": 3.0}])["s"].shape == (2, 1)


@pytest.mark.parametrize(
    ("samples", "kwargs", "match"),
    [
        ([], {}, "at least one sample"),
        ([(torch.ones(2), 1.0)], {}, "sample 0 is not a dict with a 'intensity_scale' entry"),
        ([{"X": torch.ones(2)}], {}, "sample 0 is not a dict"),
        ([{"intensity_scale": torch.ones(2)}], {}, "must carry one number"),
        ([{"intensity_scale": 1.0}], {"like": "X"}, "like='X' does not name a tensor field"),
        ([{"intensity_scale": -1.0}], {}, "must be > 0"),
        ([{"intensity_scale": torch.tensor(-1.0)}], {}, "must be > 0 everywhere"),
    ],
)
def test_collate_refuses_samples_it_cannot_shape_safely(
    samples: list[Any], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ps.PhysscaleError, match=match):
        collate_with_scale(samples, **kwargs)


@pytest.mark.parametrize(
    "scales",
    [
        [torch.tensor(2.0), torch.tensor([3.0])],  # a 0-d tensor beside a (1,) tensor
        [torch.tensor(2.0), 3.0],  # a tensor beside a float
        [2.0, torch.tensor([[3.0]], dtype=torch.float64)],
    ],
    ids=["0d-and-1", "tensor-and-float", "float-and-1x1"],
)
def test_collate_takes_every_documented_scale_form_mixed(scales: list[Any]) -> None:
    # Reported: these crashed inside default_collate.
    samples = [{"X": torch.ones(1, 2, 2) * (i + 1), "intensity_scale": s}
               for i, s in enumerate(scales)]  # fmt: skip
    batch = collate_with_scale(samples, like="X")
    assert batch["intensity_scale"].shape == (2, 1, 1, 1)
    assert batch["intensity_scale"].flatten().tolist() == [2.0, 3.0]
    assert batch["X"].shape == (2, 1, 2, 2)


@pytest.mark.parametrize(
    "scale",
    [torch.ones((), device="meta"), torch.ones(3).to_sparse()],
    ids=["meta", "sparse"],
)
def test_meta_or_sparse_scales_get_a_clear_error(scale: torch.Tensor) -> None:
    with pytest.raises(ps.errors.DtypeError, match=r"meta device|dense tensor"):
        scale_for_batch(scale, torch.ones(3, 1, 2, 2))


def test_with_validation_off_scale_for_batch_makes_no_value_check() -> None:
    # Shape-only tracing (meta tensors) and sync-free loops: no value check, no sync.
    meta = torch.ones(3, device="meta")
    with ps.validation(False):
        out = scale_for_batch(meta, torch.ones(3, 1, 2, 2, device="meta"))
        assert out.shape == (3, 1, 1, 1) and out.device.type == "meta"
        # A bad value passes unchecked here: that is what validation off gives up.
        assert scale_for_batch(torch.tensor([1.0, -1.0]), torch.ones(2, 1), None).shape == (2, 1)
    with pytest.raises(ps.errors.NegativeValueError):
        scale_for_batch(torch.tensor([1.0, -1.0]), torch.ones(2, 1), None)


def test_container_that_refuses_new_attributes_is_a_state_error() -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Frozen:
        X: np.ndarray

    with pytest.raises(ps.errors.StateError, match="cannot attach 'intensity_scale' to the Frozen"):
        attach_intensity_scale(Frozen(_amplitudes()), nphotons=NPHOTONS)


@pytest.mark.parametrize(
    "scale", [torch.tensor(True), torch.tensor(3), torch.ones(4, dtype=torch.int64)]
)
def test_bool_or_integer_scale_tensors_are_refused(scale: torch.Tensor) -> None:
    with pytest.raises(ps.errors.DtypeError, match="floating-point"):
        ps.scale_for_batch(scale, torch.ones(4, 1, 2, 2))
