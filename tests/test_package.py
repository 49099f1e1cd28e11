"""The package surface: lazily loaded submodules, and what ``import physscale`` imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import physscale as ps


def _fresh(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def test_import_physscale_loads_no_optional_dependency_or_submodule() -> None:
    found = _fresh(
        "import sys, json, physscale\n"
        "print(json.dumps({m: m in sys.modules for m in "
        "['lightning', 'h5py', 'physscale.io', 'physscale.lightning', 'physscale.adapters']}))"
    )
    assert found == {
        "lightning": False,
        "h5py": False,
        "physscale.io": False,
        "physscale.lightning": False,
        "physscale.adapters": False,
    }


@pytest.mark.parametrize("name", ["io", "nn", "lightning", "adapters"])
def test_submodules_are_reachable_as_attributes_after_import_physscale(name: str) -> None:
    if name == "lightning":
        pytest.importorskip("lightning", reason="physscale.lightning needs the lightning extra")
    found = _fresh(
        f"import json, physscale\nm = physscale.{name}\nprint(json.dumps({{'name': m.__name__}}))"
    )
    assert found == {"name": f"physscale.{name}"}


def test_io_attribute_is_the_io_module_with_its_public_functions() -> None:
    assert callable(ps.io.read_metadata)
    assert callable(ps.io.load_bundle)
    assert "io" in dir(ps) and "lightning" in dir(ps)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        ps.nonexistent  # noqa: B018


def test_every_public_name_exists_and_the_surface_stays_small() -> None:
    assert all(hasattr(ps, name) for name in ps.__all__)
    # 0.2.0 had 45 top-level names, 20 of them errors and warnings.
    assert len(ps.__all__) <= 30
    errors = [n for n in ps.__all__ if n.endswith(("Error", "Warning"))]
    assert errors == ["PhysscaleError", "AmbiguousLayoutError", "MaskWarning", "UnitsWarning"]


@pytest.mark.parametrize("name", sorted(ps._MOVED))
def test_a_moved_name_still_works_with_a_deprecation_warning(name: str) -> None:
    home = ps._MOVED[name]
    with pytest.warns(DeprecationWarning, match=rf"physscale\.{name} moved to {home}\.{name}"):
        value = getattr(ps, name)
    assert value is getattr(sys.modules[home], name)
    assert name not in ps.__all__


def test_every_error_class_is_a_physscale_error_and_a_builtin() -> None:
    for name in ps.errors.__all__:
        cls = getattr(ps.errors, name)
        if not name.endswith(("Error", "Warning")):
            continue  # Wording: how a message names options, not an exception
        if name.endswith("Warning"):
            assert issubclass(cls, UserWarning)
        else:
            assert issubclass(cls, ps.PhysscaleError)
            assert cls is ps.PhysscaleError or issubclass(cls, ValueError | TypeError)
