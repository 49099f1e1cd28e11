"""physscale against frozen TensorFlow outputs (tests/golden/), without TensorFlow.

``scripts/make_golden_vectors.py`` computed every expected value with
TensorFlow ops on fixed inputs; these tests guard TF parity for every
``pytest`` run, TensorFlow installed or not. Tolerances are those of the TF
parity suite (docs/tf-parity.md): derive 2e-6 relative to TF float32 and
1e-12 to TF float64 ops; losses and gradients 1e-5 relative plus the absolute
floor stored beside each value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import physscale as ps
from physscale.nn import IntensityScaler

FIXTURE = Path(__file__).parent / "golden" / "tf_reference_v1.npz"
KNOWN_FORMAT_VERSIONS = {1}
FORMS = ("tf", "stirling", "exact", "deviance")
DERIVE_RTOL = 2e-6
DERIVE_RTOL_F64 = 1e-12
LOSS_RTOL = 1e-5
F32_EPS = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def golden() -> Iterator[dict[str, np.ndarray]]:
    with np.load(FIXTURE, allow_pickle=False) as data:
        yield {k: data[k] for k in data.files}


def _cases(suffix: str = "/pred") -> list[str]:
    """NLL case names in the fixture (those with a ``<case><suffix>`` array)."""
    with np.load(FIXTURE, allow_pickle=False) as data:
        return sorted(
            k.split("/")[1] for k in data.files if k.startswith("nll/") and k.endswith(suffix)
        )


def _close(got: object, ref: object, *, rtol: float, atol: object = 0.0, what: str) -> None:
    g = np.asarray(got, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    assert g.shape == r.shape, f"{what}: shape {g.shape} != golden {r.shape}"
    allowed = rtol * np.abs(r) + np.asarray(atol, dtype=np.float64)
    err = np.abs(g - r)
    bad = ~(err <= allowed)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {r.size} differ from TensorFlow's golden values; "
        f"worst |diff| {float(np.max(np.where(bad, err, 0)))!r}, physscale "
        f"{g[bad][:3].tolist()} vs TF {r[bad][:3].tolist()}"
    )


def _derive(x: object, nphotons: float, **kwargs: object) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.UnitsWarning)  # the guard has its own tests
        return float(ps.derive_intensity_scale(x, nphotons, **kwargs))  # type: ignore[arg-type]


def test_fixture_is_a_known_format_without_pickles(golden: dict[str, np.ndarray]) -> None:
    version = int(golden["format_version"])
    assert version in KNOWN_FORMAT_VERSIONS, (
        f"{FIXTURE.name} has format_version {version}; this test knows "
        f"{sorted(KNOWN_FORMAT_VERSIONS)}: update tests/test_golden.py with the script"
    )
    assert all(a.dtype != object for a in golden.values())
    assert FIXTURE.stat().st_size < 500_000


@pytest.mark.parametrize("channels", [1, 4, 9])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_derived_scale_matches_tf_golden(
    golden: dict[str, np.ndarray], channels: int, layout: str
) -> None:
    key = f"derive/c{channels}/"
    x, nphotons = golden[key + "x"], float(golden[key + "nphotons"])
    data = x if layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    got = _derive(data, nphotons, layout=layout)
    _close(got, golden[key + "scale_f32"], rtol=DERIVE_RTOL, what=f"derive {layout} vs TF f32")
    _close(got, golden[key + "scale_f64"], rtol=DERIVE_RTOL_F64, what=f"derive {layout} vs TF f64")


def test_normalization_and_closed_form_match_tf_golden(golden: dict[str, np.ndarray]) -> None:
    x_raw, nphotons = golden["closed/x_raw"], float(golden["closed/nphotons"])
    n = x_raw.shape[1]
    x, factor = ps.normalize_amplitudes(x_raw, layout="NHWC")
    _close(x, golden["closed/x_norm_f32"], rtol=DERIVE_RTOL, what="normalized amplitudes")
    _close(factor, golden["closed/factor_f64"], rtol=DERIVE_RTOL_F64, what="normalization factor")
    closed = ps.closed_form_intensity_scale(nphotons, n)
    _close(closed, golden["closed/closed_f32"], rtol=DERIVE_RTOL, what="closed form")
    _close(closed, golden["closed/derived_on_norm_f32"], rtol=DERIVE_RTOL, what="TF derived")
    derived = _derive(golden["closed/x_norm_f32"], nphotons, layout="NHWC")
    _close(derived, closed, rtol=DERIVE_RTOL, what="physscale derived on TF-normalized data")


def _nll(
    golden: dict[str, np.ndarray],
    case: str,
    form: str,
    reduction: str,
    *,
    nchw: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    key = f"nll/{case}/"
    perm = (0, 3, 1, 2)

    def arr(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.transpose(perm) if nchw else a)

    pred = torch.tensor(arr(golden[key + "pred"]), requires_grad=True)
    mask = golden.get(key + "mask")
    loss = ps.scaled_poisson_nll(
        pred,
        torch.from_numpy(arr(golden[key + "obs"])),
        float(golden[key + "scale"]),
        domain=str(golden[key + "domain"]),
        form=form,
        reduction=reduction,
        mask=None if mask is None else torch.from_numpy(arr(mask)),
        background=float(golden[key + "background"]),
    )
    return loss, pred


def _port_cases() -> list[str]:
    """Unmasked amplitude-domain cases without background: the port's setting."""
    with np.load(FIXTURE, allow_pickle=False) as data:
        return [
            c
            for c in _cases("/tf/mean_keras")
            if str(data[f"nll/{c}/domain"]) == "amplitude"
            and float(data[f"nll/{c}/background"]) == 0.0
        ]


