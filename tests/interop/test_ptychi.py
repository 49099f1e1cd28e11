"""pty-chi 2.2.0: physscale's count-domain Poisson loss inside its autodiff reconstructor.

On pty-chi's own forward model (PlanarPtychographyForwardModel) and Poisson
counts simulated from it: our loss equals pty-chi's correct Poisson NLL (its
LSQML noise model, ``PoissonNLLLoss(log_input=False)``) to 1e-6 relative, the
gradients agree, its built-in AD ``POISSON`` loss is inf/NaN on the same
counts, a few epochs run inside ``PtychographyTask.run``, and a bundle round
trip gives the same prediction.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _hosts import host

import physscale as ps
from physscale.adapters import ptychi as adapter

HOW = "build the interop environment with scripts/make_interop_env.sh (pip install ptychi==2.2.0)"

N = 32  # detector side
SIDE = 4  # scan grid side
STEP = 6  # scan step, pixels


@pytest.fixture(scope="module")
def api() -> Any:
    host("ptychi", HOW)
    logging.getLogger("ptychi").setLevel(logging.ERROR)
    return host("ptychi.api", HOW)


def _scene() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:N, :N] - N / 2
    probe = (40.0 * np.exp(-(xx**2 + yy**2) / (2 * 5.0**2))).astype(np.complex64)
    pos = np.array([(i * STEP, j * STEP) for i in range(SIDE) for j in range(SIDE)], float)
    pos -= pos.mean(0)
    size = N + STEP * (SIDE - 1) + 8
    obj = np.exp(1j * 0.6 * rng.uniform(size=(size, size))) * (0.8 + 0.2 * rng.uniform())
    return {"probe": probe, "pos": pos, "object": obj.astype(np.complex64)}


def _task(api: Any, counts: np.ndarray, obj: np.ndarray, *, epochs: int = 1, **opts: Any) -> Any:
    scene = _scene()
    from ptychi.api.task import PtychographyTask

    o = api.AutodiffPtychographyOptions()
    o.object_options.pixel_size_m = 1e-8
    o.object_options.optimizable = True
    o.object_options.optimizer = api.Optimizers.ADAM
    o.object_options.step_size = opts.get("step_size", 1e-2)
    o.probe_options.optimizable = False
    o.probe_position_options.optimizable = False
    o.reconstructor_options.num_epochs = epochs
    o.reconstructor_options.batch_size = 4
    o.reconstructor_options.default_device = api.Devices.CPU
    o.reconstructor_options.loss_function = opts.get("loss", api.LossFunctions.MSE_SQRT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pty-chi's own deprecation/UserWarnings
        return PtychographyTask(
            o,
            diffraction_data=counts,
            object_data=obj[None],
            probe_data=opts.get("probe", scene["probe"][None, None]),
            probe_position_x_px=scene["pos"][:, 1],
            probe_position_y_px=scene["pos"][:, 0],
        )


@pytest.fixture(scope="module")
def simulated(api: Any) -> dict[str, Any]:
    """Counts simulated with pty-chi's own forward model from the true object."""
    scene = _scene()
    n = len(scene["pos"])
    task = _task(api, np.ones((n, N, N), np.float32), scene["object"])
    fm = task.reconstructor.forward_model
    with torch.no_grad():
        rate = fm(torch.arange(n)).double()
    counts = torch.poisson(rate, generator=torch.Generator().manual_seed(1))
    return {"rate": rate, "counts": counts, "scene": scene}


def test_builtin_poisson_is_log_input_and_blows_up_on_counts_where_ours_is_finite(
    api: Any, simulated: dict[str, Any]
) -> None:
    from ptychi import maps

    builtin = maps.get_loss_function_by_enum(api.LossFunctions.POISSON)()
    assert builtin.log_input  # the trap: intensities read as log-rates
    rate, counts = simulated["rate"].float(), simulated["counts"].float()
    assert not math.isfinite(float(builtin(rate, counts)))  # exp(rate) overflows
    ours = adapter.PoissonLoss()(rate, counts)
    assert math.isfinite(float(ours))


