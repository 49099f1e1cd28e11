"""Run hostile-file cases in child interpreters, each under a memory and a time limit.

A suite (see ``_worker.py``) runs in one child interpreter, so torch is
imported once for hundreds of cases. Each case is one call of physscale on
one file; the worker measures it and writes one JSON line per case:

- **memory**: the rise of the child's peak resident memory (``VmHWM``, reset
  before each case through ``/proc/self/clear_refs``) above its resident
  memory when the case starts; more than :data:`MEMORY_LIMIT_MIB` is a
  blowup. ``RLIMIT_AS`` caps the child's address space as a safety net (an
  allocation beyond it is a ``MemoryError``: also a blowup).
- **time**: a ``SIGALRM`` timer interrupts a case that runs past its limit (a
  hang); the parent kills a worker that stops answering.

Each case ends in exactly one of these kinds, the columns of the figures table:

``ok``       a correct result (checked against an independent reader)
``clean``    a :class:`physscale.PhysscaleError` (for the CLI: exit 1, one line)
``unclean``  any other exception, a wrong result, or a CLI message breaking the rules
``hang``     ran past its time limit
``memory``   used more than the memory limit
``exec``     code from the file ran (a marker file appeared)
``lost``     a write lost data (a target neither old nor new, an update missing)
"""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A case may use this much memory above its starting resident memory (MiB).
MEMORY_LIMIT_MIB = 256
#: The child's address space may grow this far beyond its size after imports.
ADDRESS_SPACE_HEADROOM = 3 << 30

KINDS = ("ok", "clean", "unclean", "hang", "memory", "exec", "lost")
HERE = Path(__file__).resolve().parent


class CaseTimeout(BaseException):
    """Raised by the alarm in a case that runs too long.

    A BaseException, so library code that catches ``Exception`` lets it pass.
    """


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def limit_address_space() -> None:
    """Cap this process's address space a little above what it uses now."""
    size = _status_kib("VmSize") * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + ADDRESS_SPACE_HEADROOM, resource.RLIM_INFINITY))


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


@dataclass
class Case:
    """One call to measure.

    ``run`` returns a short description of a correct result, or raises:
    AssertionError for a wrong result (unclean), ``Lost`` for lost data.
    ``markers`` are files whose appearance means code from the file ran.
    """

    category: str
    name: str
    run: Callable[[], str]
    seconds: float = 20.0
    markers: tuple[Path, ...] = ()
    expect: str | None = None  # "ok" or "clean" when one outcome is required


class Lost(Exception):  # noqa: N818 - an outcome kind, named as the table's column
    """A write lost data."""


def measure(case: Case) -> dict[str, Any]:
    """Run one case under the time limit; classify it and measure its memory."""
    from physscale import PhysscaleError

    gc.collect(0)  # a full collection costs ~0.1 s with torch loaded
    _reset_peak()
    base = _status_kib("VmRSS")
    kind, detail = "ok", ""
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, case.seconds)
    try:
        detail = case.run()
        if detail.startswith("clean:"):  # a CLI run that failed as it should (exit 1)
            kind = "clean"
    except CaseTimeout:
        kind, detail = "hang", f"ran past {case.seconds} s"
    except MemoryError:
        kind, detail = "memory", "MemoryError"
    except PhysscaleError as exc:
        kind, detail = "clean", f"{type(exc).__name__}: {str(exc)[:300]}"
    except Lost as exc:
        kind, detail = "lost", str(exc)[:300]
    except AssertionError as exc:
        kind, detail = "unclean", f"wrong result: {str(exc)[:300]}"
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        kind, detail = "unclean", f"{type(exc).__name__} at {where}: {str(exc)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    seconds = time.perf_counter() - start
    peak = (_status_kib("VmHWM") - base) / 1024
    if kind in ("ok", "clean", "unclean") and peak > MEMORY_LIMIT_MIB:
        kind, detail = "memory", f"peak {peak:.0f} MiB over baseline ({detail[:120]})"
    if any(m.exists() for m in case.markers):
        kind, detail = "exec", f"a marker appeared ({detail[:120]})"
    if case.expect is not None and kind in ("ok", "clean") and kind != case.expect:
        kind, detail = "unclean", f"expected {case.expect}, got {kind}: {detail[:200]}"
    return {
        "category": case.category,
        "case": case.name,
        "kind": kind,
        "detail": detail,
        "peak_mib": round(peak, 1),
        "seconds": round(seconds, 3),
    }


