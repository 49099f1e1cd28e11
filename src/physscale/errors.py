"""The exceptions and warnings physscale raises.

Every error is a :class:`PhysscaleError`; each concrete class is also a
``ValueError`` or ``TypeError`` so code written against the built-ins keeps
working. One class per kind of mistake, so callers can catch precisely.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousLayoutError",
    "AxisError",
    "BroadcastError",
    "DataFileError",
    "DtypeError",
    "EmptyInputError",
    "FileListError",
    "IntegrityError",
    "MaskError",
    "MaskWarning",
    "NegativeValueError",
    "NonFiniteError",
    "NphotonsError",
    "OptionError",
    "PhysscaleError",
    "RecordError",
    "StateError",
    "UnitsWarning",
    "UnsafeFileError",
    "ZeroIntensityError",
]


class PhysscaleError(Exception):
    """Base class of every error physscale raises on purpose."""


class DtypeError(PhysscaleError, TypeError):
    """Input of a type or dtype physscale cannot use (complex, integer, bool, object...)."""


class EmptyInputError(PhysscaleError, ValueError):
    """Input with no patterns or no pixels."""


class NonFiniteError(PhysscaleError, ValueError):
    """Input holding NaN or infinity."""


class NegativeValueError(PhysscaleError, ValueError):
    """Negative amplitudes or intensities, which have no physical meaning."""


class ZeroIntensityError(PhysscaleError, ValueError):
    """Data whose total intensity is zero, so no scale exists."""


class AxisError(PhysscaleError, ValueError):
    """Spatial axes or layout that do not fit the input."""


class AmbiguousLayoutError(AxisError):
    """Defaulted spatial axes on data that look channels-last (NHWC).

    Raised instead of returning a number computed over the wrong axes: the
    message says which ``layout=`` (or ``spatial_dims=``) to pass. Explicit
    axes are always trusted. Attributes: ``shape`` (the data's shape),
    ``nchw_pattern`` and ``nhwc_pattern`` (the pattern sizes each reading
    would give).
    """

    def __init__(
        self,
        message: str,
        *,
        shape: tuple[int, ...],
        nchw_pattern: tuple[int, ...],
        nhwc_pattern: tuple[int, ...],
    ) -> None:
        super().__init__(message)
        self.shape = shape
        self.nchw_pattern = nchw_pattern
        self.nhwc_pattern = nhwc_pattern


class MaskError(PhysscaleError, ValueError):
    """A pixel mask of the wrong dtype or a shape that does not broadcast."""


class BroadcastError(PhysscaleError, ValueError):
    """Tensors whose shapes would broadcast silently to the wrong result."""


class NphotonsError(PhysscaleError, ValueError):
    """An nphotons value that is missing or not a positive finite real number."""


class OptionError(PhysscaleError, ValueError):
    """An unknown string option (domain, form, reduction, layout...)."""


class RecordError(PhysscaleError, ValueError):
    """A ScaleRecord that is missing, malformed or internally inconsistent."""


class StateError(PhysscaleError, ValueError):
    """Accumulator state that cannot be combined or restored."""


class DataFileError(PhysscaleError, ValueError):
    """A data, record or bundle file that is missing, truncated or malformed."""


class FileListError(PhysscaleError, ValueError):
    """Paths, globs or directories that name no data file, or name one file twice.

    A mistake in the list of files, not in a file: ``physscale derive``
    treats it as a usage error (exit status 2).
    """


class UnsafeFileError(DataFileError):
    """A file that would need code execution (pickle) or escapes its folder."""


class IntegrityError(DataFileError):
    """A bundle member whose checksum does not match its manifest."""


class MaskWarning(UserWarning):
    """A valid-pixel mask that removes most of the data's intensity.

    With a mask, nphotons is assigned to the unmasked pixels only, so a mask
    over the bright centre (a beamstop) moves the scale a lot; the warning
    says by how much.
    """


class UnitsWarning(UserWarning):
    """Data that looks like raw photon counts where normalized values are expected.

    Silence with ``warnings.simplefilter("ignore", physscale.UnitsWarning)`` or
    escalate with ``warnings.simplefilter("error", physscale.UnitsWarning)``.
    """
