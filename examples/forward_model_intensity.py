"""An intensity-domain forward model: object x probe -> |FFT|^2 -> scaled Poisson NLL.

A small ptychography reconstruction: a complex object is scanned by a fixed
probe; each exit wave's far-field intensity ``|FFT(probe * object_window)|**2``
is the predicted *normalized intensity*. The measured patterns are photon
counts (with a flat background and a beamstop), normalized to the same units;
physscale derives the intensity scale ``s`` that maps them back to counts
(``counts = s**2 * x``) and the scaled Poisson likelihood compares prediction
and data in photons, ignoring the beamstop pixels and adding the background
to the rate. A few optimizer steps refine the object; the object, the probe
and the scale record are saved in one bundle and reloaded for inference.

Run:  python examples/forward_model_intensity.py [--steps 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

import physscale as ps
from physscale.io import load_bundle, save_bundle

N = 32  # pattern side (pixels)
SCAN = 4  # SCAN x SCAN raster of probe positions
STEP = 6  # scan step (pixels)
NPHOTONS = 1e5  # photons per pattern reaching the detector (beamstop included)
BACKGROUND = 0.02  # expected background photons per pixel


def make_probe() -> torch.Tensor:
    """A disk probe with a quadratic phase, scaled so sum|P|^2 = (N/2)**2.

    With an orthonormal FFT a unit-modulus object then gives patterns whose
    summed intensity is (N/2)**2: physscale's normalized-data convention.
    """
    yy, xx = torch.meshgrid(torch.arange(N) - N / 2, torch.arange(N) - N / 2, indexing="ij")
    r2 = (xx**2 + yy**2).double()
    probe = (r2 < (N / 3) ** 2).double() * torch.exp(1j * 0.02 * r2)
    return (probe * (N / 2) / probe.abs().square().sum().sqrt()).to(torch.complex64)


def positions() -> list[tuple[int, int]]:
    return [(i * STEP, j * STEP) for i in range(SCAN) for j in range(SCAN)]


class PtychoForward(nn.Module):
    """Object (trainable) x probe (fixed) -> far-field normalized intensities."""

    def __init__(self, probe: torch.Tensor, side: int) -> None:
        super().__init__()
        self.probe: torch.Tensor
        self.register_buffer("probe", probe)
        # Real and imaginary parts; a flat unit object to start from.
        self.object_ri = nn.Parameter(
            torch.stack([torch.ones(side, side), torch.zeros(side, side)], -1)
        )

    def forward(self) -> torch.Tensor:
        """(P, N, N) predicted normalized intensities, one pattern per scan position."""
        obj = torch.view_as_complex(self.object_ri)
        waves = torch.stack([self.probe * obj[i : i + N, j : j + N] for i, j in positions()])
        far_field = torch.fft.fftshift(torch.fft.fft2(waves, norm="ortho"), dim=(-2, -1))
        return far_field.abs().square()


def simulate(
    probe: torch.Tensor, side: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected and measured photon counts of a smooth random phase object, with background."""
    phase = torch.randn(side // 4, side // 4, generator=generator)
    phase = nn.functional.interpolate(phase[None, None], size=(side, side), mode="bilinear")[0, 0]
    truth = PtychoForward(probe, side)
    with torch.no_grad():
        truth.object_ri.copy_(torch.stack([torch.cos(phase), torch.sin(phase)], -1))
        intensity = truth()
    # counts = s0**2 * intensity + background, with s0 the closed-form scale.
    rate = NPHOTONS / (N / 2) ** 2 * intensity + BACKGROUND
    return rate, torch.poisson(rate, generator=generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="folder for the bundle")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)

    probe = make_probe()
    side = N + STEP * (SCAN - 1)
    rate, counts = simulate(probe, side, generator)
    # Valid pixels: all but a beamstop of radius 2 px over the central peak.
    yy, xx = torch.meshgrid(torch.arange(N) - N // 2, torch.arange(N) - N // 2, indexing="ij")
    valid = xx**2 + yy**2 > 4
    # With a mask, nphotons means the photons on the valid pixels (what the
    # detector can count), as an experiment's metadata would record it.
    nphotons_valid = rate[:, valid].sum(dim=-1).mean().item()

    # Normalize the measured intensities to the model's units, then derive the scale
    # that maps them back to photons: counts = s**2 * x over the valid pixels.
    x = counts / counts.sum(dim=(-2, -1)).mean() * (N / 2) ** 2
    with warnings.catch_warnings():
        # The beamstop hides about half of the intensity, and physscale warns that the
        # scale then assigns nphotons to the valid pixels only: that is what is meant here.
        warnings.simplefilter("ignore", ps.MaskWarning)
        record = ps.derive_scale_record(
            x, nphotons=nphotons_valid, domain="intensity", mask=valid, data_source="simulated"
        )
    print(
        f"derived intensity scale {record.intensity_scale:.6g} (counts = s**2 * x) for "
        f"{nphotons_valid:.6g} photons per pattern on the valid pixels, "
        f"{record.n_patterns} patterns of {record.pattern_shape}"
    )

    model = PtychoForward(probe, side)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses: list[float] = []
    for _ in range(args.steps):
        loss = ps.scaled_poisson_nll(
            model(),
            x,
            record,
            domain="intensity",
            form="deviance",
            mask=valid,
            background=BACKGROUND,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"loss {losses[0]:.6g} -> {losses[-1]:.6g} in {len(losses)} steps")
    assert losses[-1] < losses[0], "the object did not improve"

    out = args.out or Path(tempfile.mkdtemp(prefix="physscale-example-"))
    path = save_bundle(
        out / "forward_model.physscale.zip",
        model.state_dict(),
        record,
        pattern_side=N,
        scan=[SCAN, SCAN],
        scan_step_px=STEP,
        background_photons_per_pixel=BACKGROUND,
    )
    bundle = load_bundle(path)
    restored = PtychoForward(bundle.state_dict["probe"], bundle.extra["pattern_side"] + STEP * 3)
    restored.load_state_dict(bundle.state_dict)
    with torch.no_grad():
        # Expected photon counts per pixel of each pattern, from the stored scale.
        expected = bundle.record.intensity_scale**2 * restored() + BACKGROUND
        same = torch.equal(restored(), model())
    assert same, "the reloaded object predicts different patterns"
    predicted = expected[:, valid].sum(dim=-1).mean().item()
    measured = counts[:, valid].sum(dim=-1).mean().item()
    print(
        f"bundle {path.name}: reloaded object reproduces the patterns; "
        f"{predicted:.6g} photons per pattern predicted on the valid pixels, {measured:.6g} "
        f"measured; scale {bundle.record.intensity_scale:.6g}"
    )
    assert math.isclose(bundle.record.intensity_scale, record.intensity_scale)


if __name__ == "__main__":
    main()
