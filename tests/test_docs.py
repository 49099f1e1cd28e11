"""The documentation harness: every ```python block of README.md and docs/ runs under pytest.

The blocks themselves are collected by Sybil from the root conftest.py (as
``README.md::line:N`` and ``docs/<page>.md::line:N`` items of the normal
``python -m pytest``). These tests check the harness: that it collects every
block, that its skip directives do what docs/contributing.md says, and that no
block hides from it under another language tag.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "conftest.py").is_file() or not (ROOT / "docs").is_dir():  # pragma: no cover
    pytest.skip("needs the source tree (conftest.py, docs/)", allow_module_level=True)
pytest.importorskip("sybil")

#: Fence languages allowed in the docs: ``python`` runs; the others never do.
LANGUAGES = {"python", "bash", "console", "text", "json", "toml", "yaml", "mermaid", ""}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<info>[^\n`]*)$", re.MULTILINE)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def opening_fences(text: str) -> list[tuple[int, str]]:
    """(line number, language) of each opening code fence, in order (independent of Sybil)."""
    fences, open_fence = [], None
    for m in FENCE.finditer(text):
        if open_fence is None:
            open_fence = m["fence"]
            line = text.count("\n", 0, m.start()) + 1
            fences.append((line, m["info"].strip().split(" ")[0].lower()))
        elif m["fence"].startswith(open_fence) and not m["info"].strip():
            open_fence = None
    return fences


def python_blocks(page: Path) -> set[str]:
    """The pytest ids Sybil gives the page's python blocks."""
    name = page.relative_to(ROOT).as_posix()
    fences = opening_fences(page.read_text(encoding="utf-8"))
    return {f"{name}::line:{line},column:1" for line, lang in fences if lang == "python"}


def pytest_run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return result.stdout + result.stderr


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_fences_use_a_language_the_harness_knows(page: Path) -> None:
    # A block tagged py, python3 or pycon would look like Python on the page but never run.
    unknown = {lang for _, lang in opening_fences(page.read_text(encoding="utf-8"))} - LANGUAGES
    assert not unknown, f"{page.name}: code fences tagged {sorted(unknown)}; use one of {LANGUAGES}"


def test_every_python_block_is_collected_by_the_normal_pytest_run() -> None:
    expected = set().union(*(python_blocks(page) for page in pages()))
    assert len(expected) >= 10  # README's and the guides' examples
    out = pytest_run(ROOT, "-q", "--collect-only", "README.md", "docs")
    collected = set(re.findall(r"^\S+\.md::line:\d+,column:\d+$", out, re.MULTILINE))
    assert expected - collected == set(), out[-2000:]


PAGE = """\
# A page

```python
value = 6 * 7
```

<!-- skip: next -->
```python
raise RuntimeError("needs a GPU")
```

<!-- skip: start if(not has("physscale_no_such_extra"), reason="needs the extra") -->
```python
import physscale_no_such_extra
```
<!-- skip: end -->

```python
assert value == 42  # the blocks of one page share a namespace
open("written.txt", "w").close()  # in a temporary directory, not the checkout
```

```bash
exit 1  # not run
```
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the harness (the root conftest.py) with one docs page."""
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = docs\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(PAGE)
    return tmp_path


def outcomes(out: str) -> dict[int, str]:
    """Line of each block's item -> PASSED/SKIPPED/FAILED, from ``pytest -v`` output."""
    found = re.findall(r"page\.md::line:(\d+),column:1 (PASSED|SKIPPED|FAILED)", out)
    return {int(line): outcome for line, outcome in found}


def test_skip_directives_skip_and_the_rest_runs(project: Path) -> None:
    out = pytest_run(project, "-v", env={"PHYSSCALE_REQUIRE_EXTRAS": ""})
    blocks = outcomes(out)
    # Sybil reports a block under "skip: next" as passed without running it
    # (it raises if run); a conditional skip is reported as skipped, with its reason.
    assert {line: blocks.get(line) for line in (3, 8, 13, 18)} == {
        3: "PASSED",
        8: "PASSED",
        13: "SKIPPED",
        18: "PASSED",
    }, out
    assert "needs the extra" in out
    assert "RuntimeError" not in out
    assert 23 not in blocks  # the bash block is no test
    assert not (project / "written.txt").exists()
    assert not (project / "docs" / "written.txt").exists()


def test_a_missing_extra_is_an_error_when_extras_are_required(project: Path) -> None:
    out = pytest_run(project, "-v", env={"PHYSSCALE_REQUIRE_EXTRAS": "1"})
    assert "PHYSSCALE_REQUIRE_EXTRAS=1 but 'physscale_no_such_extra' is not installed" in out
    assert "SKIPPED" not in out


def test_a_failing_block_fails_the_run(project: Path) -> None:
    page = project / "docs" / "page.md"
    page.write_text(page.read_text().replace("value == 42", "value == 41"))
    out = pytest_run(project, "-v", env={"PHYSSCALE_REQUIRE_EXTRAS": ""})
    assert outcomes(out)[18] == "FAILED", out
    assert "AssertionError" in out
