"""The documentation's code blocks are tests: every ```python block in README.md and docs/.

Sybil (https://sybil.readthedocs.io) collects them under the normal
``python -m pytest`` (pyproject's testpaths list README.md and docs/). The
blocks of one file run in order in one namespace, in a fresh temporary
working directory, with seeded random generators. Blocks tagged ``bash``,
``console``, ``text`` or anything else are not run.

Skip directives (Sybil's, as HTML comments, invisible on the rendered page):

- ``<!-- skip: next -->`` before a block that needs what CI lacks (a GPU, a
  host code such as deepinv): the block is shown but not run.
- ``<!-- skip: start if(not has("lightning"), reason="needs the lightning extra") -->``
  ... ``<!-- skip: end -->`` around blocks that need an optional extra:
  skipped where it is not installed, run where it is (CI installs every extra
  and sets ``PHYSSCALE_REQUIRE_EXTRAS=1``, which turns a missing one into an
  error instead of a skip).
- ``<!-- skip: start if(not has_host("cdtools"), reason="needs cdtools-py (the interop env)") -->``
  ... ``<!-- skip: end -->`` around blocks that run a host code: skipped in main
  CI, run in the interop environment (scripts/make_interop_env.sh), where
  ``PHYSSCALE_REQUIRE_INTEROP=1`` turns a missing host into an error.

See docs/contributing.md.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import tempfile
from typing import Any

from sybil import Sybil
from sybil.parsers.markdown import ClearNamespaceParser, PythonCodeBlockParser, SkipParser


def has(module: str) -> bool:
    """Whether ``module`` (an optional extra's package) can be imported."""
    found = importlib.util.find_spec(module) is not None
    if not found and os.environ.get("PHYSSCALE_REQUIRE_EXTRAS") == "1":
        raise RuntimeError(
            f"PHYSSCALE_REQUIRE_EXTRAS=1 but {module!r} is not installed; a documentation "
            "block that needs it would be skipped"
        )
    return found


def has_host(module: str) -> bool:
    """Whether a host code (``cdtools``, ``ptyrad``) can be imported; never an extra of main CI."""
    found = importlib.util.find_spec(module) is not None
    if not found and os.environ.get("PHYSSCALE_REQUIRE_INTEROP") == "1":
        raise RuntimeError(
            f"PHYSSCALE_REQUIRE_INTEROP=1 but the host code {module!r} is not installed; a "
            "documentation block that runs it would be skipped (scripts/make_interop_env.sh)"
        )
    return found


def _setup(namespace: dict[str, Any]) -> None:
    import numpy as np
    import torch

    namespace["has"] = has
    namespace["has_host"] = has_host
    namespace["_cwd"] = os.getcwd()
    namespace["_tmp"] = tempfile.mkdtemp(prefix="physscale-docs-")
    os.chdir(namespace["_tmp"])  # files a block writes land here, never in the checkout
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _teardown(namespace: dict[str, Any]) -> None:
    os.chdir(namespace["_cwd"])
    shutil.rmtree(namespace["_tmp"], ignore_errors=True)


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser(), ClearNamespaceParser()],
    patterns=["README.md", "docs/*.md", "docs/*/*.md"],
    setup=_setup,
    teardown=_teardown,
).pytest()
