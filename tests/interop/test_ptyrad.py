"""ptyrad 1.0.0: physscale's Poisson term inside PtyRADSolver's CombinedLoss and loop.

The measurements come from PtyRAD's own forward model (a PtychoModel with a
known object phase) and, for the loop, PtyRAD's own Poisson noise
(``meas_add_poisson_noise``: ``g * Poisson(I / g)``, ``g`` not stored). On
them the parity term is PtyRAD's ``loss_poissn`` (float32 ~4e-7, float64
~1e-16, gradients likewise), the photon likelihood is its value through the
stated identity, the installed loss returns PtyRAD's ``(total, parts)``,
and the solver's own loop runs with it. The record of the solver's
measurements gives back PtyRAD's logged normalization constant.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from _hosts import host

import physscale as ps
from physscale.adapters import ptyrad as adapter

HOW = (
    "build the PtyRAD environment: scripts/make_interop_env.sh ptyrad "
    "(Python 3.12, pip install ptyrad==1.0.0 with torch/torchvision pinned together)"
)

N = 32  # detector side
SIDE = 6  # scan grid side
DOSE = 1e4  # PtyRAD's total_e_per_pattern


@pytest.fixture(scope="module")
def pr() -> Any:
    host("ptyrad", HOW)
    logging.getLogger("ptyrad").setLevel(logging.ERROR)
    return host("ptyrad.solver", HOW)


def _params(meas: np.ndarray, *, noise: float | None = None, niter: int = 3) -> dict[str, Any]:
    from ptyrad.params.ptyrad_params import PtyRADParams

    init = {
        "probe_kv": 80,
        "probe_conv_angle": 20.0,
        "probe_aberrations": {"C10": 0},
        "meas_Npix": N,
        "pos_N_scan_slow": SIDE,
        "pos_N_scan_fast": SIDE,
        "pos_scan_step_size": 0.5,
        "pos_scan_rand_std": 0,
        "probe_pmode_max": 1,
        "obj_Nlayer": 1,
        "obj_slice_thickness": 2,
        "meas_source": "custom",
        "meas_params": meas,
        "meas_calibration": {"mode": "dx", "value": 0.2},
        "random_seed": 0,
    }
    if noise is not None:
        init["meas_add_poisson_noise"] = {"unit": "total_e_per_pattern", "value": noise}
    params = {
        "init_params": init,
        "recon_params": {
            "NITER": niter,
            "BATCH_SIZE": {"size": 12, "grad_accumulation": 1},
            "SAVE_ITERS": None,
        },
        "loss_params": {"loss_single": {"state": False}, "loss_poissn": {"state": True}},
    }
    return PtyRADParams(**params).model_dump()


def _solver(pr: Any, meas: np.ndarray, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's OptimizeWarning from PtyRAD's probe fit
        return pr.PtyRADSolver(_params(meas, **kw), device="cpu", seed=0)


def _model(solver: Any) -> Any:
    from ptyrad.core import PtychoModel

    return PtychoModel(solver.init.init_variables, solver.params["model_params"], device="cpu")


@pytest.fixture(scope="module")
def clean(pr: Any) -> np.ndarray:
    """Noise-free patterns of a known object phase, from PtyRAD's forward model."""
    model = _model(_solver(pr, np.ones((SIDE * SIDE, N, N), np.float32)))
    rng = np.random.default_rng(0)
    with torch.no_grad():
        phase = rng.uniform(0, 0.8, size=model.opt_objp.shape)
        model.opt_objp.data = torch.as_tensor(phase, dtype=model.opt_objp.dtype)
        out: np.ndarray = model(np.arange(SIDE * SIDE)).numpy()
    return out


@pytest.fixture(scope="module")
def noisy(pr: Any, clean: np.ndarray) -> Any:
    """A solver on PtyRAD's own Poisson noise of ``clean`` (``g * Poisson(I / g)``)."""
    return _solver(pr, clean, noise=DOSE)


def _batch(solver: Any, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    model = _model(solver)  # the initial guess: far from the data, as at the start
    idx = np.arange(12)
    with torch.no_grad():
        model_dp = model(idx).to(dtype)
    measured = torch.as_tensor(model.get_measurements(torch.as_tensor(idx))).to(dtype)
    return model_dp.requires_grad_(), measured


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float32, 2e-6), (torch.float64, 1e-14)])
def test_parity_term_is_ptyrads_loss_poissn(noisy: Any, dtype: torch.dtype, rel: float) -> None:
    model_dp, measured = _batch(noisy, dtype)
    theirs = noisy.loss_fn.get_loss_poissn(model_dp, measured)
    ours = adapter.PoissonTerm(parity=True)(model_dp, measured)
    assert ours.dtype == theirs.dtype == dtype
    assert float(ours) == pytest.approx(float(theirs), rel=rel)
    g_theirs = torch.autograd.grad(theirs, model_dp)[0]
    g_ours = torch.autograd.grad(ours, model_dp)[0]
    assert float((g_ours - g_theirs).abs().max()) <= rel * float(g_theirs.abs().max())


