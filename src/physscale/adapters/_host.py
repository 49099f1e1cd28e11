"""Importing a host code lazily, with an install hint when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType


def require_host(module: str, install: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise ModuleNotFoundError saying what to install.

    Args:
        module: the host's import name (``"deepinv"``).
        install: how to get it (``"pip install deepinv==0.5.0"``).
        purpose: what needed it, for the message (``"poisson_data_fidelity"``).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # the host is there but one of *its* imports failed: show that
        raise ModuleNotFoundError(
            f"{purpose} needs {module!r}, which is not installed; install it with "
            f"`{install}` (physscale does not depend on it)",
            name=module,
        ) from None
