"""The training hot path with checks off: one compiled graph, no host sync, CUDA graphs.

On the CPU (every CI run): a whole training step (model -> scaled NLL -> backward
-> optimizer step) compiles with ``torch.compile(fullgraph=True)`` and gives the
eager values and gradients; every option of the loss captures without a graph
break. With checks on, the value check is a graph break, as documented.

On a CUDA device (marker ``cuda``; skipped without one): the same step runs
under ``torch.cuda.set_sync_debug_mode("error")`` and is captured and replayed
as a CUDA graph. The CPU analogues of these are the meta-device tests in
``test_validation.py`` (no tensor value is ever read) and the fullgraph tests
here (no data-dependent Python).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import physscale as ps
from physscale.nn import IntensityScaler, ScaledPoissonNLLLoss

# The C++ toolchain inductor needs is part of the test environment (CI has it).
BACKEND = "inductor" if shutil.which("g++") or shutil.which("c++") else "aot_eager"
HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class PtychoNet(torch.nn.Module):
    """A small amplitude model with the physics scale at its boundary (SPEC §2)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scaler = IntensityScaler(scale, trainable=True)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.Tanh(),
            torch.nn.Conv2d(4, 1, 3, padding=1),
        )

    def forward(self, x_physical: torch.Tensor) -> torch.Tensor:
        # Any real amplitude is a valid rate once squared: no output activation needed.
        return self.net(self.scaler.normalize(x_physical))


SCALE = 31.25


