"""Regenerate the example dataset shipped in ``src/physscale/data/``.

Simulates far-field ptychography with numpy only, deterministically:

1. a probe: a disk (radius ``PROBE_RADIUS`` px) with a quadratic (defocus) phase;
2. an object: unit-ish amplitude and smooth random phase (band-limited noise);
3. a raster scan of ``SCAN`` x ``SCAN`` positions, step ``STEP`` px;
4. exit waves ``probe * object patch``, far-field intensities
   ``|fftshift(fft2(exit wave))|**2`` scaled so the mean per-pattern photon
   count is ``NPHOTONS``, then Poisson counts;
5. raw amplitudes ``sqrt(counts)``, normalized the PtychoPINN way with
   :func:`physscale.normalize_amplitudes` (mean per-pattern ``sum(x**2)`` =
   ``(N/2)**2``), stored as float32 under ``diffraction``;
6. ``_metadata`` (a plain unicode JSON array, via :func:`physscale.io.write_metadata`)
   holding ``{"physics_parameters": {"nphotons": NPHOTONS}, ...provenance}``.

Run from the repository root: ``python scripts/make_example_data.py``.
The output is byte-for-byte reproducible for a given numpy version.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import physscale
from physscale.io import write_metadata

SEED = 20240521
N = 64  # pattern side, pixels
SCAN = 8  # scan positions per side
STEP = 6  # scan step, pixels
PROBE_RADIUS = 14.0  # pixels
NPHOTONS = 1.0e5  # expected photons per pattern

DEFAULT_OUT = (
    Path(__file__).resolve().parents[1] / "src" / "physscale" / "data" / "example_diffraction.npz"
)


def make_probe(rng: np.random.Generator) -> np.ndarray:
    """A disk of radius PROBE_RADIUS with a quadratic phase, (N, N) complex128."""
    yy, xx = np.mgrid[:N, :N] - (N - 1) / 2.0
    r2 = xx**2 + yy**2
    disk = (r2 <= PROBE_RADIUS**2).astype(np.float64)
    return disk * np.exp(1j * 0.02 * r2)


def make_object(rng: np.random.Generator, size: int) -> np.ndarray:
    """Amplitude in [0.7, 1], smooth random phase in about [-pi/2, pi/2]; complex128."""

    def smooth_noise(cutoff: float) -> np.ndarray:
        white = rng.standard_normal((size, size))
        f = np.fft.fftfreq(size)
        lowpass = np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * cutoff**2))
        field = np.real(np.fft.ifft2(np.fft.fft2(white) * lowpass))
        return (field - field.min()) / (field.max() - field.min())

    amplitude = 0.7 + 0.3 * smooth_noise(0.08)
    phase = np.pi * (smooth_noise(0.05) - 0.5)
    return amplitude * np.exp(1j * phase)


def simulate(seed: int = SEED) -> tuple[np.ndarray, dict[str, object]]:
    """Return (normalized float32 amplitudes (n, N, N), metadata dict)."""
    rng = np.random.default_rng(seed)
    probe = make_probe(rng)
    size = N + STEP * (SCAN - 1)
    obj = make_object(rng, size)
    exit_waves = np.stack(
        [
            probe * obj[i * STEP : i * STEP + N, j * STEP : j * STEP + N]
            for i in range(SCAN)
            for j in range(SCAN)
        ]
    )
    far_field = np.fft.fftshift(np.fft.fft2(exit_waves), axes=(-2, -1))
    intensity = np.abs(far_field) ** 2
    # Expected counts: mean per-pattern total equals NPHOTONS.
    intensity *= NPHOTONS / intensity.sum(axis=(-2, -1)).mean()
    counts = rng.poisson(intensity)
    raw_amplitudes = np.sqrt(counts).astype(np.float32)
    x, factor = physscale.normalize_amplitudes(raw_amplitudes)
    metadata: dict[str, object] = {
        "physics_parameters": {"nphotons": NPHOTONS},
        "provenance": {
            "generator": "scripts/make_example_data.py",
            "seed": seed,
            "simulation": "far-field ptychography: disk probe with quadratic phase, "
            "random smooth-phase object, raster scan, Poisson counts",
            "pattern_side": N,
            "scan": [SCAN, SCAN],
            "scan_step_px": STEP,
            "probe_radius_px": PROBE_RADIUS,
            "normalization": "x = sqrt(counts) * factor, mean per-pattern sum(x**2) = (N/2)**2",
            "amplitude_normalization_factor": factor,
            "measured_mean_counts_per_pattern": float(counts.sum(axis=(-2, -1)).mean()),
            "physscale_version": physscale.__version__,
        },
    }
    return x.astype(np.float32), metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz path")
    args = parser.parse_args()
    x, metadata = simulate()
    if args.out.exists():
        args.out.unlink()
    write_metadata(args.out, metadata, diffraction=x)
    print(f"wrote {args.out}: diffraction {x.shape} {x.dtype}, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
