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

from physscale.errors import AxisError, DtypeError, MaskError, NphotonsError, OptionError

LAYOUTS: dict[str, tuple[int, int]] = {"NCHW": (-2, -1), "NHWC": (-3, -2)}


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
    non-native byte order, which torch cannot view.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if x.dtype.kind != "f" or x.dtype.itemsize not in (2, 4, 8):
            # Extended precision (float96/float128) has no torch dtype.
            raise DtypeError(_dtype_message(name, str(x.dtype)))
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        if any(stride < 0 for stride in x.strides):
            # torch cannot view negative strides (x[::-1]); one copy makes them positive.
            x = np.ascontiguousarray(x)
        with warnings.catch_warnings():
            # Read-only arrays (memory maps) are fine: physscale never writes.
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(x)
    else:
        raise DtypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of real floats, got {type(x).__name__}"
        )
    if t.layout != torch.strided:
        raise DtypeError(
            f"{name} must be a dense tensor, got layout {t.layout}; convert it with "
            f"{name}.to_dense()"
        )
    if not t.dtype.is_floating_point or t.dtype.is_complex:
        raise DtypeError(_dtype_message(name, str(t.dtype)))
    return t


def _dtype_message(name: str, dtype: str) -> str:
    return (
        f"{name} must hold real floating-point values (float16, bfloat16, float32 or "
        f"float64), got dtype {dtype}; convert integer counts explicitly, e.g. "
        f"x.astype('float32') / x.float()"
    )


def positive_finite(value: Any, where: str, error: type[Exception] = NphotonsError) -> float:
    """Return ``value`` as a float if it is a positive finite real number.

    Accepts Python and numpy real scalars, 0-d arrays and 0-d tensors, and
    numeric strings (metadata written by hand often quotes numbers). Rejects
    bool, complex, NaN, infinities, zero and negatives.
    """
    raw = value
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


def as_mask(mask: object, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Coerce a boolean valid-pixel mask and broadcast it (as a view) to ``shape``."""
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
    try:
        return m.to(device).expand(shape)
    except RuntimeError:
        raise MaskError(
            f"mask of shape {tuple(m.shape)} does not broadcast to the data shape {tuple(shape)}"
        ) from None
