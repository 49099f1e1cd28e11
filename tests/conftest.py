"""Shared test configuration: hypothesis profiles and the kernel fixture.

``HYPOTHESIS_PROFILE=ci`` (set by .ci/run) runs more examples with no
deadline; the default profile keeps a local ``pytest`` quick.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

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


@pytest.fixture(params=["native", "eager"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once per kernel: the native one and the eager one.

    The native run splits inputs of 128 elements or more across 2-3 threads,
    so small hypothesis examples exercise uneven splits.
    """
    if request.param == "native":
        if not _native.available():
            if os.environ.get("PHYSSCALE_REQUIRE_NATIVE") == "1":
                pytest.fail("PHYSSCALE_REQUIRE_NATIVE=1 but the native kernel is not built")
            pytest.skip("the native kernel is not built in this installation")
        monkeypatch.setattr(_native, "thread_count", lambda numel: max(1, min(3, numel // 64)))
    else:
        monkeypatch.setattr(_native, "reduce_dense", lambda x, *, square: None)
    return str(request.param)
