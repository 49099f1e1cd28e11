"""Peak memory and speed of ``physscale derive`` on a large file, per format.

Writes a float32 stack of (n, 64, 64) patterns of about --gib GiB (default 2)
into a temporary folder as ``.npy``, ``.npz`` (stored and deflated) and HDF5,
writing chunk by chunk so this script itself stays small. Then, for each file,
a fresh child interpreter imports physscale, notes its resident memory
(VmRSS), runs the real command line (``physscale.cli.main(["derive", ...])``)
and reports the rise of its high-water mark (VmHWM) above that baseline (the
largest over --repeats runs), the median wall time, and the median time of a
plain 16 MiB-chunk read of the same file (the I/O floor). A last child
derives from ``np.load(mmap_mode="r")`` slices for comparison: every page a
memory map touches stays resident (and counts in RSS) until the kernel
evicts it.

The files are synced and read once before timing, so they are read from the
page cache, not the disk: the times measure physscale's work, not the drive.

``--formats`` may add ``npy-1pattern``: the same bytes as ONE pattern
(1 x N x M float32), which ``physscale derive`` reads and sums in pieces of
16 MiB, so its memory stays bounded by the piece, not the pattern.

``--baseline-src DIR`` also runs every ``physscale derive`` row with another
physscale source tree first on ``PYTHONPATH`` (e.g. a checkout of the previous
release's ``src``), interleaved with this one on the same files, and prints
both with their ratio.

Run: python benchmarks/bench_streaming.py [--gib 2] [--repeats 3]
     [--formats npy,npz,npz-deflate,hdf5[,npy-1pattern]] [--baseline-src DIR]
Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

N = 64
NPHOTONS = 1e6
BLOCK_PATTERNS = 1024  # patterns generated and written at a time (16 MiB)

CHILD = r"""
import json, sys, time, io, contextlib
def kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
mode, path, key = sys.argv[1], sys.argv[2], sys.argv[3]
import numpy as np
import physscale
from physscale.cli import main
base = kib("VmRSS")
start = time.perf_counter()
if mode == "cli":
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--quiet", "derive", path, "--key", key, "--nphotons", "1e6", "--json"])
    assert code == 0, code
    record = json.loads(out.getvalue())
    result = {"scale": record["intensity_scale"], "n_patterns": record["n_patterns"]}
elif mode == "read":
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass
    result = {}
elif mode == "mmap":
    x = np.load(path, mmap_mode="r")
    acc = physscale.IntensityAccumulator()
    for i in range(0, x.shape[0], 1024):
        acc.update(x[i : i + 1024])
    result = {"scale": float(acc.intensity_scale(1e6)), "n_patterns": acc.n_patterns}