needs_nll = pytest.mark.skipif(
    not hasattr(ps, "scaled_poisson_nll"),
    reason="physscale.scaled_poisson_nll is not implemented yet",
)


@needs_nll
@pytest.mark.parametrize("case", _cases())
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "per_sample"])
def test_nll_matches_tf_golden(
    golden: dict[str, np.ndarray], case: str, form: str, reduction: str
) -> None:
    key = f"nll/{case}/{form}/"
    ref, atol = golden[key + reduction], golden[key + reduction + "_atol"]
    loss, _ = _nll(golden, case, form, reduction)
    got = loss.detach().numpy()
    if reduction == "none" and f"nll/{case}/mask" in golden:
        keep = np.broadcast_to(golden[f"nll/{case}/mask"], ref.shape)
        got, ref, atol = got[keep], ref[keep], atol[keep]
    _close(got, ref, rtol=LOSS_RTOL, atol=atol, what=f"{case} form={form} {reduction}")
    if reduction == "per_sample":
        nchw, _ = _nll(golden, case, form, reduction, nchw=True)
        _close(nchw.detach().numpy(), ref, rtol=LOSS_RTOL, atol=atol, what=f"{case} NCHW")


@needs_nll
@pytest.mark.parametrize("case", _cases("/tf/mean_keras"))  # unmasked cases: Keras has no mask
@pytest.mark.parametrize("form", FORMS)
def test_mean_matches_compiled_keras_golden(
    golden: dict[str, np.ndarray], case: str, form: str
) -> None:
    key = f"nll/{case}/{form}/"
    loss, _ = _nll(golden, case, form, "mean")
    # Keras reduces in float32: allow its rounding of the mean of |values|.
    keras_rounding = 4 * F32_EPS * float(np.abs(golden[key + "none"]).mean())
    _close(
        loss.detach().numpy(),
        golden[key + "mean_keras"],
        rtol=LOSS_RTOL,
        atol=golden[key + "mean_atol"] + keras_rounding,
        what=f"{case} form={form} mean vs Keras evaluate",
    )


@needs_nll
@pytest.mark.parametrize("case", _cases())
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "per_sample"])
def test_gradient_wrt_pred_matches_tf_golden(
    golden: dict[str, np.ndarray], case: str, form: str, reduction: str
) -> None:
    key = f"nll/{case}/{form}/grad_{reduction}"
    loss, pred = _nll(golden, case, form, reduction)
    loss.sum().backward()
    assert pred.grad is not None
    _close(pred.grad.numpy(), golden[key], rtol=LOSS_RTOL, atol=golden[key + "_atol"],
           what=f"{case} form={form} d/dpred {reduction}")  # fmt: skip


