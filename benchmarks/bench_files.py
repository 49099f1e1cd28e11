"""Many files, one scale: ``physscale.io.derive_files`` over a whole dataset.

Generates (never commits) --files files of (k, 64, 64) float32 patterns
totalling at least --gib GiB in a temporary folder (default: under /tmp;
deleted at the end), then times, in fresh child interpreters and in a random
order every round (medians and per-round ratios over --repeats rounds):

- ``derive_files`` with and without diagnostics (per-pattern totals), and with
  --workers files read at a time;
- the fastest plain reader of the same bytes for the format, side by side:
  ``np.load`` of each file, and ``readinto`` of 16 MiB pieces into one buffer
  (the faster of the two is the floor);

and reports each child's peak extra memory (its VmHWM above its VmRSS after
the imports). The files are read once before timing, so they come from the
page cache: the times measure physscale's work, not the drive.

Then --tiny tiny files (one 8 x 8 pattern each): ``derive_files`` over all of
them in a child whose open-file limit is 64, the record's JSON size and the
files per second.

The load average is printed before and after (the machine is shared). The
last line is one JSON object with every figure.

Run: python benchmarks/bench_files.py [--gib 2] [--files 100] [--format npy|npz|hdf5]
     [--repeats 5] [--workers 1,2] [--tiny 10000] [--dir /tmp]
Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N = 64
NPHOTONS = 1e6

CHILD = r"""
import json, os, sys, time, resource
def kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
mode, folder, fmt = sys.argv[1], sys.argv[2], sys.argv[3]
workers = int(sys.argv[4])
nofile = int(sys.argv[5])
if nofile:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
import numpy as np
import physscale
from physscale.io import derive_files
paths = sorted(os.path.join(folder, p) for p in os.listdir(folder))
base = kib("VmRSS")
start = time.perf_counter()
result = {}
if mode.startswith("derive"):
    record = derive_files(folder, nphotons=1e6, diagnostics=mode == "derive-diag",
                          workers=workers)
    result = {"scale": record.intensity_scale, "n_patterns": record.n_patterns,
              "record_json_bytes": len(record.model_dump_json()),
              "n_files": record.sources.n_files}
elif mode == "np.load":
    if fmt == "npz":
        for p in paths:
            with np.load(p) as data:
                data["diffraction"]
    elif fmt == "hdf5":
        import h5py
        for p in paths:
            with h5py.File(p, "r") as f:
                f["diffraction"][()]
    else:
        for p in paths:
            np.load(p)
