"""This checkout against another physscale tree, in the same process: derive and the loss.

    python benchmarks/bench_versions.py --baseline-src /path/to/v0.2.0/src [--gib 0.25]

The other tree's package is copied into a temporary folder as ``physscale_base``
(every ``physscale`` import renamed, its native kernel copied along), so both
versions run on the same tensors, interleaved, round after round. Printed: the
median time of each and the median of the per-round ratios (this / base); a ratio
of 1.05 is 5 % slower. The machines these run on are noisy: quote the ratios.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch
from _common import interleaved_seconds, median_ratio

import physscale


def load_baseline(src: Path) -> ModuleType:
    """The package under ``src`` (a folder holding ``physscale/``) as ``physscale_base``."""
    folder = Path(tempfile.mkdtemp(prefix="physscale-base-"))
    target = folder / "physscale_base"
    shutil.copytree(src / "physscale", target)
    for path in target.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(re.sub(r"\bphysscale\b(?=[.\s,)]|$)", "physscale_base", text))
    sys.path.insert(0, str(folder))
    return importlib.import_module("physscale_base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--gib", type=float, default=0.25, help="derive input (float32)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    base = load_baseline(args.baseline_src)
    print(f"this: physscale {physscale.__version__} ({Path(physscale.__file__).parent})")
    print(f"base: physscale {base.__version__} ({Path(base.__file__).parent})")

    n = int(args.gib * 2**30 / 4 / (64 * 64))
    x = torch.rand(n, 1, 64, 64)
    derive = {
        "this": lambda: physscale.derive_intensity_scale(x, 1e9),
        "base": lambda: base.derive_intensity_scale(x, 1e9),
    }
    assert float(derive["this"]()) == float(derive["base"]())  # the same number, first
    pred = torch.rand(16, 4, 128, 128, requires_grad=True)
    obs = torch.rand(16, 4, 128, 128)

    def loss(mod: ModuleType) -> None:
        pred.grad = None
        mod.scaled_poisson_nll(pred, obs, 31.6).backward()

    def loss_off(mod: ModuleType) -> None:
        with mod.validation(False):
            loss(mod)

    cases = {
        f"derive {args.gib:g} GiB": derive,
        "loss fwd+bwd (16,4,128,128)": {
            "this": lambda: loss(physscale),
            "base": lambda: loss(base),
        },
        "loss, checks off": {"this": lambda: loss_off(physscale), "base": lambda: loss_off(base)},
    }
    for name, fns in cases.items():
        times = interleaved_seconds(fns, args.repeats)
        this, other = sorted(times["this"]), sorted(times["base"])
        ratio = median_ratio(times["this"], times["base"])
        print(
            f"{name:<30} this {1e3 * this[len(this) // 2]:8.2f} ms   "
            f"base {1e3 * other[len(other) // 2]:8.2f} ms   this/base {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