def test_trainable_scaler_step_matches_tf_golden(golden: dict[str, np.ndarray]) -> None:
    x_phys = torch.from_numpy(golden["scaler/x_phys"])
    weight, bias = float(golden["scaler/weight"]), float(golden["scaler/bias"])
    lr = float(golden["scaler/lr"])
    scaler = IntensityScaler(float(golden["scaler/scale0"]), trainable=True)
    optimizer = torch.optim.SGD(scaler.parameters(), lr=lr)
    h = scaler.normalize(x_phys)
    out = scaler.denormalize(weight * h + bias)
    loss = out.square().mean()
    loss.backward()
    assert scaler.log_scale.grad is not None
    _close(h.detach(), golden["scaler/normalized"], rtol=1e-6, what="normalize")
    _close(out.detach(), golden["scaler/denormalized"], rtol=1e-6, what="denormalize")
    _close(loss.detach(), golden["scaler/loss"], rtol=LOSS_RTOL, what="loss")
    grad_atol = float(golden["scaler/grad_atol"])
    _close(float(scaler.log_scale.grad), golden["scaler/grad_log_scale"], rtol=LOSS_RTOL,
           atol=grad_atol, what="d loss / d log_scale")  # fmt: skip
    before = float(scaler.log_scale.detach())
    optimizer.step()
    moved = float(scaler.log_scale.detach()) - before
    tf_before = float(golden["scaler/log_scale_before"])
    tf_moved = float(golden["scaler/log_scale_after"]) - tf_before
    _close(moved, tf_moved, rtol=LOSS_RTOL,
           atol=lr * grad_atol + 4 * F32_EPS * max(1.0, abs(tf_before)),
           what="one SGD step of the log-scale")  # fmt: skip
    record = scaler.to_record(nphotons=1e9)
    assert record.method == "trained"
    _close(record.intensity_scale, math.exp(float(golden["scaler/log_scale_after"])),
           rtol=LOSS_RTOL, what="saved trained scale")  # fmt: skip


@needs_nll
@pytest.mark.parametrize("via", ["function", "module"])
def test_log_scale_learning_through_the_nll_matches_tf_golden(
    golden: dict[str, np.ndarray], via: str
) -> None:
    x_np = golden["scaler/x_phys"]
    scale0 = float(golden["scaler/scale0"])
    weight, bias = float(golden["scaler/weight"]), float(golden["scaler/bias"])
    lr = float(golden["scaler_nll/lr"])
    scaler = IntensityScaler(scale0, trainable=True)
    optimizer = torch.optim.SGD(scaler.parameters(), lr=lr)
    x_phys = torch.from_numpy(x_np)
    pred = weight * scaler.normalize(x_phys) + bias
    if via == "module":  # counts from the scaler's initial (data) scale
        loss = ps.ScaledPoissonNLLLoss(scaler)(pred, x_phys / scale0)
    else:
        loss = ps.scaled_poisson_nll(pred, x_phys / scale0, scaler.scale, count_scale=scale0)
    loss.backward()
    assert scaler.log_scale.grad is not None
    _close(loss.detach(), golden["scaler_nll/loss"], rtol=LOSS_RTOL,
           atol=golden["scaler_nll/loss_atol"], what="training NLL")  # fmt: skip
    grad_atol = float(golden["scaler_nll/grad_atol"])
    _close(float(scaler.log_scale.grad), golden["scaler_nll/grad_log_scale"], rtol=LOSS_RTOL,
           atol=grad_atol, what="d NLL / d log_scale")  # fmt: skip
    before = float(scaler.log_scale.detach())
    optimizer.step()
    tf_before = float(golden["scaler_nll/log_scale_before"])
    _close(
        float(scaler.log_scale.detach()) - before,
        float(golden["scaler_nll/log_scale_after"]) - tf_before,
        rtol=LOSS_RTOL,
        atol=lr * grad_atol + 4 * F32_EPS * max(1.0, abs(tf_before)),
        what="one SGD step of the log-scale through the NLL",
    )


@needs_nll
@pytest.mark.parametrize("case", _port_cases())
def test_pytorch_port_idiom_equals_per_sample_exact_nll(
    golden: dict[str, np.ndarray], case: str
) -> None:
    """The port: -Independent(Poisson((s pred)**2), 3).log_prob((s obs)**2), batch mean / mean(obs).

    physscale: ``scaled_poisson_nll(..., form="exact", reduction="per_sample").mean()
    / obs.mean()``; and the per-sample sums equal TF's golden ones.
    """
    key = f"nll/{case}/"
    pred = torch.from_numpy(golden[key + "pred"]).double()
    obs = torch.from_numpy(golden[key + "obs"]).double()
    s = float(golden[key + "scale"])
    port = torch.distributions.Independent(
        torch.distributions.Poisson((s * pred) ** 2, validate_args=False), 3
    )
    port_loss = -port.log_prob((s * obs) ** 2).mean() / obs.mean()
    per_sample = ps.scaled_poisson_nll(pred, obs, s, form="exact", reduction="per_sample")
    atol = golden[key + "exact/per_sample_atol"]
    _close(per_sample.detach(), golden[key + "exact/per_sample"], rtol=LOSS_RTOL, atol=atol,
           what="per-sample exact NLL vs TF golden")  # fmt: skip
    _close((per_sample.mean() / obs.mean()).detach(), port_loss.detach(), rtol=LOSS_RTOL,
           atol=float(atol.mean()) / float(obs.mean()), what="port idiom")  # fmt: skip
