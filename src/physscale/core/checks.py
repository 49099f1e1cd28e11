"""Input coercion shared by every entry point.

Each helper either returns a clean value or raises a specific
`physscale.errors` exception whose message says what was wrong, where it
came from and what would be right.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from physscale.core.preview import preview
from physscale.errors import (
    AmbiguousLayoutError,
    AxisError,
    BroadcastError,
    DtypeError,
    MaskError,
    NegativeValueError,
    NonFiniteError,
    NphotonsError,
    OptionError,
    Wording,
)

LAYOUTS: dict[str, tuple[int, int]] = {"NCHW": (-2, -1), "NHWC": (-3, -2)}

#: The layout guard: with defaulted axes, data whose last axis has at most
#: ``CHANNELS_MAX`` entries while the two axes before it have at least
#: ``SPATIAL_MIN`` each look channels-last (NHWC, e.g. PtychoPINN's
#: ``(B, N, N, C)`` with C = 1 or gridsize**2 = 4), and are refused.
CHANNELS_MAX = 4
SPATIAL_MIN = 8


class _DefaultAxes(tuple[int, ...]):
    """The default spatial axes: equal to ``(-2, -1)`` but a distinct object, so
    that an explicit ``spatial_dims=(-2, -1)`` next to ``layout="NHWC"`` is
    recognized as a contradiction rather than taken for the default."""

    __slots__ = ()


DEFAULT_SPATIAL_DIMS: tuple[int, ...] = _DefaultAxes((-2, -1))

_S = TypeVar("_S", bound=str)


def check_option(value: object, allowed: Sequence[_S], name: str) -> _S:
    """Return ``value`` if it is one of ``allowed`` strings, else raise OptionError."""
    for option in allowed:
        if isinstance(value, str) and value == option:
            return option
    choices = ", ".join(repr(a) for a in allowed)
    raise OptionError(f"{name} must be one of {choices}, got {preview(value)}")


def as_float_tensor(x: object, name: str = "x") -> torch.Tensor:
    """Coerce a numpy array or torch tensor of real floats to a detached tensor.

    numpy input is shared, not copied (``torch.from_numpy``), except for
    non-native byte order or negative strides, which torch cannot view.
    A ``numpy.ma.MaskedArray`` is refused here: callers that honour its mask
    unwrap it first with `split_masked`.
    """
    if isinstance(x, np.ma.MaskedArray):
        raise DtypeError(
            f"{name} is a numpy.ma.MaskedArray; its mask would be ignored here. Pass the "
            f"data and a boolean valid-pixel mask separately: {name}.data and "
            f"mask=~numpy.ma.getmaskarray({name})"
        )
    masked_tensor = getattr(getattr(torch, "masked", None), "MaskedTensor", None)
    if masked_tensor is not None and isinstance(x, masked_tensor):
        raise DtypeError(
            f"{name} is a torch.masked.MaskedTensor; pass its data and a boolean "
            f"valid-pixel mask separately ({name}.get_data(), mask={name}.get_mask())"
        )
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if x.dtype.kind != "f" or x.dtype.itemsize not in (2, 4, 8):
            # Extended precision (float96/float128) has no torch dtype.
            raise DtypeError(_dtype_message(name, x.dtype.kind, str(x.dtype)))
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        if any(stride < 0 for stride in x.strides):
            # torch cannot view negative strides (x[::-1]). A copy, not ascontiguousarray:
            # numpy calls an array with a negative stride on a length-1 axis contiguous
            # and would return it unchanged.
            x = x.copy(order="C")
        with warnings.catch_warnings():
            # Read-only arrays (memory maps) are fine: physscale never writes.
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(x)
    else:
        raise DtypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of real floats, got {type(x).__name__}"
        )
    check_concrete(t, name)
    if not t.dtype.is_floating_point or t.dtype.is_complex:
        kind = "c" if t.dtype.is_complex else "b" if t.dtype == torch.bool else "i"
        raise DtypeError(_dtype_message(name, kind, str(t.dtype)))
    return t


def check_concrete(t: torch.Tensor, name: str) -> None:
    """Refuse sparse and meta tensors, which have no dense values to read."""
    if t.layout != torch.strided:
        raise DtypeError(
            f"{name} must be a dense tensor, got layout {t.layout}; convert it with "
            f"{name}.to_dense()"
        )
    if t.device.type == "meta":
        raise DtypeError(
            f"{name} is on the meta device, which holds shapes but no values; physscale "
            f"needs the data itself (move it to a real device)"
        )


#: The one next step for raw detector counts, whoever meets them (derive's dtype
#: error and units warning, the loss's, the command line's): one sentence, one place.
#: Its option ``normalize_counts`` is the Python call; the command line spells it
#: ``physscale normalize`` (`COUNTS_NEXT_STEP_CLI`).
COUNTS_NEXT_STEP = Wording(
    "Normalize the counts first: {normalize_counts} returns the normalized amplitudes "
    "and the record whose scale maps them back to the counts exactly",
    {"normalize_counts": "physscale.normalize_counts(counts)"},
)

#: `COUNTS_NEXT_STEP`'s option in the command line's words.
COUNTS_NEXT_STEP_CLI = {"normalize_counts": "`physscale normalize`"}


def counts_next_step(spellings: Mapping[str, str] | None = None) -> str:
    """The next step for raw photon counts, as a sentence without the final period.

    Every message that meets counts gives this same step (issue 21: one voice).
    ``spellings`` names the option in another front end's words, e.g.
    `COUNTS_NEXT_STEP_CLI` for the command line.

    Example:
        >>> from physscale.core.checks import COUNTS_NEXT_STEP_CLI, counts_next_step
        >>> counts_next_step()[:58]
        'Normalize the counts first: physscale.normalize_counts(cou'
        >>> "physscale normalize" in counts_next_step(COUNTS_NEXT_STEP_CLI)
        True
    """
    return COUNTS_NEXT_STEP.render(spellings)


def _dtype_message(name: str, kind: str, dtype: str) -> str | Wording:
    """What to do about a dtype that cannot hold normalized amplitudes.

    ``kind`` is numpy's dtype kind: "c" complex, "i"/"u" integers, "b" bool.
    """
    base = (
        f"{name} must hold real floating-point values (float16, bfloat16, float32 or "
        f"float64), got dtype {dtype}"
    )
    if kind == "c":
        return (
            f"{base}. A complex array is a wavefield, not amplitudes: pass its magnitude "
            f"({name}.abs() / numpy.abs({name}))"
        )
    if kind in "iu":
        # A Wording: the command line names its own next step (COUNTS_NEXT_STEP_CLI).
        literal = base.replace("{", "{{").replace("}", "}}")
        return Wording(
            f"{literal}. Integer values are raw detector counts, not normalized amplitudes. "
            + COUNTS_NEXT_STEP.template,
            COUNTS_NEXT_STEP.options,
        )
    if kind == "b":
        return f"{base}. A boolean array is a mask, not data: pass it as mask=..."
    return base


def positive_finite(value: Any, where: str, error: type[Exception] = NphotonsError) -> float:
    """Return ``value`` as a float if it is a positive finite real number.

    Accepts Python and numpy real scalars, 0-d arrays and 0-d tensors, and
    numeric strings (metadata written by hand often quotes numbers). Rejects
    bool, complex, NaN, infinities, zero and negatives.
    """
    raw = value
    if isinstance(value, torch.Tensor) and (
        value.layout != torch.strided or value.device.type == "meta"
    ):
        raise error(
            f"{where} must be a single concrete number, got a tensor with layout "
            f"{value.layout} on {value.device}"
        )
    if isinstance(value, torch.Tensor | np.ndarray):
        if value.ndim != 0 and not (value.ndim == 1 and value.shape[0] == 1):
            raise error(
                f"{where} must be a single number, got an array of shape {tuple(value.shape)}"
            )
        value = value.item() if isinstance(value, torch.Tensor) else value.reshape(()).item()
    if isinstance(value, bool | np.bool_):
        raise error(f"{where} must be a positive finite number, got the boolean {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise error(
                f"{where} must be a positive finite number, got the string {raw!r}"
            ) from None
    if isinstance(value, complex | np.complexfloating):
        raise error(f"{where} must be a real number, got the complex value {raw!r}")
    if not isinstance(value, numbers.Real):
        raise error(
            f"{where} must be a positive finite number, got {type(raw).__name__} {preview(raw)}"
        )
    try:
        out = float(value)
    except OverflowError:  # a Python int beyond the float range
        raise error(f"{where} must be a positive finite number, got {preview(raw)}") from None
    if not math.isfinite(out) or out <= 0.0:
        raise error(f"{where} must be a positive finite number, got {out!r}")
    return out


def real_number(value: Any, where: str, what: str) -> float:
    """``value`` (a real number, or a one-element tensor or array) as a finite float.

    Raises:
        DtypeError: not a single real number (``what`` names what was expected).
        NonFiniteError: NaN or infinite.
    """
    raw = value
    if isinstance(value, torch.Tensor | np.ndarray):
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != 1):
            raise DtypeError(
                f"{where} must be a single number here, got an array of shape {tuple(value.shape)}"
            )
        if value.dtype in (torch.bool, np.bool_) or (
            isinstance(value, torch.Tensor) and (value.is_complex() or value.device.type == "meta")
        ):
            raise DtypeError(f"{where} must be a real number, got a {value.dtype} {value!r}")
        value = value.reshape(()).item() if isinstance(value, np.ndarray) else value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise DtypeError(f"{where} must be {what}, got {type(raw).__name__} {preview(raw)}")
    try:
        out = float(value)
    except OverflowError:  # a Python int beyond the float range
        raise NonFiniteError(f"{where} must be finite, got {preview(raw)}") from None
    if not math.isfinite(out):
        raise NonFiniteError(f"{where} must be finite, got {out!r}")
    return out


def positive_real(value: Any, where: str, what: str) -> float:
    """``value`` as a positive finite float: `real_number`, and > 0.

    Raises:
        DtypeError, NonFiniteError: as `real_number`.
        NegativeValueError: zero or negative.
    """
    out = real_number(value, where, what)
    if out <= 0.0:
        raise NegativeValueError(f"{where} must be > 0, got {out!r}")
    return out


#: Numbers and arrays: `scalar_scale` never asks these for their ``__float__``
#: (numpy's complex and bool scalars have one; they are refused, not converted).
_NUMERIC = (numbers.Number, np.generic, np.ndarray, torch.Tensor)


def scalar_scale(value: Any, where: str = "scale") -> float:
    """A single intensity scale (amplitude factor) as a positive finite Python float.

    Accepts a real number, a 0-d (or one-element) tensor or array, or any other
    object that converts itself with ``float()``, such as a
    [`ScaleRecord`][physscale.ScaleRecord] (its ``intensity_scale``).

    Raises:
        DtypeError: not a real number (bool, complex, string, a larger array...).
        NonFiniteError: NaN or infinite.
        NegativeValueError: zero or negative.
    """
    if type(value) is float and 0.0 < value < math.inf:
        return value
    if not isinstance(value, _NUMERIC) and hasattr(type(value), "__float__"):
        # If it cannot, it is refused below, with the object in the message.
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            value = float(value)
    return positive_real(
        value, where, "a positive real number, a 0-d tensor or a ScaleRecord (amplitude factor)"
    )


def spatial_axes(
    ndim: int,
    spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
    layout: str | None = None,
) -> tuple[int, ...]:
    """Normalize the spatial axes of an ``ndim``-dimensional input.

    ``layout`` ("NCHW" or "NHWC") is a shortcut for ``spatial_dims``; passing a
    layout together with different non-default ``spatial_dims`` is an error.
    Returns sorted, non-negative, distinct axis indices.
    """
    if layout is not None:
        name = check_option(layout, tuple(LAYOUTS), "layout")
        from_layout = LAYOUTS[name]
        if spatial_dims is not DEFAULT_SPATIAL_DIMS and tuple(spatial_dims) != from_layout:
            raise AxisError(
                f"layout={name!r} means spatial_dims={from_layout}, which contradicts "
                f"spatial_dims={preview(tuple(spatial_dims))}; pass one or the other"
            )
        spatial_dims = from_layout
    if isinstance(spatial_dims, int | str) or not isinstance(spatial_dims, Sequence):
        raise AxisError(
            "spatial_dims must be a sequence of axis indices such as (-2, -1), "
            f"got {preview(spatial_dims)}"
        )
    if len(spatial_dims) == 0:
        raise AxisError("spatial_dims must name at least one axis, got ()")
    out: list[int] = []
    for d in spatial_dims:
        if isinstance(d, bool) or not isinstance(d, int | np.integer):
            raise AxisError(
                f"spatial_dims entries must be integers, got {preview(d)} in "
                f"{preview(tuple(spatial_dims))}"
            )
        d = int(d)
        if not -ndim <= d < ndim:
            raise AxisError(
                f"spatial axis {preview(d)} is out of range for an input with {ndim} "
                f"dimension(s); spatial_dims={preview(tuple(spatial_dims))}"
            )
        out.append(d % ndim)
    if len(set(out)) != len(out):
        raise AxisError(f"spatial_dims {tuple(spatial_dims)} name the same axis twice")
    return tuple(sorted(out))


#: How the layout guard's message names its remedies, in Python terms (the
#: command line names its flags instead: see [`Wording`][physscale.errors.Wording]).
LAYOUT_OPTIONS = {
    "layout_NHWC": "layout='NHWC'",
    "layout_NCHW": "layout='NCHW' (or spatial_dims=(-2, -1))",
}


def check_layout(shape: Sequence[int], axes_explicit: bool, name: str = "x") -> None:
    """The layout guard: refuse defaulted axes on data that look channels-last.

    physscale never guesses the layout, and must not be silently wrong either.
    With defaulted axes (``spatial_dims`` and ``layout`` not given), data of
    rank >= 3 whose last axis has 1 to ``CHANNELS_MAX`` entries while the two
    axes before it have at least ``SPATIAL_MIN`` each (``(B, N, N, C)``, the
    TensorFlow/PtychoPINN layout) would be read as ``N x C`` patterns; no
    diffraction pattern is a few pixels wide, so this raises
    [`AmbiguousLayoutError`][physscale.AmbiguousLayoutError] naming what to pass (its
    ``wording`` names the options ``layout_NHWC`` and ``layout_NCHW``, so the
    command line can name its flags). Explicit axes (any ``spatial_dims`` or
    ``layout``, ``"NCHW"`` included) are trusted.
    """
    if axes_explicit or len(shape) < 3:
        return
    h, w, c = (int(n) for n in shape[-3:])
    if not (1 <= c <= CHANNELS_MAX and h >= SPATIAL_MIN and w >= SPATIAL_MIN):
        return
    dims = tuple(int(n) for n in shape)
    wording = Wording(
        "{name} has shape {dims}, which looks channels-last (NHWC: {h} x {w} patterns, "
        "{c} channel{plural}), but no layout was given: the default (NCHW, the last two "
        "axes) would read each pattern as {w} x {c} pixels. Pass {layout_NHWC} for "
        "channels-last data (TensorFlow, PtychoPINN), or {layout_NCHW} if the patterns "
        "really are {w} x {c}; physscale never guesses the layout",
        LAYOUT_OPTIONS,
        name=name, dims=dims, h=h, w=w, c=c, plural="s" if c != 1 else "",
    )  # fmt: skip
    raise AmbiguousLayoutError(
        wording,
        shape=dims,
        nchw_pattern=(w, c),
        nhwc_pattern=(h, w),
    )


def split_masked(x: object, mask: object, name: str = "x") -> tuple[object, object]:
    """Unwrap a ``numpy.ma.MaskedArray``: its data, and its mask as valid pixels.

    numpy's mask marks *invalid* entries (True = masked); physscale's masks mark
    valid pixels (True = use). The two are combined with ``mask`` (both must
    allow a pixel for it to count). Anything else is returned unchanged.
    """
    if not isinstance(x, np.ma.MaskedArray):
        return x, mask
    data = np.ma.getdata(x)
    invalid = np.ma.getmaskarray(x)
    if not invalid.any():
        return data, mask
    valid = ~invalid
    if mask is None:
        return data, valid
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise MaskError(
            f"{name} is a numpy.ma.MaskedArray and mask= was given too; combine them as "
            f"one boolean numpy mask (got mask of type {type(mask).__name__})"
        )
    try:
        return data, valid & mask
    except ValueError:
        raise MaskError(
            f"mask of shape {mask.shape} does not broadcast to the masked array's shape "
            f"{data.shape}"
        ) from None


def as_mask(
    mask: object,
    shape: torch.Size,
    device: torch.device,
    axes: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Coerce a boolean valid-pixel mask and broadcast it (as a view) to ``shape``.

    A mask of exactly the pattern's shape (the sizes of the spatial ``axes``)
    applies along those axes in any layout: ``(H, W)`` fits ``(B, H, W, C)``
    data as well as ``(B, C, H, W)``. Any other mask broadcasts by numpy's
    trailing-axis rules.
    """
    if isinstance(mask, np.ndarray):
        if mask.dtype != np.bool_:
            raise MaskError(mask_dtype_message(str(mask.dtype)))
        m = torch.from_numpy(np.ascontiguousarray(mask))
    elif isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool:
            raise MaskError(mask_dtype_message(str(mask.dtype)))
        m = mask.detach()
    else:
        raise MaskError(
            f"mask must be a boolean torch.Tensor or numpy.ndarray, got {type(mask).__name__}"
        )
    if m.layout != torch.strided:
        raise MaskError(f"mask must be a dense tensor, got layout {m.layout}; use mask.to_dense()")
    m = m.to(device)
    if axes is not None:
        pattern = tuple(int(shape[a]) for a in axes)
        if tuple(m.shape) == pattern:
            # The pattern's own shape: place it on the spatial axes, whatever the layout.
            placed = [1] * len(shape)
            for a, n in zip(axes, pattern, strict=True):
                placed[a] = n
            return m.reshape(placed).expand(shape)
    try:
        return m.expand(shape)
    except RuntimeError:
        pass
    fits = []
    if axes is not None:
        pattern = tuple(int(shape[a]) for a in axes)
        fits.append(f"the pattern shape {pattern} (applied along the spatial axes {axes})")
    trailing = tuple(int(n) for n in shape[1:])
    fits.append(f"a shape that broadcasts to the data shape {tuple(shape)}, e.g. {trailing}")
    raise MaskError(
        f"mask of shape {tuple(m.shape)} does not fit the data of shape {tuple(shape)}; "
        f"give {' or '.join(fits)}"
    )


