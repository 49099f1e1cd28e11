"""scaled_poisson_nll: the SPEC §3 forms, reductions, numerics, gradients and bad inputs.

Reference values are computed independently, element by element in Python
floats (``math.log``, ``math.lgamma``, ``math.fsum``) or with ``decimal`` at 50
digits, never by calling the function under test twice.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import warnings
from collections.abc import Iterator
from decimal import Decimal, getcontext
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import physscale as ps
from physscale.errors import (
    BroadcastError,
    DtypeError,
    EmptyInputError,
    MaskError,
    NegativeValueError,
    NonFiniteError,
    OptionError,
)

FORMS = ("tf", "stirling", "exact", "deviance")
DOMAINS = ("amplitude", "intensity")
EPS = 1e-12

# The formulas hold for any numbers, whole ones included (hypothesis likes 2.0): the
# raw-counts heuristic is tested on its own below, recording warnings explicitly (a
# function's filterwarnings mark would not override this module-wide one).
pytestmark = pytest.mark.filterwarnings("ignore::physscale.UnitsWarning")


@contextlib.contextmanager
def no_units_warning() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert [str(w.message) for w in caught if issubclass(w.category, ps.UnitsWarning)] == []


# --------------------------------------------------------------------------- references


def ref_terms(
    p: float, o: float, s: float, form: str, domain: str, b: float = 0.0, t: float | None = None
) -> tuple[float, float]:
    """(elementwise value, magnitude of its terms) in Python floats, straight from SPEC §3."""
    t = s if t is None else t
    lam = (s * p) ** 2 + b if domain == "amplitude" else s * s * p + b
    k = (t * o) ** 2 if domain == "amplitude" else t * t * o
    log_lam = math.log(max(lam, EPS))
    value = lam - k * log_lam
    size = abs(lam) + abs(k * log_lam)
    if form == "stirling" and k > 1:
        extra = k * math.log(k) - k + 0.5 * math.log(2 * math.pi * k)
        value += extra
        size += abs(k * math.log(k)) + k
    elif form == "exact":
        value += math.lgamma(k + 1)
        # lgamma is accurate to ~1e-16 of O(1) internal terms, even near its zeros (k = 0, 1).
        size += abs(math.lgamma(k + 1)) + 1.0
    elif form == "deviance":
        if k == 0:
            value, size = lam, abs(lam)
        else:
            value = lam - k - k * (log_lam - math.log(k))
            size = abs(lam) + k + abs(k * log_lam) + abs(k * math.log(k))
    return value, size


def ref_sum(
    pred: np.ndarray, obs: np.ndarray, s: float, form: str, domain: str, **kw: Any
) -> tuple[float, float]:
    terms = [
        ref_terms(p, o, s, form, domain, **kw) for p, o in zip(pred.flat, obs.flat, strict=True)
    ]
    return math.fsum(v for v, _ in terms), math.fsum(m for _, m in terms)


def deviance_decimal(lam: float, k: float) -> Decimal:
    """Half the Poisson deviance at 50 digits: exact enough to judge float32."""
    getcontext().prec = 50
    lam_d, k_d = Decimal(lam), Decimal(k)
    if k_d == 0:
        return lam_d
    return lam_d - k_d - k_d * (lam_d / k_d).ln()


# --------------------------------------------------------------------------- strategies

shapes = st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(1, 4), st.integers(1, 4))
amplitude_values = st.one_of(
    st.just(0.0), st.floats(1e-3, 10.0, allow_nan=False, allow_infinity=False)
)
scales = st.floats(0.05, 300.0)


@st.composite
def pairs(
    draw: st.DrawFn, values: st.SearchStrategy[float] = amplitude_values
) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(shapes)
    pred = draw(hnp.arrays(np.float64, shape, elements=values))
    obs = draw(hnp.arrays(np.float64, shape, elements=values))
    return pred, obs


def t64(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


# --------------------------------------------------------------------------- the formulas


@given(pairs(), scales, st.sampled_from(FORMS), st.sampled_from(DOMAINS))
def test_each_form_equals_its_formula_in_float64(
    data: tuple[np.ndarray, np.ndarray], s: float, form: str, domain: str
) -> None:
    pred, obs = data
    got = ps.scaled_poisson_nll(t64(pred), t64(obs), s, form=form, domain=domain, reduction="sum")
    want, size = ref_sum(pred, obs, s, form, domain)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(want, rel=0, abs=1e-12 * size + 1e-300)


@given(pairs(), scales, st.sampled_from(FORMS), st.sampled_from(DOMAINS))
def test_elementwise_values_match_the_formula_in_float32(
    data: tuple[np.ndarray, np.ndarray], s: float, form: str, domain: str
) -> None:
    pred, obs = (x.astype(np.float32) for x in data)
    got = ps.scaled_poisson_nll(
        torch.from_numpy(pred), torch.from_numpy(obs), s, form=form, domain=domain, reduction="none"
    )
    assert got.dtype == torch.float32
    for g, p, o in zip(got.flatten().tolist(), pred.flat, obs.flat, strict=True):
        want, size = ref_terms(float(p), float(o), s, form, domain)
        assert g == pytest.approx(want, abs=4e-6 * size + 1e-30)


@given(pairs(), scales, st.sampled_from(DOMAINS))
def test_forms_differ_only_by_terms_constant_in_the_rate(
    data: tuple[np.ndarray, np.ndarray], s: float, domain: str
) -> None:
    pred, obs = data
    values, grads = {}, {}
    for form in FORMS:
        p = t64(pred, grad=True)
        loss = ps.scaled_poisson_nll(p, t64(obs), s, form=form, domain=domain, reduction="none")
        loss.sum().backward()
        values[form], grads[form] = loss.detach(), p.grad
    k = (s * t64(obs)) ** 2 if domain == "amplitude" else s * s * t64(obs)
    lam = (s * t64(pred)) ** 2 if domain == "amplitude" else s * s * t64(pred)
    klogk = torch.where(k > 0, k * torch.log(torch.where(k > 0, k, 1.0)), 0.0)
    stirling = torch.where(k > 1, klogk - k + 0.5 * torch.log(2 * math.pi * k.clamp_min(1)), 0.0)
    constants = {
        "stirling": stirling,
        "exact": torch.lgamma(k + 1),
        "deviance": klogk - k,
    }
    scale_of = lam.abs() + (k * torch.log(lam.clamp_min(EPS))).abs() + klogk.abs() + k + 1
    for form, constant in constants.items():
        torch.testing.assert_close(
            values[form] - values["tf"], constant, rtol=0, atol=float(1e-12 * scale_of.max())
        )
    for form in FORMS[1:]:
        torch.testing.assert_close(grads[form], grads["tf"], rtol=1e-12, atol=1e-300)


# --------------------------------------------------------------------------- reductions


@st.composite
def masked_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, obs = draw(pairs())
    mask = draw(hnp.arrays(np.bool_, pred.shape[-2:], elements=st.booleans()))
    assume(mask.any())
    return pred, obs, mask


@given(masked_pairs(), scales, st.sampled_from(FORMS), st.sampled_from(DOMAINS))
def test_reductions_agree_sum_is_mean_times_unmasked_and_per_sample_sums_to_sum(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], s: float, form: str, domain: str
) -> None:
    pred, obs, mask = data
    p, o, m = t64(pred), t64(obs), torch.from_numpy(mask)
    out = {
        r: ps.scaled_poisson_nll(p, o, s, form=form, domain=domain, reduction=r, mask=m)
        for r in ("mean", "sum", "none", "per_sample")
    }
    n_unmasked = int(mask.sum()) * pred.shape[0] * pred.shape[1]
    size = ref_sum(pred, obs, s, form, domain)[1] + 1.0
    tol = 1e-12 * size
    assert float(out["sum"]) == pytest.approx(float(out["mean"]) * n_unmasked, abs=tol)
    assert float(out["per_sample"].sum()) == pytest.approx(float(out["sum"]), abs=tol)
    assert out["per_sample"].shape == (pred.shape[0],)
    assert float(out["none"].sum()) == pytest.approx(float(out["sum"]), abs=tol)
    assert torch.all(out["none"][..., ~m] == 0)


@given(masked_pairs(), scales, st.sampled_from(FORMS), st.sampled_from(DOMAINS))
def test_masked_elements_change_neither_value_nor_gradient(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], s: float, form: str, domain: str
) -> None:
    pred, obs, mask = data
    m = torch.from_numpy(mask)
    results = []
    for fill in (None, 7.5, float("nan")):
        p, o = t64(pred), t64(obs)
        if fill is not None:
            p[..., ~m] = fill
            o[..., ~m] = fill
        p.requires_grad_()
        loss = ps.scaled_poisson_nll(p, o, s, form=form, domain=domain, mask=m, background=0.25)
        loss.backward()
        assert p.grad is not None
        assert torch.all(p.grad[..., ~m] == 0)
        results.append((float(loss.detach()), p.grad))
    for value, grad in results[1:]:
        assert value == results[0][0]
        torch.testing.assert_close(grad, results[0][1], rtol=0, atol=0)


def test_mean_counts_only_unmasked_elements_like_keras() -> None:
    pred = torch.full((2, 1, 2, 2), 1.0, dtype=torch.float64)
    obs = torch.full((2, 1, 2, 2), 2.0, dtype=torch.float64)
    mask = torch.tensor([[True, False], [False, False]])
    value = ps.scaled_poisson_nll(pred, obs, 1.0, mask=mask)
    # lam = 1, k = 4: each unmasked element is 1 - 4 log 1 = 1; two unmasked of eight.
    assert float(value) == 1.0
    weights = mask.to(torch.float32)
    assert float(ps.scaled_poisson_nll(pred, obs, 1.0, mask=weights)) == 1.0


@given(pairs(), scales, st.floats(0.1, 10.0), st.sampled_from(FORMS))
def test_scale_and_amplitude_are_interchangeable(
    data: tuple[np.ndarray, np.ndarray], s: float, c: float, form: str
) -> None:
    pred, obs = data
    a = ps.scaled_poisson_nll(t64(pred), t64(obs), s, form=form, reduction="sum")
    b = ps.scaled_poisson_nll(t64(pred * c), t64(obs * c), s / c, form=form, reduction="sum")
    size = ref_sum(pred, obs, s, form, "amplitude")[1] + 1.0
    assert float(a) == pytest.approx(float(b), abs=1e-11 * size)
    # Intensity domain: counts are s**2 * x, so x * c pairs with s / sqrt(c).
    ai = ps.scaled_poisson_nll(t64(pred), t64(obs), s, form=form, domain="intensity")
    bi = ps.scaled_poisson_nll(
        t64(pred * c), t64(obs * c), s / math.sqrt(c), form=form, domain="intensity"
    )
    assert float(ai) == pytest.approx(float(bi), abs=1e-11 * (size + abs(float(ai))))


# --------------------------------------------------------------------------- other references


@given(pairs(st.floats(0.05, 10.0)), scales)
def test_tf_form_matches_torch_poisson_nll_loss(
    data: tuple[np.ndarray, np.ndarray], s: float
) -> None:
    pred, obs = data
    lam, k = (s * t64(pred)) ** 2, (s * t64(obs)) ** 2
    # torch adds its eps (1e-8) inside the log; the rates here are >= 0.05**2 * 0.05**2.
    want = torch.nn.functional.poisson_nll_loss(lam, k, log_input=False, full=False, eps=0.0)
    got = ps.scaled_poisson_nll(t64(pred), t64(obs), s)
    assert float(got) == pytest.approx(float(want), rel=1e-12, abs=1e-12 * float(lam.max()))


@given(pairs(st.floats(0.05, 10.0)), scales)
def test_stirling_form_matches_torch_poisson_nll_loss_full(
    data: tuple[np.ndarray, np.ndarray], s: float
) -> None:
    pred, obs = data
    lam, k = (s * t64(pred)) ** 2, (s * t64(obs)) ** 2
    want = torch.nn.functional.poisson_nll_loss(
        lam, k, log_input=False, full=True, eps=0.0, reduction="none"
    )
    got = ps.scaled_poisson_nll(t64(pred), t64(obs), s, form="stirling", reduction="none")
    size = lam + k * lam.log().abs() + k * k.clamp_min(1).log() + k + 1.0
    assert torch.all((got - want).abs() <= 1e-13 * size)


@given(pairs(st.floats(0.05, 10.0)), scales)
def test_exact_form_is_minus_torch_poisson_log_prob(
    data: tuple[np.ndarray, np.ndarray], s: float
) -> None:
    pred, obs = data
    lam, k = (s * t64(pred)) ** 2, (s * t64(obs)) ** 2
    log_prob = torch.distributions.Poisson(lam, validate_args=False).log_prob(k)
    got = ps.scaled_poisson_nll(t64(pred), t64(obs), s, form="exact", reduction="none")
    size = lam + k * lam.log().abs() + torch.lgamma(k + 1).abs() + 1.0
    assert torch.all((got + log_prob).abs() <= 1e-13 * size)
    # The reference port's Independent(..., 3) is the per-sample reduction.
    per_sample = torch.distributions.Independent(
        torch.distributions.Poisson(lam, validate_args=False), 3
    ).log_prob(k)
    got_ps = ps.scaled_poisson_nll(t64(pred), t64(obs), s, form="exact", reduction="per_sample")
    assert torch.all((got_ps + per_sample).abs() <= 1e-13 * size.sum(dim=(1, 2, 3)))


def test_background_is_added_to_the_rate_not_the_counts() -> None:
    pred = torch.tensor([[[[0.5, 0.0]]]], dtype=torch.float64)
    obs = torch.tensor([[[[0.25, 0.5]]]], dtype=torch.float64)
    bg = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    got = ps.scaled_poisson_nll(pred, obs, 2.0, background=bg, reduction="none")
    want = [ref_terms(0.5, 0.25, 2.0, "tf", "amplitude", b=0.5)[0],
            ref_terms(0.0, 0.5, 2.0, "tf", "amplitude", b=2.0)[0]]  # fmt: skip
    assert got.flatten().tolist() == pytest.approx(want, rel=1e-14)


def test_per_sample_scale_applies_to_each_sample() -> None:
    pred = torch.rand(3, 2, 4, 4, dtype=torch.float64) + 0.1
    obs = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    scales = torch.tensor([1.0, 5.0, 30.0], dtype=torch.float64)
    got = ps.scaled_poisson_nll(pred, obs, scales.view(-1, 1, 1, 1), reduction="per_sample")
    for i, s in enumerate(scales.tolist()):
        pairs_i = zip(pred[i].flatten().tolist(), obs[i].flatten().tolist(), strict=True)
        want = math.fsum(ref_terms(p, o, s, "tf", "amplitude")[0] for p, o in pairs_i)
        assert float(got[i]) == pytest.approx(want, rel=1e-12)


def test_scale_record_is_read_for_its_intensity_scale() -> None:
    record = ps.closed_form_scale_record(1e6, 64)
    pred = torch.rand(2, 1, 4, 4) + 0.1
    obs = torch.rand(2, 1, 4, 4)
    got = ps.scaled_poisson_nll(pred, obs, record)
    assert float(got) == float(ps.scaled_poisson_nll(pred, obs, record.intensity_scale))
    assert float(got) == float(ps.scaled_poisson_nll(pred, obs, torch.tensor(31.25)))


# --------------------------------------------------------------------------- numerics


@given(
    # Photon counts: 0, or 1e-6 .. 1e9 (the float32 result must be a normal number).
    st.one_of(st.just(0.0), st.floats(1e-6, 1e9)),
    st.one_of(st.just(1.0), st.floats(1e-6, 1e6)),
    st.sampled_from(DOMAINS),
)
def test_deviance_keeps_float32_relative_precision_from_0_to_1e9_counts(
    counts: float, ratio: float, domain: str
) -> None:
    # Build float32 inputs for the wanted counts and rate ratio, then judge the
    # float32 result against 50-digit arithmetic on exactly those inputs.
    s = 1.0
    if domain == "amplitude":
        o = np.float32(math.sqrt(counts))
        p = np.float32(float(o) * math.sqrt(ratio))
        lam, k = float(p) ** 2, float(o) ** 2
    else:
        o = np.float32(counts)
        p = np.float32(float(o) * ratio)
        lam, k = float(p), float(o)
    got = ps.scaled_poisson_nll(
        torch.tensor([[float(p)]], dtype=torch.float32),
        torch.tensor([[float(o)]], dtype=torch.float32),
        s,
        form="deviance",
        domain=domain,
        reduction="sum",
    )
    assert got.dtype == torch.float32
    want = deviance_decimal(lam, k)
    if want == 0:
        assert float(got) == 0.0
    else:
        assert abs(Decimal(float(got)) - want) <= Decimal("1e-5") * want


def test_deviance_is_exactly_zero_where_rate_equals_counts() -> None:
    x = torch.tensor([[0.0, 1e-3, 1.0, 17.0, 3.1e4]], dtype=torch.float32)
    for domain in DOMAINS:
        got = ps.scaled_poisson_nll(x, x, 1e3, form="deviance", domain=domain, reduction="none")
        assert torch.all(got == 0)


def test_tf_form_in_float32_loses_the_varying_part_at_high_counts_deviance_does_not() -> None:
    # SPEC failure mode 7: k ~ 1e7 and a 0.1% error in the rate.
    obs = torch.full((1, 1, 8, 8), 1.0)
    pred = torch.full((1, 1, 8, 8), 1.001)
    s = math.sqrt(1e7)
    exact = float(deviance_decimal(float(np.float32(1.001)) ** 2 * 1e7, 1e7))
    got = float(ps.scaled_poisson_nll(pred, obs, s, form="deviance"))
    assert got == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("domain", DOMAINS)
def test_zero_prediction_and_zero_counts_give_finite_values_and_gradients(
    form: str, domain: str
) -> None:
    pred = torch.tensor([[0.0, 0.0, 1.0, 2.0]], requires_grad=True)
    obs = torch.tensor([[0.0, 1.0, 0.0, 2.0]], requires_grad=True)
    scale = torch.tensor(3.0, requires_grad=True)
    loss = ps.scaled_poisson_nll(pred, obs, scale, form=form, domain=domain, reduction="none")
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    for x in (pred, obs, scale):
        assert x.grad is not None
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("form", FORMS)
def test_autocast_and_half_inputs_compute_in_float32(low: torch.dtype, form: str) -> None:
    gen = torch.Generator().manual_seed(1)
    obs = torch.rand(4, 1, 16, 16, generator=gen)
    pred = obs + 0.05 * torch.rand(4, 1, 16, 16, generator=gen)
    s = 1e4  # (s * pred)**2 ~ 1e8 overflows float16
    ref = ps.scaled_poisson_nll(pred, obs, s, form=form)  # float32, no autocast
    with torch.autocast("cpu", dtype=low):
        got = ps.scaled_poisson_nll(pred, obs, s, form=form)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
    if form == "deviance":  # the float32 result itself is accurate for this form
        want = ps.scaled_poisson_nll(pred.double(), obs.double(), s, form=form)
        assert float(got) == pytest.approx(float(want), rel=1e-5)
    # Low-precision inputs are upcast: same as float32 on the same (rounded) values.
    p_low, o_low = pred.to(low), obs.to(low)
    with torch.autocast("cpu", dtype=low):
        got_low = ps.scaled_poisson_nll(p_low, o_low, s, form=form)
    want_low = ps.scaled_poisson_nll(p_low.float(), o_low.float(), s, form=form)
    assert got_low.dtype == torch.float32
    assert float(got_low) == pytest.approx(float(want_low), rel=1e-5)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "per_sample"])
def test_gradcheck_in_float64_for_every_input(form: str, domain: str, reduction: str) -> None:
    gen = torch.Generator().manual_seed(2)
    pred = (torch.rand(2, 2, 3, 3, generator=gen, dtype=torch.float64) + 0.2).requires_grad_()
    obs = (torch.rand(2, 2, 3, 3, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
    per_sample = torch.tensor([2.0, 3.5], dtype=torch.float64).view(2, 1, 1, 1).requires_grad_()
    background = torch.rand(3, 3, generator=gen, dtype=torch.float64).requires_grad_()
    mask = torch.rand(3, 3, generator=gen) > 0.3
    count_scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)

    def f(p: torch.Tensor, o: torch.Tensor, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ps.scaled_poisson_nll(
            p, o, s, form=form, domain=domain, reduction=reduction, background=b, mask=mask
        )

    assert torch.autograd.gradcheck(f, (pred, obs, per_sample, background))

    def g(p: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ps.scaled_poisson_nll(
            p, obs.detach(), s, count_scale=t, form=form, domain=domain, reduction=reduction
        )

    scalar = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(g, (pred, scalar, count_scale))


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("b_shape", [(2, 2, 3, 3), (2, 3, 3), (3, 3), (1, 3)])
def test_gradcheck_with_a_background_of_any_shape_up_to_the_data_shape(
    domain: str, b_shape: tuple[int, ...]
) -> None:
    # A full-shape background has nothing to sum in its gradient: it must still get its
    # own gradient, not share a buffer with pred's.
    gen = torch.Generator().manual_seed(5)
    pred = (torch.rand(2, 2, 3, 3, generator=gen, dtype=torch.float64) + 0.2).requires_grad_()
    obs = torch.rand(2, 2, 3, 3, generator=gen, dtype=torch.float64) + 0.1
    background = torch.rand(b_shape, generator=gen, dtype=torch.float64).requires_grad_()

    def f(p: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ps.scaled_poisson_nll(p, obs, 2.5, domain=domain, background=b, reduction="sum")

    assert torch.autograd.gradcheck(f, (pred, background))


def test_gradient_in_pred_is_the_analytic_one() -> None:
    pred = torch.tensor([[0.5, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    obs = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
    s = 3.0
    ps.scaled_poisson_nll(pred, obs, s, reduction="sum").backward()
    # d/dp [(sp)^2 - (so)^2 log (sp)^2] = 2 s^2 p - 2 (so)^2 / p
    want = [2 * s * s * p - 2 * (s * 1.0) ** 2 / p for p in (0.5, 1.0, 2.0)]
    assert pred.grad is not None
    assert pred.grad.flatten().tolist() == pytest.approx(want, rel=1e-14)


def test_one_compiled_call_on_cpu_matches_eager() -> None:
    backend = "inductor" if shutil.which("g++") or shutil.which("c++") else "aot_eager"
    gen = torch.Generator().manual_seed(3)
    obs = torch.rand(2, 1, 8, 8, generator=gen)
    pred = (obs + 0.1).requires_grad_()

    def loss_fn(p: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return ps.scaled_poisson_nll(p, o, 30.0, form="tf")

    compiled = torch.compile(loss_fn, backend=backend)
    got = compiled(pred, obs)
    got.backward()
    assert pred.grad is not None
    grad = pred.grad.clone()
    pred.grad = None
    want = loss_fn(pred, obs)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, pred.grad, rtol=1e-5, atol=1e-7)


def test_torch_func_grad_and_vmap_agree_with_autograd() -> None:
    gen = torch.Generator().manual_seed(4)
    obs = torch.rand(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    pred = obs + 0.2

    def per_pattern(p: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return ps.scaled_poisson_nll(p, o, 7.0, form="deviance", reduction="sum")

    p = pred.clone().requires_grad_()
    ps.scaled_poisson_nll(p, obs, 7.0, form="deviance", reduction="sum").backward()
    grads = torch.func.vmap(torch.func.grad(per_pattern))(pred, obs)
    assert p.grad is not None
    torch.testing.assert_close(grads, p.grad, rtol=1e-12, atol=0)
    values = torch.func.vmap(per_pattern)(pred, obs)
    want = ps.scaled_poisson_nll(pred, obs, 7.0, form="deviance", reduction="per_sample")
    torch.testing.assert_close(values, want, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- bad inputs

GOOD = torch.ones(2, 1, 3, 3)


@pytest.mark.parametrize(
    ("pred", "obs", "error", "match"),
    [
        (GOOD, GOOD - 2, NegativeValueError, r"obs \(observed amplitudes\) must be >= 0"),
        (GOOD * float("nan"), GOOD, NonFiniteError, r"pred .* holds 18 NaN and 0 infinite"),
        (GOOD, GOOD * float("inf"), NonFiniteError, r"obs .* holds 0 NaN and 18 infinite"),
        (GOOD, torch.ones(2, 1, 3, 4), BroadcastError, r"pred has shape \(2, 1, 3, 3\) but obs"),
        (GOOD.to(torch.complex64), GOOD, DtypeError, r"real floating-point .*complex64.*abs"),
        (GOOD, GOOD.to(torch.int64), DtypeError, r"obs must hold real floating-point.*int64"),
        (GOOD.numpy(), GOOD, DtypeError, r"pred must be a torch.Tensor .* got ndarray"),
        (torch.ones(0, 3), torch.ones(0, 3), EmptyInputError, r"empty \(shape \(0, 3\)\)"),
    ],
)
def test_bad_data_raise_clear_errors(pred: Any, obs: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ps.scaled_poisson_nll(pred, obs, 2.0)


def test_a_batch_vector_scale_is_refused_not_broadcast_along_the_last_axis() -> None:
    # SPEC failure mode 1: (B,) against (B, C, H, W) would scale along W when B == W.
    pred = torch.ones(3, 1, 3, 3)
    with pytest.raises(BroadcastError, match=r"use scale.view\(-1, 1, 1, 1\)"):
        ps.scaled_poisson_nll(pred, pred, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(BroadcastError, match=r"scale of shape \(3, 1\) does not line up"):
        ps.scaled_poisson_nll(pred, pred, torch.ones(3, 1))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"form": "full"}, OptionError, r"form must be one of 'tf', 'stirling'.*got 'full'"),
        ({"reduction": "avg"}, OptionError, r"reduction must be one of .*got 'avg'"),
        ({"domain": "counts"}, OptionError, r"domain must be one of .*got 'counts'"),
        ({"eps": -1e-12}, NegativeValueError, r"eps must be >= 0 .*0 means no floor.*got -1e-12"),
        ({"eps": float("nan")}, NonFiniteError, r"eps must be finite"),
        ({"background": -1.0}, NegativeValueError, r"background must be a finite .* got -1.0"),
        ({"background": float("nan")}, NonFiniteError, r"background must be a finite"),
        ({"background": torch.ones(4)}, BroadcastError, r"background of shape \(4,\) does not"),
        ({"background": -torch.ones(3)}, NegativeValueError, r"background .* must be >= 0"),
        ({"mask": torch.ones(3, 3, dtype=torch.int32)}, MaskError, r"boolean .* got dtype"),
        ({"mask": torch.ones(2, 2, dtype=torch.bool)}, MaskError, r"does not broadcast"),
        ({"mask": torch.zeros(3, 3, dtype=torch.bool)}, MaskError, r"excludes every element"),
        ({"mask": torch.full((3, 3), 0.5)}, MaskError, r"exactly 0 or 1"),
        ({"mask": [[True]]}, MaskError, r"got list"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ps.scaled_poisson_nll(GOOD, GOOD, 2.0, **kwargs)


class _Scale:
    """Not a number, not a record: any object whose float() is the scale."""

    def __init__(self, value: Any, data_scale: float | None = None) -> None:
        self.value = value
        if data_scale is not None:
            self.data_scale = data_scale

    def __float__(self) -> float:
        return float(self.value)


@pytest.mark.parametrize(
    ("scale", "error", "match"),
    [
        (0.0, NegativeValueError, r"scale must be > 0, got 0.0"),
        (-3.0, NegativeValueError, r"scale must be > 0"),
        (float("nan"), NonFiniteError, r"scale must be finite"),
        (True, DtypeError, r"scale must be a positive real number"),
        ("31.25", DtypeError, r"got str '31.25'"),
        (1 + 2j, DtypeError, r"got complex"),
        (torch.tensor(-1.0), NegativeValueError, r"scale \(intensity scale\) must be > 0"),
        (torch.tensor(float("inf")), NonFiniteError, r"scale .* 1 infinite"),
        (torch.tensor(2, dtype=torch.int64), DtypeError, r"scale must be a real floating"),
        (torch.tensor(2.0 + 0j), DtypeError, r"scale must be a real floating"),
        (np.complex128(2.0), DtypeError, r"got complex128"),
        (np.bool_(True), DtypeError, r"scale must be a positive real number"),
        (_Scale(-2.0), NegativeValueError, r"scale must be > 0, got -2.0"),
        (_Scale(float("inf")), NonFiniteError, r"scale must be finite"),
        (_Scale("a string"), DtypeError, r"got _Scale"),
    ],
)
def test_bad_scales_raise_clear_errors(scale: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ps.scaled_poisson_nll(GOOD, GOOD, scale)


def test_nan_in_an_unmasked_pixel_is_still_an_error_with_a_mask() -> None:
    pred = torch.ones(1, 1, 2, 2)
    pred[0, 0, 0, 0] = float("nan")
    mask = torch.tensor([[True, False], [True, True]])
    with pytest.raises(NonFiniteError, match=r"1 NaN .* in unmasked pixels"):
        ps.scaled_poisson_nll(pred, torch.ones(1, 1, 2, 2), 2.0, mask=mask)


def test_a_trained_record_as_count_scale_keeps_the_counts_at_the_data_scale() -> None:
    derived = ps.closed_form_scale_record(1e6, 64)  # the data's scale, 31.25
    trained = derived.trained(40.0)
    pred = torch.rand(2, 1, 4, 4, dtype=torch.float64) + 0.1
    obs = torch.rand(2, 1, 4, 4, dtype=torch.float64) + 0.1
    with_record = ps.scaled_poisson_nll(pred, obs, 40.0, count_scale=trained)
    with_value = ps.scaled_poisson_nll(pred, obs, 40.0, count_scale=31.25)
    assert float(with_record) == float(with_value)
    assert float(ps.scaled_poisson_nll(pred, obs, derived, count_scale=derived)) == float(
        ps.scaled_poisson_nll(pred, obs, 31.25)
    )


def test_a_scale_is_anything_whose_float_is_the_scale() -> None:
    # The core knows no record type: a ScaleRecord is a scale through its __float__, and
    # a count scale that names the data's scale (data_scale) gives that.
    pred = torch.rand(2, 1, 4, 4, dtype=torch.float64) + 0.1
    obs = torch.rand(2, 1, 4, 4, dtype=torch.float64) + 0.1
    want = float(ps.scaled_poisson_nll(pred, obs, 40.0, count_scale=31.25))
    assert float(ps.scaled_poisson_nll(pred, obs, _Scale(40.0), count_scale=31.25)) == want
    assert float(ps.scaled_poisson_nll(pred, obs, 40.0, count_scale=_Scale(9.0, 31.25))) == want
    assert float(ps.closed_form_scale_record(1e6, 64).trained(40.0)) == 40.0


def test_the_likelihood_and_its_checks_import_nothing_above_the_core() -> None:
    # The ground floor: no record, no I/O, no CLI, not even inside a function.
    import ast
    from pathlib import Path

    core = Path(ps.__file__).parent / "core"
    for name in ("likelihood.py", "loss_inputs.py", "checks.py", "validation.py"):
        tree = ast.parse((core / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("physscale"):
                assert node.module is not None
                allowed = node.module.startswith("physscale.core") or node.module in (
                    "physscale.errors",
                    "physscale._version",
                )
                assert allowed, f"core/{name} imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("physscale"), f"core/{name}: {alias.name}"


# --------------------------------------------------------------------------- amplitude sign


@given(pairs(st.floats(-10.0, 10.0)), scales, st.sampled_from(FORMS))
def test_any_real_predicted_amplitude_is_a_valid_rate(
    data: tuple[np.ndarray, np.ndarray], s: float, form: str
) -> None:
    # (s * pred)**2 is a rate for any real pred: a plain Conv2d output is fine.
    pred, obs = data
    obs = np.abs(obs)
    p = t64(pred, grad=True)
    got = ps.scaled_poisson_nll(p, t64(obs), s, form=form, reduction="sum")
    want, size = ref_sum(pred, obs, s, form, "amplitude")
    assert float(got.detach()) == pytest.approx(want, rel=0, abs=1e-12 * size + 1e-300)
    got.backward()
    # d/dp of (sp)^2 - k log (sp)^2 is 2 s^2 p - 2 k / p (the floor aside): odd in p.
    q = t64(np.abs(pred), grad=True)
    ps.scaled_poisson_nll(q, t64(obs), s, form=form, reduction="sum").backward()
    assert p.grad is not None
    assert q.grad is not None
    torch.testing.assert_close(p.grad, q.grad * torch.sign(t64(pred)), rtol=1e-12, atol=0)


def test_a_negative_predicted_intensity_is_refused_with_an_activation_hint() -> None:
    pred = -torch.ones(2, 1, 3, 3)
    with pytest.raises(NegativeValueError, match=r"pred \(predicted intensities\).*softplus"):
        ps.scaled_poisson_nll(pred, torch.ones(2, 1, 3, 3), 2.0, domain="intensity")
    with pytest.raises(NegativeValueError, match=r"obs \(observed amplitudes\) must be >= 0"):
        ps.scaled_poisson_nll(torch.ones(2, 1, 3, 3), pred, 2.0)


# --------------------------------------------------------------------------- hints


@pytest.mark.parametrize(
    ("domain", "match"),
    [("amplitude", r"complex64.*pred.abs\(\)"), ("intensity", r"complex64.*pred.abs\(\)\*\*2")],
)
def test_complex_input_is_told_to_take_the_modulus_for_its_domain(domain: str, match: str) -> None:
    with pytest.raises(DtypeError, match=match) as info:
        ps.scaled_poisson_nll(GOOD.to(torch.complex64), GOOD, 2.0, domain=domain)
    assert "integer" not in str(info.value)


def test_integer_counts_as_obs_are_pointed_to_normalizing_or_the_count_native_loss() -> None:
    counts = torch.ones(2, 1, 3, 3, dtype=torch.int64)
    with pytest.raises(DtypeError, match=r"obs .*int64.*normalize_counts.*domain='intensity'"):
        ps.scaled_poisson_nll(GOOD, counts, 2.0)


@pytest.mark.parametrize("name", ["pred", "obs", "scale", "background"])
def test_sparse_inputs_are_a_clear_dtype_error(name: str) -> None:
    args: dict[str, Any] = {"pred": GOOD, "obs": GOOD, "scale": torch.tensor(2.0)}
    if name == "background":
        args["background"] = torch.ones(3, 3).to_sparse()
    else:
        args[name] = args[name].to_sparse()
    with pytest.raises(DtypeError, match=rf"{name} must be a dense tensor.*to_dense\(\)"):
        ps.scaled_poisson_nll(**args)


def test_a_sparse_mask_is_a_clear_mask_error() -> None:
    mask = torch.ones(3, 3, dtype=torch.bool).to_sparse()
    with pytest.raises(MaskError, match=r"mask must be a dense tensor.*to_dense\(\)"):
        ps.scaled_poisson_nll(GOOD, GOOD, 2.0, mask=mask)


def test_meta_inputs_with_checks_on_are_a_clear_error() -> None:
    meta = torch.ones(2, 1, 3, 3, device="meta")
    with pytest.raises(DtypeError, match=r"meta device.*no values.*ps.validation\(False\)"):
        ps.scaled_poisson_nll(meta, meta, 2.0)
    # A meta mask, background or scale next to real data is a device mismatch, not a crash.
    for kwargs in (
        {"mask": torch.ones(3, 3, dtype=torch.bool, device="meta")},
        {"background": torch.ones(3, 3, device="meta")},
        {"scale": torch.ones((), device="meta")},
    ):
        with pytest.raises(ps.PhysscaleError, match=r"meta"):
            ps.scaled_poisson_nll(GOOD, GOOD, **{"scale": 2.0, **kwargs})


# --------------------------------------------------------------------------- range


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "per_sample"])
def test_a_scale_beyond_float32_range_gives_the_float64_value_not_nan(
    form: str, domain: str, reduction: str
) -> None:
    # Issue 11: scale=1e19 on valid float32 inputs gave NaN (the rate overflows float32).
    gen = torch.Generator().manual_seed(11)
    obs = torch.rand(2, 1, 3, 3, generator=gen) + 0.5
    pred = obs * 1.1
    s = 1e19
    got = ps.scaled_poisson_nll(pred, obs, s, form=form, domain=domain, reduction=reduction)
    assert torch.isfinite(got).all()
    flat = got.double().flatten().tolist()
    p64, o64 = pred.double().flatten().tolist(), obs.double().flatten().tolist()
    terms = [ref_terms(p, o, s, form, domain) for p, o in zip(p64, o64, strict=True)]
    if reduction == "none":
        for g, (want, size) in zip(flat, terms, strict=True):
            assert g == pytest.approx(want, abs=1e-12 * size)
    elif reduction == "per_sample":
        for i, g in enumerate(flat):
            part = terms[9 * i : 9 * (i + 1)]
            want = math.fsum(v for v, _ in part)
            assert g == pytest.approx(want, abs=1e-12 * math.fsum(m for _, m in part))
    else:
        want = math.fsum(v for v, _ in terms) / (len(terms) if reduction == "mean" else 1)
        size = math.fsum(m for _, m in terms)
        assert flat[0] == pytest.approx(want, abs=1e-12 * size)


def test_a_rate_beyond_float32_from_large_predictions_is_computed_in_float64() -> None:
    # A float32 prediction of 1e20 at scale 1: the rate 1e40 overflows float32 but not float64.
    pred = torch.full((1, 1, 2, 2), 1e20)
    obs = torch.full((1, 1, 2, 2), 1e20)
    got = ps.scaled_poisson_nll(pred, obs, 1.0, reduction="sum")
    lam = float(np.float32(1e20)) ** 2
    assert float(got) == pytest.approx(4 * (lam - lam * math.log(lam)), rel=1e-12)


def test_a_rate_beyond_float64_is_a_clear_error_with_checks_on() -> None:
    pred = torch.full((1, 1, 2, 2), 1e200, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match=r"the rate or the counts overflow float64"):
        ps.scaled_poisson_nll(pred, pred, 1e150)


# --------------------------------------------------------------------------- the unfloored rate


def port_loss(pred: torch.Tensor, obs: torch.Tensor, s: float) -> torch.Tensor:
    """PtychoPINN's PyTorch port: -Independent(Poisson((s pred)^2), 3).log_prob((s obs)^2)."""
    dist = torch.distributions.Poisson((s * pred) ** 2, validate_args=False)
    return -torch.distributions.Independent(dist, 3).log_prob((s * obs) ** 2)


