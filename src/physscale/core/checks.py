"""Input coercion shared by every entry point.

Each helper either returns a clean value or raises a specific
:mod:`physscale.errors` exception whose message says what was wrong, where it
came from and what would be right.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from physscale.errors import (
    AmbiguousLayoutError,
    AxisError,
    DtypeError,
    MaskError,
    NphotonsError,
    OptionError,
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
    raise OptionError(f"{name} must be one of {choices}, got {value!r}")


def as_float_tensor(x: object, name: str = "x") -> torch.Tensor:
    """Coerce a numpy array or torch tensor of real floats to a detached tensor.

    numpy input is shared, not copied (``torch.from_numpy``), except for
    non-native byte order or negative strides, which torch cannot view.
    A ``numpy.ma.MaskedArray`` is refused here: callers that honour its mask
    unwrap it first with :func:`split_masked`.
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


def _dtype_message(name: str, kind: str, dtype: str) -> str:
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
        return (
            f"{base}. Integer values are raw detector counts, not normalized amplitudes: "
            f"physscale.normalize_counts(counts) returns the normalized amplitudes and the "
            f"scale that maps them back to the counts exactly"
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
        raise error(f"{where} must be a positive finite number, got {type(raw).__name__} {raw!r}")
    try:
        out = float(value)
    except OverflowError:  # a Python int beyond the float range
        raise error(f"{where} must be a positive finite number, got {raw!r}") from None
    if not math.isfinite(out) or out <= 0.0:
        raise error(f"{where} must be a positive finite number, got {out!r}")
    return out


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
                f"spatial_dims={tuple(spatial_dims)}; pass one or the other"
            )
        spatial_dims = from_layout
    if isinstance(spatial_dims, int | str) or not isinstance(spatial_dims, Sequence):
        raise AxisError(
            "spatial_dims must be a sequence of axis indices such as (-2, -1), "
            f"got {spatial_dims!r}"
        )
    if len(spatial_dims) == 0:
        raise AxisError("spatial_dims must name at least one axis, got ()")
    out: list[int] = []
    for d in spatial_dims:
        if isinstance(d, bool) or not isinstance(d, int | np.integer):
            raise AxisError(
                f"spatial_dims entries must be integers, got {d!r} in {tuple(spatial_dims)}"
            )
        d = int(d)
        if not -ndim <= d < ndim:
            raise AxisError(
                f"spatial axis {d} is out of range for an input with {ndim} dimension(s); "
                f"spatial_dims={tuple(spatial_dims)}"
            )
        out.append(d % ndim)
    if len(set(out)) != len(out):
        raise AxisError(f"spatial_dims {tuple(spatial_dims)} name the same axis twice")
    return tuple(sorted(out))


def check_layout(
    shape: Sequence[int], axes_explicit: bool, name: str = "x", *, cli: bool = False
) -> None:
    """The layout guard: refuse defaulted axes on data that look channels-last.

    physscale never guesses the layout, and must not be silently wrong either.
    With defaulted axes (``spatial_dims`` and ``layout`` not given), data of
    rank >= 3 whose last axis has 1 to ``CHANNELS_MAX`` entries while the two
    axes before it have at least ``SPATIAL_MIN`` each (``(B, N, N, C)``, the
    TensorFlow/PtychoPINN layout) would be read as ``N x C`` patterns; no
    diffraction pattern is a few pixels wide, so this raises
    :class:`~physscale.AmbiguousLayoutError` naming what to pass. Explicit axes
    (any ``spatial_dims`` or ``layout``, ``"NCHW"`` included) are trusted.
    """
    if axes_explicit or len(shape) < 3:
        return
    h, w, c = (int(n) for n in shape[-3:])
    if not (1 <= c <= CHANNELS_MAX and h >= SPATIAL_MIN and w >= SPATIAL_MIN):
        return
    dims = tuple(int(n) for n in shape)
    if cli:
        nhwc, nchw = "--layout NHWC", "--layout NCHW"
    else:
        nhwc, nchw = "layout='NHWC'", "layout='NCHW' (or spatial_dims=(-2, -1))"
    plural = "s" if c != 1 else ""
    raise AmbiguousLayoutError(
        f"{name} has shape {dims}, which looks channels-last (NHWC: {h} x {w} patterns, "
        f"{c} channel{plural}), but no layout was given: the default (NCHW, the last two "
        f"axes) would read each pattern as {w} x {c} pixels. Pass {nhwc} for channels-last "
        f"data (TensorFlow, PtychoPINN), or {nchw} if the patterns really are {w} x {c}; "
        f"physscale never guesses the layout",
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
            raise MaskError(
                f"mask must be boolean (True = valid pixel), got dtype {mask.dtype}; "
                f"use mask.astype(bool)"
            )
        m = torch.from_numpy(np.ascontiguousarray(mask))
    elif isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool:
            raise MaskError(
                f"mask must be boolean (True = valid pixel), got dtype {mask.dtype}; "
                f"use mask.bool()"
            )
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