#: A mask that excludes more than this fraction of a dataset's pixels is the
#: inverted-mask signature: real detector masks (gaps, dead and hot pixels, a
#: beamstop) exclude a few per cent.
INVERTED_MASK_FRACTION = 0.5

#: A mask that excludes more than this fraction is refused: no detector loses
#: nine pixels in ten, and a scale from the remaining tenth is a plausible wrong number.
INVERTED_MASK_REFUSED = 0.9

#: How each common convention converts to physscale's valid-pixel mask.
MASK_POLARITY = (
    "physscale's mask= is True = valid pixel. A NeXus/Eiger pixel_mask is nonzero = "
    "bad pixel: pass mask=(pixel_mask == 0); ptychodus' bad_pixels is True = bad: "
    "pass mask=~bad_pixels; a numpy masked array's mask is True = bad: pass the "
    "MaskedArray itself"
)


def mask_dtype_message(dtype: str) -> str:
    """Why a non-boolean mask is refused, and the explicit conversions (never a bare cast).

    An integer mask has no stated polarity: a NeXus ``pixel_mask`` is nonzero =
    bad, other masks are 1 = valid, and ``astype(bool)`` would silently keep
    exactly the bad pixels of the first kind.
    """
    return (
        f"the mask must be boolean (True = valid pixel), got dtype {dtype}; a non-boolean "
        f"mask has no stated polarity, so physscale does not convert it. {MASK_POLARITY}; "
        f"for a mask whose nonzero entries are the valid pixels, pass mask=(m != 0)"
    )