@given(st.integers(0, 2**32 - 1), scales, st.floats(0.0, 1.0))
def test_eps_0_reproduces_the_ports_value_and_gradients_exactly(
    seed: int, s: float, dark_fraction: float
) -> None:
    rng = np.random.default_rng(seed)
    shape = (2, 1, 4, 4)
    # Rates far below the default floor (1e-12 counts) where photons were counted.
    pred = rng.random(shape) * 1e-9 / s
    bright = rng.random(shape) >= dark_fraction
    pred[bright] = rng.random(int(bright.sum())) + 0.1
    obs = rng.random(shape) + 0.05
    ours_p, port_p = t64(pred, grad=True), t64(pred, grad=True)
    ours_o, port_o = t64(obs, grad=True), t64(obs, grad=True)
    ours = ps.scaled_poisson_nll(ours_p, ours_o, s, form="exact", reduction="per_sample", eps=0.0)
    port = port_loss(port_p, port_o, s)
    torch.testing.assert_close(ours, port, rtol=1e-13, atol=0)
    (ours.sum()).backward()
    (port.sum()).backward()
    assert ours_p.grad is not None
    assert ours_o.grad is not None
    torch.testing.assert_close(ours_p.grad, port_p.grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours_o.grad, port_o.grad, rtol=1e-12, atol=0)


