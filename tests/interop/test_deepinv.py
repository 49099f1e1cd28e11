"""deepinv 0.5.0: physscale's per-sample Poisson likelihood in its DataFidelity and optimizers.

On deepinv's own ``Ptychography`` physics and ``PoissonNoise(gain)`` data:
the gain is the physscale scale ``gain**-0.5`` (the counts are exactly
``s**2 * y``); each sample's value equals deepinv's ``PoissonLikelihood``
computed on that sample alone plus ``sum(k)`` (its only constant-term
difference; 1e-12 relative in float64), where deepinv's own per-sample values
on a batch are wrong; our gradient is the exact gradient of the value and
deepinv's ``grad`` is ``gain**2`` times it; a few steps of deepinv's ``GD``
run with ours; a bundle round trip gives the same values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _hosts import host

import physscale as ps

HOW = "build the interop environment with scripts/make_interop_env.sh (pip install deepinv==0.5.0)"
GAIN = 0.02  # about 50 photons per unit of deepinv's intensity
B = 3


@pytest.fixture(scope="module")
def dinv() -> Any:
    return host("deepinv", HOW)


@pytest.fixture(scope="module")
def adapter(dinv: Any) -> Any:
    from physscale.adapters import deepinv as adapter

    return adapter


@pytest.fixture(scope="module")
def scene(dinv: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    physics = dinv.physics.Ptychography(img_size=(1, 32, 32), device="cpu")
    physics.noise_model = dinv.physics.PoissonNoise(gain=GAIN, rng=torch.Generator().manual_seed(1))
    x = torch.exp(1j * torch.rand(B, 1, 32, 32, dtype=torch.float64))
    y = physics(x.to(torch.complex64)).double()
    # The estimate being scored: a perturbed object, as during a reconstruction.
    x_est = x * torch.exp(0.1j * torch.randn(B, 1, 32, 32, dtype=torch.float64))
    return {"physics": physics, "x": x, "y": y, "x_est": x_est}


def test_the_counts_are_s_squared_times_y(dinv: Any, scene: dict[str, Any]) -> None:
    s = ps.scale_from_gain(GAIN)
    counts = s**2 * scene["y"]
    # Whole photon counts, to the float32 rounding deepinv stores y in.
    torch.testing.assert_close(counts, counts.round(), rtol=2e-7, atol=1e-6)
    assert ps.gain_from_scale(s) == pytest.approx(GAIN, rel=1e-15)


def test_each_sample_equals_deepinvs_value_on_that_sample_alone_plus_sum_k(
    dinv: Any, adapter: Any, scene: dict[str, Any]
) -> None:
    physics, y, x_est = scene["physics"], scene["y"], scene["x_est"]
    ours = adapter.PoissonLikelihood(gain=GAIN).fn(x_est, y, physics)
    assert ours.shape == (B,)
    theirs = dinv.optim.PoissonLikelihood(gain=GAIN)
    sum_k = (y / GAIN).reshape(B, -1).sum(dim=1)
    for i in range(B):
        alone = theirs.fn(x_est[i : i + 1], y[i : i + 1], physics)
        assert float(ours[i]) == pytest.approx(float(alone + sum_k[i]), rel=1e-12)


def test_deepinvs_own_per_sample_values_are_wrong_on_a_batch(
    dinv: Any, adapter: Any, scene: dict[str, Any]
) -> None:
    # Its -k*log(lam) term is summed over the whole batch and added to every sample.
    physics, y, x_est = scene["physics"], scene["y"], scene["x_est"]
    theirs_batch = dinv.optim.PoissonLikelihood(gain=GAIN).fn(x_est, y, physics)
    ours = adapter.PoissonLikelihood(gain=GAIN).fn(x_est, y, physics)
    sum_k = (y / GAIN).reshape(B, -1).sum(dim=1)
    wrong = (theirs_batch + sum_k - ours).abs() / ours.abs()
    assert bool((wrong > 0.5).all())


def test_our_gradient_is_exact_and_deepinvs_grad_is_gain_squared_times_it(
    dinv: Any, adapter: Any, scene: dict[str, Any]
) -> None:
    physics, y = scene["physics"], scene["y"]
    z = physics.A(scene["x_est"]).double()
    ours = adapter.PoissonLikelihoodDistance(gain=GAIN)
    theirs = dinv.optim.distance.PoissonLikelihoodDistance(gain=GAIN, denormalize=True)
    # The exact gradient of deepinv's own value on one sample (autograd).
    zi = z[:1].clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(theirs.fn(zi, y[:1]).sum(), zi)
    torch.testing.assert_close(ours.grad(z, y)[:1], exact, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(theirs.grad(z, y)[:1], GAIN**2 * exact, rtol=1e-10, atol=1e-12)


def test_the_data_fidelity_gradient_goes_through_the_physics(
    dinv: Any, adapter: Any, scene: dict[str, Any]
) -> None:
    physics, y, x_est = scene["physics"], scene["y"], scene["x_est"]
    fidelity = adapter.PoissonLikelihood(gain=GAIN)
    g = fidelity.grad(x_est, y, physics)
    xr = x_est.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(fidelity.fn(xr, y, physics).sum(), xr)
    torch.testing.assert_close(g, auto, rtol=1e-10, atol=1e-12)


def test_a_few_gradient_steps_run_inside_deepinvs_optimizer(
    dinv: Any, adapter: Any, scene: dict[str, Any]
) -> None:
    physics, y = scene["physics"], scene["y"]
    fidelity = adapter.PoissonLikelihood(gain=GAIN)
    start = scene["x_est"].clone()
    solver = dinv.optim.GD(
        data_fidelity=fidelity,
        prior=dinv.optim.prior.ZeroPrior(),
        lambda_reg=0.0,
        stepsize=1e-6,
        max_iter=5,
        custom_init=lambda y, physics: {"est": (start.clone(),)},
    )
    out = solver(y, physics)
    before = fidelity.fn(start, y, physics)
    after = fidelity.fn(out, y, physics)
    assert bool(torch.isfinite(after).all())
    assert bool((after < before).all())


def test_bundle_round_trip_gives_the_same_values(
    dinv: Any, adapter: Any, scene: dict[str, Any], tmp_path: Path
) -> None:
    from physscale.io import load_bundle, save_bundle

    physics, y, x_est = scene["physics"], scene["y"], scene["x_est"]
    record = ps.ScaleRecord(
        intensity_scale=ps.scale_from_gain(GAIN),
        nphotons=1.0,
        nphotons_source="explicit",
        method="explicit",
        data_source="deepinv PoissonNoise gain",
    )
    save_bundle(tmp_path / "est.physscale", {"x_est": torch.view_as_real(x_est)}, record)
    bundle = load_bundle(tmp_path / "est.physscale")
    gain = ps.gain_from_scale(bundle.record)
    assert gain == pytest.approx(GAIN, rel=1e-15)
    x_back = torch.view_as_complex(bundle.state_dict["x_est"].contiguous())
    before = adapter.PoissonLikelihood(gain=GAIN).fn(x_est, y, physics)
    after = adapter.PoissonLikelihood(gain=gain).fn(x_back, y, physics)
    torch.testing.assert_close(after, before, rtol=1e-14, atol=0)


def test_raw_counts_without_denormalize(dinv: Any, adapter: Any, scene: dict[str, Any]) -> None:
    # PoissonNoise(gain, normalize=False) gives the counts themselves.
    physics, y, x_est = scene["physics"], scene["y"], scene["x_est"]
    counts = y / GAIN
    a = adapter.PoissonLikelihood(gain=GAIN).fn(x_est, y, physics)
    b = adapter.PoissonLikelihood(gain=GAIN, denormalize=False).fn(x_est, counts, physics)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_a_bad_gain_is_refused_at_construction(adapter: Any) -> None:
    with pytest.raises(ps.errors.NegativeValueError, match="gain"):
        adapter.PoissonLikelihood(gain=0.0)
