"""physscale: the dataset intensity scale and scaled Poisson likelihood for ptychography.

The public API, re-exported; see the README and docs/ for the physics.
The submodules ``physscale.io``, ``physscale.nn``, ``physscale.lightning`` and
``physscale.adapters`` are reachable as attributes, each imported on first use
(so ``import physscale`` never imports Lightning or h5py).
"""

import importlib
from typing import Any

from physscale._version import __version__
from physscale.accumulator import IntensityAccumulator
from physscale.attach import attach_intensity_scale, collate_with_scale, scale_for_batch
from physscale.core.likelihood import scaled_poisson_nll
from physscale.core.nphotons import NphotonsResolution, resolve_nphotons
from physscale.core.validation import is_validation_enabled, set_validation, validation
from physscale.counts import gain_from_scale, normalize_counts, scale_from_gain
from physscale.derive import (
    amplitude_normalization_factor,
    closed_form_intensity_scale,
    derive_intensity_scale,
    normalization_target,
    normalize_amplitudes,
)
from physscale.distributed import derive_from_dataloader
from physscale.errors import (
    AmbiguousLayoutError,
    AxisError,
    BroadcastError,
    DataFileError,
    DtypeError,
    EmptyInputError,
    FileListError,
    IntegrityError,
    MaskError,
    MaskWarning,
    NegativeValueError,
    NonFiniteError,
    NphotonsError,
    OptionError,
    PhysscaleError,
    RecordError,
    StateError,
    UnitsWarning,
    UnsafeFileError,
    ZeroIntensityError,
)
from physscale.nn import ScaledPoissonNLLLoss
from physscale.record import (
    SCHEMA_VERSION,
    ScaleRecord,
    closed_form_scale_record,
    derive_scale_record,
)

__all__ = [
    "SCHEMA_VERSION",
    "AmbiguousLayoutError",
    "AxisError",
    "BroadcastError",
    "DataFileError",
    "DtypeError",
    "EmptyInputError",
    "FileListError",
    "IntegrityError",
    "IntensityAccumulator",
    "MaskError",
    "MaskWarning",
    "NegativeValueError",
    "NonFiniteError",
    "NphotonsError",
    "NphotonsResolution",
    "OptionError",
    "PhysscaleError",
    "RecordError",
    "ScaleRecord",
    "ScaledPoissonNLLLoss",
    "StateError",
    "UnitsWarning",
    "UnsafeFileError",
    "ZeroIntensityError",
    "__version__",
    "amplitude_normalization_factor",
    "attach_intensity_scale",
    "closed_form_intensity_scale",
    "closed_form_scale_record",
    "collate_with_scale",
    "derive_from_dataloader",
    "derive_intensity_scale",
    "derive_scale_record",
    "gain_from_scale",
    "is_validation_enabled",
    "normalization_target",
    "normalize_amplitudes",
    "normalize_counts",
    "resolve_nphotons",
    "scale_for_batch",
    "scale_from_gain",
    "scaled_poisson_nll",
    "set_validation",
    "validation",
]

#: Submodules loaded on first attribute access (PEP 562).
_LAZY_SUBMODULES = frozenset({"adapters", "io", "lightning", "nn"})


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"physscale.{name}")
    raise AttributeError(f"module 'physscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBMODULES})
