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


# ------------------------------------------------------------------ item 8: the last corners
_DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
_DEEP_OBJECT = '{"a": ' * 100_000 + "1" + "}" * 100_000


def _npz_with_metadata(path: Path, metadata: np.ndarray) -> Path:
    """An .npz with a diffraction array and ``metadata`` stored as ``_metadata`` as it is."""
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in (("diffraction", np.ones((2, 4, 4), np.float32)), ("_metadata", metadata)):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=True)
            zf.writestr(name + ".npy", buf.getvalue())
    return path


class TestDeepJson:
    @pytest.mark.parametrize("text", [_DEEP_ARRAY, _DEEP_OBJECT], ids=["array", "object"])
    def test_set_extra_state_refuses_deep_json(self, text: str) -> None:
        from physscale.errors import RecordError
        from physscale.nn import IntensityScaler

        scaler = IntensityScaler(2.0)
        before = scaler.get_extra_state()
        with pytest.raises(RecordError, match=r"malformed.*nested too deeply"):
            scaler.set_extra_state(text)  # 0.2.0: RecursionError
        assert scaler.get_extra_state() == before

    def test_set_extra_state_refuses_json_nested_past_the_limit(self) -> None:
        from physscale.errors import RecordError
        from physscale.nn import IntensityScaler

        with pytest.raises(RecordError, match="nested more than 64 levels"):
            IntensityScaler(2.0).set_extra_state("[" * 100 + "]" * 100)

    def test_a_deep_record_inside_the_extra_state_is_a_record_error(self) -> None:
        import json

        from physscale.errors import RecordError
        from physscale.nn import IntensityScaler

        scaler = IntensityScaler(physscale.closed_form_scale_record(1e6, 64))
        state = json.loads(scaler.get_extra_state())
        state["record"] = _DEEP_OBJECT
        with pytest.raises(RecordError, match="malformed"):
            scaler.set_extra_state(json.dumps(state))

    def test_a_state_dict_with_deep_extra_state_is_refused(self) -> None:
        from physscale.errors import RecordError
        from physscale.nn import IntensityScaler

        state = IntensityScaler(2.0).state_dict()
        state["_extra_state"] = _DEEP_ARRAY
        with pytest.raises(RecordError):
            IntensityScaler(3.0).load_state_dict(state)

    @pytest.mark.parametrize("text", [_DEEP_ARRAY, _DEEP_OBJECT, '{"a": ' * 150 + "1" + "}" * 150])
    @pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
    def test_record_parsing_refuses_deep_json(self, text: str, as_bytes: bool) -> None:
        from physscale.errors import RecordError
        from physscale.io.checkpoint import parse_record_json, record_from_checkpoint

        data = text.encode() if as_bytes else text
        with pytest.raises(RecordError):
            record_from_checkpoint({"physscale_record": data})
        with pytest.raises(RecordError):
            parse_record_json(data, "record")

    @pytest.mark.parametrize("text", [_DEEP_ARRAY, _DEEP_OBJECT, "[" * 100 + "]" * 100])
    def test_resolve_nphotons_refuses_deep_json_metadata(self, text: str) -> None:
        from physscale.errors import NphotonsError

        for metadata in (text, text.encode(), {"metadata": text}):
            with pytest.raises(NphotonsError, match="nested"):
                physscale.resolve_nphotons(metadata)  # 0.2.0: RecursionError

    def test_json_metadata_strings_still_resolve(self) -> None:
        text = '{"physics_parameters": {"nphotons": 1e6}}'
        for metadata in (text, text.encode(), {"metadata": text}):
            resolved = physscale.resolve_nphotons(metadata)
            assert (resolved.value, resolved.source) == (1e6, "metadata")

    def test_io_keeps_the_one_json_guard(self) -> None:
        from physscale.core import jsontext
        from physscale.io import _files

        assert _files.load_json is jsontext.load_json
        assert _files.check_depth is jsontext.check_depth
        assert _files.MAX_JSON_DEPTH == jsontext.MAX_JSON_DEPTH


