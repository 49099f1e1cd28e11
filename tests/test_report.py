"""The report figure: physscale derive PATH... --plot FILE (matplotlib, the `plot` extra)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import physscale as ps
from physscale.cli import main
from physscale.io import derive_files, write_metadata
from physscale.report import plot_report

matplotlib = pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")


def beamline(folder: Path, n_files: int = 3, frames: int = 40) -> list[Path]:
    """Files of steady frames with a beam dump (file 1, frames 5-7) and a hot frame (file 2)."""
    paths = []
    for i in range(n_files):
        rng = np.random.default_rng(i)
        x = (rng.gamma(4.0, 0.25, size=(frames, 8, 8)) + 0.5).astype(np.float32)
        if i == 1:
            x[5:8] *= 0.02
        if i == 2:
            x[11] *= 3.0
        path = folder / f"scan_{i:02d}.npz"
        write_metadata(path, {"physics_parameters": {"nphotons": 1e6}}, diffraction=x)
        paths.append(path)
    return paths


def png_text(path: Path) -> dict[str, Any]:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 800
        return dict(image.text)


def call(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_figure_is_written_and_states_what_the_record_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = beamline(tmp_path)
    plot, out = tmp_path / "report.png", tmp_path / "record.json"
    code, stdout, err = call(capsys, "derive", *paths, "--plot", plot, "--out", out)
    assert code == 0, err
    assert f"report figure written to {plot}" in stdout
    record = ps.ScaleRecord.model_validate_json(out.read_text())
    stats = record.pattern_stats
    assert stats is not None and stats.flagged_count == 4  # 3 dumps and 1 hot frame
    text = png_text(plot)
    numbers = json.loads(text["physscale"])
    assert numbers["flagged_count"] == 4 and numbers["near_zero_count"] == 3
    assert (numbers["n_patterns"], numbers["n_files"]) == (120, 3)
    assert numbers["intensity_scale"] == record.intensity_scale
    assert numbers["implied_nphotons"] == record.implied_nphotons
    assert numbers["excluded_count"] == 0
    assert "120 patterns in 3 files" in text["Title"] and "4 flagged" in text["Title"]
    assert "implied dose 1e+06 photons/pattern" in text["Title"]
    assert "nothing excluded" in text["Title"]


def test_the_figure_says_what_was_excluded(tmp_path: Path) -> None:
    paths = beamline(tmp_path)
    plot = tmp_path / "report.png"
    derived = derive_files(paths, exclude="outliers", details=True)
    plot_report(derived, plot)
    record = derived.record
    assert record.excluded_frames is not None
    text = png_text(plot)
    assert json.loads(text["physscale"])["excluded_count"] == 4
    assert "4 frame(s) EXCLUDED (--exclude-outliers)" in text["Title"]


def test_flagged_frames_whose_exclusion_leaves_no_scale_are_not_called_unflagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Four dark frames and one lit one: the lit frame is flagged, and excluding it
    # would leave no intensity. The figure said "no frame flagged"; the summary
    # said nothing about what excluding would do.
    x = np.zeros((5, 8, 8), dtype=np.float32)
    x[4] = 1.0
    path = tmp_path / "dark.npy"
    np.save(path, x)
    plot = tmp_path / "report.png"
    code, out, err = call(capsys, "derive", path, "--nphotons", "1e6", "--plot", plot)
    assert code == 0, err
    title = png_text(plot)["Title"]
    assert "1 flagged" in title
    assert "no frame flagged" not in title
    assert "excluding the 1 flagged frame(s) would leave no intensity" in title
    assert "without them no intensity would be left" in out


@pytest.mark.parametrize("suffix", [".pdf", ".svg"])
def test_pdf_and_svg_are_written_too(tmp_path: Path, suffix: str) -> None:
    plot = tmp_path / f"report{suffix}"
    plot_report(derive_files(beamline(tmp_path, n_files=1), details=True), plot)
    head = plot.read_bytes()[:64]
    assert head.startswith(b"%PDF") if suffix == ".pdf" else b"<svg" in plot.read_bytes()[:2000]


def test_a_large_dataset_is_drawn_as_a_band_and_every_flagged_frame_marked(
    tmp_path: Path,
) -> None:
    # More frames than MAX_POINTS, and more flagged frames than the record lists.
    x = (1.0 + 0.05 * np.random.default_rng(0).random((26_000, 2, 2))).astype(np.float32)
    x[::20] *= 0.01  # 1,300 beam dumps
    path = tmp_path / "long.npy"
    np.save(path, x)
    plot = tmp_path / "long.png"
    derived = derive_files(path, nphotons=1e6, details=True)
    plot_report(derived, plot)
    record = derived.record
    assert record.pattern_stats is not None and record.pattern_stats.flagged_frames_truncated
    numbers = json.loads(png_text(plot)["physscale"])
    assert numbers["flagged_count"] == 1300 and numbers["n_patterns"] == 26_000


def test_without_matplotlib_the_message_names_the_extra_and_nothing_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = beamline(tmp_path, n_files=2)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    out, plot = tmp_path / "record.json", tmp_path / "report.png"
    code, stdout, err = call(capsys, "derive", *paths, "--plot", plot, "--out", out)
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert 'pip install "physscale[plot]"' in err and "matplotlib" in err
    assert not out.exists() and not plot.exists()
    derived = derive_files(paths, details=True)
    with pytest.raises(ImportError, match=r'pip install "physscale\[plot\]"'):
        plot_report(derived, plot)
    assert not plot.exists()
    # Without --plot, nothing needs matplotlib.
    code, _, err = call(capsys, "derive", *paths)
    assert code == 0, err


def test_derive_files_no_longer_draws_and_says_how_to(tmp_path: Path) -> None:
    # 0.3: the figure is drawn by the caller (io never imports the report).
    paths = beamline(tmp_path, n_files=1)
    plot = tmp_path / "report.png"
    with pytest.raises(TypeError, match=r"details=True\); physscale\.report\.plot_report\(derived"):
        derive_files(paths, plot=plot)  # type: ignore[call-overload]
    assert not plot.exists()
    with pytest.raises(TypeError, match="unexpected keyword argument 'plott'"):
        derive_files(paths, plott=plot)  # type: ignore[call-overload]
    # The old writer still works for a minor version, with a warning naming the new one.
    derived = derive_files(paths, details=True)
    from physscale.report import write_report

    with pytest.warns(DeprecationWarning, match=r"plot_report\(derived, path\)"):
        write_report(plot, derived)
    assert json.loads(png_text(plot)["physscale"])["n_patterns"] == 40
