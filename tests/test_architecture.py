"""The house: which way imports run, what ``import physscale`` loads, one of each mechanism.

docs/architecture.md draws the layers; this module holds the same table and
checks every import in ``src/physscale`` against it, including imports inside
functions and under ``TYPE_CHECKING`` (a type is a dependency too).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import physscale

SRC = Path(physscale.__file__).parent

#: Layer of each module (longest matching prefix wins). A module may import its
#: own layer or any lower one, never a higher one.
LAYERS: dict[str, int] = {
    "physscale.errors": 0,
    "physscale._version": 0,
    "physscale.core": 1,
    "physscale.diagnostics": 2,
    "physscale.accumulator": 3,
    "physscale.record": 4,
    "physscale.derive": 5,
    "physscale.nn": 6,
    "physscale.counts": 6,
    "physscale.attach": 6,
    "physscale.distributed": 6,
    "physscale.io": 7,
    "physscale.report": 8,
    "physscale.adapters": 9,
    "physscale.lightning": 9,
    "physscale.cli": 10,
    "physscale.__main__": 10,
    # The package's front door re-exports the public API; it sits on top.
    "physscale": 11,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _layer(module: str) -> int:
    name = module
    while name not in LAYERS:
        if "." not in name:
            raise AssertionError(f"{module} has no layer in LAYERS; add it (and to the doc)")
        name = name.rsplit(".", 1)[0]
    return LAYERS[name]


def _physscale_imports(module: str, path: Path) -> set[str]:
    """Every physscale module ``module`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            # The longest known module the name starts with (a class is not a module).
            while name and name not in MODULES:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
    return found


GRAPH = {m: _physscale_imports(m, p) for m, p in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_only(module: str) -> None:
    upward = sorted(m for m in GRAPH[module] if _layer(m) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports from above: {upward}"


def test_no_import_circle() -> None:
    # Depth-first search for a back edge; the graph is small.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycle = [*path[path.index(n) :], n]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_core_imports_only_the_ground_floor() -> None:
    for module, imported in GRAPH.items():
        if module.startswith("physscale.core"):
            outside = {m for m in imported if not m.startswith("physscale.core")}
            assert outside <= {"physscale.errors", "physscale._version"}, (module, outside)


def test_no_function_below_the_cli_takes_a_cli_flag() -> None:
    offenders = []
    for module, path in MODULES.items():
        if module.startswith("physscale.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                if "cli" in [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]:
                    offenders.append(f"{module}.{node.name}")
    assert not offenders


def test_one_unpickler_in_the_package() -> None:
    unpicklers = [
        f"{module}.{node.name}"
        for module, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef)
        and any(ast.unparse(b).endswith("Unpickler") for b in node.bases)
    ]
    assert len(unpicklers) == 1, unpicklers


def test_no_private_name_is_imported_across_modules() -> None:
    # A private helper module (io/_files.py) serves its own package only; a
    # private function or constant serves its own module only.
    offenders = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("physscale"):
                for alias in node.names:
                    if not alias.name.startswith("_") or alias.name == "__version__":
                        continue
                    target = f"{node.module}.{alias.name}"
                    if target in MODULES and module.startswith(str(node.module) + "."):
                        continue
                    offenders.append(f"{module}: from {node.module} import {alias.name}")
    assert not offenders


def test_a_fresh_import_loads_only_the_library_floor() -> None:
    code = (
        "import json, sys; import physscale; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in {'physscale', 'matplotlib', 'h5py', 'lightning', 'tensorflow'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(json.loads(out.stdout))
    forbidden = ("physscale.io", "physscale.cli", "physscale.report", "physscale.adapters")
    assert not {m for m in loaded if m.startswith(forbidden)}
    assert "physscale.lightning" not in loaded
    assert not {m for m in loaded if m.split(".")[0] in {"matplotlib", "h5py", "lightning"}}
