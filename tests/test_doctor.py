"""``physscale doctor`` and ``--version``: which kernel runs and, if not the native one, why.

The build hook (hatch_build.py) records its outcome in the package
(``physscale/_native_build.json``); these tests point the doctor at recorded
outcomes of each kind and at a library file that is absent or broken.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy
import pydantic
import pytest
import torch

import physscale as ps
from physscale.cli import doctor, main
from physscale.core.kernels import native as _native

NO_COMPILER = {
    "built": False,
    "status": "no-compiler",
    "compiler": None,
    "reason": "no C compiler found (looked for $CC (unset), Python's CC 'x86_64-conda-linux-gnu-cc'"
    " (not found), cc (not on PATH), gcc (not on PATH), clang (not on PATH))",
    "searched": [],
    "platform": "linux-x86_64",
}


@pytest.fixture
def no_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installation without the library; returns the path of its build record."""
    monkeypatch.setattr(_native, "library", lambda: None)
    monkeypatch.delenv("PHYSSCALE_NATIVE", raising=False)
    monkeypatch.setattr(doctor, "LIBRARY", tmp_path / "_native_kernel.so")
    record = tmp_path / "_native_build.json"
    monkeypatch.setattr(doctor, "BUILD_RECORD", record)
    return record


def recorded(path: Path, **fields: Any) -> None:
    path.write_text(json.dumps({**NO_COMPILER, **fields}))


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- --version
def test_version_says_in_one_line_why_there_is_no_native_kernel(
    no_kernel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded(no_kernel)
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0
    assert out.count("\n") == 1
    assert out.startswith(f"physscale {ps.__version__} (eager kernel only: ")
    assert "no C compiler was found when physscale was installed" in out
    assert "physscale doctor" in out


def test_version_names_the_native_kernel_when_it_is_in_use(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not _native.available():
        pytest.skip("the native kernel is not built in this installation")
    code, out, _ = run_cli(capsys, "--version")
    assert (code, out) == (0, f"physscale {ps.__version__} (native kernel)\n")


# --------------------------------------------------------------------------- the kernel
def test_doctor_without_a_compiler_says_why_and_how_to_get_the_kernel(
    no_kernel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded(no_kernel)
    code, out, err = run_cli(capsys, "doctor")
    assert code == 0
    assert err == ""
    assert "kernel      eager" in out
    assert NO_COMPILER["reason"] in out
    assert "install a C compiler" in out
    assert "--no-binary physscale" in out  # rebuild from source
    assert "manylinux" in out  # or take a wheel that carries the kernel


def test_doctor_after_a_failed_compile_names_the_compiler_and_its_error(
    no_kernel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = (
        "cc could not compile src/physscale/core/kernels/native.c: error: unknown type name 'x'"
    )
    recorded(no_kernel, status="compile-failed", compiler="cc", reason=reason)
    status = doctor.kernel_status()
    assert (status.kernel, status.reason) == ("eager", reason)
    assert status.remedy is not None and "CC=" in status.remedy
    assert "cc failed to compile it" in doctor.version_line()


def test_doctor_on_the_pure_wheel_says_it_was_left_out_on_purpose(no_kernel: Path) -> None:
    recorded(
        no_kernel,
        status="disabled",
        reason="left out on purpose (PHYSSCALE_NATIVE=0 at build time)",
    )
    status = doctor.kernel_status()
    assert status.kernel == "eager"
    assert "PHYSSCALE_NATIVE=0 at build time" in str(status.reason)
    assert "pure-Python wheel" in doctor.version_line()
    assert status.remedy is not None and "manylinux" in status.remedy


def test_doctor_without_a_build_record_says_so(no_kernel: Path) -> None:
    status = doctor.kernel_status()
    assert status.kernel == "eager"
    assert "no build record" in str(status.reason)
    assert status.remedy is not None and "reinstall" in status.remedy


def test_doctor_names_the_run_time_switch(no_kernel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded(no_kernel, built=True, status="built", compiler="cc", reason="compiled with cc")
    doctor.LIBRARY.write_bytes(b"")  # present, but switched off
    monkeypatch.setenv("PHYSSCALE_NATIVE", "0")
    status = doctor.kernel_status()
    assert status.kernel == "eager"
    assert "PHYSSCALE_NATIVE=0" in str(status.reason)
    assert status.remedy is not None and "unset PHYSSCALE_NATIVE" in status.remedy


def test_doctor_reports_a_library_that_cannot_be_loaded(no_kernel: Path) -> None:
    recorded(no_kernel, built=True, status="built", compiler="cc", reason="compiled with cc")
    doctor.LIBRARY.write_bytes(b"not an ELF file")
    status = doctor.kernel_status()
    assert status.kernel == "eager"
    assert "could not be loaded" in str(status.reason)
    assert str(doctor.LIBRARY) in str(status.reason)
    assert status.remedy is not None and "reinstall" in status.remedy


def test_doctor_with_the_native_kernel_names_the_library_and_its_compiler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not _native.available():
        pytest.skip("the native kernel is not built in this installation")
    status = doctor.kernel_status()
    assert status.kernel == "native"
    assert status.reason is None and status.remedy is None
    assert status.library == str(Path(_native.__file__).with_name(_native.LIBRARY_NAME))
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0
    assert "kernel      native" in out
    assert status.library in out


# --------------------------------------------------------------------------- the rest of the report
def test_the_report_gives_the_versions_threads_devices_and_validation_state() -> None:
    with ps.validation(False):
        report = doctor.report()
    assert report["physscale"]["version"] == ps.__version__
    assert report["torch"]["version"] == torch.__version__
    assert report["numpy"] == numpy.__version__
    assert report["pydantic"] == pydantic.VERSION
    assert report["torch"]["intra_op_threads"] == torch.get_num_threads()
    assert report["torch"]["inter_op_threads"] == torch.get_num_interop_threads()
    assert report["torch"]["cuda_devices"] == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0
    )
    assert report["validation"] is False
    assert doctor.report()["validation"] is True


@pytest.mark.parametrize("name", ["h5py", "lightning", "matplotlib", "tqdm", "tensorflow"])
def test_the_report_says_which_optional_packages_are_installed(name: str) -> None:
    found = importlib.util.find_spec(name) is not None
    entry = doctor.report()["optional"][name]
    assert entry["installed"] is found
    if found:
        # The distributions that install these modules, by name (tensorflow-cpu for parity).
        versions = set()
        for dist in (name, f"{name}-cpu"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions.add(importlib.metadata.version(dist))
        assert entry["version"] in versions


def test_doctor_json_is_the_report_and_the_text_shows_each_part(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, "doctor", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["physscale"]["version"] == ps.__version__
    assert payload["kernel"]["kernel"] in {"native", "eager"}
    code, text, _ = run_cli(capsys, "doctor")
    assert code == 0
    for part in ("physscale", "torch", "numpy", "pydantic", "kernel", "validation", "tensorflow"):
        assert part in text
