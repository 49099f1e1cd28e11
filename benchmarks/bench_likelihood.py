"""Forward + backward of the scaled Poisson NLL against the reference ways, same process.

Amplitude domain, ``form="tf"``, ``reduction="mean"``, float32 on the CPU:

- ``physscale``: ``scaled_poisson_nll(pred, obs, s)`` (validation included);
- ``kernel only``: the same fused autograd Function without the input checks,
  to show what the one validation sync costs;
- ``(a) Independent(Poisson)``: the reference PyTorch port's way,
  ``-Independent(Poisson((s*pred)**2), 3).log_prob((s*obs)**2).mean()``;
- ``(b) F.poisson_nll_loss``: ``poisson_nll_loss((s*pred)**2, (s*obs)**2, log_input=False)``.

The methods run interleaved, round after round and in a rotating order, so
load on a shared machine hits them alike; the script reports median times and
the median of the per-round ratios. Peak extra memory is the largest number of bytes held by
tensors created during one forward + backward (a dispatch-mode tracker that
follows every CPU storage until it is freed; the gradient of ``pred`` counts).

Run: ``python benchmarks/bench_likelihood.py [--repeats 40] [--threads N]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import weakref
from collections.abc import Callable
from typing import Any

import torch
from _common import interleaved_seconds, median_ratio
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import physscale as ps
from physscale.likelihood import _ScaledPoissonNLL

SHAPES = [(64, 1, 64, 64), (16, 4, 128, 128)]


class PeakMemory(TorchDispatchMode):
    """Tracks live bytes of CPU storages created under it; ``peak`` is the maximum.

    Storages of the tensors in ``existing`` (the inputs) are not new memory,
    even when an op returns a view of them.
    """

    def __init__(self, existing: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._existing = {t.untyped_storage().data_ptr() for t in existing}
        self._live: dict[int, weakref.ref[Any]] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self._live.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in self._live or key in self._existing or storage.nbytes() == 0:
                    continue
                nbytes = storage.nbytes()
                self._live[key] = weakref.ref(
                    storage, lambda _r, key=key, n=nbytes: self._freed(key, n)
                )
                self.current += nbytes
                self.peak = max(self.peak, self.current)
        return out


def make_methods(
    pred: torch.Tensor, obs: torch.Tensor, s: float
) -> dict[str, Callable[[], torch.Tensor]]:
    def physscale_nll() -> torch.Tensor:
        return ps.scaled_poisson_nll(pred, obs, s)

    s_t = torch.tensor(s)
    count = float(pred.numel())

    def kernel_only() -> torch.Tensor:
        out: torch.Tensor = _ScaledPoissonNLL.apply(
            pred, obs, s_t, s_t, None, None, "amplitude", "tf", "mean", 1e-12, count, True
        )
        return out

    def reference_independent() -> torch.Tensor:
        dist = torch.distributions.Poisson((s * pred) ** 2, validate_args=False)
        return -torch.distributions.Independent(dist, 3).log_prob((s * obs) ** 2).mean()

    def reference_functional() -> torch.Tensor:
        return torch.nn.functional.poisson_nll_loss(
            (s * pred) ** 2, (s * obs) ** 2, log_input=False
        )

    return {
        "physscale": physscale_nll,
        "kernel only": kernel_only,
        "(a) Independent(Poisson)": reference_independent,
        "(b) F.poisson_nll_loss": reference_functional,
    }


def step(loss_fn: Callable[[], torch.Tensor], pred: torch.Tensor) -> None:
    loss_fn().backward()
    pred.grad = None


def bench_shape(shape: tuple[int, ...], repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    n = shape[-1]
    s = float(ps.closed_form_intensity_scale(1e6, (n, n)))
    obs = torch.rand(shape, generator=gen)
    pred = (obs + 0.1 * torch.rand(shape, generator=gen)).requires_grad_()
    methods = make_methods(pred, obs, s)

    # Same value and gradient first (the functional one adds its eps inside the log).
    grads = {}
    for name, fn in methods.items():
        loss = fn()
        loss.backward()
        assert pred.grad is not None
        grads[name] = (float(loss.detach()), pred.grad.clone())
        pred.grad = None
    # (a) is a per-sample sum averaged over the batch: numel/B times the elementwise mean.
    per_sample = pred.numel() / pred.shape[0]
    ref_grad = grads["(b) F.poisson_nll_loss"][1]
    for name, (value, grad) in grads.items():
        factor = per_sample if name.startswith("(a)") else 1.0
        same = torch.allclose(
            grad / factor, ref_grad, rtol=1e-4, atol=1e-6 * float(ref_grad.abs().max())
        )
        print(f"  check {name:28s} value {value / factor:.6e}  grad agrees with (b): {same}")

    # Rotating order each round: whoever runs right after a baseline inherits its
    # cache and allocator state, so no method always goes first.
    times = interleaved_seconds(
        {name: (lambda fn=fn: step(fn, pred)) for name, fn in methods.items()}, repeats, warmup=3
    )

    peaks = {}
    for name, fn in methods.items():
        tracker = PeakMemory((pred, obs))
        with tracker:
            step(fn, pred)
        peaks[name] = tracker.peak

    ours = times["physscale"]
    data_mib = pred.numel() * 4 / 2**20
    print(f"\nshape {shape} ({pred.numel()} elements, {data_mib:.1f} MiB per tensor), s = {s:g}")
    print(f"  {'method':28s} {'median ms':>10s} {'ours faster by':>15s} {'peak extra MiB':>15s}")
    for name in methods:
        ratio = median_ratio(times[name], ours)
        print(
            f"  {name:28s} {statistics.median(times[name]) * 1e3:10.3f} "
            f"{ratio:14.2f}x {peaks[name] / 2**20:15.2f}"
        )


def bench_forms(shape: tuple[int, ...], repeats: int) -> None:
    """Each form (and a masked call) relative to the default, forward + backward."""
    gen = torch.Generator().manual_seed(1)
    obs = torch.rand(shape, generator=gen)
    pred = (obs + 0.1 * torch.rand(shape, generator=gen)).requires_grad_()
    mask = torch.rand(shape[-2:], generator=gen) > 0.05
    s = 30.0
    variants: dict[str, Callable[[], torch.Tensor]] = {
        f"form={form!r}": (lambda form=form: ps.scaled_poisson_nll(pred, obs, s, form=form))
        for form in ("tf", "stirling", "exact", "deviance")
    }
    variants["tf, (H, W) mask"] = lambda: ps.scaled_poisson_nll(pred, obs, s, mask=mask)
    variants["tf, reduction='none'"] = lambda: ps.scaled_poisson_nll(
        pred, obs, s, reduction="none"
    ).sum()
    times = interleaved_seconds(
        {name: (lambda fn=fn: step(fn, pred)) for name, fn in variants.items()}, repeats, warmup=0
    )
    base = times["form='tf'"]
    print(f"\nforms and options, shape {shape}, forward + backward")
    for name, ts in times.items():
        ratio = median_ratio(ts, base)
        print(f"  {name:28s} {statistics.median(ts) * 1e3:10.3f} ms  {ratio:5.2f}x the tf time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, physscale {ps.__version__}"
    )
    print("'ours faster by' = median over rounds of (method time / physscale time)")
    for shape in SHAPES:
        bench_shape(shape, args.repeats)
    bench_forms(SHAPES[0], args.repeats)


if __name__ == "__main__":
    main()
