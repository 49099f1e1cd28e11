"""Many files, one scale: physscale.io.derive_files and ``physscale derive PATH...``.

The scale of many files is exactly the scale of all their patterns together
(an fsum reference over every file), whatever the order of the files; files
name themselves in every error; nothing is written to --out unless every
file was read; the record's account of the files stays small.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.cli import main
from physscale.io import derive_files, expand_paths, write_metadata
from physscale.io.dataset import data_sources, plan_files
from physscale.record import MAX_LISTED_FILES

h5py = pytest.importorskip("h5py")


def reference_scale(arrays: list[np.ndarray], nphotons: float) -> float:
    """sqrt(nphotons / mean per-pattern sum(x**2)) over every pattern of every array, fsum."""
    total = math.fsum(
        float(v) * float(v) for x in arrays for v in x.astype(np.float64).ravel().tolist()
    )
    n_patterns = sum(x.size // (x.shape[-1] * x.shape[-2]) for x in arrays)
    return math.sqrt(nphotons * n_patterns / total)


def write(
    path: Path, x: np.ndarray, nphotons: float | None = 1e6, key: str = "diffraction"
) -> Path:
    """Store ``x`` by the suffix of ``path``, with nphotons in its metadata (None: no metadata)."""
    meta = None if nphotons is None else {"physics_parameters": {"nphotons": nphotons}}
    if path.suffix == ".npy":
        np.save(path, x)
    elif path.suffix == ".npz":
        if meta is None:
            np.savez(path, **{key: x})
        else:
            write_metadata(path, meta, **{key: x})
    else:
        with h5py.File(path, "w") as f:
            f.create_dataset(key, data=x)
            if meta is not None:
                f.attrs["_metadata"] = json.dumps(meta)
    return path


def stack(seed: int, n: int = 6, shape: tuple[int, int] = (8, 8), dtype: Any = np.float32):
    return np.random.default_rng(seed).gamma(2.0, 0.5, size=(n, *shape)).astype(dtype)


@pytest.fixture
def run_dir(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """Four files in three formats and two dtypes, nphotons 1e6 in each file's metadata."""
    arrays = [stack(0), stack(1, n=3, dtype=np.float64), stack(2, n=9), stack(3, n=1)]
    names = ["a.npz", "b.h5", "c.npz", "d.h5"]
    for name, x in zip(names, arrays, strict=True):
        write(tmp_path / name, x)
    return tmp_path, arrays


