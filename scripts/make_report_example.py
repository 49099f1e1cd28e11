"""Regenerate ``docs/assets/report-example.png``, the report figure shown in the docs.

Builds the stand-in run of docs/preparing-data.md (three ``.npz`` files of
normalized amplitudes with nphotons in their metadata, a three-frame beam dump
in the middle file) in a temporary folder and draws its report with
``physscale.report.plot_report(derive_files(..., details=True), path)``. Needs the
``plot`` extra.

Run from the repository root: ``python scripts/make_report_example.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from physscale.io import derive_files, write_metadata
from physscale.report import plot_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/assets/report-example.png"))
    args = parser.parse_args()
    out = args.out.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # relative names, as in the docs
        rng = np.random.default_rng(7)
        for i in range(3):
            x = rng.gamma(4.0, 0.25, size=(100, 32, 32)).astype(np.float32)
            if i == 1:
                x[40:43] *= 0.03  # the beam dumped for three frames
            write_metadata(
                f"scan_{i:02d}.npz", {"physics_parameters": {"nphotons": 1e6}}, diffraction=x
            )
        derived = derive_files("scan_*.npz", details=True)
        plot_report(derived, out)
    record = derived.record
    assert record.pattern_stats is not None
    print(f"wrote {out} ({record.pattern_stats.flagged_count} flagged frames)")


if __name__ == "__main__":
    main()
