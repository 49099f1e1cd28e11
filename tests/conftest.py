"""Shared test configuration: hypothesis profiles and the kernel fixture.

``HYPOTHESIS_PROFILE=ci`` (set by .ci/run) runs more examples with no
deadline; the default profile keeps a local ``pytest`` quick.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from physscale.core.kernels import blas
from physscale.core.kernels import native as _native

# The kernel fixture is constant across a test's examples, so hypothesis may
# share it between them.
_SUPPRESSED = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.function_scoped_fixture,
]

settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    suppress_health_check=_SUPPRESSED,
)
settings.register_profile(
    "ci",
    max_examples=120,
    deadline=None,
    suppress_health_check=_SUPPRESSED,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(params=["native", "blas", "eager"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once per CPU path: the native kernel, numpy's BLAS, the eager blocks.

    The native run splits inputs of 128 elements or more across 2-3 threads,
    so small hypothesis examples exercise uneven splits; the BLAS run cuts
    them into work items of 2 rows of 4096 on 2 threads.
    """
    if request.param == "native":
        if not _native.available():
            if os.environ.get("PHYSSCALE_REQUIRE_NATIVE") == "1":
                pytest.fail("PHYSSCALE_REQUIRE_NATIVE=1 but the native kernel is not built")
            pytest.skip("the native kernel is not built in this installation")
        monkeypatch.setattr(_native, "thread_count", lambda numel: max(1, min(3, numel // 64)))
        return "native"
    monkeypatch.setattr(_native, "reduce_dense", lambda x, *, square: None)
    if request.param == "blas":
        monkeypatch.setattr(_native, "thread_count", lambda numel: 2)
        monkeypatch.setattr(blas, "BLOCK_NUMEL", 4096)
        monkeypatch.setattr(blas, "ITEM_NUMEL", 2 * 4096)
    else:
        monkeypatch.setattr(blas, "reduce_dense", lambda x, *, square: None)
    return str(request.param)
