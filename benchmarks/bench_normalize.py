"""Benchmark physscale.io.normalize_files against one read of its input (issue 19).

Writes counts of about --mib MiB (uint32 with Eiger markers, 256 x 256 frames)
as a ``.npy`` and as an HDF5 file compressed with bitshuffle/LZ4 (when
hdf5plugin is installed; gzip otherwise), then, interleaved round after
round in this one process:

- ``read``: one streaming read of the input (``pattern_source(...).chunks()``),
  the floor: normalize reads it twice (two passes), computes and writes;
- ``normalize``: ``normalize_files(input, out)`` to an ``.npz`` in the same folder;
- ``read+write``: one read of the input plus writing as many float32 bytes
  (the output's size) atomically into a zip in the same folder, stored and
  fsynced as normalize does: the floor of any front door that writes its output.

Prints the medians of the per-round ratios normalize / read and normalize /
(read+write), and the extra
peak memory of one normalize (tracemalloc: numpy's and Python's allocations,
over the start). The last line is one JSON object with the figures.

Run: python benchmarks/bench_normalize.py [--mib M] [--repeats R] [--dir DIR]
Defaults: 512 MiB, 3 repeats, a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

from physscale.io import normalize_files
from physscale.io.readers import pattern_source


def _write(folder: Path, mib: int) -> dict[str, Path]:
    h = w = 256
    n = max(1, mib * 2**20 // (h * w * 4))
    rng = np.random.default_rng(0)
    frame_rate = rng.gamma(0.5, 40.0, size=(h, w))
    counts = np.empty((n, h, w), np.uint32)
    for i in range(0, n, 64):
        k = min(64, n - i)
        counts[i : i + k] = rng.poisson(frame_rate, size=(k, h, w))
    counts[:, 127:129, :] = 2**32 - 1  # a module gap
    files = {"npy": folder / "counts.npy"}
    np.save(files["npy"], counts)
    try:
        import h5py

        try:
            import hdf5plugin

            comp: dict[str, object] = dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
            label = "hdf5 bitshuffle/lz4"
        except ImportError:
            comp, label = {"compression": "gzip", "compression_opts": 1}, "hdf5 gzip"
        path = folder / "counts.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("/entry/data/data", data=counts, chunks=(1, h, w), **comp)
        files[label] = path
    except ImportError:
        pass
    return files


def _read_once(path: Path, key: str) -> float:
    start = time.perf_counter()
    total = 0
    for chunk in pattern_source(path, key, counts=True).chunks():
        total += chunk.shape[0]
    return time.perf_counter() - start


def _read_write(path: Path, key: str, out: Path) -> float:
    from physscale.io.archive import member_info, new_archive

    start = time.perf_counter()
    with (
        new_archive(out) as zf,
        zf.open(member_info("diff3d.npy", compress=False), "w", force_zip64=True) as m,
    ):
        for chunk in pattern_source(path, key, counts=True).chunks():
            m.write(chunk.astype(np.float32).data)
    return time.perf_counter() - start


def _normalize(path: Path, key: str, out: Path) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        normalize_files(path, out, key=key or None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        files = _write(folder, args.mib)
        figures: dict[str, dict[str, float]] = {}
        for label, path in files.items():
            key = "" if path.suffix == ".npy" else "/entry/data/data"
            out = folder / "train.npz"
            _read_once(path, key)  # warm the page cache
            ratios, floor_ratios, reads, floors, norms = [], [], [], [], []
            for _ in range(args.repeats):
                r = _read_once(path, key)
                c = _read_write(path, key, folder / "floor.npz")
                t = _normalize(path, key, out)
                reads.append(r)
                floors.append(c)
                norms.append(t)
                ratios.append(t / r)
                floor_ratios.append(t / c)
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            _normalize(path, key, out)
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            size = path.stat().st_size / 2**20
            figures[label] = {
                "input_mib": round(size, 1),
                "read_s": round(statistics.median(reads), 3),
                "normalize_s": round(statistics.median(norms), 3),
                "read_write_s": round(statistics.median(floors), 3),
                "ratio": round(statistics.median(ratios), 2),
                "ratio_vs_read_write": round(statistics.median(floor_ratios), 2),
                "peak_extra_mib": round(peak / 2**20, 1),
            }
            f = figures[label]
            print(
                f"{label:22} {f['input_mib']:8.1f} MiB  read {f['read_s']:.3f} s  normalize "
                f"{f['normalize_s']:.3f} s  read+write {f['read_write_s']:.3f} s  ratio "
                f"{f['ratio']:.2f}x read, {f['ratio_vs_read_write']:.2f}x read+write  peak "
                f"+{f['peak_extra_mib']} MiB"
            )
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
