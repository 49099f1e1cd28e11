"""Hostile files and faults (issue 11): every input gives a clean error or a correct result.

Each suite of ``_suites.py`` runs in its own child interpreter (two at a
time), under a memory limit (256 MiB over the case's starting memory,
measured per case) and a time limit per case; see ``_harness.py``. A case
passes when physscale raises a ``PhysscaleError`` (the CLI: exit 1 and one
line) or returns what numpy, h5py or torch read independently, within both
limits, with no code from the file run and no data lost.

``python -m pytest tests/fuzz`` runs the CI profile (a couple of minutes);
``PHYSSCALE_FUZZ=long python -m pytest tests/fuzz`` runs thirty times the
mutations. ``python scripts/fuzz_report.py`` prints the figures table.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fuzz._harness import run_suite, summarize
from fuzz._suites import SUITES

PROFILE = os.environ.get("PHYSSCALE_FUZZ", "ci")
NEEDS_H5PY = {"hdf5", "hostile", "detector"}

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="measures memory through /proc (Linux)"
)


def _runnable() -> list[str]:
    has_h5py = importlib.util.find_spec("h5py") is not None
    return [s for s in SUITES if has_h5py or s not in NEEDS_H5PY]


@pytest.fixture(scope="session")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    if PROFILE not in ("ci", "long"):
        pytest.fail(f"PHYSSCALE_FUZZ must be 'ci' or 'long', got {PROFILE!r}")
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    suites = _runnable()
    timeout = 900.0 if PROFILE == "ci" else 6 * 3600.0
    with ThreadPoolExecutor(2) as pool:
        done = pool.map(lambda s: run_suite(s, PROFILE, workdir, timeout), suites)
        return dict(zip(suites, done, strict=True))


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_case_is_a_clean_error_or_a_correct_result(
    records: dict[str, list[dict[str, Any]]], suite: str
) -> None:
    if suite not in records:
        pytest.skip("needs h5py (the hdf5 extra)")
    cases = records[suite]
    assert cases, "the suite ran no case"
    bad = [r for r in cases if r["kind"] not in ("ok", "clean")]
    report = "\n".join(
        f"{r['kind']:8} {r['peak_mib']:7.1f} MiB {r['seconds']:7.2f} s  {r['case']}: {r['detail']}"
        for r in bad[:40]
    )
    assert not bad, f"{len(bad)} of {len(cases)} cases failed:\n{report}"
    for category, row in summarize(cases).items():
        assert row["cases"] == row["ok"] + row["clean"], category