def call(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------- exact, order-independent
def test_the_scale_of_many_files_is_the_fsum_scale_of_all_their_patterns(
    run_dir: tuple[Path, list[np.ndarray]],
) -> None:
    folder, arrays = run_dir
    record = derive_files(folder)
    assert record.intensity_scale == pytest.approx(reference_scale(arrays, 1e6), rel=1e-13)
    assert record.n_patterns == sum(x.shape[0] for x in arrays) == 19
    assert (record.nphotons, record.nphotons_source) == (1e6, "metadata")
    assert record.nphotons_candidates == {"metadata": 1e6}
    sources = record.sources
    assert sources is not None and sources.n_files == 4 and not sources.files_truncated
    assert [Path(f.path).name for f in sources.files] == ["a.npz", "b.h5", "c.npz", "d.h5"]
    assert [f.first_frame for f in sources.files] == [0, 6, 9, 18]
    assert [f.nphotons for f in sources.files] == [1e6] * 4
    assert record.data_source == f"4 files under {folder}"
    # The per-pattern totals: every pattern of every file, in file order.
    stats = record.pattern_stats
    assert stats is not None and stats.n_patterns == 19
    assert ps.ScaleRecord.model_validate_json(record.model_dump_json()) == record


@st.composite
def datasets(draw: st.DrawFn) -> tuple[list[np.ndarray], list[str], list[int]]:
    """2 to 5 files of any sizes, dtypes and formats, and a permutation of them."""
    n = draw(st.integers(2, 5))
    arrays, suffixes = [], []
    for i in range(n):
        rows = draw(st.integers(1, 7))
        dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
        scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
        x = np.random.default_rng(draw(st.integers(0, 2**32 - 1)) + i).random((rows, 3, 5))
        arrays.append((x * scale).astype(dtype))
        suffixes.append(draw(st.sampled_from([".npy", ".npz", ".h5"])))
    return arrays, suffixes, draw(st.permutations(range(n)))


@given(case=datasets())
def test_the_scale_does_not_depend_on_the_order_of_the_files(
    case: tuple[list[np.ndarray], list[str], list[int]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    arrays, suffixes, order = case
    folder = tmp_path_factory.mktemp("run")
    paths = [
        write(folder / f"f{i}{suffix}", x, nphotons=None)
        for i, (x, suffix) in enumerate(zip(arrays, suffixes, strict=True))
    ]
    given_order = derive_files(paths, nphotons=1e5, layout="NCHW", diagnostics=True)
    permuted = derive_files([paths[i] for i in order], nphotons=1e5, layout="NCHW")
    # Exactly the same scale (the merge is exact), and the fsum reference.
    assert permuted.intensity_scale == given_order.intensity_scale
    assert permuted.mean_intensity == given_order.mean_intensity
    assert given_order.intensity_scale == pytest.approx(reference_scale(arrays, 1e5), rel=1e-12)
    # The frame numbering follows the files in the order given.
    assert permuted.sources is not None
    assert [f.path for f in permuted.sources.files] == [str(paths[i]) for i in order]


def test_per_pattern_totals_follow_the_files_in_order(tmp_path: Path) -> None:
    from physscale.io.dataset import derive_plan, resolve_files

    arrays = [stack(5, n=2), stack(6, n=3), stack(7, n=1)]
    paths = [write(tmp_path / f"{i}.npz", x) for i, x in enumerate(arrays)]
    plan = plan_files([paths[2], paths[0], paths[1]])
    derived = derive_plan(plan, resolve_files(plan))
    expected = [
        math.fsum(float(v) ** 2 for v in frame.astype(np.float64).ravel())
        for x in (arrays[2], arrays[0], arrays[1])
        for frame in x
    ]
    assert derived.pattern_totals is not None
    assert derived.pattern_totals.tolist() == pytest.approx(expected, rel=1e-14)
    assert derived.file_of(0) == (str(paths[2]), 0)
    assert derived.file_of(3) == (str(paths[1]), 0)


def test_reading_files_concurrently_gives_the_same_record(
    run_dir: tuple[Path, list[np.ndarray]],
) -> None:
    folder, _ = run_dir
    one = derive_files(folder, workers=1)
    three = derive_files(folder, workers=3)
    assert three.intensity_scale == one.intensity_scale
    assert three.pattern_stats == one.pattern_stats
    assert three.sources == one.sources


def test_a_mask_applies_to_every_file(tmp_path: Path) -> None:
    arrays = [stack(8), stack(9, n=4)]
    paths = [write(tmp_path / f"{i}.npz", x) for i, x in enumerate(arrays)]
    keep = np.ones((8, 8), bool)
    keep[3:5, 3:5] = False
    np.save(tmp_path / "mask.npy", keep)
    for mask in (keep, tmp_path / "mask.npy"):
        record = derive_files(paths, mask=mask)
        expected = reference_scale([x * keep for x in arrays], 1e6)
        assert record.intensity_scale == pytest.approx(expected, rel=1e-13)
        assert record.masked and record.masked_pixel_fraction == pytest.approx(4 / 64)


# ----------------------------------------------------------------- nphotons per file
def test_files_that_disagree_on_nphotons_are_an_error_naming_them(tmp_path: Path) -> None:
    a = write(tmp_path / "a.npz", stack(0), nphotons=1e6)
    b = write(tmp_path / "b.npz", stack(1), nphotons=2e6)
    c = write(tmp_path / "c.h5", stack(2), nphotons=1e6)
    with pytest.raises(ps.errors.NphotonsError) as info:
        derive_files([a, b, c])
    message = str(info.value)
    assert "disagree" in message and "nphotons=" in message
    assert f"{a}, {c} say 1e+06" in message and f"{b} says 2e+06" in message
    # An explicit value overrides every file; the record shows what each file said.
    record = derive_files([a, b, c], nphotons=5e5)
    assert (record.nphotons, record.nphotons_source) == (5e5, "explicit")
    assert record.nphotons_candidates == {"explicit": 5e5}  # the files gave no single value
    assert record.sources is not None
    assert [f.nphotons for f in record.sources.files] == [1e6, 2e6, 1e6]
    counts = {(c.value, c.files) for c in record.sources.metadata_nphotons}
    assert counts == {(1e6, 2), (2e6, 1)}


def test_the_cli_names_the_disagreeing_files_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "a.npz", stack(0), nphotons=1e6)
    write(tmp_path / "b.npz", stack(1), nphotons=2e6)
    out = tmp_path / "record.json"
    code, stdout, err = call(capsys, "derive", tmp_path, "--out", out)
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "a.npz says 1e+06" in err and "b.npz says 2e+06" in err and "--nphotons N" in err
    assert not out.exists()
    code, stdout, err = call(capsys, "derive", tmp_path, "--nphotons", "3e6")
    assert code == 0, err
    assert "the files' metadata says 1e+06 (1 file), 2e+06 (1 file); overridden" in stdout


def test_a_file_without_nphotons_among_many_is_named(tmp_path: Path) -> None:
    a = write(tmp_path / "a.npz", stack(0), nphotons=1e6)
    b = write(tmp_path / "b.npy", stack(1))  # .npy holds no metadata
    with pytest.raises(
        ps.errors.NphotonsError, match=r"not known for 1 of the 2 files \(.*b\.npy\)"
    ):
        derive_files([a, b])
    record = derive_files([a, b], nphotons_default=1e6)
    # A default filled in for one file: the record says so.
    assert record.nphotons_source == "default"
    assert record.nphotons_candidates == {"metadata": 1e6, "default": 1e6}
    assert record.sources is not None and record.sources.files_without_nphotons == 1
    with pytest.raises(ps.errors.NphotonsError, match="disagree"):
        derive_files([a, b], nphotons_default=2e6)


# ----------------------------------------------------------------- bad input among many
def _good_files(folder: Path) -> list[Path]:
    return [write(folder / f"good{i}.npz", stack(i)) for i in range(3)]


def _truncated_npy(folder: Path) -> Path:
    path = write(folder / "cut.npy", stack(9))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)
    return path


def _truncated_npz(folder: Path) -> Path:
    path = write(folder / "cut.npz", stack(9))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage(folder: Path) -> Path:
    path = folder / "garbage.npz"
    path.write_bytes(b"not an archive at all" * 10)
    return path


def _wrong_key(folder: Path) -> Path:
    return write(folder / "other.h5", stack(9), key="data")


def _other_shape(folder: Path) -> Path:
    return write(folder / "big.npz", stack(9, shape=(16, 16)))


def _integers(folder: Path) -> Path:
    path = folder / "counts.npz"
    write_metadata(
        path, {"physics_parameters": {"nphotons": 1e6}}, diffraction=np.ones((2, 8, 8), np.int32)
    )
    return path


def _complex(folder: Path) -> Path:
    return write(folder / "field.npz", stack(9).astype(np.complex64))


def _dangling_link(folder: Path) -> Path:
    path = folder / "link.npz"
    path.symlink_to(folder / "gone.npz")
    return path


def _a_fifo(folder: Path) -> Path:
    path = folder / "pipe.npz"
    os.mkfifo(path)
    return path


BAD_FILES = {
    "truncated npy": (_truncated_npy, r"cut\.npy: truncated"),
    "truncated npz": (_truncated_npz, r"cut\.npz: not a readable \.npz"),
    "not a data file": (_garbage, r"garbage\.npz: not a \.npy, \.npz or HDF5 file"),
    "wrong key": (_wrong_key, r"other\.h5.*'diffraction'"),
    "mixed shapes": (_other_shape, r"big\.npz:diffraction: patterns of 16 x 16 .*good0\.npz"),
    "integer dtype": (_integers, r"counts\.npz:diffraction: patterns must be real floating"),
    "complex dtype": (_complex, r"field\.npz:diffraction: patterns must be real floating"),
    "dangling link": (_dangling_link, r"link\.npz: no such file"),
    "a FIFO": (_a_fifo, r"pipe\.npz: is a FIFO \(named pipe\), not a regular file"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_among_many_is_exit_1_naming_it_and_writes_no_record(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, pattern = BAD_FILES[case]
    good = _good_files(tmp_path)
    bad = make(tmp_path)
    out, plot = tmp_path / "record.json", tmp_path / "report.png"
    out.write_text("the previous record\n")
    code, stdout, err = call(capsys, "derive", good[0], good[1], bad, good[2],
                             "--out", out, "--plot", plot)  # fmt: skip
    assert code == 1, err
    assert stdout == "" and err.count("\n") == 1 and err.startswith("physscale: error: ")
    assert re.search(pattern, err), err
    assert out.read_text() == "the previous record\n" and not plot.exists()
    assert not list(tmp_path.glob(".*physscale-tmp*"))


def test_a_file_that_goes_bad_while_streaming_is_named_and_nothing_is_kept(
    tmp_path: Path,
) -> None:
    from physscale.io.dataset import derive_plan, resolve_files

    good = _good_files(tmp_path)
    late = write(tmp_path / "late.npy", stack(7))
    plan = plan_files([*good, late], nphotons=1e6)
    with open(late, "r+b") as f:  # truncated after it was checked
        f.truncate(late.stat().st_size - 20)
    for workers in (1, 2):
        with pytest.raises(ps.errors.DataFileError, match=r"late\.npy: truncated"):
            derive_plan(plan, resolve_files(plan), workers=workers)


def test_bad_data_inside_a_file_names_the_file(tmp_path: Path) -> None:
    x = stack(4)
    x[2, 3, 3] = np.nan
    paths = [*_good_files(tmp_path), write(tmp_path / "nan.npz", x)]
    with pytest.raises(ps.errors.NonFiniteError, match=r"nan\.npz:diffraction holds 1 NaN"):
        derive_files(paths, workers=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{d}/*.nothing"], r"'.*/\*\.nothing' matches no file"),
        (["{d}/empty"], r"empty: the directory holds no data files"),
        (["{d}/good0.npz", "{d}/good0.npz"], r"good0\.npz is given twice"),
        (["{d}/good*.npz", "{d}/good1.npz"], r"good1\.npz is given twice"),
        (["{d}", "--exclude-frames", "18"], r"frame indices must be in \[0, 18\)"),
        (["{d}", "--exclude-outliers", "--exclude-frames", "1"], "not allowed with"),
        (["{d}", "--exclude-frames", "3,x"], "expected frame indices such as 3,17,200-210"),
        (["{d}", "--plot", "{d}/r.png", "--no-diagnostics"], "--plot needs the per-pattern"),
        (["{d}", "--plot", "{d}/r.jpg"], r"written as \.png, \.pdf or \.svg"),
    ],
)
def test_usage_errors_with_many_files_are_exit_2_and_write_nothing(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _good_files(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not data")
    out = tmp_path / "record.json"
    code, stdout, err = call(capsys, "derive", *[a.format(d=tmp_path) for a in args], "--out", out)
    assert code == 2 and stdout == ""
    assert re.search(message, err), err
    assert not out.exists()


def test_a_glob_that_matches_nothing_is_exit_2_through_the_real_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "physscale", "derive", str(tmp_path / "scan_*.h5")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == f"physscale: error: '{tmp_path / 'scan_*.h5'}' matches no file\n"


# ----------------------------------------------------------------- which files count
def test_directories_globs_and_files_expand_by_the_documented_rule(tmp_path: Path) -> None:
    for name in ("b.npz", "a.NPY", "c.h5", "d.hdf5", "e.nxs", "f.cxi", "notes.txt", ".hidden.npz"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.npz").write_bytes(b"x")
    (tmp_path / "sub" / ".deep").mkdir()
    (tmp_path / "sub" / ".deep" / "y.npz").write_bytes(b"x")
    names = [p.name for p in expand_paths(tmp_path)]
    assert names == ["a.NPY", "b.npz", "c.h5", "d.hdf5", "e.nxs", "f.cxi"]
    deep = expand_paths(tmp_path, recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in deep] == [*names, "sub/z.npz"]
    # A glob: the files it matches, sorted, whatever their names; a matched directory
    # stands for its data files.
    assert [p.name for p in expand_paths(str(tmp_path / "[bn]*"))] == ["b.npz", "notes.txt"]
    assert [p.name for p in expand_paths(str(tmp_path / "s*"))] == ["z.npz"]
    recursive = expand_paths(str(tmp_path / "**" / "*.npz"), recursive=True)
    assert [p.name for p in recursive] == ["b.npz", "z.npz"]
    # Files given explicitly count whatever their name; entries keep the order given.
    assert expand_paths([tmp_path / "notes.txt", tmp_path / "b.npz"]) == [
        tmp_path / "notes.txt",
        tmp_path / "b.npz",
    ]
    # A missing file passes through: reading it says "no such file", naming it.
    assert expand_paths([tmp_path / "missing.npz"]) == [tmp_path / "missing.npz"]
    with pytest.raises(ps.errors.FileListError, match="no data files were given"):
        expand_paths([])


def test_a_file_named_twice_through_a_link_is_refused(tmp_path: Path) -> None:
    real = write(tmp_path / "real.npz", stack(0))
    (tmp_path / "alias.npz").symlink_to(real)
    with pytest.raises(ps.errors.FileListError, match="given twice"):
        expand_paths(tmp_path)


# ----------------------------------------------------------------- exclusion and the summary
def test_the_summary_shows_the_spread_the_flagged_frames_and_their_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arrays = [stack(i, n=10) + 1.0 for i in range(3)]
    arrays[1][4] *= 0.01  # a beam dump: frame 14, the fifth of the second file
    arrays[2][7] *= 4.0  # a hot frame: frame 27
    paths = [write(tmp_path / f"scan{i}.npz", x) for i, x in enumerate(arrays)]
    code, out, err = call(capsys, "derive", *paths)
    assert code == 0, err
    assert "patterns         30 of 8 x 8 pixels in 3 files" in out
    assert "per pattern      min " in out and " CV " in out
    assert "flagged          2 of 30 frames: 1 near zero, 2 far from the median" in out
    assert "14 (scan1.npz #4: " in out and "27 (scan2.npz #7: " in out
    assert "nothing was excluded" in out
    everything = reference_scale(arrays, 1e6)
    kept = [arrays[0], np.delete(arrays[1], 4, 0), np.delete(arrays[2], 7, 0)]
    expected_ratio = reference_scale(kept, 1e6) / everything
    assert f"without them s would move by x{expected_ratio:.6g}" in out
    # Excluding is explicit, and the record says what and why.
    for flags in (["--exclude-outliers"], ["--exclude-frames", "14,27"]):
        code, out, err = call(capsys, "derive", *paths, *flags, "--json")
        record = ps.ScaleRecord.model_validate_json(out)
        assert record.intensity_scale == pytest.approx(reference_scale(kept, 1e6), rel=1e-12)
        assert record.excluded_frames is not None and record.excluded_frames.frames == [14, 27]
        assert record.n_patterns == 28


def test_frame_ranges_exclude_exactly_those_frames(tmp_path: Path) -> None:
    arrays = [stack(i, n=8) for i in range(3)]
    paths = [write(tmp_path / f"{i}.npz", x) for i, x in enumerate(arrays)]
    from physscale.cli.parser import frame_list

    frames = frame_list("3,17,10-12,3")
    assert frames == [3, 10, 11, 12, 17]
    record = derive_files(paths, exclude=frames)
    everything = np.concatenate(arrays)
    kept = np.delete(everything, frames, 0)
    assert record.intensity_scale == pytest.approx(reference_scale([kept], 1e6), rel=1e-12)


def test_the_outlier_rule_is_tunable_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.ones((10, 4, 4), np.float32)
    x[3] *= 1.2  # 20 % brighter: far only with a tight threshold
    path = write(tmp_path / "a.npz", x)
    code, out, _ = call(capsys, "derive", path, "--json")
    stats = ps.ScaleRecord.model_validate_json(out).pattern_stats
    assert code == 0 and stats is not None and stats.flagged_count == 1
    code, out, _ = call(capsys, "derive", path, "--json", "--outlier-threshold", "500")
    stats = ps.ScaleRecord.model_validate_json(out).pattern_stats
    assert code == 0
    assert stats is not None and stats.flagged_count == 0 and stats.rule.threshold == 500


def test_without_diagnostics_the_record_has_no_stats_and_the_same_scale(
    run_dir: tuple[Path, list[np.ndarray]], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, arrays = run_dir
    code, out, _ = call(capsys, "derive", folder, "--no-diagnostics", "--json")
    assert code == 0
    record = ps.ScaleRecord.model_validate_json(out)
    assert record.pattern_stats is None
    assert record.intensity_scale == pytest.approx(reference_scale(arrays, 1e6), rel=1e-13)


# ----------------------------------------------------------------- bounded for many files
def test_the_record_stays_small_for_ten_thousand_files(tmp_path: Path) -> None:
    # The account of the files is built from the plan: 10,000 checked files are faked
    # here by repeating one real file's check under 10,000 names.
    from dataclasses import replace

    real = write(tmp_path / "one.npz", stack(0, n=2))
    plan = plan_files([real])
    template = plan.files[0]
    names = [tmp_path / f"scan_{i:05d}.npz" for i in range(10_000)]
    plan.files = [
        replace(template, path=p, sources=(replace(template.source, path=p),),
                metadata_nphotons=1e6 if i % 3 else 2e6)
        for i, p in enumerate(names)
    ]  # fmt: skip
    sources = data_sources(plan)
    assert sources.n_files == 10_000 and sources.files_truncated
    assert len(sources.files) == MAX_LISTED_FILES
    assert sources.files[-1].first_frame == 2 * (MAX_LISTED_FILES - 1)
    expected = hashlib.sha256("\n".join(sorted(map(str, names))).encode()).hexdigest()
    assert sources.paths_sha256 == expected
    assert {(c.value, c.files) for c in sources.metadata_nphotons} == {(1e6, 6666), (2e6, 3334)}
    record = ps.ScaleRecord(intensity_scale=1.0, nphotons=1.0, nphotons_source="explicit",
                            method="derived", n_patterns=20_000, pattern_shape=(8, 8),
                            mean_intensity=1.0, sources=sources)  # fmt: skip
    size = len(record.model_dump_json())
    assert size < 20_000, size
    assert ps.ScaleRecord.model_validate_json(record.model_dump_json()) == record


def test_the_record_refuses_an_inconsistent_account_of_the_files(tmp_path: Path) -> None:
    record = derive_files([write(tmp_path / f"{i}.npz", stack(i, n=2)) for i in range(2)])
    data = record.model_dump(mode="json")
    data["sources"]["files"][1]["first_frame"] = 5
    with pytest.raises(ValueError, match="starts at frame 5, expected 2"):
        ps.ScaleRecord.model_validate(data)
    data = record.model_dump(mode="json")
    data["n_patterns"] = 5
    data["pattern_stats"] = None
    with pytest.raises(ValueError, match="sources lists files of 4 patterns"):
        ps.ScaleRecord.model_validate(data)


def test_many_tiny_files_never_hold_more_than_a_few_handles(tmp_path: Path) -> None:
    # 300 files under a limit of 48 open descriptors (the interpreter and torch take
    # about 20): every file is opened, read and closed one at a time.
    for i in range(300):
        write(tmp_path / f"t{i:03d}.npy", np.full((1, 2, 2), 0.5 + i % 7, np.float32))
    code = f"""
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
from physscale.io import derive_files
r = derive_files({str(tmp_path)!r}, nphotons=1e4, workers=2)
print(r.n_patterns, r.sources.n_files)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["300", "300"]


def test_derive_with_no_path_still_runs_on_the_shipped_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = call(capsys, "derive", "--json")
    assert code == 0, err
    record = ps.ScaleRecord.model_validate_json(out)
    assert record.sources is not None and record.sources.n_files == 1
    assert record.data_source == str(ps.io.example_dataset_path())
    with np.load(ps.io.example_dataset_path()) as data:
        x = torch.from_numpy(data["diffraction"])
    assert record.intensity_scale == pytest.approx(
        reference_scale([x.numpy()], record.nphotons), rel=1e-13
    )


# ----------------------------------------------------------------- the library speaks Python
def test_library_errors_name_parameters_and_the_cli_names_its_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One message, two front ends: derive_files names its keywords, the command
    # line renders the same error's wording with its flags.
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    write(tmp_path / "empty" / "sub" / "a.npz", stack(0))
    bare = write(tmp_path / "bare.npy", stack(1))
    np.save(tmp_path / "nhwc.npy", np.ones((4, 16, 16, 1), np.float32))
    a = write(tmp_path / "a.npz", stack(2), nphotons=1e6)
    b = write(tmp_path / "b.npz", stack(3), nphotons=2e6)
    cases: list[tuple[list[Path], dict[str, Any], dict[str, str]]] = [
        ([tmp_path / "empty"], {}, {"with recursive=True)": "with --recursive)"}),
        ([bare], {}, {"Pass nphotons= (": "Pass --nphotons N (",
                      "or nphotons_default= (": "or --nphotons-default N ("}),
        ([a, b], {}, {"or pass nphotons= to use": "or pass --nphotons N to use"}),
        ([tmp_path / "nhwc.npy"], {"nphotons": 1.0},
         {"Pass layout='NHWC' for": "Pass --layout NHWC for",
          "or layout='NCHW' (or spatial_dims=(-2, -1)) if": "or --layout NCHW if"}),
    ]  # fmt: skip
    for paths, kwargs, spellings in cases:
        with pytest.raises(ps.PhysscaleError) as info:
            derive_files(paths, **kwargs)
        message = str(info.value)
        assert all(python in message for python in spellings) and "--" not in message
        assert info.value.wording is not None
        code, _, err = call(capsys, "derive", *paths, *(["--nphotons", "1"] if kwargs else []))
        # The same text, but for the options' spelling.
        for python, flag in spellings.items():
            message = message.replace(python, flag)
        assert (code, err) == (2, f"physscale: error: {message}\n")


def test_errors_say_which_parameter_they_are_about(tmp_path: Path) -> None:
    paths = [write(tmp_path / f"{i}.npz", stack(i, n=2)) for i in range(2)]
    with pytest.raises(ps.errors.StateError) as info:
        derive_files(paths, exclude=[0, 1, 2, 3])
    assert info.value.parameter == "exclude"
    np.save(tmp_path / "m.npy", np.ones((8, 8), np.uint8))
    with pytest.raises(ps.errors.MaskError) as mask_info:
        derive_files(paths, mask=tmp_path / "m.npy")
    assert mask_info.value.parameter == "mask"
    assert str(mask_info.value).startswith(f"mask {tmp_path / 'm.npy'}: the mask must be boolean")


def test_details_give_the_totals_the_files_and_the_refused_metadata(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> Any:
            return (os.system, ("true",))

    good = write(tmp_path / "good.npz", stack(0, n=3))
    evil = tmp_path / "evil.npz"
    np.savez(evil, diffraction=stack(1, n=2), _metadata=np.array(Evil(), object))
    derived = derive_files([good, evil], nphotons=1e6, details=True)
    assert isinstance(derived, ps.io.DerivedFiles)
    record = derive_files([good, evil], nphotons=1e6)
    assert derived.record.model_copy(update={"created_utc": record.created_utc}) == record
    assert derived.files == [(str(good), 3), (str(evil), 2)]
    assert derived.pattern_totals is not None and derived.pattern_totals.shape == (5,)
    assert len(derived.refused) == 1
    assert "evil.npz:_metadata: refused to unpickle" in derived.refused[0]


def test_progress_is_a_callback_told_the_totals_first_then_each_step(
    run_dir: tuple[Path, list[np.ndarray]],
) -> None:
    folder, _ = run_dir
    seen: list[ps.io.FilesProgress] = []
    record = derive_files(folder, chunk_patterns=2, workers=2, progress=seen.append)
    first, last = seen[0], seen[-1]
    assert (first.files_done, first.bytes_done) == (0, 0) and first.n_files == 4
    assert (last.files_done, last.bytes_done) == (4, first.n_bytes)
    steps = list(itertools.pairwise(seen))
    assert all(b.bytes_done >= a.bytes_done and b.files_done >= a.files_done for a, b in steps)
    assert len(seen) > 8  # pieces of two entries: several calls per file
    # 0.2's progress=True drew tqdm bars: now deprecated, and the result is the same.
    with pytest.warns(DeprecationWarning, match="progress takes a callable"):
        again = derive_files(folder, progress=True)  # type: ignore[call-overload]
    assert again.intensity_scale == record.intensity_scale


# ----------------------------------------------------------------- NeXus masters (links)
def float_master(folder: Path, arrays: list[np.ndarray]) -> Path:
    """An Eiger-style master whose /entry/data/data_NNNNNN link to float32 data files beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    master = folder / "scan_master.h5"
    with h5py.File(master, "w") as f:
        group = f.create_group("/entry/data")
        # Written out of order: the links are read in link-name order, not creation order.
        for i in reversed(range(len(arrays))):
            name = f"scan_data_{i + 1:06d}.h5"
            with h5py.File(folder / name, "w") as d:
                d.create_dataset(
                    "/entry/data/data", data=arrays[i], chunks=(1, *arrays[i].shape[1:])
                )
            group[f"data_{i + 1:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
    return master


def test_a_masters_data_links_are_one_stack_with_follow_links(tmp_path: Path) -> None:
    arrays = [stack(10, n=4), stack(11, n=3), stack(12, n=5)]
    master = float_master(tmp_path / "scan", arrays)
    derived = derive_files(master, key="/entry/data", nphotons=1e5, follow_links=True, details=True)
    record = derived.record
    assert record.n_patterns == 12
    assert record.intensity_scale == pytest.approx(reference_scale(arrays, 1e5), rel=1e-12)
    assert derived.files == [(str(master), 12)]  # one file given: the master
    # The per-pattern totals follow the links in link-name order.
    truth = np.concatenate([a.astype(np.float64) ** 2 for a in arrays]).sum(axis=(1, 2))
    assert derived.pattern_totals is not None
    np.testing.assert_allclose(derived.pattern_totals, truth, rtol=1e-12)


def test_a_master_without_follow_links_is_refused_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    master = float_master(tmp_path / "scan", [stack(10, n=2), stack(11, n=2)])
    with pytest.raises(ps.errors.UnsafeFileError, match=r"follow_links=True"):
        derive_files(master, key="/entry/data", nphotons=1e5)
    code, out, err = call(capsys, "derive", master, "--key", "/entry/data", "--nphotons", 1e5)
    assert code == 1 and out == ""
    assert "--follow-links" in err and "follow_links=True" not in err
    code, out, err = call(
        capsys, "derive", master, "--key", "/entry/data", "--nphotons", 1e5, "--follow-links",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["n_patterns"] == 4


def test_an_external_link_to_float_data_beside_the_file_is_followed_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = stack(20, n=5)
    write(tmp_path / "data.h5", x, nphotons=None, key="patterns")
    linked = tmp_path / "linked.h5"
    with h5py.File(linked, "w") as f:
        f["diffraction"] = h5py.ExternalLink("data.h5", "/patterns")
    with pytest.raises(ps.errors.UnsafeFileError, match=r"external link.*follow_links=True"):
        derive_files(linked, nphotons=1e4)
    code, _, err = call(capsys, "derive", linked, "--nphotons", 1e4)
    assert code == 1 and "--follow-links" in err
    record = derive_files(linked, nphotons=1e4, follow_links=True)
    assert record.intensity_scale == pytest.approx(reference_scale([x], 1e4), rel=1e-12)
    assert record.sources is not None and record.sources.files[0].path == str(linked)


def test_links_that_leave_the_masters_folder_are_refused_even_when_followed(
    tmp_path: Path,
) -> None:
    outside = write(tmp_path / "outside.h5", stack(21, n=3), nphotons=None, key="patterns")
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "escape.h5").symlink_to(outside)
    for target in (str(outside), "../outside.h5", "escape.h5"):
        master = inside / "master.h5"
        with h5py.File(master, "w") as f:
            f["entry/data/data_000001"] = h5py.ExternalLink(target, "/patterns")
            f["diffraction"] = h5py.ExternalLink(target, "/patterns")
        for key in ("/entry/data", "diffraction"):
            with pytest.raises(ps.errors.UnsafeFileError, match="outside the master's folder"):
                derive_files(master, key=key, nphotons=1e4, follow_links=True)
