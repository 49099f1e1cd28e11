"""A whole training step with the scaled Poisson NLL, eager and compiled, in one process.

The step: ``opt.zero_grad(); loss = loss_fn(model(x * s), x); loss.backward();
opt.step()`` with a light two-layer convolutional amplitude model (so that the
loss is a visible share of the step; ``--width 0``: only a learned per-pixel
gain, so that the loss is most of the step) whose physics scale is
a trainable :class:`physscale.nn.IntensityScaler` (rate at ``exp(log_scale)``,
counts at the data's scale, as TF trains it), SGD, float32, on ``--device``.
The losses, each computing the same rate ``lam`` and counts ``k``:

- ``ours, checks on`` / ``ours, checks off``: ``ScaledPoissonNLLLoss(scaler)``
  (validation on, the default; or off, the hot path with no host sync);
- ``inline``: ``(lam - k * torch.log(lam)).mean()`` written out;
- ``F.poisson_nll_loss``: ``poisson_nll_loss(lam, k, log_input=False)``;
- ``compiled ours`` / ``compiled inline``: the model and the loss compiled with
  ``torch.compile(fullgraph=True)`` (checks off; AOTAutograd compiles the
  backward too), then ``backward()`` and ``opt.step()``. With ``--one-graph``
  the whole step (backward and an SGD update written out) is one compiled
  graph (needs ``torch._dynamo.config.trace_autograd_ops``).

Target (issue 12): ``compiled ours`` within 1.1x of ``compiled inline``.

Every step runs interleaved with the others in a fresh random order each
round, each variant on its own copy of the same model; on CUDA each timed step
ends with ``torch.cuda.synchronize()``. Compilation happens in the warm-up,
before timing.

The last line printed is one JSON object (for scripts)::

    {"bench": "train_step", "device": "...", "quick": false, "target_compiled": 1.1,
     "meets_target": true, "compiled_vs_inline": 1.02, "eager_on_vs_off": 1.2,
     "eager_off_vs_inline": 0.8, "eager_off_vs_f": 0.8, "median_ms": {...}, ...}

Run: ``python benchmarks/bench_train_step.py [--device cpu|cuda] [--repeats 30]
[--threads N] [--batch B] [--size N] [--width W] [--quick] [--one-graph]
[--no-compile]``. ``--quick`` uses a small
batch and 15 rounds; most of its time is compiling (about 20-40 s on a cold
inductor cache on a 2-core CPU, a few seconds warm).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import median_ratio, shuffled_seconds, synchronized

import physscale as ps
from physscale.nn import IntensityScaler, ScaledPoissonNLLLoss

TARGET_COMPILED = 1.1


class AmplitudeNet(torch.nn.Module):
    """Normalized amplitudes in, normalized amplitudes out; the scale at the boundary."""

    def __init__(self, scale: float, width: int, size: int) -> None:
        super().__init__()
        self.scaler = IntensityScaler(scale, trainable=True)
        # Deliberately light, so that the loss is a visible share of the step. Width 0:
        # only a learned per-pixel gain, so that the loss is most of the step.
        self.net: torch.nn.Module
        if width > 0:
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(1, width, 3, padding=1),
                torch.nn.Tanh(),
                torch.nn.Conv2d(width, 1, 3, padding=1),
            )
        else:
            self.gain = torch.nn.Parameter(torch.ones(1, 1, size, size))
            self.net = torch.nn.Identity()

    def forward(self, x_physical: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(self.scaler.normalize(x_physical))
        return out * self.gain if hasattr(self, "gain") else out


LossFn = Callable[[AmplitudeNet, torch.Tensor, torch.Tensor], torch.Tensor]


def ours(model: AmplitudeNet, pred: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = model.loss(pred, obs)  # type: ignore[operator]
    return out


def inline(model: AmplitudeNet, pred: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    lam = (model.scaler.scale * pred) ** 2
    k = (model.scaler.initial_scale * obs) ** 2
    return (lam - k * torch.log(lam)).mean()


def functional(model: AmplitudeNet, pred: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    lam = (model.scaler.scale * pred) ** 2
    k = (model.scaler.initial_scale * obs) ** 2
    return torch.nn.functional.poisson_nll_loss(lam, k, log_input=False)


class Variant:
    """One model copy, its optimizer and its step function."""

    def __init__(
        self, base: AmplitudeNet, loss_of: LossFn, scale: float, *, compiled: str | None
    ) -> None:
        self.model = copy.deepcopy(base)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-7)
        model = self.model

        def forward(x: torch.Tensor) -> torch.Tensor:
            return loss_of(model, model(x * scale), x)

        params = list(model.parameters())

        def whole_step(x: torch.Tensor) -> torch.Tensor:
            loss = forward(x)
            loss.backward()
            with torch.no_grad():
                for p in params:
                    assert p.grad is not None
                    p.sub_(1e-7 * p.grad)
                    p.grad = None
            return loss.detach()

        self.whole: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.forward: Callable[[torch.Tensor], torch.Tensor] = forward
        if compiled == "forward":
            self.forward = torch.compile(forward, fullgraph=True)
        elif compiled == "step":
            self.whole = torch.compile(whole_step, fullgraph=True)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        if self.whole is not None:
            return self.whole(x)
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward(x)
        loss.backward()
        self.opt.step()
        return loss.detach()


def with_validation(enabled: bool, fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        ps.set_validation(enabled)
        try:
            return fn()
        finally:
            ps.set_validation(True)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 30; 10 quick)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="patterns per step")
    parser.add_argument("--size", type=int, default=64, help="pattern side N (N x N)")
    parser.add_argument(
        "--width",
        type=int,
        default=4,
        help="channels of the hidden layer; 0: no network, a per-pixel gain (loss-bound step)",
    )
    parser.add_argument("--quick", action="store_true", help="small batch, few rounds")
    parser.add_argument(
        "--one-graph", action="store_true", help="compile the whole step as one graph"
    )
    parser.add_argument("--no-compile", action="store_true", help="eager variants only")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (15 if args.quick else 30)
    batch = args.batch or (8 if args.quick else 32)
    device = args.device
    device_name = (
        torch.cuda.get_device_name(torch.device(device))
        if device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    compile_mode = None if args.no_compile else ("step" if args.one_graph else "forward")
    if compile_mode == "step":
        if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
            parser.error("--one-graph needs torch._dynamo.config.trace_autograd_ops")
        torch._dynamo.config.trace_autograd_ops = True

    n = args.size
    scale = float(ps.closed_form_intensity_scale(1e6, (n, n)))
    torch.manual_seed(0)
    base = AmplitudeNet(scale, args.width, n)
    base.loss = ScaledPoissonNLLLoss(base.scaler)
    base.to(device)
    gen = torch.Generator().manual_seed(1)
    data = (torch.rand(batch, 1, n, n, generator=gen) + 0.05).to(device)

    print(
        f"torch {torch.__version__}, device {device} ({device_name}), "
        f"{torch.get_num_threads()} threads, physscale {ps.__version__}; "
        f"batch {tuple(data.shape)}, width {args.width}, s = {scale:g}, "
        f"compile: {compile_mode or 'off'}"
    )
    variants = {
        "ours, checks on": (Variant(base, ours, scale, compiled=None), True),
        "ours, checks off": (Variant(base, ours, scale, compiled=None), False),
        "inline": (Variant(base, inline, scale, compiled=None), True),
        "F.poisson_nll_loss": (Variant(base, functional, scale, compiled=None), True),
    }
    if compile_mode is not None:
        variants["compiled ours"] = (Variant(base, ours, scale, compiled=compile_mode), False)
        variants["compiled inline"] = (Variant(base, inline, scale, compiled=compile_mode), False)
    fns = {
        name: with_validation(enabled, lambda v=v: v.step(data))
        for name, (v, enabled) in variants.items()
    }

    # Same loss value first (one step each from the same weights), then compile (warm-up).
    start = time.perf_counter()
    values = {name: float(fn()) for name, fn in fns.items()}
    warm_s = time.perf_counter() - start
    for name, value in values.items():
        print(f"  first-step loss {name:22s} {value:.6e}")
    print(f"  first steps (compiling included): {warm_s:.1f} s")
    times = shuffled_seconds(synchronized(fns, device), repeats, warmup=2)

    base_name = "ours, checks off"
    print(f"\n  {'step':22s} {'median ms':>10s} {'x ours, checks off':>19s}")
    for name, ts in times.items():
        print(
            f"  {name:22s} {statistics.median(ts) * 1e3:10.3f} "
            f"{median_ratio(ts, times[base_name]):18.2f}x"
        )
    summary: dict[str, Any] = {
        "bench": "train_step",
        "device": device,
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "repeats": repeats,
        "batch": list(data.shape),
        "width": args.width,
        "compile": compile_mode,
        "median_ms": {name: statistics.median(ts) * 1e3 for name, ts in times.items()},
        "eager_on_vs_off": median_ratio(times["ours, checks on"], times[base_name]),
        "eager_off_vs_inline": median_ratio(times[base_name], times["inline"]),
        "eager_off_vs_f": median_ratio(times[base_name], times["F.poisson_nll_loss"]),
        "target_compiled": TARGET_COMPILED,
    }
    if compile_mode is not None:
        ratio = median_ratio(times["compiled ours"], times["compiled inline"])
        summary["compiled_vs_inline"] = ratio
        summary["meets_target"] = ratio <= TARGET_COMPILED
        print(
            f"\n  compiled ours / compiled inline = {ratio:.3f} (target <= {TARGET_COMPILED}); "
            f"eager checks on / off = {summary['eager_on_vs_off']:.3f}"
        )
    else:
        summary["meets_target"] = None
    # The form benchmarks/gpu_check.py collects: {"met": bool | None, ...}.
    summary["targets"] = {
        "met": summary["meets_target"],
        "compiled_vs_inline": summary.get("compiled_vs_inline"),
        "target_compiled": TARGET_COMPILED,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