def run_cases(cases: Iterable[Case], out: Path) -> None:
    """Measure each case and append its JSON line to ``out`` (flushed: survives a crash)."""
    with open(out, "a") as f:
        for case in cases:
            f.write(json.dumps({"start": case.name, "category": case.category}) + "\n")
            f.flush()
            f.write(json.dumps(measure(case)) + "\n")
            f.flush()


def run_suite(
    suite: str, profile: str, workdir: Path, timeout: float = 900.0
) -> list[dict[str, Any]]:
    """Run one suite of ``_worker.py`` in a child interpreter; return its case records.

    A worker that crashes (a signal such as SIGBUS) or stops answering is
    recorded as one unclean (or hang) case, the one it was running.
    """
    out = workdir / f"{suite}.jsonl"
    out.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, str(HERE / "_worker.py"), suite, profile, str(out), str(workdir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        status, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        status, stderr = None, str(exc.stderr or "")
    records: list[dict[str, Any]] = []
    started: dict[str, Any] | None = None
    if out.exists():
        for line in out.read_text().splitlines():
            item = json.loads(line)
            if "start" in item:
                started = item
            else:
                records.append(item)
                started = None
    if started is not None:
        kind = "hang" if status is None else "unclean"
        records.append({
            "category": started["category"], "case": started["start"], "kind": kind,
            "detail": f"the worker died (status {status}): {stderr[-300:]}",
            "peak_mib": 0.0, "seconds": 0.0,
        })  # fmt: skip
    elif status != 0:
        records.append({
            "category": suite, "case": "<worker>", "kind": "unclean",
            "detail": f"the worker failed (status {status}): {stderr[-1500:]}",
            "peak_mib": 0.0, "seconds": 0.0,
        })  # fmt: skip
    return records


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per category: cases, the count of each kind, the worst peak memory and its case."""
    table: dict[str, dict[str, Any]] = {}
    for r in records:
        row = table.setdefault(
            r["category"], {"cases": 0, **dict.fromkeys(KINDS, 0), "peak_mib": 0.0, "worst": ""}
        )
        row["cases"] += 1
        row[r["kind"]] += 1
        if r["peak_mib"] > row["peak_mib"]:
            row["peak_mib"], row["worst"] = r["peak_mib"], r["case"]
    return table


def format_table(table: dict[str, dict[str, Any]]) -> str:
    """The figures table in the campaign's form (Markdown)."""
    head = (
        "| category | cases | clean errors | correct results | unclean | hangs | memory blowups "
        "| code executions | data lost | peak MiB over baseline (worst case) |"
    )
    lines = [head, "|" + "---|" * 10]
    total = dict.fromkeys(("cases", *KINDS), 0)
    worst = (0.0, "")
    for name, row in table.items():
        lines.append(
            f"| {name} | {row['cases']} | {row['clean']} | {row['ok']} | {row['unclean']} | "
            f"{row['hang']} | {row['memory']} | {row['exec']} | {row['lost']} | "
            f"{row['peak_mib']:.1f} ({row['worst']}) |"
        )
        for k in total:
            total[k] += row[k]
        worst = max(worst, (row["peak_mib"], row["worst"]))
    lines.append(
        f"| **total** | {total['cases']} | {total['clean']} | {total['ok']} | {total['unclean']} | "
        f"{total['hang']} | {total['memory']} | {total['exec']} | {total['lost']} | "
        f"{worst[0]:.1f} ({worst[1]}) |"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------- helpers for unit tests
def run_python(
    code: str, timeout: float = 120.0, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (``python -c``)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def _child(fn: Callable[[], Any], conn: Any) -> None:
    try:
        fn()
        conn.send(("ok", ""))
    except BaseException as exc:
        conn.send((type(exc).__name__, str(exc)))


def call_with_timeout(fn: Callable[[], Any], seconds: float) -> tuple[str, str]:
    """Call ``fn`` in a forked child; ``("timeout", "")`` if it does not return in time.

    Returns ``(exception type name, message)``, or ``("ok", "")``.
    """
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, child))
    proc.start()
    child.close()
    try:
        if parent.poll(seconds):
            return parent.recv()  # type: ignore[no-any-return]
        return ("timeout", "")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.join(5)
