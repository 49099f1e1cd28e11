"""The validation switch: physscale's value checks, on by default.

Modelled on ``torch.distributions.Distribution.set_default_validate_args``
and ``torch.autograd.set_detect_anomaly``: one process-wide flag, a setter, a
context manager that restores the previous state, and a query.

With validation on (the default), every entry point checks the *values* of
its inputs (NaN, infinities, negative amplitudes, mask weights...), which on
an accelerator costs one device-to-host synchronization per call. With it
off, the training hot path ([`physscale.scaled_poisson_nll`][physscale.scaled_poisson_nll],
[`physscale.ScaledPoissonNLLLoss`][physscale.ScaledPoissonNLLLoss],
[`physscale.nn.IntensityScaler`][physscale.nn.IntensityScaler])
makes no host sync and no Python branch on tensor values, so it can be
captured by ``torch.compile(fullgraph=True)`` and CUDA graphs. Checks that
need no sync (types, shapes, dtypes, devices, options) always run.
See ``docs/validation.md`` for what each mode checks.

This flag is the only global state in physscale's core. `is_compiling`
and `under_functorch` say where a value check cannot run whatever the
flag says: under ``torch.compile`` it would break the graph, inside a
``torch.func`` transform it cannot read a value at all.
"""

from __future__ import annotations

import contextlib
from types import TracebackType

import torch

from physscale.core.preview import preview

__all__ = [
    "is_compiling",
    "is_validation_enabled",
    "set_validation",
    "under_functorch",
    "validation",
]

_enabled: bool = True

_compiler_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)


def is_compiling() -> bool:
    """Whether ``torch.compile`` is tracing this call (False on a torch without it)."""
    return bool(_compiler_is_compiling()) if _compiler_is_compiling is not None else False


def under_functorch() -> bool:
    """Whether this call runs inside ``torch.func`` transforms (vmap, grad, jacrev...)."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def _check_flag(enabled: object, where: str) -> bool:
    if not isinstance(enabled, bool):
        from physscale.errors import OptionError

        raise OptionError(f"{where} takes True or False, got {preview(enabled)}")
    return enabled


def set_validation(enabled: bool) -> None:
    """Turn physscale's value checks on (the default) or off, process-wide.

    Args:
        enabled: ``True`` to check input values (NaN, infinities, negative
            values, mask weights; one host sync per call on an accelerator),
            ``False`` for the sync-free hot path. Prefer the scoped
            [`validation`][physscale.core.validation.validation] context manager where you can.

    Examples:
        >>> import physscale as ps
        >>> ps.set_validation(False)   # the hot path: no value checks, no host sync
        >>> ps.is_validation_enabled()
        False
        >>> ps.set_validation(True)
    """
    global _enabled
    _enabled = _check_flag(enabled, "set_validation")


def is_validation_enabled() -> bool:
    """Whether physscale's value checks are on (they are by default).

    Examples:
        >>> import physscale as ps
        >>> ps.is_validation_enabled()
        True
        >>> with ps.validation(False):
        ...     print(ps.is_validation_enabled())
        False
    """
    return _enabled


class validation(contextlib.ContextDecorator):  # noqa: N801 - named like torch's switches
    """Context manager (or decorator) that sets the validation switch within a scope.

    The state is set on entering the ``with`` block and the previous state is
    restored on leaving it, even on an exception; nesting works.

    Example:
        >>> import physscale as ps
        >>> with ps.validation(False):
        ...     ps.is_validation_enabled()
        False
        >>> ps.is_validation_enabled()
        True
    """

    def __init__(self, enabled: bool) -> None:
        self._new = _check_flag(enabled, "validation")
        self._previous: list[bool] = []

    def __enter__(self) -> validation:
        self._previous.append(_enabled)
        set_validation(self._new)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        set_validation(self._previous.pop())
