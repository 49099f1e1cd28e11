"""Forward + backward of the scaled Poisson NLL against the reference ways, same process.

Amplitude domain, ``form="tf"``, ``reduction="mean"``, float32, on ``--device``:

- ``checks off``: ``scaled_poisson_nll(pred, obs, s)`` under ``ps.set_validation(False)``,
  the training hot path (no host sync);
- ``checks on``: the same call with validation on (the default: one host sync);
- ``(a) Independent(Poisson)``: the reference PyTorch port's way,
  ``-Independent(Poisson((s*pred)**2), 3).log_prob((s*obs)**2).mean()``;
- ``(b) F.poisson_nll_loss``: ``poisson_nll_loss((s*pred)**2, (s*obs)**2, log_input=False)``,
  the same rate and counts.

Target (issue 12): ``checks off`` takes at most 0.8x the time of (b). Shapes:
(64, 1, 64, 64) and (16, 4, 128, 128); on CUDA also (64, 4, 256, 256), since
on a GPU the first two are bound by kernel launches rather than memory.
``--quick``: (64, 1, 64, 64) (and the large one on CUDA), 10 rounds, no
per-form table.

The methods run interleaved, round after round, in a fresh random order each
round (so that neither load on a shared machine nor the state a predecessor
leaves in the caches and the allocator favours one); the script reports median times and
the median of the per-round ratios. On CUDA each timed call ends with
``torch.cuda.synchronize()``. Peak extra memory: on the CPU the largest number of
bytes held by tensors created during one forward + backward (a dispatch-mode
tracker that follows every CPU storage until it is freed; the gradient of
``pred`` counts); on CUDA ``torch.cuda.max_memory_allocated`` above the inputs.

The last line printed is one JSON object (for scripts; see ``--quick``)::

    {"bench": "likelihood", "device": "...", "quick": false, "target_off_vs_f": 0.8,
     "meets_target": true, "shapes": [{"shape": [64, 1, 64, 64],
     "median_ms": {"checks off": ..., ...}, "off_vs_f": 0.4, "on_vs_off": 1.6,
     "off_vs_independent": 0.2}, ...]}

``off_vs_f`` is checks off over (b), ``on_vs_off`` checks on over checks off.

Run: ``python benchmarks/bench_likelihood.py [--device cpu|cuda] [--repeats 40]
[--threads N] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import weakref
from collections.abc import Callable
from typing import Any

import torch
from _common import median_ratio, shuffled_seconds, synchronized
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import physscale as ps

SHAPES = [(64, 1, 64, 64), (16, 4, 128, 128)]
# On a GPU both are launch-bound (1-4 MiB per tensor); add one that is bandwidth-bound.
CUDA_SHAPES = [*SHAPES, (64, 4, 256, 256)]
QUICK_SHAPES = [(64, 1, 64, 64)]
QUICK_CUDA_SHAPES = [(64, 1, 64, 64), (64, 4, 256, 256)]
TARGET_OFF_VS_F = 0.8


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


def checks_off(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``fn`` run with validation off (a training loop sets it once; this costs ~0.3 us)."""

    def call() -> torch.Tensor:
        ps.set_validation(False)
        try:
            return fn()
        finally:
            ps.set_validation(True)

    return call


def make_methods(
    pred: torch.Tensor, obs: torch.Tensor, s: float
) -> dict[str, Callable[[], torch.Tensor]]:
    def physscale_nll() -> torch.Tensor:
        return ps.scaled_poisson_nll(pred, obs, s)

    def reference_independent() -> torch.Tensor:
        dist = torch.distributions.Poisson((s * pred) ** 2, validate_args=False)
        return -torch.distributions.Independent(dist, 3).log_prob((s * obs) ** 2).mean()

    def reference_functional() -> torch.Tensor:
        return torch.nn.functional.poisson_nll_loss(
            (s * pred) ** 2, (s * obs) ** 2, log_input=False
        )

    return {
        "checks off": checks_off(physscale_nll),
        "checks on": physscale_nll,
        "(a) Independent(Poisson)": reference_independent,
        "(b) F.poisson_nll_loss": reference_functional,
    }


def step(loss_fn: Callable[[], torch.Tensor], pred: torch.Tensor) -> None:
    loss_fn().backward()
    pred.grad = None


def peak_extra_bytes(fn: Callable[[], None], inputs: tuple[torch.Tensor, ...]) -> int:
    device = inputs[0].device
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated(device) - base)
    tracker = PeakMemory(inputs)
    with tracker:
        fn()
    return tracker.peak


