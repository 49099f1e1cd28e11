"""One fuzz suite in this interpreter: ``python _worker.py SUITE PROFILE OUT.jsonl WORKDIR``.

Started by :func:`fuzz._harness.run_suite`; writes one JSON line per case to OUT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for `fuzz`
    # Everything the cases use is imported before the address-space cap is set.
    import torch  # noqa: F401

    import physscale.io.bundle  # noqa: F401
    from fuzz import _harness, _suites

    suite, profile, out, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    folder = workdir / suite
    folder.mkdir(parents=True, exist_ok=True)
    _harness.limit_address_space()
    with open(out, "a") as sink:

        def emit(case: _harness.Case) -> None:
            sink.write(json.dumps({"start": case.name, "category": case.category}) + "\n")
            sink.flush()
            sink.write(json.dumps(_harness.measure(case)) + "\n")
            sink.flush()

        _suites.SUITES[suite](profile, folder, emit)


if __name__ == "__main__":
    main()