def test_the_default_floor_differs_from_the_port_where_the_rate_is_below_it() -> None:
    # Documented: 1 - k/max(lam, eps) vs the unfloored 1 - k/lam.
    pred = torch.tensor([[[[1e-8]]]], dtype=torch.float64, requires_grad=True)
    obs = torch.tensor([[[[1.0]]]], dtype=torch.float64)
    ps.scaled_poisson_nll(pred, obs, 1.0, form="exact", reduction="sum").backward()
    assert pred.grad is not None
    floored = float(pred.grad)
    assert floored == pytest.approx((1 - 1.0 / 1e-12) * 2 * 1e-8, rel=1e-12)
    pred.grad = None
    ps.scaled_poisson_nll(pred, obs, 1.0, form="exact", reduction="sum", eps=0.0).backward()
    assert float(pred.grad) == pytest.approx(2 * 1e-8 - 2 * 1.0 / 1e-8, rel=1e-12)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("domain", DOMAINS)
def test_eps_0_gives_0_and_finite_gradients_where_rate_and_counts_are_both_0(
    form: str, domain: str
) -> None:
    # The port gives a NaN gradient there (0 * log 0 in its autograd); we give xlogy's 0.
    pred = torch.tensor([[0.0, 0.0, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    obs = torch.tensor([[0.0, 0.0, 0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    loss = ps.scaled_poisson_nll(
        pred, obs, scale, form=form, domain=domain, reduction="none", eps=0.0
    )
    assert loss[0, 0] == 0
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    for x in (pred, obs, scale):
        assert x.grad is not None
        assert torch.isfinite(x.grad).all()
    # d/dlam (lam - k log lam) at k = 0 is 1: the zero pixels pull nothing in amplitude.
    assert pred.grad[0, 0] == (0.0 if domain == "amplitude" else 9.0)


@pytest.mark.parametrize("form", FORMS)
def test_eps_0_makes_an_impossible_observation_infinite(form: str) -> None:
    # Rate 0 where photons were counted: -log Poisson(k; 0) is +inf, as in torch.distributions.
    pred = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    obs = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    got = ps.scaled_poisson_nll(pred, obs, 2.0, form=form, reduction="none", eps=0.0)
    assert got[0, 0] == math.inf
    assert math.isfinite(float(got[0, 1]))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("domain", DOMAINS)
def test_gradcheck_with_eps_0(form: str, domain: str) -> None:
    gen = torch.Generator().manual_seed(12)
    pred = (torch.rand(2, 1, 3, 3, generator=gen, dtype=torch.float64) + 0.2).requires_grad_()
    obs = (torch.rand(2, 1, 3, 3, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
    scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)

    def f(p: torch.Tensor, o: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return ps.scaled_poisson_nll(p, o, s, form=form, domain=domain, eps=0.0)

    assert torch.autograd.gradcheck(f, (pred, obs, scale))


# --------------------------------------------------------------------------- units


def raw_counts(shape: tuple[int, ...] = (4, 1, 8, 8), seed: int = 13) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full(shape, 40.0), generator=gen)


def test_raw_counts_as_obs_warn_like_derive_does() -> None:
    counts = raw_counts()
    with pytest.warns(ps.UnitsWarning, match=r"obs look like raw photon counts.*normalize_counts"):
        ps.scaled_poisson_nll(counts, counts, 31.25, domain="intensity")
    # Amplitudes whose squares are whole counts: the square roots of raw counts.
    with pytest.warns(ps.UnitsWarning, match=r"obs look like raw photon counts"):
        ps.scaled_poisson_nll(counts.sqrt(), counts.sqrt(), 31.25)
    # Counts given as amplitudes at scale 1: the loss would square the counts.
    with pytest.warns(ps.UnitsWarning, match=r"domain='intensity'"):
        ps.scaled_poisson_nll(counts, counts, 1.0)


def test_count_native_use_does_not_warn() -> None:
    # Scale exactly 1 on counts: the data are counts, and the loss treats them as such.
    counts = raw_counts()
    pred = counts + 0.5
    with no_units_warning():
        ps.scaled_poisson_nll(pred, counts, 1.0, domain="intensity")
        ps.scaled_poisson_nll(pred, counts, torch.tensor(1.0), domain="intensity")
        ps.scaled_poisson_nll(pred.sqrt(), counts.sqrt(), 1.0)  # amplitudes = sqrt(counts)
    rates, ks = pred.flatten().tolist(), counts.flatten().tolist()
    want = math.fsum(lam - k * math.log(lam) for lam, k in zip(rates, ks, strict=True))
    got = ps.scaled_poisson_nll(
        pred.double(), counts.double(), 1.0, domain="intensity", reduction="sum"
    )
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_a_scale_that_maps_whole_obs_to_whole_counts_does_not_warn() -> None:
    # A detector gain (deepinv, y = gain * Poisson(x / gain)): obs = y are whole, and the
    # scale gain**-0.5 turns them into whole counts k = y / gain. That is deliberate.
    gain = 4.0
    y = gain * raw_counts()
    per_sample = torch.full((4, 1, 1, 1), gain**-0.5)
    with no_units_warning():
        ps.scaled_poisson_nll(y + 0.5, y, gain**-0.5, domain="intensity")
        ps.scaled_poisson_nll(y + 0.5, y, per_sample, domain="intensity")
        ps.scaled_poisson_nll(y + 0.5, y, 31.25, count_scale=gain**-0.5, domain="intensity")
    # The same obs at a scale that does not map them to whole counts: raw counts, even
    # where every pixel is bright (k ~ 1e5 here).
    with pytest.warns(ps.UnitsWarning, match="raw photon counts"):
        ps.scaled_poisson_nll(y + 0.5, y, 31.25, domain="intensity")


def test_normalized_data_do_not_warn() -> None:
    gen = torch.Generator().manual_seed(14)
    obs = torch.rand(4, 1, 8, 8, generator=gen)
    with no_units_warning():
        ps.scaled_poisson_nll(obs + 0.1, obs, 31.25)
        ps.scaled_poisson_nll(obs + 0.1, obs, 31.25, domain="intensity")