def bench_shape(shape: tuple[int, ...], repeats: int, device: str) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    n = shape[-1]
    s = float(ps.closed_form_intensity_scale(1e6, (n, n)))
    obs = torch.rand(shape, generator=gen).to(device)
    pred = (obs + 0.1 * torch.rand(shape, generator=gen).to(device)).requires_grad_()
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

    # A random order each round: whoever runs right after another inherits its cache
    # and allocator state, so no method may always follow the same one.
    timed = synchronized(
        {name: (lambda fn=fn: step(fn, pred)) for name, fn in methods.items()}, device
    )
    times = shuffled_seconds(timed, repeats, warmup=3)
    peaks = {
        name: peak_extra_bytes(lambda fn=fn: step(fn, pred), (pred, obs))
        for name, fn in methods.items()
    }

    ours = times["checks off"]
    data_mib = pred.numel() * 4 / 2**20
    print(f"\nshape {shape} ({pred.numel()} elements, {data_mib:.1f} MiB per tensor), s = {s:g}")
    print(f"  {'method':28s} {'median ms':>10s} {'x checks off':>13s} {'peak extra MiB':>15s}")
    for name in methods:
        ratio = median_ratio(times[name], ours)
        print(
            f"  {name:28s} {statistics.median(times[name]) * 1e3:10.3f} "
            f"{ratio:12.2f}x {peaks[name] / 2**20:15.2f}"
        )
    result = {
        "shape": list(shape),
        "median_ms": {name: statistics.median(ts) * 1e3 for name, ts in times.items()},
        "off_vs_f": median_ratio(ours, times["(b) F.poisson_nll_loss"]),
        "on_vs_off": median_ratio(times["checks on"], ours),
        "off_vs_independent": median_ratio(ours, times["(a) Independent(Poisson)"]),
        "peak_extra_mib": {name: peaks[name] / 2**20 for name in methods},
    }
    print(
        f"  checks off / (b) = {result['off_vs_f']:.3f} (target <= {TARGET_OFF_VS_F}); "
        f"checks on / checks off = {result['on_vs_off']:.3f}"
    )
    return result


def bench_forms(shape: tuple[int, ...], repeats: int, device: str) -> dict[str, float]:
    """Each form (and a masked call) relative to the default, forward + backward, checks off."""
    gen = torch.Generator().manual_seed(1)
    obs = torch.rand(shape, generator=gen).to(device)
    pred = (obs + 0.1 * torch.rand(shape, generator=gen).to(device)).requires_grad_()
    mask = (torch.rand(shape[-2:], generator=gen) > 0.05).to(device)
    s = 30.0
    variants: dict[str, Callable[[], torch.Tensor]] = {
        f"form={form!r}": (lambda form=form: ps.scaled_poisson_nll(pred, obs, s, form=form))
        for form in ("tf", "stirling", "exact", "deviance")
    }
    variants["tf, (H, W) mask"] = lambda: ps.scaled_poisson_nll(pred, obs, s, mask=mask)
    variants["tf, reduction='none'"] = lambda: ps.scaled_poisson_nll(
        pred, obs, s, reduction="none"
    ).sum()
    variants["tf, eps=0 (no floor)"] = lambda: ps.scaled_poisson_nll(pred, obs, s, eps=0.0)
    timed = synchronized(
        {name: checks_off(lambda fn=fn: step(fn, pred)) for name, fn in variants.items()}, device
    )
    times = shuffled_seconds(timed, repeats, warmup=1)
    base = times["form='tf'"]
    print(f"\nforms and options, shape {shape}, forward + backward, checks off")
    ratios = {}
    for name, ts in times.items():
        ratios[name] = median_ratio(ts, base)
        print(
            f"  {name:28s} {statistics.median(ts) * 1e3:10.3f} ms  {ratios[name]:5.2f}x the tf time"
        )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 40; 10 quick)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--quick", action="store_true", help="one shape (two on CUDA), few rounds: seconds"
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (10 if args.quick else 40)
    device_name = (
        torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    print(
        f"torch {torch.__version__}, device {args.device} ({device_name}), "
        f"{torch.get_num_threads()} threads, physscale {ps.__version__}"
    )
    print("'x checks off' = median over rounds of (method time / checks-off time)")
    cuda = args.device.startswith("cuda")
    chosen = {
        (False, False): SHAPES,
        (False, True): QUICK_SHAPES,
        (True, False): CUDA_SHAPES,
        (True, True): QUICK_CUDA_SHAPES,
    }[(cuda, args.quick)]
    shapes = [bench_shape(shape, repeats, args.device) for shape in chosen]
    forms = {} if args.quick else bench_forms(SHAPES[0], repeats, args.device)
    summary = {
        "bench": "likelihood",
        "device": args.device,
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "repeats": repeats,
        "target_off_vs_f": TARGET_OFF_VS_F,
        "meets_target": all(r["off_vs_f"] <= TARGET_OFF_VS_F for r in shapes),
        "shapes": shapes,
        "forms_vs_tf": forms,
    }
    # The form benchmarks/gpu_check.py collects: {"met": bool, ...}.
    summary["targets"] = {
        "met": summary["meets_target"],
        "off_vs_f": {str(tuple(r["shape"])): r["off_vs_f"] for r in shapes},
        "target_off_vs_f": TARGET_OFF_VS_F,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
