"""The house in figures: lines per module, the longest modules, the public names,
and the modules a call walks through (issue 18's before/after table).

    python scripts/house_figures.py                 # this checkout
    PYTHONPATH=/path/to/v0.2.0/src python scripts/house_figures.py   # another tree

A *walk* is the sequence of physscale modules whose code runs during one call
(consecutive frames of the same module counted once): ``derive`` for
``derive_intensity_scale(x, 1e6)`` and ``loss`` for ``scaled_poisson_nll(pred,
obs, 3.0)`` with its backward pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import physscale as ps

SRC = Path(ps.__file__).parent


def _module(filename: str) -> str | None:
    path = Path(filename)
    if SRC not in path.parents:
        return None
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


#: Floors of the derive and loss walks (0.2.0's modules by what they became in 0.3):
#: a call from a lower floor into a higher one *climbs back up*.
FLOORS = {
    "physscale.core": 1,
    "physscale._checks": 1,
    "physscale._intensity_sum": 1,
    "physscale._native": 1,
    "physscale._device_sum": 1,
    "physscale._validation": 1,
    "physscale.likelihood": 1,
    "physscale.nphotons": 1,
    "physscale.diagnostics": 2,
    "physscale.accumulator": 3,
    "physscale.record": 4,
    "physscale.derive": 5,
    "physscale.scale": 1,  # 0.2.0: the core's scale module, which called the accumulator
}


def _floor(module: str) -> int:
    while module and module not in FLOORS:
        module = module.rsplit(".", 1)[0] if "." in module else ""
    return FLOORS.get(module, 6)


def walk(call: object) -> tuple[list[str], int]:
    """The modules entered, in order, and how many calls climbed to a higher floor."""
    seq: list[str] = []
    climbs = 0

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        nonlocal climbs
        if event == "call":
            m = _module(frame.f_code.co_filename)
            caller = frame.f_back and _module(frame.f_back.f_code.co_filename)
            if m is not None and caller is not None and _floor(m) > _floor(caller):
                climbs += 1
            if m is not None and (not seq or seq[-1] != m):
                seq.append(m)
        return None

    sys.setprofile(tracer)
    try:
        call()  # type: ignore[operator]
    finally:
        sys.setprofile(None)
    return seq, climbs


def main() -> None:
    lines = {
        str(p.relative_to(SRC.parent)): len(p.read_text(encoding="utf-8").splitlines())
        for p in sorted(SRC.rglob("*.py"))
    }
    print(f"physscale {ps.__version__} at {SRC}")
    print(f"modules: {len(lines)}, lines: {sum(lines.values())}")
    print(
        "longest:",
        ", ".join(f"{k} {v}" for k, v in sorted(lines.items(), key=lambda kv: -kv[1])[:8]),
    )
    print(f"top-level names (__all__): {len(ps.__all__)}")
    x = torch.rand(16, 1, 32, 32)
    pred = torch.rand(4, 1, 8, 8, requires_grad=True)
    obs = torch.rand(4, 1, 8, 8)
    ps.derive_intensity_scale(x, 1e6)  # warm (first calls import lazily)
    ps.scaled_poisson_nll(pred, obs, 3.0).backward()
    for name, call in (
        ("derive", lambda: ps.derive_intensity_scale(x, 1e6)),
        ("loss", lambda: ps.scaled_poisson_nll(pred, obs, 3.0).backward()),
    ):
        seq, climbs = walk(call)
        print(
            f"walk {name}: {len(set(seq))} modules ({', '.join(sorted(set(seq)))}), "
            f"{climbs} calls climbing back up"
        )


if __name__ == "__main__":
    main()
