"""cdtools-py 0.3.2: physscale's Poisson loss inside FancyPtycho and its Adam reconstructor.

Counts are simulated with cdtools' own forward model (FancyPtycho from a
known random-phase object). On them our loss, in cdtools' argument order, is
cdtools' ``tools.losses.poisson_nll`` in float32 (the gradient to the bit,
the value to float32 rounding of the total), ``subtract_min=True`` is the deviance (to
float64 rounding against cdtools in float64), and on normalized patterns it
is ``s**2`` times cdtools' up to a constant. :func:`install_loss` keeps the
model's ``state_dict`` keys, trains inside ``Adam_optimize``, and on
normalized data with its ``lr_factors`` keeps the background where the
count-data run keeps it (without, it runs away). The
host's traps the docs name are reproduced.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from _hosts import host

import physscale as ps
from physscale.adapters import cdtools as adapter

HOW = "build its environment: scripts/make_interop_env.sh cdtools (pip install cdtools-py==0.3.2)"

N = 32  # detector side
SIDE = 5  # scan grid side
STEP = 4e-6  # scan step, metres
NPHOTONS = 1e6  # mean counts per pattern
GEOMETRY = {"distance": 0.3, "basis": np.array([[0, -40e-6], [-40e-6, 0], [0, 0]])}


@pytest.fixture(scope="module")
def cd() -> Any:
    return host("cdtools", HOW)


def _translations() -> np.ndarray:
    rng = np.random.default_rng(0)
    xs = np.arange(SIDE) * STEP
    tr = np.array([[x, y, 0.0] for x in xs for y in xs])
    tr[:, :2] += rng.normal(scale=0.2e-6, size=(len(tr), 2))
    return tr


def _dataset(cd: Any, patterns: torch.Tensor) -> Any:
    from cdtools.datasets import Ptycho2DDataset

    return Ptycho2DDataset(_translations(), patterns, wavelength=1e-9, detector_geometry=GEOMETRY)


def _model(cd: Any, dataset: Any, **kw: Any) -> Any:
    from cdtools.models import FancyPtycho

    torch.manual_seed(0)
    return FancyPtycho.from_dataset(dataset, obj_padding=10, **kw)


@pytest.fixture(scope="module")
def simulated(cd: Any) -> dict[str, Any]:
    """Counts from cdtools' own forward model of a random-phase object."""
    tr = _translations()
    truth = _model(cd, _dataset(cd, torch.ones(len(tr), N, N)))
    rng = np.random.default_rng(1)
    with torch.no_grad():
        phase = torch.as_tensor(rng.uniform(-0.5, 0.5, size=truth.obj.shape), dtype=torch.float32)
        truth.obj.data = torch.exp(1j * phase).to(truth.obj.dtype)
    clean = truth.sim_to_dataset([torch.arange(len(tr)), torch.as_tensor(tr, dtype=torch.float32)])
    rate = clean.patterns.double()
    rate = rate * (NPHOTONS / rate.sum((-2, -1)).mean())
    counts = torch.poisson(rate, generator=torch.Generator().manual_seed(2)).float()
    return {"counts": counts, "translations": tr}


