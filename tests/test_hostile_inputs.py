"""Issue 22: hostile inputs, round two (outputs over inputs, endless globs, small inputs
with large costs, raw exceptions from the numeric API, inconsistent partials).

Every case ends in a :class:`physscale.PhysscaleError` (the command line: exit
1 or 2 and one error line) or the right result, in bounded time; the CLI cases
call :func:`physscale.cli.main` in-process.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import physscale
from physscale.cli import main
from physscale.errors import DataFileError, PhysscaleError, StateError
from physscale.io import write_metadata
from physscale.io._files import describe, preview

NPHOTONS = "1e6"


def cli(*argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([os.fspath(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def refused(code: int, err: str) -> str:
    """The one error line of a failed run (exit 1 or 2), checked."""
    lines = err.splitlines()
    # Ours, or argparse's for a bad flag value (after its usage lines, exit 2).
    errors = [line for line in lines if re.match(r"physscale( \w+)?: error: ", line)]
    assert code in (1, 2), (code, err)
    assert len(errors) == 1, err
    assert "physscale bug" not in err and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    x = np.random.default_rng(3).gamma(2.0, 0.5, size=(6, 4, 4)).astype(np.float32)
    path = tmp_path / "scan.npy"
    np.save(path, x)
    return path


# ------------------------------------------------------------------ item 4: outputs
class TestOutputsNeverReplaceInputs:
    def test_out_naming_the_data_is_refused_and_the_data_kept(self, data: Path) -> None:
        before = data.read_bytes()
        code, _, err = cli("derive", data, "--nphotons", NPHOTONS, "-q", "--out", data)
        assert "is also an input" in refused(code, err)
        assert data.read_bytes() == before

    def test_out_through_a_link_or_another_spelling_is_refused(self, data: Path) -> None:
        link = data.parent / "link.npy"
        link.symlink_to(data)
        before = data.read_bytes()
        other = f"{data.parent}/./{data.name}"
        for out in (link, other):
            code, _, err = cli("derive", data, "--nphotons", NPHOTONS, "-q", "--out", out)
            assert "is also an input" in refused(code, err)
        assert data.read_bytes() == before

    def test_out_naming_the_mask_is_refused(self, data: Path, tmp_path: Path) -> None:
        mask = tmp_path / "mask.npy"
        np.save(mask, np.ones((4, 4), dtype=bool))
        before = mask.read_bytes()
        code, _, err = cli(
            "derive", data, "--nphotons", NPHOTONS, "-q", "--mask", mask, "--out", mask
        )
        assert "is also an input" in refused(code, err)
        assert mask.read_bytes() == before

    def test_out_naming_a_file_of_a_directory_read_is_refused(self, data: Path) -> None:
        before = data.read_bytes()
        code, _, err = cli("derive", data.parent, "--nphotons", NPHOTONS, "-q", "--out", data)
        assert "is also an input" in refused(code, err)
        assert data.read_bytes() == before

    def test_plot_naming_the_data_is_refused(self, data: Path) -> None:
        pytest.importorskip("matplotlib")
        png = data.with_name("scan.png")
        data.rename(png)
        before = png.read_bytes()
        code, _, err = cli("derive", png, "--nphotons", NPHOTONS, "-q", "--plot", png)
        assert "is also an input" in refused(code, err)
        assert png.read_bytes() == before

    @pytest.mark.parametrize("flag", ["--out", "--plot"])
    def test_a_read_only_output_is_not_replaced(
        self, data: Path, tmp_path: Path, flag: str
    ) -> None:
        if flag == "--plot":
            pytest.importorskip("matplotlib")
        target = tmp_path / ("old.png" if flag == "--plot" else "old.json")
        target.write_text("keep me")
        target.chmod(0o444)
        code, _, err = cli("derive", data, "--nphotons", NPHOTONS, "-q", flag, target)
        assert "read-only" in refused(code, err)
        assert target.read_text() == "keep me"
        assert stat.S_IMODE(target.stat().st_mode) == 0o444

    def test_write_metadata_does_not_replace_a_read_only_file(self, tmp_path: Path) -> None:
        path = tmp_path / "d.npz"
        write_metadata(path, {"a": 1}, diffraction=np.ones((2, 3, 3), np.float32))
        path.chmod(0o444)
        before = path.read_bytes()
        with pytest.raises(DataFileError, match="read-only"):
            write_metadata(path, {"a": 2})
        assert path.read_bytes() == before

    def test_a_failed_plot_leaves_the_out_file_as_it_was(self, data: Path, tmp_path: Path) -> None:
        pytest.importorskip("matplotlib")
        out = tmp_path / "record.json"
        out.write_text("old record")
        plot = tmp_path / "no-such-folder" / "fig.png"
        code, _, err = cli(
            "derive", data, "--nphotons", NPHOTONS, "-q", "--out", out, "--plot", plot
        )
        refused(code, err)
        assert out.read_text() == "old record"

    def test_out_and_plot_naming_one_file_are_refused(self, data: Path, tmp_path: Path) -> None:
        pytest.importorskip("matplotlib")
        both = tmp_path / "both.png"
        code, _, err = cli(
            "derive", data, "--nphotons", NPHOTONS, "-q", "--out", both, "--plot", both
        )
        assert "same file" in refused(code, err)
        assert not both.exists()

    def test_a_writable_output_is_still_replaced(self, data: Path, tmp_path: Path) -> None:
        out = tmp_path / "record.json"
        out.write_text("old")
        out.chmod(0o640)
        code, _, err = cli("derive", data, "--nphotons", NPHOTONS, "-q", "--out", out)
        assert code == 0, err
        assert out.read_text().startswith("{")
        assert stat.S_IMODE(out.stat().st_mode) == 0o640


# ------------------------------------------------------------------ item 6: globs
class TestGlobsEnd:
    def test_a_glob_through_symlink_loops_ends(self, data: Path, tmp_path: Path) -> None:
        root = tmp_path / "tree"
        (root / "sub").mkdir(parents=True)
        np.save(root / "sub" / "a.npy", np.load(data))
        (root / "sub" / "up1").symlink_to("..")
        (root / "sub" / "up2").symlink_to("..")
        start = time.monotonic()
        code, out, err = cli("derive", "-r", f"{root}/**/*.npy", "--nphotons", NPHOTONS, "-q")
        assert time.monotonic() - start < 30
        assert code == 0, err  # the one file, found once (links are not followed)
        assert "1 file" in out or "a.npy" in out

    def test_expand_paths_does_not_follow_directory_links(self, tmp_path: Path) -> None:
        from physscale.io.dataset import expand_paths

        root = tmp_path / "t"
        root.mkdir()
        np.save(root / "x.npy", np.ones((1, 2, 2), np.float32))
        (root / "loop").symlink_to(".")
        assert expand_paths(f"{root}/**/*.npy", recursive=True) == [root / "x.npy"]


# ------------------------------------------------------------------ item 7: costs
class TestSmallInputsLargeCosts:
    def test_exclude_frames_ranges_are_bounded_in_total(self, data: Path) -> None:
        ranges = ",".join(f"{i * 10_000_000}-{i * 10_000_000 + 9_999_999}" for i in range(5))
        start = time.monotonic()
        code, _, err = cli("derive", data, "--nphotons", NPHOTONS, "--exclude-frames", ranges)
        assert time.monotonic() - start < 5
        assert code == 2
        assert "--exclude-frames" in refused(code, err)

    def test_a_deep_directory_tree_is_a_clean_error(self, tmp_path: Path) -> None:
        from physscale.io.dataset import expand_paths

        folder = tmp_path
        for _ in range(300):  # deeper than the recursion limit below: 0.2.0's RecursionError
            folder = folder / "d"
            os.mkdir(folder)
        np.save(folder / "x.npy", np.ones((1, 2, 2), np.float32))
        # Walked without recursion: found, whatever the interpreter's recursion limit.
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(200)
        try:
            found = expand_paths(tmp_path, recursive=True)
        finally:
            sys.setrecursionlimit(limit)
        assert found == [folder / "x.npy"]

    def test_too_many_workers_is_a_usage_error(self, data: Path) -> None:
        code, _, err = cli("derive", data, "--nphotons", NPHOTONS, "--workers", "100000")
        assert code == 2
        assert "--workers" in refused(code, err)

    def test_derive_files_refuses_absurd_workers(self, data: Path) -> None:
        from physscale.io import derive_files

        with pytest.raises(PhysscaleError, match="workers"):
            derive_files([data, data.parent / "other.npy"], nphotons=1e6, workers=100_000)


# ------------------------------------------------------------------ item 9
class TestWrongNumbersAndStories:
    def test_load_state_dict_refuses_inconsistent_partials(self) -> None:
        acc = physscale.IntensityAccumulator()
        acc.update(torch.ones(2, 3, 3))
        state = acc.state_dict()
        state["total_partials"] = [1e308, -1e308, 1.0]
        fresh = physscale.IntensityAccumulator()
        with pytest.raises(StateError, match="partials"):
            fresh.load_state_dict(state)

    def test_load_state_dict_keeps_real_partials(self) -> None:
        acc = physscale.IntensityAccumulator()
        for i in range(50):
            acc.update(torch.rand(3, 4, 4, dtype=torch.float64) * 10.0 ** (i % 17 - 8))
        state = acc.state_dict()
        assert len(state["total_partials"]) >= 1
        fresh = physscale.IntensityAccumulator()
        fresh.load_state_dict(state)
        loaded = fresh.state_dict()
        assert math.fsum(loaded["total_partials"]) == math.fsum(state["total_partials"])
        assert float(fresh.intensity_scale(1e6)) == float(acc.intensity_scale(1e6))

    def test_write_metadata_on_a_full_disk_blames_the_disk(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "d.npz"
        write_metadata(path, {"a": 1}, diffraction=np.ones((4, 8, 8), np.float32))
        before = path.read_bytes()
        real_write = os.write

        import zipfile

        real = zipfile._ZipWriteFile.write  # type: ignore[attr-defined]

        def full(self: Any, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(zipfile._ZipWriteFile, "write", full)  # type: ignore[attr-defined]
        with pytest.raises(DataFileError) as info:
            write_metadata(path, {"a": 2})
        monkeypatch.setattr(zipfile._ZipWriteFile, "write", real)  # type: ignore[attr-defined]
        message = str(info.value)
        assert "No space left" in message and "corrupt" not in message, message
        assert "unchanged" in message
        assert path.read_bytes() == before
        del real_write


# ------------------------------------------------------------------ item 8
class TestNoRawExceptions:
    def test_preview_of_a_huge_int_is_short(self) -> None:
        big = 10**5000
        assert len(preview(big)) < 100
        assert len(preview([big, {"k": big}])) < 200
        assert len(describe(ValueError(big))) < 200

    def test_preview_of_huge_int_subclasses_and_numpy_values(self) -> None:
        class Big(int):
            pass

        assert len(preview(Big(10**5000))) < 100
        assert len(preview(np.array([1.0] * 1000))) <= 200

    @pytest.mark.parametrize("bad", [None, 3, b"data.npy", "a\0b.npy", ""])
    def test_expand_paths_refuses_what_is_not_a_path(self, bad: Any) -> None:
        from physscale.io.dataset import expand_paths

        with pytest.raises(PhysscaleError):
            expand_paths(bad)
        with pytest.raises(PhysscaleError):
            expand_paths([bad])

    @pytest.mark.parametrize("bad", [None, 3, b"out.npz", "a\0b.npz", ""])
    def test_write_metadata_refuses_what_is_not_a_path(self, bad: Any) -> None:
        with pytest.raises(PhysscaleError):
            write_metadata(bad, {"a": 1})

    def test_write_metadata_refuses_deep_or_self_referential_metadata(self, tmp_path: Path) -> None:
        deep: Any = 1
        for _ in range(100_000):
            deep = [deep]
        loop: dict[str, Any] = {}
        loop["self"] = loop
        for bad in (deep, {"x": deep}, loop):
            with pytest.raises(PhysscaleError):
                write_metadata(tmp_path / "m.npz", bad if isinstance(bad, dict) else {"d": bad})
        huge = {"n": 10**5000}
        write_metadata(tmp_path / "m.npz", huge) if False else None
        assert not (tmp_path / "m.npz").exists()

    def test_cli_with_a_nul_in_a_path_is_one_line(self) -> None:
        code, _, err = cli("derive", "a\0b.npy", "--nphotons", NPHOTONS)
        refused(code, err)

    def test_attach_paths(self, tmp_path: Path) -> None:
        from physscale.io.dataset import expand_paths

        with pytest.raises(PhysscaleError):
            expand_paths(math.nan)  # type: ignore[arg-type]


class TestMoreRawExceptions:
    def test_zero_stride_views_are_refused_before_any_allocation(self) -> None:
        huge = torch.ones(1).expand(10**6, 10**3, 10**3)
        with pytest.raises(PhysscaleError, match="broadcast view"):
            physscale.normalize_counts(huge)
        with pytest.raises(PhysscaleError, match="broadcast view"):
            physscale.scaled_poisson_nll(huge, huge, scale=1.0)

    def test_small_broadcast_views_still_work(self) -> None:
        x = torch.rand(1, 4, 4).expand(3, 4, 4)
        assert torch.isfinite(physscale.scaled_poisson_nll(x, x, scale=2.0))

    @pytest.mark.parametrize(
        "ndim", ["4", 4.0, -1, 10**5000, None], ids=["str", "float", "-1", "huge", "None"]
    )
    def test_collate_with_scale_refuses_a_bad_ndim(self, ndim: Any) -> None:
        sample = {"x": torch.ones(2, 2), "intensity_scale": 1.0}
        with pytest.raises(PhysscaleError, match="ndim"):
            physscale.collate_with_scale([sample], ndim=ndim)

    def test_huge_ints_in_every_message(self) -> None:
        big = 10**5000
        x = torch.rand(2, 4, 4)
        calls = [
            lambda: physscale.derive_intensity_scale(x, nphotons=big),
            lambda: physscale.derive_intensity_scale(x, nphotons=1e6, spatial_dims=(big,)),
            lambda: physscale.derive_intensity_scale(x, nphotons=1e6, domain=big),
            lambda: physscale.ScaledPoissonNLLLoss(scale=big),
            lambda: physscale.ScaledPoissonNLLLoss(scale=1.0, background=big),
            lambda: physscale.ScaledPoissonNLLLoss(scale=1.0, persistent=big),
            lambda: physscale.IntensityAccumulator(keep_pattern_totals=big),
            lambda: physscale.closed_form_intensity_scale(1e6, pattern_shape=(big,)),
            lambda: physscale.set_validation(big),
            lambda: physscale.collate_with_scale([{"s": 1.0}], scale_key=big),
            lambda: physscale.attach_intensity_scale({"X": x}, key=big, nphotons=1e6),
        ]
        for call in calls:
            with pytest.raises(PhysscaleError):
                call()

    def test_a_lone_surrogate_hmac_is_an_integrity_error(self, tmp_path: Path) -> None:
        import json
        import zipfile

        from physscale.errors import IntegrityError
        from physscale.io import load_bundle, save_bundle

        record = physscale.derive_scale_record(torch.rand(2, 4, 4), nphotons=1e6)
        path = tmp_path / "b.zip"
        save_bundle(path, {"w": torch.ones(2)}, record, key=b"k" * 32)
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: zf.read(i) for i in zf.infolist()}
        name = next(n for n in members if "sig" in n)
        sig = json.loads(members[name])
        sig["hmac"] = "\ud800"
        members[name] = json.dumps(sig).encode()
        with zipfile.ZipFile(path, "w") as zf:
            for n, data in members.items():
                zf.writestr(n, data)
        with pytest.raises(IntegrityError):
            load_bundle(path, key=b"k" * 32)
