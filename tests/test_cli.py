"""The physscale command line: exit codes, stdout/stderr, the record it writes.

Contract tests run the real command (``python -m physscale``) in a subprocess;
the rest call ``physscale.cli.main`` in-process, which parses and prints the
same way, to keep the module fast.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import physscale
from physscale import ScaleRecord
from physscale.cli import main
from physscale.core.kernels import native as _native
from physscale.io import example_dataset_path, write_metadata


def run(
    *args: str | Path, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": ""}
    return subprocess.run(
        [sys.executable, "-m", "physscale", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def fsum_scale(x: np.ndarray, nphotons: float, mask: np.ndarray | None = None) -> float:
    """Independent reference: sqrt(nphotons / mean per-pattern sum(x**2)), math.fsum."""
    x64 = x.astype(np.float64)
    if mask is not None:
        x64 = x64 * mask
    n_patterns = math.prod(x.shape[:-2])
    total = math.fsum(float(v) * float(v) for v in x64.ravel())
    return math.sqrt(nphotons * n_patterns / total)


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """An npz of normalized-looking amplitudes with nphotons 2e6 in its metadata."""
    x = np.random.default_rng(11).gamma(2.0, 0.5, size=(12, 8, 8)).astype(np.float32)
    path = tmp_path / "scan.npz"
    write_metadata(path, {"physics_parameters": {"nphotons": 2e6}}, diffraction=x)
    return path, x


# ----------------------------------------------------------------- subprocess contract
def test_derive_with_no_path_runs_on_the_shipped_example() -> None:
    out = run("derive", "--json")
    assert out.returncode == 0, out.stderr
    record = ScaleRecord.model_validate_json(out.stdout)
    with np.load(example_dataset_path(), allow_pickle=False) as data:
        x = data["diffraction"]
        meta = json.loads(data["_metadata"].item())
    nphotons = meta["physics_parameters"]["nphotons"]
    assert record.nphotons == nphotons
    assert record.nphotons_source == "metadata"
    assert record.n_patterns == x.shape[0]
    assert record.intensity_scale == pytest.approx(fsum_scale(x, nphotons), rel=1e-12)
    assert record.data_source == str(example_dataset_path())
    assert out.stderr == ""


def test_derive_summary_names_scale_source_patterns_and_dose(
    dataset: tuple[Path, np.ndarray],
) -> None:
    path, x = dataset
    out = run("derive", path)
    assert out.returncode == 0, out.stderr
    expected = fsum_scale(x, 2e6)
    text = out.stdout
    assert f"s = {expected:.6g}" in text
    assert "nphotons         2e+06    from the file's metadata" in text
    assert "patterns         12 of 8 x 8 pixels" in text
    assert "implied dose     2e+06 photons per pattern" in text
    assert "mean intensity" in text


def test_missing_file_is_exit_1_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    out = run("derive", tmp_path / "missing.npz")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("physscale: error: ") and "missing.npz: no such file" in out.stderr
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    out = run("--debug", "derive", tmp_path / "missing.npz")
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "DataFileError" in out.stderr


def test_usage_errors_exit_2_through_the_real_command() -> None:
    for args in (["derive", "--layout", "NHCW"], []):
        out = run(*args)
        assert out.returncode == 2
        assert "usage: physscale" in out.stderr
        assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["derive", "--nphotons", "abc"],
        ["derive", "--nphotons", "-5"],
        ["derive", "--nphotons-default", "nan"],
        ["derive", "--chunk-patterns", "0"],
        ["derive", "--domain", "counts"],
        ["derive", "--bogus"],
        ["inspect"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "usage: physscale" in err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.startswith(f"physscale {physscale.__version__} (")
    assert ("(native kernel)" in out.stdout) == _native.available()
    for args in (["--help"], ["derive", "--help"], ["inspect", "--help"]):
        assert main(args) == 0
        assert "usage: physscale" in capsys.readouterr().out


def test_malicious_metadata_is_refused_by_derive_and_inspect(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.npz"
    np.savez(path, diffraction=np.ones((2, 4, 4), np.float32), _metadata=np.array(Evil(), object))
    for args in (
        ["derive", path],
        ["derive", path, "--nphotons-default", "1e6"],
        ["inspect", path],
    ):
        out = run(*args)
        assert out.returncode == 1
        assert "refused to unpickle metadata that references posix.system" in out.stderr
        assert "Traceback" not in out.stderr
    assert not marker.exists()


def test_refused_metadata_is_a_warning_when_nphotons_is_explicit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    x = np.full((3, 4, 4), 0.5, np.float32)
    path = tmp_path / "evil.npz"
    np.savez(path, diffraction=x, _metadata=np.array(Evil(), object))
    code, out, err = call(capsys, "derive", path, "--nphotons", "400", "--json")
    assert code == 0, err
    assert err.count("\n") == 1
    assert re.fullmatch(
        r"physscale: warning: .*evil\.npz:_metadata: refused to unpickle metadata that "
        r"references posix\.system.* \(metadata ignored; using --nphotons 400\)\n",
        err,
    )
    record = ScaleRecord.model_validate_json(out)
    assert (record.nphotons, record.nphotons_source) == (400.0, "explicit")
    assert "metadata" not in record.nphotons_candidates
    # sum x**2 = 16 * 0.25 = 4 per pattern: s = sqrt(400 / 4)
    assert record.intensity_scale == pytest.approx(10.0, rel=1e-15)
    code, out, err = call(capsys, "derive", path, "--nphotons", "400", "--quiet")
    assert (code, err) == (0, "")
    code, out, err = call(capsys, "derive", path)
    assert (code, out) == (1, "")
    assert err.startswith("physscale: error: ") and "refused to unpickle" in err
    assert not marker.exists()


# ----------------------------------------------------------------- in-process behaviour
def call(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_out_writes_a_record_that_validates(
    dataset: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, x = dataset
    out_file = tmp_path / "record.json"
    code, out, _ = call(capsys, "derive", path, "--out", out_file)
    assert code == 0
    record = ScaleRecord.model_validate_json(out_file.read_text())
    assert record.intensity_scale == pytest.approx(fsum_scale(x, 2e6), rel=1e-12)
    assert f"record written to {out_file}" in out


def test_explicit_nphotons_overrides_metadata_and_says_so(
    dataset: tuple[Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    path, x = dataset
    code, out, _ = call(capsys, "derive", path, "--nphotons", "5e5", "--json")
    assert code == 0
    record = ScaleRecord.model_validate_json(out)
    assert (record.nphotons, record.nphotons_source) == (5e5, "explicit")
    assert record.nphotons_candidates == {"explicit": 5e5, "metadata": 2e6}
    assert record.intensity_scale == pytest.approx(fsum_scale(x, 5e5), rel=1e-12)
    code, out, _ = call(capsys, "derive", path, "--nphotons", "5e5")
    assert "the file's metadata says 2e+06; overridden" in out


def test_no_nphotons_anywhere_is_an_error_unless_a_default_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.full((3, 4, 4), 0.5, np.float32)
    np.save(tmp_path / "bare.npy", x)
    code, out, err = call(capsys, "derive", tmp_path / "bare.npy")
    # A flag is missing: a usage error (2) that names the file and both flags.
    assert code == 2 and out == ""
    assert err.startswith(f"physscale: error: {tmp_path / 'bare.npy'}: nphotons is not known")
    assert "--nphotons N" in err and "--nphotons-default N" in err and err.count("\n") == 1
    np.savez(tmp_path / "meta.npz", diffraction=x, _metadata=np.array('{"other": 1}'))
    code, out, err = call(capsys, "derive", tmp_path / "meta.npz")
    assert code == 2 and '["physics_parameters"]["nphotons"]' in err and "meta.npz" in err
    record = ScaleRecord.model_validate_json(
        main_json(capsys, tmp_path / "bare.npy", "--nphotons-default", "400")
    )
    assert (record.nphotons_source, record.nphotons) == ("default", 400.0)
    # sum x**2 = 16 * 0.25 = 4 per pattern: s = sqrt(400 / 4)
    assert record.intensity_scale == pytest.approx(10.0, rel=1e-15)


def main_json(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    code, out, err = call(capsys, "derive", *args, "--json")
    assert code == 0, err
    return out


def test_metadata_beats_the_default(
    dataset: tuple[Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = dataset
    record = ScaleRecord.model_validate_json(main_json(capsys, path, "--nphotons-default", "7"))
    assert (record.nphotons_source, record.nphotons) == ("metadata", 2e6)


def test_layout_nhwc_counts_channels_as_patterns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.random.default_rng(2).random((5, 6, 6, 4)).astype(np.float32)  # (B, H, W, C)
    np.save(tmp_path / "tf.npy", x)
    record = ScaleRecord.model_validate_json(
        main_json(capsys, tmp_path / "tf.npy", "--nphotons", "1e4", "--layout", "NHWC")
    )
    assert record.n_patterns == 20 and record.pattern_shape == (6, 6)
    per_pattern = [
        math.fsum(float(v) ** 2 for v in x[b, :, :, c].astype(np.float64).ravel())
        for b in range(5)
        for c in range(4)
    ]
    expected = math.sqrt(1e4 / (math.fsum(per_pattern) / 20))
    assert record.intensity_scale == pytest.approx(expected, rel=1e-12)


def test_intensity_domain_sums_x(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(4).random((6, 5, 5)) + 0.1
    np.save(tmp_path / "i.npy", x)
    record = ScaleRecord.model_validate_json(
        main_json(capsys, tmp_path / "i.npy", "--nphotons", "1e3", "--domain", "intensity")
    )
    expected = math.sqrt(1e3 / (math.fsum(x.ravel().tolist()) / 6))
    assert record.domain == "intensity"
    assert record.intensity_scale == pytest.approx(expected, rel=1e-12)


def test_mask_excludes_pixels(
    dataset: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, x = dataset
    mask = np.ones((8, 8), bool)
    mask[:2, :] = False
    np.save(tmp_path / "mask.npy", mask)
    record = ScaleRecord.model_validate_json(
        main_json(capsys, path, "--mask", tmp_path / "mask.npy")
    )
    assert record.masked
    assert record.intensity_scale == pytest.approx(fsum_scale(x, 2e6, mask), rel=1e-12)


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (np.ones((8, 8), np.uint8), "the mask must be boolean .* got dtype uint8"),
        (np.ones((7, 8), bool), "does not fit the data"),
    ],
)
def test_bad_masks_are_errors_naming_the_mask(
    dataset: tuple[Path, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mask: np.ndarray,
    match: str,
) -> None:
    path, _ = dataset
    np.save(tmp_path / "m.npy", mask)
    code, _, err = call(capsys, "derive", path, "--mask", tmp_path / "m.npy")
    assert code == 1
    assert err.startswith(f"physscale: error: --mask {tmp_path / 'm.npy'}: ")
    assert re.search(match, err)


def test_raw_counts_warn_on_stderr_unless_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = np.random.default_rng(5).poisson(30.0, size=(4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "counts.npy", counts)
    code, _, err = call(capsys, "derive", tmp_path / "counts.npy", "--nphotons", "1e6")
    assert code == 0
    assert "physscale: warning: the data look like raw photon counts" in err
    code, _, err = call(capsys, "--quiet", "derive", tmp_path / "counts.npy", "--nphotons", "1e6")
    assert (code, err) == (0, "")


def test_wrong_key_lists_the_keys(
    dataset: tuple[Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = dataset
    code, _, err = call(capsys, "derive", path, "--key", "amplitudes")
    assert code == 1
    assert "has no array 'amplitudes'; it holds" in err and "'diffraction'" in err


def test_unwritable_out_is_exit_1(
    dataset: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = dataset
    code, _, err = call(capsys, "derive", path, "--out", tmp_path / "no" / "such" / "dir.json")
    assert code == 1
    assert err.startswith("physscale: error: ") and "No such file or directory" in err


def test_chunk_size_does_not_change_the_record(
    dataset: tuple[Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = dataset
    one = ScaleRecord.model_validate_json(main_json(capsys, path, "--chunk-patterns", "1"))
    all_ = ScaleRecord.model_validate_json(main_json(capsys, path, "--chunk-patterns", "100"))
    # Equal to float64 rounding (the per-chunk float64 sums round differently).
    assert one.intensity_scale == pytest.approx(all_.intensity_scale, rel=1e-14)
    assert one.n_patterns == all_.n_patterns == 12


# ----------------------------------------------------------------- inspect
def test_inspect_a_record_file(
    dataset: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = dataset
    call(capsys, "derive", path, "--out", tmp_path / "r.json")
    record = ScaleRecord.model_validate_json((tmp_path / "r.json").read_text())
    code, out, _ = call(capsys, "inspect", tmp_path / "r.json")
    assert code == 0
    assert "ScaleRecord" in out
    assert re.search(rf"intensity_scale\s+{re.escape(json.dumps(record.intensity_scale))}\n", out)
    code, out, _ = call(capsys, "inspect", tmp_path / "r.json", "--json")
    assert ScaleRecord.model_validate_json(out) == record


def test_inspect_an_invalid_record_is_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r.json").write_text('{"intensity_scale": -1}')
    code, _, err = call(capsys, "inspect", tmp_path / "r.json")
    assert code == 1
    assert "r.json: not a valid ScaleRecord" in err


def test_inspect_a_dataset_shows_arrays_and_metadata(
    dataset: tuple[Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = dataset
    code, out, _ = call(capsys, "inspect", path)
    assert code == 0
    assert "diffraction  shape (12, 8, 8)  dtype float32" in out
    assert '"nphotons": 2000000.0' in out and "nphotons (metadata): 2000000.0" in out
    code, out, _ = call(capsys, "inspect", path, "--json")
    payload = json.loads(out)
    assert payload["kind"] == "npz" and payload["nphotons"] == 2e6
    assert {"name": "diffraction", "shape": [12, 8, 8], "dtype": "<f4", "fortran_order": False} in (
        payload["arrays"]
    )


def test_inspect_npy_and_hdf5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h5py = pytest.importorskip("h5py")
    np.save(tmp_path / "a.npy", np.ones((3, 4, 4), np.float64))
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("entry/diffraction", data=np.ones((3, 4, 4), np.float32))
        f.attrs["_metadata"] = json.dumps({"physics_parameters": {"nphotons": 9.0}})
    code, out, _ = call(capsys, "inspect", tmp_path / "a.npy")
    assert code == 0 and "shape (3, 4, 4)  dtype float64" in out and "metadata: none" in out
    code, out, _ = call(capsys, "inspect", tmp_path / "a.h5")
    assert code == 0 and "/entry/diffraction" in out and "nphotons (metadata): 9.0" in out


def test_inspect_a_bundle_shows_record_and_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from physscale.io import save_bundle

    record = physscale.closed_form_scale_record(1e6, 64)
    save_bundle(tmp_path / "m.physscale.zip", {"w": torch.ones(2)}, record, epoch=3)
    code, out, _ = call(capsys, "inspect", tmp_path / "m.physscale.zip")
    assert code == 0
    assert "bundle" in out and "record:" in out and "manifest:" in out
    assert re.search(rf"intensity_scale\s+{re.escape(json.dumps(record.intensity_scale))}\n", out)
    code, out, _ = call(capsys, "inspect", tmp_path / "m.physscale.zip", "--json")
    payload = json.loads(out)
    assert payload["kind"] == "bundle"
    assert ScaleRecord.model_validate(payload["record"]) == record
    assert "state_dict.pt" in json.dumps(payload["manifest"])


def test_inspect_a_tampered_bundle_is_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from physscale.io import save_bundle

    path = tmp_path / "m.physscale.zip"
    save_bundle(path, {"w": torch.ones(2)}, physscale.closed_form_scale_record(1e6, 64))
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members["record.json"] = members["record.json"].replace(b"1000000.0", b"2000000.0")
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    code, out, err = call(capsys, "inspect", path)
    assert (code, out) == (1, "")
    assert err.startswith("physscale: error: ") and err.count("\n") == 1
    assert "record.json" in err


def _damage_central_directory(path: Path) -> None:
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")  # the end record stays intact
    at = int.from_bytes(data[end + 16 : end + 20], "little")  # where the directory starts
    assert data[at : at + 4] == b"PK\x01\x02" and zipfile.is_zipfile(path)
    data[at : at + 4] = b"XX\x01\x02"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["npz", "bundle"])
def test_inspect_a_zip_with_a_damaged_central_directory_is_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    path = tmp_path / "badcd.zip"
    if what == "npz":
        with open(path, "wb") as f:
            np.savez(f, diffraction=np.ones((2, 4, 4), np.float32))
    else:
        import torch

        from physscale.io import save_bundle

        save_bundle(path, {"w": torch.ones(2)}, physscale.closed_form_scale_record(1e6, 64))
    _damage_central_directory(path)
    code, out, err = call(capsys, "inspect", path)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert re.fullmatch(
        rf"physscale: error: {re.escape(str(path))}: not a readable zip archive .*"
        r"\(Bad magic number for central directory\)\n",
        err,
    )


def test_zip_errors_from_deeper_code_are_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import physscale.io
    from physscale.io import save_bundle

    path = tmp_path / "m.physscale.zip"
    save_bundle(path, {"w": torch.ones(2)}, physscale.closed_form_scale_record(1e6, 64))
    for exc in (zipfile.BadZipFile("Bad CRC-32"), zlib.error("invalid stored block lengths")):

        def broken(*args: Any, exc: Exception = exc, **kwargs: Any) -> Any:
            raise exc

        monkeypatch.setattr(physscale.io, "load_bundle", broken)
        code, out, err = call(capsys, "inspect", path)
        assert (code, out) == (1, "")
        assert err == f"physscale: error: {path}: corrupt or truncated archive ({exc})\n"


def test_extended_precision_data_is_a_one_line_error_naming_file_and_dtype(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.ones((2, 4, 4), np.longdouble)
    if x.dtype.itemsize in (2, 4, 8):
        pytest.skip("longdouble is a plain float on this platform")
    np.save(tmp_path / "xld.npy", x)
    code, out, err = call(capsys, "derive", tmp_path / "xld.npy", "--nphotons", "1e6")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(f"physscale: error: {tmp_path / 'xld.npy'}: patterns must be float16")
    assert f"dtype {x.dtype}" in err


# ----------------------------------------------------------------- hostile files (issue 11)
def _one_error_line(err: str) -> str:
    """The single `physscale: error:` line of a failed run; every line is ours."""
    lines = err.splitlines()
    assert lines and all(line.startswith("physscale: ") for line in lines), err[:2000]
    errors = [line for line in lines if line.startswith("physscale: error: ")]
    assert len(errors) == 1, err[:2000]
    return errors[0]


def test_derive_on_a_0d_npy_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The progress total was taken from shape[0] before the rank check: IndexError.
    np.save(tmp_path / "scalar.npy", np.float32(3.0))
    code, _, err = call(capsys, "derive", tmp_path / "scalar.npy", "--nphotons", "1e6")
    assert code == 1
    assert "expected a stack of patterns with at least 3 axes" in _one_error_line(err)


def test_inspect_dev_zero_is_refused_at_once() -> None:
    # zipfile.is_zipfile read /dev/zero until MemoryError.
    result = run("inspect", "/dev/zero")
    assert result.returncode == 1
    assert _one_error_line(result.stderr) == (
        "physscale: error: /dev/zero: is a character device, not a regular file; physscale "
        "reads data only from regular files (copy the data into one first)"
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize(
    "args",
    [
        ("inspect", "{fifo}"),
        ("derive", "{fifo}", "--nphotons", "1e6"),
        ("derive", "{data}", "--mask", "{fifo}"),
        ("derive", "{data}", "--out", "{fifo}"),
    ],
)
def test_a_fifo_never_blocks_the_command(
    dataset: tuple[Path, np.ndarray], tmp_path: Path, args: tuple[str, ...]
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    argv = [a.format(fifo=fifo, data=dataset[0]) for a in args]
    try:
        result = run(*argv, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"physscale {' '.join(argv)} blocked on the FIFO")
    assert result.returncode == 1
    assert "not a regular file" in _one_error_line(result.stderr)


def test_a_failed_out_write_keeps_the_previous_record(
    dataset: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    # A failed write turned the previous record into 0 bytes. Here the file size
    # limit (RLIMIT_FSIZE) makes the write fail part way, as a full disk would.
    out = tmp_path / "record.json"
    out.write_text("previous record\n")
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
from physscale.cli import main
sys.exit(main(["derive", {str(dataset[0])!r}, "--out", {str(out)!r}]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result.stderr)
    assert "File too large" in line
    assert str(out) in line  # once only "File too large", naming no file
    assert out.read_text() == "previous record\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_multiline_warning_is_one_line_on_stderr(tmp_path: Path) -> None:
    # torch warns about a pickle protocol other than its default: shown by Python's
    # default hook, that is two lines (the message, then the source line).
    import torch

    from physscale.io import bundle as bundle_module
    from physscale.io import save_bundle

    record = physscale.derive_scale_record(
        np.random.default_rng(1).random((4, 8, 8)), nphotons=1e6, data_source="t"
    )
    original = bundle_module._state_dict_bytes

    def protocol_3(state: Any) -> bytes:
        buffer = io.BytesIO()
        torch.save(dict(state), buffer, pickle_protocol=3)
        return buffer.getvalue()

    bundle_module._state_dict_bytes = protocol_3  # type: ignore[assignment]
    try:
        path = save_bundle(tmp_path / "p3.zip", {"w": torch.ones(2)}, record)
    finally:
        bundle_module._state_dict_bytes = original  # type: ignore[assignment]
    result = run("inspect", path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("physscale: warning: ") for line in lines), lines
    assert any("pickle protocol 3" in line for line in lines)


def test_a_mask_larger_than_a_pattern_is_refused_from_its_header(
    dataset: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A sparse 4 GiB mask was read whole (4.3 GB, 19 s) before its shape was refused.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|b1", "fortran_order": False, "shape": (4096, 4096, 64)}
    )
    mask = tmp_path / "huge.npy"
    mask.write_bytes(header.getvalue())  # the header only: nothing behind it is read
    code, _, err = call(capsys, "derive", dataset[0], "--mask", mask)
    assert code == 1
    assert re.search(r"--mask .*huge\.npy: the mask has shape \(4096, 4096, 64\)", err)


def test_a_three_axis_channels_last_file_read_in_chunks_counts_whole_patterns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # (H, W, C) as NHWC: the first axis is a spatial one, so no chunk of it holds a
    # whole pattern. Chunks of 8 rows used to count patterns of 8 x 16 pixels.
    x = np.random.default_rng(4).gamma(2.0, 0.5, size=(32, 16, 3)).astype(np.float32)
    np.save(tmp_path / "hwc.npy", x)
    args = ("--nphotons", "1e6", "--layout", "NHWC", "--chunk-patterns", "8")
    record = ScaleRecord.model_validate_json(main_json(capsys, tmp_path / "hwc.npy", *args))
    assert (record.n_patterns, record.pattern_shape) == (3, (32, 16))
    total = math.fsum(float(v) ** 2 for v in x.astype(np.float64).ravel())
    assert record.intensity_scale == pytest.approx(math.sqrt(1e6 * 3 / total), rel=1e-12)


def test_a_pattern_larger_than_a_chunk_is_derived_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One 2100 x 2100 float32 pattern (17.6 MB) is more than a 16 MiB chunk: it is
    # read and summed in pieces.
    x = np.random.default_rng(8).random((2, 1, 2100, 2100), dtype=np.float32)
    np.save(tmp_path / "wide.npy", x)
    record = ScaleRecord.model_validate_json(
        main_json(capsys, tmp_path / "wide.npy", "--nphotons", "1e6")
    )
    assert (record.n_patterns, record.pattern_shape) == (2, (2100, 2100))
    total = math.fsum(np.square(x.astype(np.float64)).sum(axis=(-2, -1)).ravel())
    assert record.intensity_scale == pytest.approx(math.sqrt(1e6 * 2 / total), rel=1e-12)


def test_an_unexpected_exception_is_still_one_line(
    dataset: tuple[Path, np.ndarray],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import physscale.cli.derive as derive_command

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(derive_command, "run", broken)
    code, _, err = call(capsys, "derive", dataset[0])
    assert code == 1
    assert _one_error_line(err) == (
        "physscale: error: unexpected RuntimeError (first line second line); this is a "
        "physscale bug: please report it with the output of --debug"
    )


def test_library_errors_are_worded_with_the_flags_unless_edited_since() -> None:
    # The library carries the options apart (a Wording); the command renders them
    # as its flags. Braces in the facts are facts, not fields.
    import pickle

    from physscale.cli.messages import in_our_words
    from physscale.errors import NphotonsError, Wording

    exc = NphotonsError(Wording("{path}: pass {nphotons}", {"nphotons": "nphotons="},
                                path="scan{0}.npy"), parameter="nphotons")  # fmt: skip
    assert str(exc) == "scan{0}.npy: pass nphotons=" and exc.parameter == "nphotons"
    assert in_our_words(exc) == "scan{0}.npy: pass --nphotons N"
    again = pickle.loads(pickle.dumps(exc))
    assert in_our_words(again) == in_our_words(exc) and again.parameter == "nphotons"
    # A message edited after raising no longer matches its wording: shown as it is.
    exc.args = (f"while reading: {exc}",)
    assert in_our_words(exc) == "while reading: scan{0}.npy: pass nphotons="