def _batch(cd: Any, simulated: dict[str, Any], patterns: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """A model on ``patterns`` and its (not yet converged) simulation of the first 10."""
    model = _model(cd, _dataset(cd, patterns), loss="poisson nll")
    tr = torch.as_tensor(simulated["translations"][:10], dtype=torch.float32)
    return model, model.forward(torch.arange(10), tr)


def test_loss_is_cdtools_poisson_nll_and_its_gradient_to_the_bit(
    cd: Any, simulated: dict[str, Any]
) -> None:
    from cdtools.tools.losses import poisson_nll

    counts = simulated["counts"]
    model, sim = _batch(cd, simulated, counts)
    pats = counts[:10]
    assert model.mask is not None and model.mask.dtype == torch.bool  # what run_epoch passes
    theirs = poisson_nll(pats, sim, mask=model.mask)
    ours = adapter.poisson_nll(pats, sim, mask=model.mask)
    g_theirs = torch.autograd.grad(theirs, sim, retain_graph=True)[0]
    g_ours = torch.autograd.grad(ours, sim, retain_graph=True)[0]
    assert ours.dtype == theirs.dtype == torch.float32
    # Elementwise the core forms lam - k*log(lam) with one fused multiply-add where
    # cdtools rounds xlogy and the subtraction apart: at most 1 ulp per pixel, and
    # the float32 total within a few ulp (rel 0 on some batches, 1 ulp on this one).
    assert float(ours) == pytest.approx(float(theirs), rel=3e-7, abs=0)
    assert torch.equal(g_ours, g_theirs)  # the gradient 1 - k/lam: the same operations
    # Without a mask the sum runs in another order: float32 rounding of the total.
    no_mask = adapter.poisson_nll(pats, sim)
    assert float(no_mask) == pytest.approx(float(poisson_nll(pats, sim)), rel=1e-6)


def test_subtract_min_is_the_deviance_exact_where_cdtools_float32_cancels(
    cd: Any, simulated: dict[str, Any]
) -> None:
    from cdtools.tools.losses import poisson_nll

    counts = simulated["counts"]
    _, sim = _batch(cd, simulated, counts)
    pats, mask = counts[:10], None
    sim64 = sim.detach().double().requires_grad_()
    reference = poisson_nll(pats.double(), sim64, subtract_min=True)  # cdtools in float64
    g_ref = torch.autograd.grad(reference, sim64)[0]
    ours = adapter.poisson_nll(pats, sim, mask=mask, subtract_min=True)
    g_ours = torch.autograd.grad(ours, sim)[0]
    assert float(ours) == pytest.approx(float(reference), rel=1e-7)  # float64 inside
    cdtools32 = float(poisson_nll(pats, sim.detach(), subtract_min=True))
    assert abs(cdtools32 - float(reference)) > 10 * abs(float(ours) - float(reference))
    # Same gradient as every form (1 - k/lam), float32 rounding of it.
    assert float((g_ours.double() - g_ref).abs().max()) <= 1e-6 * float(g_ref.abs().max())


def test_on_normalized_patterns_the_loss_is_photons(cd: Any, simulated: dict[str, Any]) -> None:
    from cdtools.tools.losses import poisson_nll

    counts = simulated["counts"]
    x, record = ps.normalize_counts(counts.double())
    s = record.intensity_scale
    normalized = (x**2).float()  # counts / s**2
    _, sim = _batch(cd, simulated, normalized)
    pats = normalized[:10]
    theirs = poisson_nll(pats.double(), sim.double(), subtract_min=True)
    ours = adapter.poisson_nll(pats, sim, subtract_min=True, scale=record)
    # Deviance: homogeneous of degree 1 in (rate, counts), eps in pattern units.
    assert float(ours) == pytest.approx(s**2 * float(theirs), rel=1e-5)
    g_theirs = torch.autograd.grad(poisson_nll(pats, sim), sim, retain_graph=True)[0]
    g_ours = torch.autograd.grad(adapter.poisson_nll(pats, sim, scale=record), sim)[0]
    assert torch.allclose(g_ours.double(), s**2 * g_theirs.double(), rtol=1e-5, atol=1e-6 * s**2)


def test_install_loss_trains_in_adam_optimize_and_keeps_the_state_dict(
    cd: Any, simulated: dict[str, Any]
) -> None:
    counts = simulated["counts"]
    dataset = _dataset(cd, counts)
    model = _model(cd, dataset, loss="poisson nll")
    keys = set(model.state_dict())
    loss = adapter.install_loss(model)
    assert set(model.state_dict()) == keys
    assert model.loss is loss and isinstance(model.loss_normalizer, adapter.PhotonNormalizer)
    history = list(
        model.Adam_optimize(
            8, dataset, batch_size=5, lr=0.02, lr_factors=loss.lr_factors, thread=False
        )
    )
    assert all(math.isfinite(h) for h in history)
    assert history[-1] < 0.2 * history[0]
    # The normalized deviance: about 1 at a Poisson-limited fit, from far above.
    assert history[-1] > 0.5
    with torch.no_grad():
        tr = torch.as_tensor(simulated["translations"], dtype=torch.float32)
        predicted = model.forward(torch.arange(len(tr)), tr).sum()
    assert float(predicted) == pytest.approx(float(counts.sum()), rel=0.05)


def test_normalized_data_need_the_background_lr_factor(cd: Any, simulated: dict[str, Any]) -> None:
    counts = simulated["counts"]
    x, record = ps.normalize_counts(counts.double())
    s = record.intensity_scale
    normalized = (x**2).float()
    backgrounds = {}
    for name, data, scale, factors in (
        ("counts", counts, 1.0, True),
        ("normalized", normalized, record, True),
        ("normalized, no factor", normalized, record, False),
    ):
        dataset = _dataset(cd, data)
        model = _model(cd, dataset, loss="poisson nll")
        s_here = 1.0 if scale == 1.0 else s
        # eps in pattern units: the same 1e-6 photons of rate floor in every run.
        loss = adapter.install_loss(model, scale, eps=1e-6 / s_here**2)
        with torch.no_grad():
            model.background.fill_(1e-2 / s_here)  # the same start in photons: 1e-4 counts
        lr_factors = loss.lr_factors if factors else {}
        list(
            model.Adam_optimize(
                6, dataset, batch_size=5, lr=0.02, lr_factors=lr_factors, thread=False
            )
        )
        backgrounds[name] = float((model.background.detach().double() * s_here).square().mean())
    # The truth has no background: both runs keep it at a few 1e-3 photons per pixel
    # (Adam amplifies float32 rounding in the object's unlit padding, so the two runs
    # are not step-for-step equal); without the factor it runs away, s times too fast.
    assert backgrounds["counts"] < 0.1 and backgrounds["normalized"] < 0.1, backgrounds
    assert backgrounds["normalized, no factor"] > 1.0, backgrounds


def test_install_loss_replaces_a_module_put_there(cd: Any, simulated: dict[str, Any]) -> None:
    """The trap: a Module on model.loss is shadowed by CDIModel.loss and leaks a state key."""
    dataset = _dataset(cd, simulated["counts"])
    model = _model(cd, dataset, loss="poisson nll")
    keys = set(model.state_dict())
    model.loss = ps.ScaledPoissonNLLLoss(1.0, domain="intensity", reduction="sum")
    assert "loss.scale" in set(model.state_dict()) - keys
    with pytest.raises(TypeError, match="unexpected keyword argument 'mask'"):
        list(model.Adam_optimize(1, dataset, batch_size=5, thread=False))
    adapter.install_loss(model)
    assert set(model.state_dict()) == keys
    (h,) = model.Adam_optimize(1, dataset, batch_size=5, thread=False)
    assert math.isfinite(h)


def test_install_loss_refuses_what_is_not_a_cdtools_model(cd: Any) -> None:
    with pytest.raises(ps.PhysscaleError, match="needs a cdtools model"):
        adapter.install_loss(torch.nn.Linear(2, 2))


def test_host_traps_the_docs_name(cd: Any, simulated: dict[str, Any]) -> None:
    from cdtools.reconstructors import AdamReconstructor
    from cdtools.tools.losses import poisson_nll

    counts = simulated["counts"]
    dataset = _dataset(cd, counts)
    model = _model(cd, dataset, loss="poisson nll")
    # setup_dataloader() without batch_size: a typo in cdtools (td.Dataloader).
    with pytest.raises(AttributeError, match="Dataloader"):
        AdamReconstructor(model, dataset).setup_dataloader()
    # The float32 value is a difference of numbers ~1e7-1e8: its offset
    # (poisson_nll(I, I)) cancels most of the digits of the deviance.
    _, sim = _batch(cd, simulated, counts)
    pats = counts[:10]
    total = float(poisson_nll(pats, sim.detach()))
    offset = float(poisson_nll(pats, pats))
    exact = float(poisson_nll(pats.double(), sim.detach().double(), subtract_min=True))
    assert abs(total) > 30 * exact  # the reported part is a few % of the float32 value
    assert abs((total - offset) - exact) > 1e-7 * exact
