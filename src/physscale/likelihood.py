"""The scaled Poisson negative log-likelihood (SPEC §3).

(Work in progress: the loss itself lands in the next commit.)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from physscale.errors import DtypeError, NegativeValueError, NonFiniteError
from physscale.record import ScaleRecord

__all__ = ["scalar_scale"]


def scalar_scale(value: Any, where: str = "scale") -> float:
    """Return a single intensity scale as a positive finite Python float.

    Accepts a real number, a 0-d (or one-element) tensor or array, or a
    :class:`~physscale.ScaleRecord` (its ``intensity_scale``).

    Raises:
        DtypeError: not a real number (bool, complex, string, a larger array...).
        NonFiniteError: NaN or infinite.
        NegativeValueError: zero or negative.
    """
    if isinstance(value, ScaleRecord):
        return float(value.intensity_scale)
    raw = value
    if isinstance(value, torch.Tensor | np.ndarray):
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != 1):
            raise DtypeError(
                f"{where} must be a single number here, got an array of shape {tuple(value.shape)}"
            )
        if value.dtype in (torch.bool, np.bool_) or (
            isinstance(value, torch.Tensor) and value.is_complex()
        ):
            raise DtypeError(f"{where} must be a real number, got dtype {value.dtype}")
        value = value.reshape(()).item() if isinstance(value, np.ndarray) else value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise DtypeError(
            f"{where} must be a positive real number, a 0-d tensor or a ScaleRecord, "
            f"got {type(raw).__name__} {raw!r}"
        )
    out = float(value)
    if not math.isfinite(out):
        raise NonFiniteError(f"{where} must be finite, got {out!r}")
    if out <= 0.0:
        raise NegativeValueError(f"{where} must be > 0 (counts are (scale * x)**2), got {out!r}")
    return out
