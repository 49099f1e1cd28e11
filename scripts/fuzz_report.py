"""Print the figures table of the hostile-file campaign (issue 11).

Runs every suite of ``tests/fuzz`` (each in its own child interpreter, two at
a time) and prints, per category: cases, clean errors, correct results,
unclean outcomes, hangs, memory blowups, code executions, data lost, and the
worst peak memory over baseline. Then every case that was not a clean error
or a correct result, if any.

Run: python scripts/fuzz_report.py [--profile ci|long] [--suites npy,npz,...]
The suites import the physscale on ``sys.path``: with ``PYTHONPATH`` set to
another source tree (say 0.1.0's ``src``) they measure that one.
Linux only (memory is measured through /proc).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzz._harness import format_table, run_suite, summarize
from fuzz._suites import SUITES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("ci", "long"), default="ci")
    parser.add_argument("--suites", default=",".join(SUITES))
    parser.add_argument("--jobs", type=int, default=2, help="suites run at once")
    args = parser.parse_args()
    suites = args.suites.split(",")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda s: run_suite(s, args.profile, Path(tmp), 6 * 3600.0), suites))
        live = Path(tmp) / "exploits" / "exploits-live-under-np.load.txt"
        live_count = live.read_text() if live.exists() else "?"
    records = [r for run in runs for r in run]
    print(f"profile {args.profile}: {len(records)} cases in {time.perf_counter() - start:.0f} s")
    print(format_table(summarize(records)))
    print(f"\nexploit pickles that run code under np.load(allow_pickle=True): {live_count} of 17")
    kills = [r for r in records if r["category"].startswith("writes: killed")]
    mid = sum("killed mid-write" in r["detail"] for r in kills)
    print(f"killed writes that left a temporary file: {mid} of {len(kills)}, each removed by the "
          "next write to the same target")  # fmt: skip
    bad = [r for r in records if r["kind"] not in ("ok", "clean")]
    for r in bad:
        print(f"{r['kind']:8} {r['category']}: {r['case']}: {r['detail']}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
