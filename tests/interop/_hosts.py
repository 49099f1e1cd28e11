"""Host codes for the interop suite: import them, or skip saying what is missing.

Run the suite in the environment ``scripts/make_interop_env.sh`` builds::

    PHYSSCALE_REQUIRE_INTEROP=1 PTYCHOPINN_SRC=/path/to/PtychoPINN \\
        /work/venvs/hosts/bin/python -m pytest tests/interop

With ``PHYSSCALE_REQUIRE_INTEROP=1`` a missing host fails the run instead of
skipping it (the interop environment must run every test).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from physscale.nn import ScaledPoissonNLLLoss

REQUIRE = os.environ.get("PHYSSCALE_REQUIRE_INTEROP") == "1"


def host(module: str, how: str) -> ModuleType:
    """Import a host module, or skip (fail under PHYSSCALE_REQUIRE_INTEROP=1) with ``how``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not importable ({exc}); {how}"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)


def port_src() -> Path:
    """Put $PTYCHOPINN_SRC (a folder holding ptycho_torch/ and ptycho/) on sys.path."""
    src = os.environ.get("PTYCHOPINN_SRC")
    if not src or not (Path(src) / "ptycho_torch").is_dir():
        message = (
            "PTYCHOPINN_SRC must name a PtychoPINN checkout (a folder holding ptycho_torch/ "
            f"and ptycho/); got {src!r}. See scripts/make_interop_env.sh"
        )
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    if src not in sys.path:
        sys.path.insert(0, src)
    return Path(src)


# Features of ScaledPoissonNLLLoss / scaled_poisson_nll that another branch (`loss`)
# adds; the tests that need them carry these marks. Search for "LOSS-BRANCH".
def _loss_accepts_persistent() -> bool:
    return "persistent" in inspect.signature(ScaledPoissonNLLLoss.__init__).parameters


def _nll_accepts_eps_zero() -> bool:
    from physscale import scaled_poisson_nll

    try:
        scaled_poisson_nll(torch.ones(1), torch.ones(1), 1.0, eps=0.0)
    except ValueError:
        return False
    return True


# LOSS-BRANCH (b): ScaledPoissonNLLLoss(persistent=False) keeps the scale out of state_dict.
needs_persistent_option = pytest.mark.skipif(
    not _loss_accepts_persistent(),
    reason="LOSS-BRANCH: needs ScaledPoissonNLLLoss(persistent=...) from the loss branch",
)
# LOSS-BRANCH (a): scaled_poisson_nll(eps=0.0), no floor (xlogy semantics at k = 0).
needs_eps_zero = pytest.mark.skipif(
    not _nll_accepts_eps_zero(),
    reason="LOSS-BRANCH: needs scaled_poisson_nll(eps=0.0) from the loss branch",
)