elif mode == "readinto":
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
seconds = time.perf_counter() - start
print(json.dumps({**result, "seconds": seconds, "peak_extra_mib": (kib("VmHWM") - base) / 1024}))
"""


def child(mode: str, folder: Path, fmt: str, workers: int = 1, nofile: int = 0) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(folder), fmt, str(workers), str(nofile)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def write_dataset(folder: Path, n_files: int, gib: float, fmt: str) -> tuple[int, float]:
    """Write the files; return the number of patterns and the exact total of x**2."""
    per_file = math.ceil(gib * 2**30 / (n_files * N * N * 4))
    rng = np.random.default_rng(0)
    template = rng.gamma(2.0, 0.5, size=(per_file, N, N)).astype(np.float32)
    partials = []
    for i in range(n_files):
        x = template * np.float32(1.0 + (i % 7) / 10)
        partials.append(float(np.sum(np.square(x, dtype=np.float64))))
        path = folder / f"scan_{i:04d}.{'h5' if fmt == 'hdf5' else fmt}"
        if fmt == "npy":
            np.save(path, x)
        elif fmt == "npz":
            np.savez(path, diffraction=x)  # stored, as beamline .npz files usually are
        else:
            import h5py

            with h5py.File(path, "w") as f:
                f.create_dataset("diffraction", data=x, chunks=(64, N, N))
    return per_file * n_files, math.fsum(partials)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="total data size in GiB")
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--format", choices=("npy", "npz", "hdf5"), default="npy")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every mode")
    parser.add_argument("--workers", default="1,2", help="files read at a time, e.g. 1,2")
    parser.add_argument("--tiny", type=int, default=10_000, help="tiny files (0: skip)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    need = args.gib * 2**30 * 1.1
    free = shutil.disk_usage(args.dir).free
    if free < need:
        raise SystemExit(f"{args.dir} has {free / 2**30:.1f} GiB free; {need / 2**30:.1f} needed")
    summary: dict[str, object] = {"load_before": load(), "format": args.format}
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="physscale-bench-files-") as tmp:
        folder = Path(tmp) / "run"
        folder.mkdir()
        n, total = write_dataset(folder, args.files, args.gib, args.format)
        size = sum(p.stat().st_size for p in folder.iterdir())
        expected = math.sqrt(NPHOTONS * n / total)
        print(f"data: {args.files} {args.format} files, {n} patterns of {N}x{N} float32, "
              f"{size / 2**30:.2f} GiB on disk; load {summary['load_before']}")  # fmt: skip
        os.sync()
        child("readinto", folder, args.format)  # into the page cache
        modes = {"np.load": ("np.load", 1), "readinto": ("readinto", 1)}
        for w in workers:
            modes[f"derive w{w}"] = ("derive", w)
            modes[f"derive+diag w{w}"] = ("derive-diag", w)
        for mode, w in modes.values():  # one throwaway round
            child(mode, folder, args.format, w)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
        rng = random.Random(0)
        for _ in range(args.repeats):
            order = list(modes)
            rng.shuffle(order)
            for name in order:
                mode, w = modes[name]
                runs[name].append(child(mode, folder, args.format, w))
        seconds = {name: [r["seconds"] for r in rs] for name, rs in runs.items()}
        # The floor: per round, the faster plain reader.
        floor = [min(a, b) for a, b in zip(seconds["np.load"], seconds["readinto"], strict=True)]
        gib = size / 2**30
        print(f"{'mode':<16} {'median s':>9} {'GiB/s':>6} {'vs floor':>9} "
              f"{'peak extra MiB':>15} {'rel. error':>10}")  # fmt: skip
        table = {}
        for name, rs in runs.items():
            med = statistics.median(seconds[name])
            ratio = statistics.median(s / f for s, f in zip(seconds[name], floor, strict=True))
            peak = max(r["peak_extra_mib"] for r in rs)
            err = abs(rs[0]["scale"] - expected) / expected if "scale" in rs[0] else None
            table[name] = {"median_s": round(med, 4), "vs_floor": round(ratio, 3),
                           "peak_extra_mib": round(peak, 1), "rel_error": err}  # fmt: skip
            print(f"{name:<16} {med:>9.3f} {gib / med:>6.2f} {ratio:>9.2f} {peak:>15.1f} "
                  f"{'' if err is None else f'{err:.1e}':>10}")  # fmt: skip
        summary["files"] = {"n_files": args.files, "gib": round(gib, 3), "n_patterns": n,
                            "repeats": args.repeats, "modes": table}  # fmt: skip
        if args.tiny:
            tiny = Path(tmp) / "tiny"
            tiny.mkdir()
            x = np.full((1, 8, 8), 0.5, np.float32)
            for i in range(args.tiny):
                np.save(tiny / f"t{i:06d}.npy", x * np.float32(1 + i % 5))
            child("readinto", tiny, "npy")
            start = time.perf_counter()
            r = child("derive-diag", tiny, "npy", 2, nofile=64)
            wall = time.perf_counter() - start
            assert r["n_files"] == args.tiny and r["n_patterns"] == args.tiny, r
            print(
                f"tiny: {args.tiny} files under an open-file limit of 64: {r['seconds']:.2f} s "
                f"({args.tiny / r['seconds']:.0f} files/s; child wall {wall:.2f} s), record "
                f"JSON {r['record_json_bytes']} bytes, peak extra {r['peak_extra_mib']:.1f} MiB"
            )
            summary["tiny"] = {"n_files": args.tiny, "seconds": round(r["seconds"], 3),
                               "record_json_bytes": r["record_json_bytes"],
                               "peak_extra_mib": round(r["peak_extra_mib"], 1)}  # fmt: skip
    summary["load_after"] = load()
    print(f"load average before {summary['load_before']}, after {summary['load_after']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
