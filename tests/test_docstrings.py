"""Every public function's docstring has an example, and every example runs.

The public names are those of ``physscale.__all__``, ``physscale.nn``,
``physscale.io``, ``physscale.errors``, ``physscale.report``,
``physscale.lightning`` and the host-free parts of ``physscale.adapters.*``.
Each docstring (functions, classes and their methods) runs under ``doctest``
in a fresh temporary directory, with ``tmp`` (that directory, a ``pathlib.Path``)
in its namespace, so an example that writes files writes them there.
A public *function* without a ``>>>`` example fails, unless it is listed in
``NO_EXAMPLE_YET`` (names whose files were being edited elsewhere when this
test was written, and adapter functions that need their host code; remove a
name once its docstring has an example).
"""

from __future__ import annotations

import copy
import doctest
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Public functions that do not have an example yet (by qualified public name).
NO_EXAMPLE_YET = frozenset(
    {
        # These need their host code (a cdtools model, a pty-chi task, the port's
        # PtychoPINN_Lightning or bundle, a PtyRAD solver class): an example could
        # not run here. docs/interop/ has a runnable recipe for each.
        "physscale.adapters.cdtools.install_loss",
        "physscale.adapters.ptychi.use_poisson_loss",
        "physscale.adapters.ptychopinn.install_loss",
        "physscale.adapters.ptychopinn.record_from_bundle",
        "physscale.adapters.ptychopinn.save_bundle",
        "physscale.adapters.ptyrad.install_loss",
    }
)

#: Extras an example may import; without them the example is skipped.
OPTIONAL_IMPORTS = {"h5py": "import h5py", "matplotlib": "physscale.report import"}

MODULES = [
    "physscale",
    "physscale.nn",
    "physscale.io",
    "physscale.errors",
    "physscale.report",
    "physscale.lightning",
]


def _adapter_modules() -> list[str]:
    import physscale.adapters

    return [
        f"physscale.adapters.{m.name}"
        for m in pkgutil.iter_modules(physscale.adapters.__path__)
        if not m.name.startswith("_")
    ]


def _optional(module: str) -> bool:
    """Whether the module needs an extra that is not installed (it is skipped then)."""
    need = {"physscale.lightning": "lightning", "physscale.report": None}.get(module)
    if need is None:
        return False
    try:
        importlib.import_module(need)
    except ImportError:
        return True
    return False


def public_objects() -> Iterator[tuple[str, Any]]:
    """(qualified public name, object) of every public name, host-needing ones left out."""
    for name in [*MODULES, *_adapter_modules()]:
        if _optional(name):
            continue
        module = importlib.import_module(name)
        names = getattr(module, "__all__", None)
        if names is None:
            names = [n for n in vars(module) if not n.startswith("_")]
        for attr in names:
            try:
                obj = getattr(module, attr)
            except ImportError:  # a host-code class (an adapter's lazy attribute)
                continue
            if inspect.ismodule(obj):
                continue
            yield f"{name}.{attr}", obj


PUBLIC = dict(public_objects())
FUNCTIONS = sorted(n for n, o in PUBLIC.items() if inspect.isfunction(o))


def _tests(name: str, obj: Any) -> list[doctest.DocTest]:
    module = inspect.getmodule(obj)
    finder = doctest.DocTestFinder(recurse=inspect.isclass(obj), exclude_empty=True)
    found = finder.find(obj, name, module=module, globs=vars(module) if module else {})
    return [t for t in found if t.examples]


DOCTESTS = {
    t.name: t
    for name, obj in sorted(PUBLIC.items())
    if inspect.isfunction(obj) or inspect.isclass(obj)
    for t in _tests(name, obj)
}


def test_the_lists_are_honest() -> None:
    assert FUNCTIONS, "no public functions found"
    assert set(FUNCTIONS) >= NO_EXAMPLE_YET, sorted(NO_EXAMPLE_YET - set(FUNCTIONS))
    stale = sorted(n for n in NO_EXAMPLE_YET if ">>>" in (PUBLIC[n].__doc__ or ""))
    assert not stale, f"these have an example now; take them off NO_EXAMPLE_YET: {stale}"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_public_function_has_an_example(name: str) -> None:
    if name in NO_EXAMPLE_YET:
        pytest.skip("on the NO_EXAMPLE_YET list")
    assert ">>>" in (PUBLIC[name].__doc__ or ""), (
        f"{name} has no example: add an Examples section with a small, fast, "
        "deterministic >>> example (files only under `tmp`)"
    )


@pytest.mark.parametrize("name", sorted(DOCTESTS))
def test_docstring_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an example that forgets `tmp` still writes nowhere else
    test = copy.copy(DOCTESTS[name])
    source = "".join(example.source for example in test.examples)
    for extra, marker in OPTIONAL_IMPORTS.items():
        if marker in source:
            pytest.importorskip(extra)
    test.globs = {**test.globs, "tmp": tmp_path}
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=report.append, clear_globs=False)
    assert not runner.failures, "".join(report)
