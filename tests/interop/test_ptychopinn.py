"""PtychoPINN's PyTorch port (ptycho_torch): its container, its loss slot, its loop, its bundles.

Against the real port (``PTYCHOPINN_SRC``): the scale attached from its
``PtychoDataContainerTorch`` equals the port's own
``derive_intensity_scale_from_amplitudes`` (1e-6 relative: the port sums in
float32); our loss in its ``Loss`` slot gives its ``compute_loss`` value and
parameter gradients (float64 model: 1e-10 relative) and keeps its
``state_dict`` keys; its loss has NaN gradients where the rate and the counts
are both 0 and ours does not; a few steps run in its own Lightning
``training_step``; a bundle written by its ``save_torch_bundle`` and read by
its ``load_torch_bundle`` gives the same inference and our record back.
"""

from __future__ import annotations

import math
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _hosts import host, needs_eps_zero, needs_persistent_option, port_src

import physscale as ps
from physscale.adapters import ptychopinn as adapter

HOW = "set PTYCHOPINN_SRC and build the env with scripts/make_interop_env.sh"
N = 64  # the port's decoders support N in (64, 128, ...)


@pytest.fixture(scope="module")
def port() -> dict[str, Any]:
    port_src()
    model = host("ptycho_torch.model", HOW)
    config = host("ptycho_torch.config_params", HOW)
    bridge = host("ptycho_torch.data_container_bridge", HOW)
    helper = host("ptycho_torch.helper", HOW)
    return {"model": model, "config": config, "bridge": bridge, "helper": helper}


def _lightning(port: dict[str, Any], *, channels: int = 1) -> Any:
    cfg = port["config"]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return port["model"].PtychoPINN_Lightning(
            cfg.ModelConfig(C_model=channels, C_forward=channels, n_filters_scale=1,
                            mode="Unsupervised", loss_function="Poisson"),
            cfg.DataConfig(N=N, C=channels, grid_size=(1, 1)),
            cfg.TrainingConfig(epochs=1, batch_size=4),
            cfg.InferenceConfig(),
        )  # fmt: skip


def _probe() -> torch.Tensor:
    yy, xx = np.mgrid[:N, :N] - N / 2
    return torch.from_numpy(np.exp(-(xx**2 + yy**2) / (2 * 8.0**2))).to(torch.complex64)


def _batch(images: torch.Tensor, scale: float, observed: torch.Tensor | None = None) -> tuple:
    """The port's batch: (fields, probe (1, 1, 1, N, N), probe scaling (B,))."""
    b, c = images.shape[:2]
    fields = {
        "images": images,
        "coords_relative": torch.zeros(b, c, 1, 2, dtype=images.dtype),
        "rms_scaling_constant": torch.ones(b, 1, 1, 1, dtype=images.dtype),
        "physics_scaling_constant": torch.full((b, 1, 1, 1), scale, dtype=images.dtype),
        "experiment_id": torch.zeros(b, dtype=torch.long),
    }
    if observed is not None:
        fields["observed_images"] = observed
    probe = _probe().to(torch.complex128 if images.dtype == torch.float64 else torch.complex64)
    return fields, probe[None, None, None], torch.ones(b, dtype=images.dtype)


def _container(port: dict[str, Any], x_nhwc: np.ndarray, nphotons: float) -> Any:
    n, _, _, c = x_nhwc.shape
    grouped = {
        "X_full": x_nhwc.astype(np.float32),
        "Y": None,
        "coords_relative": np.zeros((n, 1, 2, c), np.float32),
        "coords_offsets": np.zeros((n, 1, 2, 1), np.float64),
        "nn_indices": np.zeros((n, c), np.int32),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        container = port["bridge"].PtychoDataContainerTorch(grouped, _probe().numpy())
    container.metadata = {"physics_parameters": {"nphotons": nphotons}}
    return container


# --------------------------------------------------------------------------- data


def test_attach_takes_the_layout_from_the_container_and_matches_the_port(
    port: dict[str, Any],
) -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, (6, N, N, 4))
    x, _ = ps.normalize_amplitudes(raw, layout="NHWC")
    container = _container(port, x, 1e6)
    container.nphotons_source = "port's own value"  # a port field we must not touch
    record = adapter.attach(container)
    # (N/2)**2 = 1024 per pattern, so s = sqrt(1e6 / 1024) = 31.25; the 125 of the
    # defaulted axes (pattern_shape (64, 4)) is the trap this avoids.
    assert record.intensity_scale == pytest.approx(31.25, rel=1e-6)
    assert record.pattern_shape == (N, N)
    assert record.n_patterns == 24
    assert record.nphotons_source == "metadata"
    theirs = port["helper"].derive_intensity_scale_from_amplitudes(container.X, 1e6)
    assert float(container.physics_scaling_constant) == pytest.approx(float(theirs), rel=1e-6)
    assert container.physics_scaling_constant.shape == (1, 1, 1)
    assert container.physics_scaling_constant.dtype == torch.float32
    assert container.physscale_record == record
    assert container.nphotons_source == "port's own value"
    with pytest.raises(ps.errors.StateError, match="already has"):
        adapter.attach(container)


