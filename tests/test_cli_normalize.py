"""``physscale normalize``: from a beamline scan to training data on the command line (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from physscale.cli import main
from physscale.io import read_metadata
from tests._detector_files import (
    eiger_master,
    eiger_scan,
    fold_slice,
    ptychodus_file,
    require_hdf5plugin,
    uint16_saturated,
)

REL = 1e-12


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_an_eiger_master_with_follow_links_gives_the_true_nphotons_and_derive_agrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_hdf5plugin()
    scan = eiger_scan()
    master = eiger_master(tmp_path / "scan", scan)
    out = tmp_path / "train.npz"
    code, stdout, err = _run(
        ["normalize", str(master), "--out", str(out), "--follow-links", "--json"], capsys
    )
    assert code == 0, err
    payload = json.loads(stdout)
    record = payload["record"]
    assert record["nphotons"] == pytest.approx(scan.nphotons, rel=REL)
    assert record["nphotons_source"] == "measured"
    assert "nonzero = bad" in payload["mask_source"]
    with np.load(out, allow_pickle=False) as z:
        mask = z["mask"]
    np.save(tmp_path / "mask.npy", mask)
    # derive reads nphotons back from the file's metadata and, with the stored mask,
    # gives the same scale.
    code, stdout, err = _run(
        ["derive", str(out), "--key", "diff3d", "--mask", str(tmp_path / "mask.npy"), "--json"],
        capsys,
    )
    assert code == 0, err
    assert json.loads(stdout)["intensity_scale"] == pytest.approx(
        record["intensity_scale"], rel=1e-12
    )


def test_a_master_without_follow_links_is_refused_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_hdf5plugin()
    master = eiger_master(tmp_path, eiger_scan(n=4))
    code, _, err = _run(["normalize", str(master), "--out", str(tmp_path / "o.npz")], capsys)
    assert code == 1
    assert "--follow-links" in err and "follow_links=True" not in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o.npz").exists()


def test_uint16_saturation_markers_are_never_photons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan = uint16_saturated()
    src = tmp_path / "counts.npy"
    np.save(src, scan.counts)
    out = tmp_path / "train.npz"
    code, stdout, err = _run(["normalize", str(src), "--out", str(out), "--json"], capsys)
    assert code == 0, err
    # No mask given: the 65535 markers are excluded and the truth (mask honoured) is hit.
    assert json.loads(stdout)["record"]["nphotons"] == pytest.approx(scan.nphotons, rel=REL)
    assert "65535" in err  # the warning says how many marker values were excluded


def test_fold_slice_float_counts_with_carried_positions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, nphotons = fold_slice(tmp_path)
    out = tmp_path / "train.npz"
    code, stdout, err = _run(["normalize", str(path), "--out", str(out)], capsys)
    assert code == 0, err
    assert "measured" in stdout
    meta = read_metadata(out)
    assert meta is not None
    assert meta["physics_parameters"]["nphotons"] == pytest.approx(nphotons, rel=REL)


def test_ptychodus_bad_pixels_are_read_as_true_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, scan = ptychodus_file(tmp_path / "ptychodus.h5")
    out = tmp_path / "train.npz"
    code, stdout, err = _run(["normalize", str(path), "--out", str(out), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["record"]["nphotons"] == pytest.approx(scan.nphotons, rel=REL)


def test_an_explicit_mask_file_needs_its_polarity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan = uint16_saturated()
    np.save(tmp_path / "counts.npy", scan.counts)
    np.save(tmp_path / "bad.npy", scan.pixel_mask)
    args = ["normalize", str(tmp_path / "counts.npy"), "--out", str(tmp_path / "o.npz")]
    code, _, err = _run([*args, "--pixel-mask", str(tmp_path / "bad.npy")], capsys)
    assert code != 0 and "polarity" in err
    code, stdout, err = _run(
        [*args, "--pixel-mask", str(tmp_path / "bad.npy"), "--mask-polarity", "bad", "--json"],
        capsys,
    )
    assert code == 0, err
    assert json.loads(stdout)["record"]["nphotons"] == pytest.approx(scan.nphotons, rel=REL)


def test_invalid_value_none_counts_every_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = np.full((4, 16, 16), 3, np.uint16)
    np.save(tmp_path / "c.npy", counts)
    args = ["normalize", str(tmp_path / "c.npy"), "--out", str(tmp_path / "o.npz"), "--json"]
    code, stdout, err = _run([*args, "--invalid-value", "none"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["invalid_values"] == []
    assert json.loads(stdout)["record"]["nphotons"] == 3 * 16 * 16
    code, _, err = _run([*args, "--invalid-value", "three"], capsys)
    assert code == 2 and "'three'" in err


def test_inspect_shows_a_masters_links_and_where_they_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_hdf5plugin()
    master = eiger_master(tmp_path, eiger_scan(n=8), frames_per_file=4)
    code, stdout, err = _run(["inspect", str(master)], capsys)
    assert code == 0, err
    assert "links (data in other files" in stdout
    assert stdout.count("(external)") == 2
    assert "data_000001 -> " in stdout and ":/entry/data/data" in stdout
    code, stdout, _ = _run(["inspect", str(master), "--json"], capsys)
    links = json.loads(stdout)["links"]
    assert [ln["name"].rsplit("/", 1)[-1] for ln in links] == ["data_000001", "data_000002"]


def test_integer_counts_given_to_derive_name_the_one_next_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from physscale.core.checks import COUNTS_NEXT_STEP_CLI, counts_next_step
    from physscale.errors import DataFileError
    from physscale.io import derive_files

    np.save(tmp_path / "c.npy", np.ones((4, 16, 16), np.uint16))
    code, _, err = _run(["derive", str(tmp_path / "c.npy"), "--nphotons", "1e6"], capsys)
    assert code == 1
    assert counts_next_step(COUNTS_NEXT_STEP_CLI) in err
    with pytest.raises(DataFileError, match=r"physscale\.io\.normalize_files\(paths, out\)"):
        derive_files([tmp_path / "c.npy"], nphotons=1e6)


def test_a_per_frame_pixel_mask_file_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(5)
    counts = rng.poisson(30.0, size=(9, 12, 12)).astype(np.uint16)
    bad = np.zeros(counts.shape, np.uint8)
    for i in range(9):
        bad[i, i % 3 : i % 3 + 2, 4:7] = 1  # nonzero = bad, one mask per frame
    truth = float(np.where(bad == 0, counts.astype(np.float64), 0.0).sum(axis=(1, 2)).mean())
    np.save(tmp_path / "scan.npy", counts)
    np.save(tmp_path / "bad.npy", bad)
    out = tmp_path / "train.npz"
    argv = ["normalize", str(tmp_path / "scan.npy"), "--out", str(out), "--json"]
    code, stdout, err = _run([*argv, "--pixel-mask", str(tmp_path / "bad.npy")], capsys)
    assert code == 1 and "polarity" in err  # never guessed
    code, stdout, err = _run(
        [*argv, "--pixel-mask", str(tmp_path / "bad.npy"), "--mask-polarity", "bad"], capsys
    )
    assert code == 0, err
    record = json.loads(stdout)["record"]
    assert record["nphotons"] == pytest.approx(truth, rel=REL)
    with np.load(out, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["mask"], bad == 0)
    # The masked pixels are 0 in diff3d: derive agrees without the mask.
    code, stdout, err = _run(["derive", str(out), "--key", "diff3d", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["intensity_scale"] == pytest.approx(
        record["intensity_scale"], rel=1e-12
    )


def test_inspect_follow_links_shows_the_stacks_the_links_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_hdf5plugin()
    master = eiger_master(tmp_path, eiger_scan(n=8, h=32, w=32), frames_per_file=4)
    code, stdout, err = _run(["inspect", str(master), "--follow-links"], capsys)
    assert code == 0, err
    assert "stacks (through the links):" in stdout
    assert stdout.count("shape (4, 32, 32)  dtype uint32") == 2
    code, stdout, _ = _run(["inspect", str(master), "--follow-links", "--json"], capsys)
    assert [s["shape"] for s in json.loads(stdout)["stacks"]] == [[4, 32, 32], [4, 32, 32]]
