"""Detector files laid out as instruments and pipelines write them (issue 19), built in tmp dirs.

- :func:`eiger_master`: a Dectris Eiger NeXus master whose ``/entry/data/data_NNNNNN``
  are external links to data files beside it, each with ``/entry/data/data``
  (uint32, one frame per chunk, bitshuffle/LZ4 when hdf5plugin is there);
  ``pixel_mask`` (uint32, nonzero = bad) under ``detectorSpecific`` and
  ``2**32-1`` at those pixels in the data.
- :func:`plain_h5`: the same counts in one gzip HDF5 file (or uint16 with 65535
  saturation markers).
- :func:`fold_slice`: ``scan_dp.hdf5`` with ``/dp`` (float counts) and a ``_para`` file.
- :func:`ptychodus_file`: ``patterns`` with ``bad_pixels`` (True = bad).

Each returns the files and the truth computed independently (numpy, from the
counts before markers were written): the mean over patterns of the summed
valid counts.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

U32_MAX = 2**32 - 1
U16_MAX = 2**16 - 1


def require_hdf5plugin() -> None:
    """Skip without hdf5plugin, unless PHYSSCALE_REQUIRE_EXTRAS=1 (then fail)."""
    if importlib.util.find_spec("hdf5plugin") is not None:
        return
    if os.environ.get("PHYSSCALE_REQUIRE_EXTRAS") == "1":
        pytest.fail("PHYSSCALE_REQUIRE_EXTRAS=1 but hdf5plugin (extra hdf5) is not installed")
    pytest.skip("hdf5plugin is not installed (pip install physscale[hdf5])")


@dataclass
class Scan:
    counts: np.ndarray  # the data as stored (markers included)
    pixel_mask: np.ndarray  # nonzero = bad
    nphotons: float  # the truth: mean per-pattern sum of valid counts
    valid: np.ndarray  # per-frame valid pixels (True = valid)


def speckle_counts(n: int, h: int, w: int, seed: int = 0, peak: float = 400.0) -> np.ndarray:
    """Poisson counts of a bright central peak with speckle, shape (n, h, w), int64."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    r2 = (yy - h / 2) ** 2 + (xx - w / 2) ** 2
    rate = peak * np.exp(-r2 / (2 * (h / 8) ** 2)) + 2.0
    return rng.poisson(rate * rng.uniform(0.5, 1.5, size=(n, 1, 1))).astype(np.int64)


def eiger_scan(n: int = 12, h: int = 32, w: int = 32, seed: int = 0) -> Scan:
    """uint32 counts with a gap row, a dead and a hot pixel (pixel_mask nonzero = bad)."""
    real = speckle_counts(n, h, w, seed)
    pixel_mask = np.zeros((h, w), np.uint32)
    pixel_mask[h // 2 - 1 : h // 2 + 1, :] = 1  # module gap
    pixel_mask[3, 5] = 2  # dead
    pixel_mask[7, 9] = 8  # hot
    counts = real.astype(np.uint32)
    counts[:, pixel_mask != 0] = U32_MAX  # as an Eiger writes them: the marker at every bad pixel
    valid = np.broadcast_to(pixel_mask == 0, counts.shape)
    nphotons = float(np.where(valid, real, 0).sum(axis=(1, 2)).mean())
    return Scan(counts, pixel_mask, nphotons, np.array(valid))


def eiger_master(folder: Path, scan: Scan, frames_per_file: int = 4, plugin: bool = True) -> Path:
    """Write ``scan`` as an Eiger master plus data files; returns the master's path."""
    import h5py

    compression: dict[str, object] = {}
    if plugin:
        import hdf5plugin

        compression = dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    folder.mkdir(parents=True, exist_ok=True)
    master = folder / "scan_master.h5"
    n, h, w = scan.counts.shape
    names = []
    for i, start in enumerate(range(0, n, frames_per_file), start=1):
        name = f"scan_data_{i:06d}.h5"
        names.append(name)
        with h5py.File(folder / name, "w") as f:
            f.create_dataset(
                "/entry/data/data",
                data=scan.counts[start : start + frames_per_file],
                chunks=(1, h, w),
                **compression,
            )
    with h5py.File(master, "w") as f:
        spec = f.create_group("/entry/instrument/detector/detectorSpecific")
        spec["pixel_mask"] = scan.pixel_mask
        spec["count_time"] = 0.1
        spec["photon_energy"] = 8000.0
        spec["saturation_value"] = np.uint32(10**7)
        spec["countrate_correction_count_cutoff"] = np.uint32(5 * 10**6)
        data = f.create_group("/entry/data")
        for i, name in enumerate(names, start=1):
            data[f"data_{i:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
    return master


def plain_h5(path: Path, counts: np.ndarray, key: str = "/entry/data/data") -> Path:
    """Counts in one gzip-compressed HDF5 file."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=counts, chunks=(1, *counts.shape[1:]), compression="gzip")
    return path


def uint16_saturated(n: int = 10, h: int = 24, w: int = 24, seed: int = 1) -> Scan:
    """uint16 counts whose brightest pixels saturate at 65535 in some frames."""
    real = speckle_counts(n, h, w, seed, peak=400.0)
    counts = real.astype(np.uint16)
    sat = np.zeros(counts.shape, bool)
    sat[::3, h // 2, w // 2] = True  # saturated: the marker, not a count
    counts[sat] = U16_MAX
    valid = ~sat
    nphotons = float(np.where(valid, real, 0).sum(axis=(1, 2)).mean())
    return Scan(counts, np.zeros((h, w), np.uint8), nphotons, valid)


def fold_slice(folder: Path, n: int = 8, h: int = 32, w: int = 32) -> tuple[Path, float]:
    """``scan_dp.hdf5`` with ``/dp`` float counts, and ``scan_para.hdf5`` with positions."""
    import h5py

    real = speckle_counts(n, h, w, seed=2).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    dp = folder / "scan_dp.hdf5"
    with h5py.File(dp, "w") as f:
        f["dp"] = real
    with h5py.File(folder / "scan_para.hdf5", "w") as f:
        f["ppX"] = np.arange(n, dtype=np.float64)
        f["ppY"] = np.zeros(n)
    return dp, float(real.astype(np.float64).sum(axis=(1, 2)).mean())


def ptychodus_file(path: Path, n: int = 8, h: int = 32, w: int = 32) -> tuple[Path, Scan]:
    """ptychodus' training file: ``patterns`` (uint32) and ``bad_pixels`` (True = bad)."""
    import h5py

    real = speckle_counts(n, h, w, seed=3)
    bad = np.zeros((h, w), bool)
    bad[0, :] = True
    bad[5, 5] = True
    counts = real.astype(np.uint32)
    counts[:, bad] = 0  # ptychodus zeroes bad pixels
    valid = np.broadcast_to(~bad, counts.shape)
    with h5py.File(path, "w") as f:
        f["patterns"] = counts
        f["bad_pixels"] = bad
        f["probe"] = np.ones((h, w), np.complex64)
    nphotons = float(np.where(valid, real, 0).sum(axis=(1, 2)).mean())
    return path, Scan(counts, bad.astype(np.uint8), nphotons, np.array(valid))