def test_loss_equals_ptychis_own_poisson_noise_model(api: Any, simulated: dict[str, Any]) -> None:
    from ptychi.forward_models import PoissonNoiseModel

    # Slightly off the truth, as during a reconstruction.
    pred = simulated["rate"] * 1.05 + 0.5
    counts = simulated["counts"]
    theirs = PoissonNoiseModel().nll(pred, counts)  # PoissonNLLLoss(log_input=False): mean
    ours = adapter.PoissonLoss()(pred, counts)
    # Same tf form and mean reduction; theirs takes log(pred + 1e-8), a relative
    # difference below 1e-8 * mean(k / pred) in the value.
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def test_gradients_agree_through_ptychis_forward_model(api: Any, simulated: dict[str, Any]) -> None:
    from ptychi.forward_models import PoissonNoiseModel

    scene = simulated["scene"]
    n = len(scene["pos"])
    # Near the truth, as late in a reconstruction: no pixel with counts is
    # predicted darker than the floors (ours 1e-12, theirs 1e-8 inside the log).
    wobble = np.exp(0.05j * np.random.default_rng(2).standard_normal(scene["object"].shape))
    start = (scene["object"] * wobble).astype(np.complex64)
    grads = []
    for loss_fn in (adapter.PoissonLoss(), PoissonNoiseModel().nll):
        task = _task(api, simulated["counts"].float().numpy(), start)
        fm = task.reconstructor.forward_model
        obj = task.reconstructor.parameter_group.object.tensor.data  # (1, H, W, 2) leaf
        obj.requires_grad_(True)
        obj.grad = None
        y_pred = fm(torch.arange(n))
        loss_fn(y_pred, simulated["counts"].float()).backward()
        grads.append(obj.grad.detach().double().clone())
    ours, theirs = grads
    assert torch.linalg.vector_norm(ours - theirs) <= 1e-5 * torch.linalg.vector_norm(theirs)


def test_masked_one_d_call_is_the_loss_on_the_valid_pixels(simulated: dict[str, Any]) -> None:
    # pty-chi calls loss_fn(y_pred[mask], y_true[mask]) with 1-D tensors.
    rate, counts = simulated["rate"], simulated["counts"]
    mask = torch.ones_like(rate, dtype=torch.bool)
    mask[:, :3, :] = False
    flat = adapter.PoissonLoss(reduction="sum")(rate[mask], counts[mask])
    full = ps.scaled_poisson_nll(rate, counts, 1.0, domain="intensity", reduction="sum", mask=mask)
    assert float(flat) == pytest.approx(float(full), rel=1e-12)


def test_a_few_epochs_run_inside_ptychis_own_loop(api: Any, simulated: dict[str, Any]) -> None:
    scene = simulated["scene"]
    n = len(scene["pos"])
    counts = simulated["counts"].float().numpy()
    task = _task(api, counts, np.ones_like(scene["object"]), epochs=1)
    loss = adapter.use_poisson_loss(task)
    assert task.reconstructor.loss_function is loss
    fm = task.reconstructor.forward_model

    def current() -> float:
        with torch.no_grad():
            return float(loss(fm(torch.arange(n)), simulated["counts"].float()))

    before = current()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task.run(4)
    after = current()
    assert math.isfinite(after)
    assert after < before


def test_use_poisson_loss_refuses_an_analytic_reconstructor(api: Any) -> None:
    with pytest.raises(ps.errors.StateError, match="autodiff"):
        adapter.use_poisson_loss(object())


def test_bundle_round_trip_gives_the_same_prediction(
    api: Any, simulated: dict[str, Any], tmp_path: Path
) -> None:
    from physscale.io import load_bundle, save_bundle

    scene = simulated["scene"]
    n = len(scene["pos"])
    counts = simulated["counts"].float().numpy()
    # The network side of a hybrid: normalized amplitudes and their exact record.
    _, record = ps.normalize_counts(counts)
    task = _task(api, counts, np.ones_like(scene["object"]))
    adapter.use_poisson_loss(task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task.run(2)
    # The reconstruction: the object and the probe (pty-chi rescales the probe
    # when it removes the object/probe ambiguity), as real (..., 2) views.
    group = task.reconstructor.parameter_group
    state = {
        "object": group.object.tensor.data.detach().clone(),
        "probe": group.probe.tensor.data.detach().clone(),
    }
    with torch.no_grad():
        before = task.reconstructor.forward_model(torch.arange(n)).clone()
    save_bundle(tmp_path / "recon.physscale", state, record)
    bundle = load_bundle(tmp_path / "recon.physscale")
    assert bundle.record == record
    obj, probe = (torch.view_as_complex(bundle.state_dict[k].contiguous()).numpy()
                  for k in ("object", "probe"))  # fmt: skip
    task2 = _task(api, counts, obj[0], probe=probe)
    with torch.no_grad():
        after = task2.reconstructor.forward_model(torch.arange(n))
    torch.testing.assert_close(after, before, rtol=1e-6, atol=0)
