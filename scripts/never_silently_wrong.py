"""The traps of issue 10, each called the slightly wrong way: what physscale does.

Prints one line per trap: the value returned, or the error and its first line,
and any warning. Run it against this checkout, and against an older version to
see the difference:

    python scripts/never_silently_wrong.py
    git worktree add /tmp/v010 80be98c   # 0.1.0
    PYTHONPATH=/tmp/v010/src PHYSSCALE_NATIVE=0 python scripts/never_silently_wrong.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import physscale as ps


def show(label: str, fn: Callable[[], Any]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = f"returned {fn()}"
        except Exception as exc:  # every outcome is printed, none is judged here
            out = f"{type(exc).__name__}: {str(exc).splitlines()[0][:170]}"
    said = "; ".join(f"{w.category.__name__}: {str(w.message)[:90]}" for w in caught)
    print(f"[{label}] {out}" + (f"  | warns {said}" if said else ""))


def run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False)
    lines = (out.stderr.strip() or out.stdout.strip()).splitlines()
    return f"exit {out.returncode}: {lines[-1][:200] if lines else ''}"


def main() -> None:
    rng = np.random.default_rng(0)
    nhwc = rng.random((8, 32, 32, 1), dtype=np.float32)
    show(
        "1 derive (8,32,32,1), axes defaulted", lambda: float(ps.derive_intensity_scale(nhwc, 1e6))
    )
    show(
        "1 derive (8,32,32,1), layout=NHWC",
        lambda: float(ps.derive_intensity_scale(nhwc, 1e6, layout="NHWC")),
    )
    port = {
        "X": rng.random((16, 64, 64, 4), dtype=np.float32),
        "metadata": {"physics_parameters": {"nphotons": 1e6}},
    }

    def attach() -> str:
        record = ps.attach_intensity_scale(port)
        return f"s={float(record.intensity_scale):.4g} pattern_shape={record.pattern_shape}"

    show("1 attach, the port's (16,64,64,4) container", attach)
    beamstop = np.ones((32, 32), bool)
    beamstop[14:18, 14:18] = False
    show(
        "2 (H,W) mask with layout=NHWC",
        lambda: float(ps.derive_intensity_scale(nhwc, 1e6, layout="NHWC", mask=beamstop)),
    )
    nchw = rng.random((8, 1, 32, 32))
    hidden = np.zeros(nchw.shape, bool)
    hidden[..., :16, :] = True
    masked = np.ma.MaskedArray(nchw, mask=hidden)
    show("3 MaskedArray", lambda: float(ps.derive_intensity_scale(masked, 1e6, layout="NCHW")))
    show(
        "3 the same mask as mask=",
        lambda: float(ps.derive_intensity_scale(nchw, 1e6, layout="NCHW", mask=~hidden)),
    )
    bright = rng.random((8, 1, 32, 32))
    bright[..., 12:20, 12:20] += 30.0
    stop = np.ones((32, 32), bool)
    stop[12:20, 12:20] = False

    def masked_record() -> str:
        r = ps.derive_scale_record(bright, nphotons=1e6, layout="NCHW", mask=stop)
        pixels = getattr(r, "masked_pixel_fraction", "absent")
        intensity = getattr(r, "masked_intensity_fraction", "absent")
        return f"s={r.intensity_scale:.4g} masked pixels {pixels}, masked intensity {intensity}"

    show("5 a beamstop mask over the bright centre", masked_record)
    show("5 no mask", lambda: float(ps.derive_intensity_scale(bright, 1e6, layout="NCHW")))
    pred, obs = torch.randn(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    show("6 negative pred, amplitude", lambda: float(ps.scaled_poisson_nll(pred, obs, 10.0)))
    show(
        "6 negative pred, intensity",
        lambda: float(ps.scaled_poisson_nll(pred, obs, 10.0, domain="intensity")),
    )
    complex_x = torch.ones(4, 1, 8, 8, dtype=torch.complex64)
    show(
        "7 complex input",
        lambda: float(ps.derive_intensity_scale(complex_x, 1e6, layout="NCHW")),
    )
    counts = np.full((4, 1, 8, 8), 50, np.int32)
    show("7 integer counts", lambda: float(ps.derive_intensity_scale(counts, 1e6, layout="NCHW")))
    raw = torch.randint(0, 5000, (4, 1, 8, 8)).float() + 100
    show(
        "7 the loss on raw-count obs",
        lambda: float(ps.scaled_poisson_nll(torch.rand(4, 1, 8, 8), raw, 10.0)),
    )
    code = "import physscale, sys; print(physscale.io.__name__, physscale.nn.__name__)"
    show("8 physscale.io, physscale.nn as attributes", lambda: run("-c", code))
    code = "import physscale, sys; print('lightning' in sys.modules, 'h5py' in sys.modules)"
    show("8 lightning, h5py imported by import physscale", lambda: run("-c", code))
    folder = tempfile.mkdtemp()
    scan = os.path.join(folder, "scan.npz")
    np.savez(scan, diffraction=rng.random((8, 32, 32), dtype=np.float32))
    show("9 CLI, no nphotons anywhere", lambda: run("-m", "physscale", "derive", scan))
    npy = os.path.join(folder, "nhwc.npy")
    np.save(npy, nhwc)
    show(
        "1 CLI, channels-last .npy",
        lambda: run("-m", "physscale", "derive", npy, "--nphotons", "1e6"),
    )
    show("10 physscale --version", lambda: run("-m", "physscale", "--version"))


if __name__ == "__main__":
    main()
