"""Reference computations written independently of physscale (float64, math.fsum)."""

from __future__ import annotations

import math

import numpy as np


def fsum_scale(
    x: np.ndarray, nphotons: float, spatial: tuple[int, ...], domain: str = "amplitude"
) -> float:
    """sqrt(nphotons / mean per-pattern sum) with exactly rounded float64 sums."""
    x64 = np.asarray(x, dtype=np.float64)
    values = x64 * x64 if domain == "amplitude" else x64
    total = math.fsum(values.ravel().tolist())
    n_pixels = math.prod(x64.shape[a] for a in spatial)
    n_patterns = x64.size // n_pixels
    return math.sqrt(nphotons / (total / n_patterns))


def rel(a: float, b: float) -> float:
    """Relative difference of two positive numbers."""
    return abs(a - b) / abs(b)