def valid_from_pixel_mask(pixel_mask: object) -> np.ndarray:
    """A NeXus/Eiger ``pixel_mask`` (nonzero = bad pixel) as a valid-pixel mask (True = valid).

    Args:
        pixel_mask: integer or boolean numpy array (or tensor); any nonzero
            bit marks the pixel bad (gap, dead, hot, ...).

    Returns:
        A boolean numpy array of the same shape, True where ``pixel_mask == 0``.
    """
    if isinstance(pixel_mask, torch.Tensor):
        pixel_mask = pixel_mask.detach().cpu().numpy()
    if not isinstance(pixel_mask, np.ndarray) or pixel_mask.dtype.kind not in "biu":
        raise MaskError(
            f"a NeXus pixel_mask must be an integer or boolean array (nonzero = bad pixel), "
            f"got {type(pixel_mask).__name__} {getattr(pixel_mask, 'dtype', '')}"
        )
    valid: np.ndarray = pixel_mask == 0
    return valid


def check_mask_coverage(
    masked_pixels: int, pixels: int, where: str = "the mask", *, refuse: bool = False
) -> None:
    """Name the inverted-mask signature: a mask that excludes everything, or most pixels.

    Args:
        masked_pixels: pixels the mask excluded (over every pattern seen).
        pixels: pixels seen in all.
        where: what messages call the mask (``"mask"``, ``"--mask FILE"``).
        refuse: raise instead of warning above `INVERTED_MASK_REFUSED`
            (the counts front doors, where a mask is a detector's; derive and
            the loss warn, since a region-of-interest mask is legitimate there).

    Raises:
        MaskError: the mask excludes every pixel (there is nothing to
            measure), or, with ``refuse``, more than `INVERTED_MASK_REFUSED`.

    Warns:
        MaskWarning: it excludes more than `INVERTED_MASK_FRACTION` of
            the pixels. The warning states the polarity; it is a question about
            the mask, answered by fixing the mask, never by silencing it.
    """
    from physscale.errors import MaskWarning

    if pixels <= 0 or masked_pixels <= 0:
        return
    if masked_pixels >= pixels:
        raise MaskError(
            f"{where} excludes every pixel ({pixels} of {pixels}): nothing is left to "
            f"measure. That is the signature of an inverted mask: {MASK_POLARITY}"
        )
    fraction = masked_pixels / pixels
    if refuse and fraction > INVERTED_MASK_REFUSED:
        raise MaskError(
            f"{where} excludes {fraction:.1%} of the pixels and keeps {1.0 - fraction:.1%}: "
            f"that is the signature of an inverted mask (real detector masks exclude a few "
            f"per cent: gaps, dead and hot pixels, a beamstop). {MASK_POLARITY}. If only "
            f"the kept pixels are data, crop the patterns to them instead"
        )
    if fraction > INVERTED_MASK_FRACTION:
        warnings.warn(
            f"{where} excludes {fraction:.1%} of the pixels and keeps {1.0 - fraction:.1%}: "
            f"that is the signature of an inverted mask (real detector masks exclude a few "
            f"per cent: gaps, dead and hot pixels, a beamstop). {MASK_POLARITY}. Check the "
            f"mask's polarity before using this scale",
            MaskWarning,
            stacklevel=3,
        )