def test_ptyrads_value_is_the_photon_nll_through_the_identity(noisy: Any) -> None:
    """loss_poissn = (mean NLL(bkg s^2 eps) - s^2 eps) / (s^2 mean(I)) + 2 log s, any s."""
    model_dp, measured = _batch(noisy, torch.float64)
    theirs = float(noisy.loss_fn.get_loss_poissn(model_dp, measured))
    eps = 1e-6
    for s in (1.0, float(adapter.record_from_solver(noisy)), 1e3):
        nll = ps.scaled_poisson_nll(
            model_dp, measured, s, domain="intensity", background=s**2 * eps
        )
        value = (float(nll) - s**2 * eps) / (s**2 * float(measured.mean())) + 2 * math.log(s)
        assert value == pytest.approx(theirs, rel=1e-12)


def test_photon_term_is_the_deviance_in_photons(noisy: Any) -> None:
    model_dp, measured = _batch(noisy, torch.float64)
    record = adapter.record_from_solver(noisy)
    s2 = record.intensity_scale**2
    ours = adapter.PoissonTerm(record)(model_dp, measured)
    k, lam = s2 * measured, s2 * (model_dp.detach() + 1e-6)
    reference = torch.where(k > 0, lam - k - k * torch.log(lam / k), lam).mean()
    assert float(ours) == pytest.approx(float(reference), rel=1e-12)


def test_installed_loss_returns_ptyrads_total_and_parts(noisy: Any) -> None:
    model_dp, measured = _batch(noisy, torch.float32)
    host_loss = noisy.loss_fn
    patches = (torch.zeros(1), torch.zeros(1), torch.ones(1))
    total, parts = host_loss(model_dp, measured, *patches)
    try:
        term = adapter.install_loss(noisy, parity=True)
        assert term.parity and noisy.loss_fn is not host_loss
        assert noisy.loss_fn.loss_params is host_loss.loss_params
        ours_total, ours_parts = noisy.loss_fn(model_dp, measured, *patches)
        assert len(ours_parts) == len(parts) == len(host_loss.loss_params)
        assert float(ours_total) == pytest.approx(float(total), rel=2e-6)
    finally:
        noisy.loss_fn = host_loss


def test_photon_likelihood_trains_in_ptyrads_own_loop(pr: Any, clean: np.ndarray) -> None:
    solver = _solver(pr, clean, noise=DOSE, niter=4)
    record = adapter.record_from_solver(solver)
    adapter.install_loss(solver, record)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solver.run()
    history = [loss for _, loss in solver.reconstruct_results.loss_iters]
    assert len(history) == 4 and all(math.isfinite(h) for h in history)
    assert history[-1] < history[0]


def test_record_of_the_measurements_is_ptyrads_normalization_constant(
    pr: Any, clean: np.ndarray
) -> None:
    counts = np.random.default_rng(3).poisson(clean * (DOSE / clean.sum((-2, -1)).mean()))
    counts = counts.astype(np.float32)
    solver = _solver(pr, counts)  # max_at_one: I = counts / c, c logged, not stored
    c = float(np.mean(counts, axis=0, dtype=np.float32).max())
    _, raw = ps.normalize_counts(counts)
    record = adapter.record_from_solver(solver, nphotons=raw.nphotons)
    assert record.domain == "intensity" and record.nphotons_source == "explicit"
    assert record.intensity_scale**2 == pytest.approx(c, rel=1e-6)  # float32 data


def test_record_takes_ptyrads_own_dose_and_its_quantum_is_the_smallest_value(
    noisy: Any, clean: np.ndarray
) -> None:
    record = adapter.record_from_solver(noisy)
    assert record.nphotons_source == "config" and record.nphotons == DOSE
    # PtyRAD's noise: I = g * Poisson(I0 / g), g = (sum of the max_at_one patterns
    # / n) / dose, stored nowhere. Its smallest nonzero value is one count.
    i0 = clean / np.mean(clean, axis=0, dtype=np.float32).max()
    g_true = float(i0.sum() / len(i0)) / DOSE
    meas = noisy.init.init_variables["measurements"].astype(np.float64)
    g = float(meas[meas > 0].min())
    assert g == pytest.approx(g_true, rel=2e-7)
    assert np.abs(meas / g - np.round(meas / g)).max() < 1e-4  # whole counts to float32
    # The dose is the expected counts; the realized ones differ by Poisson noise.
    assert 1 / record.intensity_scale**2 == pytest.approx(g, rel=1e-2)


def test_host_traps_the_docs_name(noisy: Any) -> None:
    model_dp, measured = _batch(noisy, torch.float32)
    zero = torch.zeros_like(measured)
    # An all-zero batch: PtyRAD divides by its mean, 0: value inf, gradient NaN.
    theirs = noisy.loss_fn.get_loss_poissn(model_dp, zero)
    assert math.isinf(float(theirs))
    g = torch.autograd.grad(theirs, model_dp)[0]
    assert not bool(torch.isfinite(g).any())
    record = adapter.record_from_solver(noisy)
    ours = adapter.PoissonTerm(record)(model_dp, zero)
    assert math.isfinite(float(ours))
    assert bool(torch.isfinite(torch.autograd.grad(ours, model_dp)[0]).all())


def test_install_loss_refuses_dp_pow_and_a_missing_scale(noisy: Any) -> None:
    host_loss = noisy.loss_fn
    try:
        with pytest.raises(ps.PhysscaleError, match="record_from_solver"):
            adapter.install_loss(noisy)
        host_loss.loss_params["loss_poissn"]["dp_pow"] = 0.5
        with pytest.raises(ps.PhysscaleError, match="dp_pow"):
            adapter.install_loss(noisy, parity=True)
    finally:
        host_loss.loss_params["loss_poissn"]["dp_pow"] = 1.0
        noisy.loss_fn = host_loss