def test_attach_refuses_a_container_of_unknown_layout(port: dict[str, Any]) -> None:
    class Other:
        X = torch.ones(2, 4, N, N)

    with pytest.raises(ps.errors.StateError, match="layout"):
        adapter.attach(Other())


# --------------------------------------------------------------------------- loss


def _simulated(model: Any, scale: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs, and Poisson observations drawn from the model's own prediction."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, N, N, generator=g)
    captured: dict[str, torch.Tensor] = {}
    slot = model.Loss

    class Spy(torch.nn.Module):
        def forward(self, pred: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
            captured["pred"] = pred.detach()
            return slot(pred, obs)

    model.Loss = Spy()
    with torch.no_grad():
        model.compute_loss(_batch(x, scale))
    model.Loss = slot
    rate = (captured["pred"] * 1.1) ** 2  # the truth is a bit brighter than the model
    counts = torch.poisson(rate, generator=g)
    counts[rate < 1e-12] = 0.0  # no photons where the model predicts none (see eps)
    return x, counts.sqrt() / scale


def test_loss_in_the_slot_gives_the_ports_value_and_gradients(port: dict[str, Any]) -> None:
    scale = 3.0
    # float32: the port's forward model (grid_sample with float32 grids) runs in float32 only.
    ours_model, theirs_model = _lightning(port), _lightning(port)
    theirs_model.load_state_dict(ours_model.state_dict())
    x, obs = _simulated(theirs_model, scale)
    batch = _batch(x, scale, observed=obs)
    theirs = theirs_model.compute_loss(batch)
    theirs.backward()
    ours_model.Loss = ps.ScaledPoissonNLLLoss(1.0, form="exact", reduction="per_sample")
    ours = ours_model.compute_loss(batch)
    ours.backward()
    # Both in float32 with different summation orders: the value to 1e-6, each
    # parameter's gradient to 1e-4 of its norm.
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    compared = 0
    for (name, p), q in zip(ours_model.named_parameters(), theirs_model.parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None, name
            continue
        compared += 1
        assert torch.linalg.vector_norm(p.grad - q.grad) <= 1e-4 * (
            torch.linalg.vector_norm(q.grad) + 1e-30
        ), name
    assert compared > 10


def test_per_sample_values_equal_the_ports_poisson_loss(port: dict[str, Any]) -> None:
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(5, 4, N, N, generator=g, dtype=torch.float64) * 30
    obs = torch.poisson(pred**2, generator=g).sqrt()
    theirs = port["model"].PoissonLoss()(pred, obs)
    ours = ps.scaled_poisson_nll(pred, obs, 1.0, form="exact", reduction="per_sample")
    torch.testing.assert_close(ours, theirs, rtol=2.5e-14, atol=0)


def test_the_ports_loss_has_nan_gradients_where_rate_and_counts_are_zero(
    port: dict[str, Any],
) -> None:
    pred = torch.full((1, 1, 2, 2), 2.0, dtype=torch.float64)
    pred[0, 0, 0, 0] = 0.0  # dark prediction...
    obs = torch.full_like(pred, 2.0)
    obs[0, 0, 0, 0] = 0.0  # ...and no photons: a perfect fit at that pixel
    p_theirs = pred.clone().requires_grad_(True)
    port["model"].PoissonLoss()(p_theirs, obs).sum().backward()
    assert torch.isnan(p_theirs.grad[0, 0, 0, 0])
    p_ours = pred.clone().requires_grad_(True)
    ps.scaled_poisson_nll(p_ours, obs, 1.0, form="exact", reduction="per_sample").sum().backward()
    assert bool(torch.isfinite(p_ours.grad).all())
    assert float(p_ours.grad[0, 0, 0, 0]) == 0.0


@needs_persistent_option
def test_install_loss_keeps_the_state_dict_keys(port: dict[str, Any]) -> None:
    model = _lightning(port)
    keys = list(model.state_dict())
    adapter.install_loss(model)
    assert list(model.state_dict()) == keys
    # ...so an existing port checkpoint loads strictly, and back.
    fresh = _lightning(port)
    fresh.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(fresh.state_dict(), strict=True)


@needs_persistent_option
@needs_eps_zero
def test_eps_zero_reproduces_the_port_where_the_rate_is_below_the_floor(
    port: dict[str, Any],
) -> None:
    pred = torch.tensor([[[[1e-9, 2.0], [3.0, 1e-8]]]], dtype=torch.float64)
    obs = torch.tensor([[[[1.0, 2.0], [1.0, 0.0]]]], dtype=torch.float64)
    p_theirs = pred.clone().requires_grad_(True)
    port["model"].PoissonLoss()(p_theirs, obs).sum().backward()
    p_ours = pred.clone().requires_grad_(True)
    adapter.poisson_loss(eps=0.0)(p_ours, obs).sum().backward()
    torch.testing.assert_close(p_ours.grad, p_theirs.grad, rtol=1e-12, atol=0)


def test_install_loss_refuses_a_model_without_the_poisson_amplitude_path(
    port: dict[str, Any],
) -> None:
    model = _lightning(port)
    model.model_config.loss_function = "MAE"
    with pytest.raises(ps.errors.StateError, match="Poisson"):
        adapter.install_loss(model)


@needs_persistent_option
def test_a_few_steps_run_inside_the_ports_training_step(port: dict[str, Any]) -> None:
    lightning = host("lightning", HOW)
    scale = 3.0
    model = _lightning(port)
    adapter.install_loss(model)
    x, obs = _simulated(model, scale)
    batch = _batch(x, scale, observed=obs)

    class Batches(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> tuple:
            return batch

    loader = torch.utils.data.DataLoader(Batches(), batch_size=None)
    with torch.no_grad():
        before = float(model.compute_loss(batch))
    trainer = lightning.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    with torch.no_grad():
        after = float(model.compute_loss(batch))
    assert math.isfinite(after)
    assert after != before


# --------------------------------------------------------------------------- scaler


def test_scaler_conversion_reproduces_the_ports_scaler(port: dict[str, Any]) -> None:
    cfg = port["config"]
    x = torch.rand(2, 1, 8, 8)
    trainable = port["model"].IntensityScalerModule(
        cfg.ModelConfig(intensity_scale=250.0, intensity_scale_trainable=True)
    )
    ours = adapter.scaler_from_port(trainable)
    torch.testing.assert_close(ours.normalize(x), trainable.scale(x, None))
    torch.testing.assert_close(ours.denormalize(x), trainable.inv_scale(x, None))
    fixed = port["model"].IntensityScalerModule(cfg.ModelConfig(intensity_scale_trainable=False))
    ours = adapter.scaler_from_port(fixed, scale_factor=0.04)
    torch.testing.assert_close(ours.normalize(x), fixed.scale(x, 0.04))
    f = adapter.port_factor(ours)
    assert f == pytest.approx(0.04, rel=1e-6)
    torch.testing.assert_close(fixed.inv_scale(x, f), ours.denormalize(x))


# --------------------------------------------------------------------------- bundles


@pytest.fixture
def legacy_params(monkeypatch: pytest.MonkeyPatch, port: dict[str, Any]) -> None:
    # ptycho.params holds the legacy global params.cfg and imports TensorFlow for
    # nothing the bundle code uses; the interop env has no TensorFlow (importing
    # it before triton crashes there). Give the bundle code the dict it reads.
    import ptycho

    stub = types.ModuleType("ptycho.params")
    stub.cfg = {}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ptycho.params", stub)
    monkeypatch.setattr(ptycho, "params", stub, raising=False)


def _port_training_config(nphotons: float) -> Any:
    from ptycho.config.config import ModelConfig, TrainingConfig

    return TrainingConfig(model=ModelConfig(N=N, gridsize=1), nphotons=nphotons)


@pytest.mark.usefixtures("legacy_params")
def test_bundle_round_trip_gives_the_same_inference_and_record(
    port: dict[str, Any], tmp_path: Path
) -> None:
    from ptycho.config.config import dataclass_to_legacy_dict

    manager = host("ptycho_torch.model_manager", HOW)
    config = _port_training_config(1e6)
    record = ps.closed_form_scale_record(1e6, N)
    base = tmp_path / "wts.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The model the port's loader rebuilds from the saved params, scale included
        # (its load_torch_bundle loads weights with strict=False and ignores mismatches).
        params = adapter.scale_into_params(dataclass_to_legacy_dict(config), record)
        model = manager.create_torch_model_with_gridsize(1, N, params)
        path = adapter.save_bundle(
            {"autoencoder": model, "diffraction_to_obj": model}, base, config, record
        )
        models, params = manager.load_torch_bundle(str(base))
    assert path.name == "wts.h5.zip"
    assert params["intensity_scale"] == record.intensity_scale
    assert adapter.record_from_bundle(base) == record
    loaded = models["diffraction_to_obj"]
    x = torch.rand(2, 1, N, N)
    probe = _batch(x, 1.0)[1]
    model.eval()
    loaded.eval()
    with torch.no_grad():
        a = model.forward_predict(x, torch.zeros(2, 1, 1, 2), probe, torch.ones(2, 1, 1, 1))
        b = loaded.forward_predict(x, torch.zeros(2, 1, 1, 2), probe, torch.ones(2, 1, 1, 1))
    torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.usefixtures("legacy_params")
def test_a_bundle_the_port_wrote_alone_gives_an_explicit_record(
    port: dict[str, Any], tmp_path: Path
) -> None:
    manager = host("ptycho_torch.model_manager", HOW)
    model = _lightning(port)
    base = tmp_path / "wts.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager.save_torch_bundle(
            {"autoencoder": model, "diffraction_to_obj": model},
            str(base),
            _port_training_config(1e6),
            intensity_scale=31.25,
        )
    record = adapter.record_from_bundle(base)
    assert record.intensity_scale == 31.25
    assert record.method == "explicit"
    assert record.nphotons == 1e6
    assert record.nphotons_source == "config"
