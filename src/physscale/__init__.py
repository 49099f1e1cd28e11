"""physscale: the dataset intensity scale and scaled Poisson likelihood for ptychography.

The public API, re-exported; see the README and docs/ for the physics.
``import physscale`` imports ``physscale.nn`` (``ScaledPoissonNLLLoss`` is a
top-level name); ``physscale.io``, ``physscale.lightning`` and
``physscale.adapters`` are reachable as attributes, each imported on first use
(so ``import physscale`` never imports Lightning or h5py).
"""

import importlib
import warnings
from typing import Any

from physscale._version import __version__
from physscale.accumulator import IntensityAccumulator
from physscale.attach import attach_intensity_scale, collate_with_scale, scale_for_batch
from physscale.core.likelihood import scaled_poisson_nll
from physscale.core.nphotons import NphotonsResolution, resolve_nphotons
from physscale.core.scale import closed_form_intensity_scale
from physscale.core.validation import is_validation_enabled, set_validation, validation
from physscale.counts import gain_from_scale, infer_gain, normalize_counts, scale_from_gain
from physscale.derive import (
    amplitude_normalization_factor,
    closed_form_scale_record,
    derive_intensity_scale,
    derive_scale_record,
    normalize_amplitudes,
)
from physscale.distributed import derive_from_dataloader
from physscale.errors import AmbiguousLayoutError, MaskWarning, PhysscaleError, UnitsWarning
from physscale.nn import ScaledPoissonNLLLoss
from physscale.record import ScaleRecord

# Grouped by task, main functions first (the order of the API reference).
__all__ = [  # noqa: RUF022
    # deriving the scale
    "derive_intensity_scale",
    "derive_scale_record",
    "IntensityAccumulator",
    "derive_from_dataloader",
    "closed_form_intensity_scale",
    "closed_form_scale_record",
    # nphotons and the provenance record
    "resolve_nphotons",
    "NphotonsResolution",
    "ScaleRecord",
    # the likelihood
    "scaled_poisson_nll",
    "ScaledPoissonNLLLoss",
    # counts and normalization
    "normalize_counts",
    "normalize_amplitudes",
    "amplitude_normalization_factor",
    "scale_from_gain",
    "infer_gain",
    "gain_from_scale",
    # training data
    "attach_intensity_scale",
    "collate_with_scale",
    "scale_for_batch",
    # the validation switch
    "set_validation",
    "validation",
    "is_validation_enabled",
    # errors users catch and warnings they filter (the rest: physscale.errors)
    "PhysscaleError",
    "AmbiguousLayoutError",
    "MaskWarning",
    "UnitsWarning",
    "__version__",
]

#: Submodules loaded on first attribute access (PEP 562).
_LAZY_SUBMODULES = frozenset({"adapters", "io", "lightning", "nn"})

#: Names that moved out of the top level in 0.3: the old spelling still works, with
#: a DeprecationWarning, until 0.4.
_MOVED = {
    **dict.fromkeys(
        (
            "AxisError",
            "BroadcastError",
            "DataFileError",
            "DtypeError",
            "EmptyInputError",
            "FileListError",
            "IntegrityError",
            "MaskError",
            "NegativeValueError",
            "NonFiniteError",
            "NphotonsError",
            "OptionError",
            "RecordError",
            "StateError",
            "UnsafeFileError",
            "ZeroIntensityError",
        ),
        "physscale.errors",
    ),
    "SCHEMA_VERSION": "physscale.record",
    "normalization_target": "physscale.core.scale",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"physscale.{name}")
    if name in _MOVED:
        home = _MOVED[name]
        warnings.warn(
            f"physscale.{name} moved to {home}.{name} in 0.3; the top-level alias goes in 0.4",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), name)
    raise AttributeError(f"module 'physscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBMODULES})