class TestNonUtf8Metadata:
    @pytest.mark.parametrize(
        "raw", [b"\xff\xfe\x00", b"\xc3(", b'{"a": "\xff"}'], ids=["utf16-ish", "bad", "inner"]
    )
    def test_resolve_nphotons_refuses_bytes_that_are_not_utf8(self, raw: bytes) -> None:
        from physscale.errors import NphotonsError

        with pytest.raises(NphotonsError, match="not UTF-8"):
            physscale.resolve_nphotons(raw)  # 0.2.0: UnicodeDecodeError
        with pytest.raises(NphotonsError):
            physscale.derive_scale_record(torch.rand(2, 4, 4), metadata={"metadata": raw})

    @pytest.mark.parametrize(
        "metadata",
        [
            np.array(b"\xff\xfe{}", dtype="S"),
            np.array(b"\xc3(", dtype="S")[()],
            np.array(b"\xff", dtype=object),
            np.array("\udcff{}", dtype=object),
        ],
        ids=["S-array", "0-d-bytes", "pickled-bytes", "pickled-surrogate"],
    )
    def test_npz_metadata_bytes_that_are_not_utf8(self, tmp_path: Path, metadata: Any) -> None:
        from physscale.io import derive_files, read_metadata

        path = _npz_with_metadata(tmp_path / "m.npz", np.asarray(metadata))
        with pytest.raises(DataFileError):
            read_metadata(path)
        with pytest.raises(DataFileError):
            derive_files([path], key="diffraction")
        code, _, err = cli("derive", path, "--key", "diffraction")
        refused(code, err)

    def test_a_pickle_whose_string_is_not_utf8(self, tmp_path: Path) -> None:
        import zipfile

        from physscale.io import read_metadata

        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.array("XX{}", dtype=object), allow_pickle=True)
        raw = buf.getvalue().replace(b"XX{}", b"\xff\xfe{}")
        with zipfile.ZipFile(tmp_path / "p.npz", "w") as zf:
            zf.writestr("_metadata.npy", raw)
        with pytest.raises(DataFileError):
            read_metadata(tmp_path / "p.npz")

    @pytest.mark.parametrize("kind", ["fixed", "vlen-ascii", "dataset"])
    def test_hdf5_metadata_of_raw_bytes(self, tmp_path: Path, kind: str) -> None:
        h5py = pytest.importorskip("h5py")
        from physscale.io import derive_files, read_metadata

        path = tmp_path / "m.h5"
        with h5py.File(path, "w") as f:
            f["diffraction"] = np.ones((2, 4, 4), np.float32)
            if kind == "fixed":
                f.attrs["_metadata"] = np.bytes_(b"\xff\xfe{}")
            elif kind == "vlen-ascii":
                f.attrs.create("_metadata", b"\xff\xfe{}", dtype=h5py.string_dtype("ascii"))
            else:
                f["_metadata"] = np.bytes_(b"\xc3({}")
        with pytest.raises(DataFileError, match="not UTF-8"):
            read_metadata(path)
        with pytest.raises(DataFileError):
            derive_files([path], key="diffraction")


class _Holder:
    metadata: Any


class TestSelfReferentialMetadata:
    @staticmethod
    def _cases() -> dict[str, Any]:
        obj = _Holder()
        obj.metadata = obj
        loop: dict[str, Any] = {}
        loop["metadata"] = loop
        a, b = _Holder(), _Holder()
        a.metadata, b.metadata = {"metadata": b}, a
        chain = _Holder()
        node = chain
        for _ in range(100_000):  # no cycle, only deep
            node.metadata = _Holder()
            node = node.metadata
        node.metadata = {"physics_parameters": {"nphotons": 1e6}}
        return {"object": obj, "dict": loop, "two objects": a, "deep chain": chain}

    def test_resolve_nphotons(self) -> None:
        from physscale.errors import NphotonsError

        for name, metadata in self._cases().items():
            with pytest.raises(NphotonsError):  # 0.2.0: RecursionError
                physscale.resolve_nphotons(metadata=metadata)
            with pytest.raises(NphotonsError, match="metadata"):
                physscale.derive_scale_record(torch.rand(2, 4, 4), metadata=metadata), name

    def test_attach_intensity_scale(self) -> None:
        for metadata in self._cases().values():
            container = {"X": torch.rand(2, 4, 4), "metadata": metadata}
            with pytest.raises(PhysscaleError):
                physscale.attach_intensity_scale(container)
            assert "physscale_record" not in container
        itself: dict[str, Any] = {"X": torch.rand(2, 4, 4)}
        itself["metadata"] = itself
        with pytest.raises(PhysscaleError, match="refers back to itself"):
            physscale.attach_intensity_scale(itself)
        holder = _Holder()
        holder.X = torch.rand(2, 4, 4)  # type: ignore[attr-defined]
        holder.metadata = holder
        with pytest.raises(PhysscaleError, match="refers back to itself"):
            physscale.attach_intensity_scale(holder)

    def test_the_ptychopinn_adapter(self) -> None:
        from physscale.adapters import ptychopinn

        for metadata in self._cases().values():
            with pytest.raises(PhysscaleError):
                ptychopinn.attach({"X": np.ones((4, 8, 8, 1), np.float32), "metadata": metadata})
        itself: dict[str, Any] = {"X": np.ones((4, 8, 8, 1), np.float32)}
        itself["metadata"] = itself
        with pytest.raises(PhysscaleError, match="refers back to itself"):
            ptychopinn.attach(itself)

    def test_a_self_referential_physics_parameters_is_named_briefly(self) -> None:
        from physscale.errors import NphotonsError

        loop: list[Any] = []
        loop.append(loop)
        with pytest.raises(NphotonsError, match="must be a mapping") as info:
            physscale.resolve_nphotons({"physics_parameters": loop})
        assert len(str(info.value)) < 300
        with pytest.raises(NphotonsError) as info:
            physscale.resolve_nphotons({"physics_parameters": list(range(10**6))})
        assert len(str(info.value)) < 300

    def test_wrapped_metadata_still_resolves(self) -> None:
        inner = {"physics_parameters": {"nphotons": 2e6}}
        holder = _Holder()
        holder.metadata = {"metadata": inner}
        outer = _Holder()
        outer.metadata = holder
        for metadata in (holder, outer, {"metadata": holder}):
            assert physscale.resolve_nphotons(metadata).value == 2e6