def make_setup(device: str) -> tuple[PtychoNet, ScaledPoissonNLLLoss, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = PtychoNet(SCALE).to(device)
    loss_fn = ScaledPoissonNLLLoss(
        model.scaler,
        mask=torch.rand(16, 16, generator=gen) > 0.1,
        background=torch.rand(16, 16, generator=gen) * 0.01,
    ).to(device)
    data = (torch.rand(3, 4, 1, 16, 16, generator=gen) + 0.05).to(device)
    return model, loss_fn, data


def sgd_step(
    model: torch.nn.Module, loss_fn: torch.nn.Module, lr: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """model -> scaled NLL -> backward -> SGD step, written so that one graph holds it all."""
    params = list(model.parameters())

    def step(x: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(model(x * SCALE), x)
        loss.backward()
        with torch.no_grad():
            for p in params:
                assert p.grad is not None
                p.sub_(lr * p.grad)
                p.grad = None
        return loss.detach()

    return step


def assert_same_training(
    got: tuple[list[torch.Tensor], torch.nn.Module],
    want: tuple[list[torch.Tensor], torch.nn.Module],
    rtol: float,
) -> None:
    (got_losses, got_model), (want_losses, want_model) = got, want
    for a, b in zip(got_losses, want_losses, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=0)
    for (name, a), (_, b) in zip(
        got_model.named_parameters(), want_model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()), msg=name)


# --------------------------------------------------------------------------- CPU, every CI run


@pytest.mark.skipif(
    not hasattr(torch._dynamo.config, "trace_autograd_ops"),
    reason="this torch cannot trace backward() inside a compiled function",
)
def test_a_whole_training_step_compiles_to_one_graph_and_matches_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # backward() inside the compiled function needs dynamo's autograd tracing; the update is
    # written out because torch.optim's step() graph-breaks on purpose (see the next test).
    monkeypatch.setattr(torch._dynamo.config, "trace_autograd_ops", True)
    model, loss_fn, data = make_setup("cpu")
    twin, twin_loss = copy.deepcopy((model, loss_fn))
    with ps.validation(False):
        step = torch.compile(sgd_step(model, loss_fn, 1e-6), fullgraph=True, backend=BACKEND)
        losses = [step(x) for x in data]
        eager = sgd_step(twin, twin_loss, 1e-6)
        want = [eager(x) for x in data]
    assert len({float(v) for v in losses}) == len(losses)  # it trains: the loss moves
    assert float(model.scaler.log_scale.detach()) != float(make_setup("cpu")[0].scaler.log_scale)
    assert_same_training((losses, model), (want, twin), rtol=2e-5)


def test_forward_and_loss_compile_fullgraph_with_torch_optim_outside() -> None:
    # The common recipe: compile model + loss (AOTAutograd compiles the backward too);
    # backward() and torch.optim run outside the graph.
    model, loss_fn, data = make_setup("cpu")
    twin, twin_loss = copy.deepcopy((model, loss_fn))

    def forward(m: torch.nn.Module, f: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = f(m(x * SCALE), x)
        return out

    def train(m: torch.nn.Module, f: torch.nn.Module, fwd: Any) -> list[torch.Tensor]:
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        losses = []
        for x in data:
            opt.zero_grad()
            loss = fwd(m, f, x)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return losses

    with ps.validation(False):
        losses = train(model, loss_fn, torch.compile(forward, fullgraph=True, backend=BACKEND))
        want = train(twin, twin_loss, forward)
    assert_same_training((losses, model), (want, twin), rtol=2e-5)


CAPTURED_OPTIONS = [
    {"form": "tf"},
    {"form": "stirling", "reduction": "none"},
    {"form": "exact", "reduction": "per_sample", "eps": 0.0},
    {"form": "deviance", "domain": "intensity"},
    {"mask": "bool", "background": "map", "count_scale": 20.0},
    {"mask": "float", "scale": "per_sample", "reduction": "mean", "eps": 0.0},
    {"form": "deviance", "scale": "tensor", "background": 0.5},
]


@pytest.mark.parametrize("options", CAPTURED_OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_every_option_of_the_loss_captures_without_a_graph_break(options: dict[str, Any]) -> None:
    gen = torch.Generator().manual_seed(1)
    obs = torch.rand(2, 1, 6, 6, generator=gen, dtype=torch.float64)
    kwargs = dict(options)
    scale: Any = {
        "tensor": torch.tensor(30.0, dtype=torch.float64, requires_grad=True),
        "per_sample": torch.tensor([[[[30.0]]], [[[12.0]]]], dtype=torch.float64),
    }.get(kwargs.pop("scale", ""), 30.0)
    if "mask" in kwargs:
        keep = torch.rand(6, 6, generator=gen) > 0.2
        kwargs["mask"] = keep if kwargs["mask"] == "bool" else keep.double()
    if kwargs.get("background") == "map":
        kwargs["background"] = torch.rand(6, 6, generator=gen, dtype=torch.float64)

    def loss(p: torch.Tensor, o: torch.Tensor, s: Any) -> torch.Tensor:
        return ps.scaled_poisson_nll(p, o, s, **kwargs).sum()

    results = []
    with ps.validation(False):
        for fn in (torch.compile(loss, fullgraph=True, backend="aot_eager"), loss):
            p = (obs - 0.1).requires_grad_()  # some negative amplitudes, too
            value = fn(p, obs, scale)
            value.backward()
            results.append((value.detach(), p.grad))
    (got, got_grad), (want, want_grad) = results
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=0)


def test_evaluation_without_grad_compiles_fullgraph_too() -> None:
    # No input requires grad: torch.compile then inlines the Function's forward.
    gen = torch.Generator().manual_seed(2)
    obs = torch.rand(2, 1, 6, 6, generator=gen)
    pred = obs + 0.1
    mask = torch.rand(6, 6, generator=gen) > 0.2

    def loss(p: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return ps.scaled_poisson_nll(p, o, 30.0, mask=mask) + ps.scaled_poisson_nll(
            p, o, torch.tensor(2.0), form="deviance", reduction="per_sample", eps=0.0
        )

    with ps.validation(False):
        got = torch.compile(loss, fullgraph=True, backend="aot_eager")(pred, obs)
        with torch.no_grad():
            got_no_grad = torch.compile(loss, fullgraph=True, backend="aot_eager")(pred, obs)
        want = loss(pred, obs)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(got_no_grad, want, rtol=1e-6, atol=0)


def test_a_compiled_loss_follows_the_switch_when_it_changes_later() -> None:
    # The switch is read while tracing and guarded: turning checks back on re-traces,
    # so a compiled function never silently keeps skipping them.
    obs = torch.rand(2, 1, 6, 6)
    bad = obs.clone()
    bad[0, 0, 0, 0] = float("nan")

    def loss(p: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return ps.scaled_poisson_nll(p, o, 30.0)

    compiled = torch.compile(loss, backend="eager")
    with ps.validation(False):
        assert torch.isnan(compiled(bad, obs))
    with pytest.raises(ps.errors.NonFiniteError, match="1 NaN"):
        compiled(bad, obs)


def test_with_checks_on_the_value_check_is_a_graph_break() -> None:
    obs = torch.rand(2, 1, 6, 6)

    def loss(p: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return ps.scaled_poisson_nll(p, o, 30.0)

    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(loss, fullgraph=True, backend="eager")(obs + 0.1, obs)
    # Without fullgraph it still runs (the check runs eagerly between two graphs).
    torch._dynamo.reset()
    got = torch.compile(loss, backend="eager")(obs + 0.1, obs)
    torch.testing.assert_close(got, loss(obs + 0.1, obs), rtol=0, atol=0)


# --------------------------------------------------------------------------- CUDA
# Written for a CUDA device and checked by reasoning and by the CPU analogues above;
# benchmarks/gpu_check.py runs them where a GPU is present.


def sync_free_step(
    model: torch.nn.Module, loss_fn: torch.nn.Module, opt: torch.optim.Optimizer
) -> Callable[[torch.Tensor], torch.Tensor]:
    def step(x: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x * SCALE), x)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


@pytest.mark.cuda
@cuda
def test_on_cuda_a_training_step_with_checks_off_makes_no_host_sync() -> None:
    model, loss_fn, data = make_setup("cuda")
    # SGD without momentum keeps no state: nothing it does syncs either.
    step = sync_free_step(model, loss_fn, torch.optim.SGD(model.parameters(), lr=1e-6))
    with ps.validation(False):
        step(data[0])  # warm up (cuDNN and allocator set-up happen outside the check)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for x in data:
                step(x)
            # The functional form, with every kind of argument a user passes.
            pred = model(data[0] * SCALE)
            mask = loss_fn.mask
            assert mask is not None
            for kwargs in (
                {"scale": 31.25},
                {"scale": torch.tensor(31.25)},  # a CPU scalar: no copy, no sync
                {"scale": model.scaler.scale, "count_scale": 31.25, "mask": mask},
                {"scale": 31.25, "mask": mask.float(), "reduction": "mean", "eps": 0.0},
                {"scale": 31.25, "form": "deviance", "background": 0.5},
            ):
                ps.scaled_poisson_nll(pred, data[0], **kwargs).backward(retain_graph=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.cuda
@cuda
def test_on_cuda_checks_on_do_sync_which_proves_the_check_above_bites() -> None:
    model, _, data = make_setup("cuda")
    pred = model(data[0] * SCALE).detach()
    ps.scaled_poisson_nll(pred, data[0], 31.25)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            ps.scaled_poisson_nll(pred, data[0], 31.25)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@cuda
def test_on_cuda_a_training_step_is_captured_and_replayed_as_a_cuda_graph() -> None:
    model, loss_fn, data = make_setup("cuda")
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    step = sync_free_step(model, loss_fn, opt)
    static_x = data[0].clone()
    with ps.validation(False):
        # Warm up on a side stream, as torch.cuda.graphs asks before capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step(static_x)
        torch.cuda.current_stream().wait_stream(side)
        # Capture records kernels without running them: the twin starts from this state.
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            static_loss = loss_fn(model(static_x * SCALE), static_x)
            static_loss.backward()
            opt.step()
        twin, twin_loss = copy.deepcopy((model, loss_fn))
        twin_step = sync_free_step(twin, twin_loss, torch.optim.SGD(twin.parameters(), lr=1e-6))
        losses, want = [], []
        for x in data:
            static_x.copy_(x)
            graph.replay()
            losses.append(static_loss.detach().clone())
            want.append(twin_step(x))
    torch.cuda.synchronize()
    assert_same_training((losses, model), (want, twin), rtol=1e-5)


@pytest.mark.cuda
@cuda
def test_on_cuda_the_whole_step_compiles_to_one_graph_and_matches_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip("this torch cannot trace backward() inside a compiled function")
    monkeypatch.setattr(torch._dynamo.config, "trace_autograd_ops", True)
    model, loss_fn, data = make_setup("cuda")
    twin, twin_loss = copy.deepcopy((model, loss_fn))
    with ps.validation(False):
        step = torch.compile(sgd_step(model, loss_fn, 1e-6), fullgraph=True)
        losses = [step(x) for x in data]
        eager = sgd_step(twin, twin_loss, 1e-6)
        want = [eager(x) for x in data]
    assert_same_training((losses, model), (want, twin), rtol=2e-5)