seconds = time.perf_counter() - start
print(json.dumps({**result, "seconds": seconds, "peak_extra_mib": (kib("VmHWM") - base) / 1024}))
"""


def _blocks(n_patterns: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Yield float32 blocks of (k, N, N) and the float64 sum of their squares."""
    rng = np.random.default_rng(seed)
    template = rng.gamma(2.0, 0.5, size=(BLOCK_PATTERNS, N, N)).astype(np.float32)
    for start in range(0, n_patterns, BLOCK_PATTERNS):
        k = min(BLOCK_PATTERNS, n_patterns - start)
        block = template[:k] * np.float32(1.0 + (start // BLOCK_PATTERNS % 7) / 10)
        yield block, float(np.sum(np.square(block, dtype=np.float64)))


def _npy_header(n: int, one_pattern: bool = False) -> bytes:
    import io

    shape = (1, n * N // 64, 64 * N) if one_pattern else (n, N, N)
    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def write_files(folder: Path, n: int, formats: list[str]) -> tuple[dict[str, Path], float]:
    """Write the requested formats; return their paths and the exact total of x**2."""
    paths: dict[str, Path] = {}
    sinks = []
    if "npy" in formats:
        paths["npy"] = folder / "big.npy"
        f = open(paths["npy"], "wb")  # noqa: SIM115 - closed below
        f.write(_npy_header(n))
        sinks.append(f)
    if "npy-1pattern" in formats:
        # The same values as one (1, n * N / 64, 64 * N) pattern: one entry of n * N * N floats.
        paths["npy-1pattern"] = folder / "one-pattern.npy"
        f = open(paths["npy-1pattern"], "wb")  # noqa: SIM115 - closed below
        f.write(_npy_header(n, one_pattern=True))
        sinks.append(f)
    zips = []
    for fmt, compression in (("npz", zipfile.ZIP_STORED), ("npz-deflate", zipfile.ZIP_DEFLATED)):
        if fmt in formats:
            paths[fmt] = folder / f"{fmt}.npz"
            zf = zipfile.ZipFile(paths[fmt], "w", compression=compression, compresslevel=1)
            member = zf.open("diffraction.npy", "w", force_zip64=True)
            member.write(_npy_header(n))
            sinks.append(member)
            zips.append(zf)
    h5 = None
    if "hdf5" in formats:
        import h5py

        paths["hdf5"] = folder / "big.h5"
        h5 = h5py.File(paths["hdf5"], "w")
        dset = h5.create_dataset("diffraction", shape=(n, N, N), dtype="<f4", chunks=(64, N, N))
    partials: list[float] = []
    start = 0
    for block, total in _blocks(n):
        raw = block.tobytes()
        for sink in sinks:
            sink.write(raw)
        if h5 is not None:
            dset[start : start + len(block)] = block
        start += len(block)
        partials.append(total)
    for sink in sinks:
        sink.close()
    for zf in zips:
        zf.close()
    if h5 is not None:
        h5.close()
    return paths, math.fsum(partials)


def child(
    mode: str, path: Path, key: str = "diffraction", src: Path | None = None
) -> dict[str, float]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path), key],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="data size in GiB")
    parser.add_argument("--formats", default="npy,npz,npz-deflate,hdf5")
    parser.add_argument("--repeats", type=int, default=3, help="child runs per format")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the files")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another physscale src/ to time interleaved (e.g. the last release)",
    )
    args = parser.parse_args()
    formats = args.formats.split(",")
    n = int(args.gib * 2**30 // (N * N * 4))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        paths, total = write_files(Path(tmp), n, formats)
        # Let writeback finish and warm the page cache, so no format pays for
        # the others' disk traffic.
        os.sync()
        for path in paths.values():
            child("read", path)
        expected = math.sqrt(NPHOTONS * n / total)
        gib = n * N * N * 4 / 2**30
        print(f"data: {n} patterns of {N}x{N} float32 = {gib:.2f} GiB; nphotons {NPHOTONS:g}")
        print(f"{'format':<19} {'file GiB':>8} {'peak extra MiB':>15} {'derive s':>9} "
              f"{'read s':>7} {'derive/read':>11} {'GiB/s':>6} {'rel. error':>10}")  # fmt: skip
        rows: list[tuple[str, str, Path, Path | None]] = []
        for fmt, path in paths.items():
            rows.append((fmt, "cli", path, None))
            if args.baseline_src is not None:
                rows.append((f"{fmt} (base)", "cli", path, args.baseline_src))
        if "npy" in paths:
            rows.insert(1, ("npy (mmap)", "mmap", paths["npy"], None))
        # Round-robin over the rows, after one throwaway pass, so a slow phase
        # of the machine (writeback, other jobs) does not land on one format.
        for _, mode, path, src in rows:
            child(mode, path, src=src)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _, _ in rows}
        floors: dict[str, list[float]] = {name: [] for name, _, _, _ in rows}
        for _ in range(args.repeats):
            for name, mode, path, src in rows:
                runs[name].append(child(mode, path, src=src))
                floors[name].append(child("read", path)["seconds"])
        base_seconds: dict[str, float] = {}
        for name, _, path, _ in rows:
            # One pattern holds every value: its mean per-pattern sum is the total.
            patterns = 1 if name.startswith("npy-1pattern") else n
            assert all(r["n_patterns"] == patterns for r in runs[name]), runs[name]
            res = {
                "scale": runs[name][0]["scale"],
                "seconds": statistics.median(r["seconds"] for r in runs[name]),
                "peak_extra_mib": max(r["peak_extra_mib"] for r in runs[name]),
            }
            floor = statistics.median(floors[name])
            want = expected if patterns == n else math.sqrt(NPHOTONS / total)
            err = abs(res["scale"] - want) / want
            base_seconds[name] = res["seconds"]
            versus = ""
            if name.endswith(" (base)") and name[: -len(" (base)")] in base_seconds:
                versus = f"   new/base {base_seconds[name[: -len(' (base)')]] / res['seconds']:.2f}"
            print(
                f"{name:<19} {path.stat().st_size / 2**30:>8.2f} {res['peak_extra_mib']:>15.1f} "
                f"{res['seconds']:>9.2f} {floor:>7.2f} {res['seconds'] / floor:>11.1f} "
                f"{gib / res['seconds']:>6.2f} {err:>10.1e}{versus}"
            )


if __name__ == "__main__":
    main()