_HUGE = (10**6, 10**3, 10**3)  # 10**12 elements: terabytes on any machine


class TestBroadcastViews:
    @pytest.mark.parametrize("dtype", ["float64", "float32", ">f8", "uint16", "int32"])
    def test_normalize_counts_refuses_a_numpy_broadcast_view(self, dtype: str) -> None:
        from physscale.errors import BroadcastError

        huge = np.broadcast_to(np.ones(1, dtype), _HUGE)
        start = time.monotonic()
        with pytest.raises(BroadcastError, match="broadcast view"):
            physscale.normalize_counts(huge)  # 0.2.0: MemoryError, or minutes of work
        assert time.monotonic() - start < 5

    @pytest.mark.parametrize("dtype", ["float64", "float32", ">f8"])
    def test_derive_refuses_a_numpy_broadcast_view(self, dtype: str) -> None:
        from physscale.errors import BroadcastError

        huge = np.broadcast_to(np.ones(1, dtype), _HUGE)
        start = time.monotonic()
        with pytest.raises(BroadcastError, match="broadcast view"):
            physscale.derive_intensity_scale(huge, nphotons=1e6)
        with pytest.raises(BroadcastError):
            physscale.derive_scale_record(huge, nphotons=1e6)
        with pytest.raises(BroadcastError):
            physscale.IntensityAccumulator().update(huge)
        assert time.monotonic() - start < 5

    def test_derive_refuses_a_torch_expand_view(self) -> None:
        from physscale.errors import BroadcastError

        huge = torch.ones(1, dtype=torch.float64).expand(*_HUGE)
        start = time.monotonic()
        with pytest.raises(BroadcastError, match="broadcast view"):
            physscale.derive_intensity_scale(huge, nphotons=1e6)  # 0.2.0: minutes
        with pytest.raises(BroadcastError):
            physscale.IntensityAccumulator().update(huge)
        assert time.monotonic() - start < 5

    @pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
    def test_the_loss_refuses_numpy_and_huge_views(self) -> None:
        huge = np.broadcast_to(np.ones(1, np.float32), _HUGE)
        with pytest.raises(PhysscaleError):  # numpy is refused by type, before any copy
            physscale.scaled_poisson_nll(huge, huge, scale=1.0)
        view = torch.from_numpy(np.broadcast_to(np.ones(1, np.float32), _HUGE))
        with pytest.raises(PhysscaleError, match="broadcast view"):
            physscale.scaled_poisson_nll(view, view, scale=1.0)

    def test_small_and_strided_views_still_work(self) -> None:
        base = np.random.default_rng(0).random((1, 4, 4))
        small = np.broadcast_to(base, (3, 4, 4))
        expected = float(physscale.derive_intensity_scale(np.ascontiguousarray(small), 1e6))
        assert float(physscale.derive_intensity_scale(small, 1e6)) == pytest.approx(expected)
        strided = np.random.default_rng(1).random((8, 8, 8))[::2, ::-1, ::3]
        got = float(physscale.derive_intensity_scale(strided, 1e6))
        assert got == pytest.approx(float(physscale.derive_intensity_scale(strided.copy(), 1e6)))
        counts = np.broadcast_to(np.arange(16, dtype=np.uint16).reshape(1, 4, 4) + 1, (3, 4, 4))
        x, record = physscale.normalize_counts(counts)
        assert record.n_patterns == 3 and x.shape == (3, 4, 4)

    def test_the_check_itself(self) -> None:
        from physscale.core.checks import check_materializable
        from physscale.errors import BroadcastError

        check_materializable(np.ones((3, 4)), "x")
        check_materializable(np.ones((3, 4))[:, ::2].T, "x")
        check_materializable(np.broadcast_to(np.ones(1), (0, 10**12)), "x")
        check_materializable([1, 2], "x")  # type: ignore[arg-type]
        check_materializable(torch.ones(3).to_sparse(), "x")
        with pytest.raises(BroadcastError, match="10000000000000 elements"):
            check_materializable(np.broadcast_to(np.ones((10, 1)), (10, 10**12)), "x")
        overlapping = np.lib.stride_tricks.as_strided(np.ones(8), (10**7, 10**6), (8, 0))
        with pytest.raises(BroadcastError):
            check_materializable(overlapping, "x")
