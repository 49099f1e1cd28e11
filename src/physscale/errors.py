"""The exceptions and warnings physscale raises.

Every error is a [`PhysscaleError`][physscale.errors.PhysscaleError]; each concrete class is also a
``ValueError`` or ``TypeError`` so code written against the built-ins keeps
working. One class per kind of mistake, so callers can catch precisely.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "AmbiguousLayoutError",
    "ArgumentOrderError",
    "AxisError",
    "BroadcastError",
    "DataFileError",
    "DtypeError",
    "EmptyInputError",
    "FileListError",
    "FrozenScaleWarning",
    "IntegrityError",
    "MaskError",
    "MaskWarning",
    "NegativeValueError",
    "NonFiniteError",
    "NotCountsError",
    "NphotonsError",
    "OptionError",
    "PhysscaleError",
    "RecordError",
    "StateError",
    "UnitsWarning",
    "UnsafeFileError",
    "Wording",
    "ZeroIntensityError",
]


class Wording:
    """A message that names the caller's options, so that a front end can name its own.

    ``template`` is a `str.format` template whose fields are the keys of
    ``options`` (how the Python API spells each option, e.g. ``"nphotons="``)
    and of ``data`` (the facts: paths, values, shapes). [`render`][physscale.errors.Wording.render]
    with
    other spellings says the same in another front end's words: the command
    line names its flags (``--nphotons N``) without editing the text.
    """

    __slots__ = ("data", "options", "template")

    def __init__(self, template: str, options: Mapping[str, str], /, **data: object) -> None:
        self.template = template
        self.options = dict(options)
        self.data = data

    def render(self, spellings: Mapping[str, str] | None = None) -> str:
        """The message, each option spelled as ``spellings`` says (else as in Python)."""
        return self.template.format_map({**self.data, **self.options, **(spellings or {})})


class PhysscaleError(Exception):
    """Base class of every error physscale raises on purpose.

    Attributes:
        wording: the [`Wording`][physscale.errors.Wording] of a message that names options (it is
            passed instead of the message; the message is its Python
            rendering), or None.
        parameter: the parameter of the call the error is about, when the
            raiser names one (e.g. ``"exclude"``), or None.
    """

    wording: Wording | None = None
    parameter: str | None = None

    def __init__(self, *args: object, parameter: str | None = None) -> None:
        if args and isinstance(args[0], Wording):
            self.wording = args[0]
            args = (args[0].render(), *args[1:])
        if parameter is not None:
            self.parameter = parameter
        super().__init__(*args)


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
        message: str | Wording,
        *,
        shape: tuple[int, ...],
        nchw_pattern: tuple[int, ...],
        nhwc_pattern: tuple[int, ...],
    ) -> None:
        super().__init__(message, parameter="layout")
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


class ArgumentOrderError(PhysscaleError, TypeError):
    """Arguments that arrived in the wrong order, e.g. ``(obs, pred)`` for ``(pred, obs)``.

    Raised where a cheap tell (no tensor value read) makes the swap certain:
    the loss's ``obs`` requires grad while ``pred`` does not.
    """


class FrozenScaleWarning(UserWarning):
    """A trainable scale that never reached an optimizer.

    ``IntensityScaler(trainable=True)`` whose ``log_scale`` was never updated
    (it is not in the optimizer's parameters: put the scaler inside the model,
    so ``model.parameters()`` includes it). Its record then keeps the initial
    method instead of claiming ``method="trained"``.
    """


class NotCountsError(PhysscaleError, ValueError):
    """Data that are not photon counts (nor a gain times counts) where counts are required.

    ``normalize_counts`` on non-whole data, or ``infer_gain`` on data with no
    quantum: the message says what the values look like and what to pass.
    """