def check_materializable(x: torch.Tensor | np.ndarray[Any, Any], name: str) -> None:
    """Refuse a broadcast view whose elements would not fit in its device's memory.

    ``torch.ones(1).expand(10**6, 10**3, 10**3)`` (or ``numpy.broadcast_to``)
    stores one value but stands for 10**12: any computation that makes its
    elements (a sum of squares, the loss, numpy's float64 copy) would ask the
    allocator for terabytes and fail with a raw error. A contiguous array holds
    every element already and is passed at once (the hot path's case).

    Raises:
        BroadcastError: ``x`` holds fewer values than it has elements, and its
            elements (at its dtype) exceed the device's total memory.
    """
    if isinstance(x, np.ndarray):
        # Checked before anything converts it (np.asarray, astype): numpy's copy of a
        # broadcast view is where the terabytes would be asked for. The bytes it really
        # spans follow from its strides (a zero stride repeats one value).
        if x.size == 0 or x.flags.c_contiguous or x.flags.f_contiguous:
            return
        needed = x.size * x.itemsize
        stored = x.itemsize + sum((n - 1) * abs(s) for n, s in zip(x.shape, x.strides, strict=True))
        numel = x.size
    elif isinstance(x, torch.Tensor):
        # Under torch.compile the storage is not inspectable (and the graph must not
        # break): a traced loss was checked when it ran eagerly.
        if (
            x.layout != torch.strided
            or x.is_contiguous()
            or x.device.type == "meta"
            or x.numel() == 0
            or torch.compiler.is_compiling()
        ):
            return
        try:
            stored = x.untyped_storage().nbytes()
        except (NotImplementedError, RuntimeError):  # functorch wrappers, fake tensors: no storage
            return
        needed = x.numel() * x.element_size()
        numel = x.numel()
    else:  # anything else is refused by the caller's own type check
        return
    if needed <= stored:
        return
    if isinstance(x, torch.Tensor) and x.device.type == "cuda":
        total = torch.cuda.get_device_properties(x.device).total_memory
    else:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # not POSIX: 1 TiB
            total = 1 << 40
    if needed > total:
        raise BroadcastError(
            f"{name} is a broadcast view of {numel} elements ({needed} bytes) over "
            f"{stored} bytes of storage; the computation makes every element, which would "
            f"take more than this device's {total} bytes of memory"
        )
