"""The build hook (hatch_build.py): the native kernel goes into the wheel or is left out cleanly."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from physscale.core.kernels import native as _native

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "hatch_build.py").is_file():  # pragma: no cover - an installed test tree
    pytest.skip("needs the source tree (hatch_build.py)", allow_module_level=True)
sys.path.insert(0, str(ROOT))
import hatch_build  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no native kernel on Windows")
has_compiler = shutil.which(hatch_build._compiler()[0]) is not None


def build_wheel(tmp_path: Path) -> zipfile.ZipFile:
    wheel = pytest.importorskip("hatchling.builders.wheel")
    builder = wheel.WheelBuilder(str(ROOT))
    path = next(builder.build(directory=str(tmp_path), versions=["standard"]))
    return zipfile.ZipFile(path)


def wheel_tag(whl: zipfile.ZipFile) -> str:
    meta = next(n for n in whl.namelist() if n.endswith(".dist-info/WHEEL"))
    lines = whl.read(meta).decode().splitlines()
    return next(line.removeprefix("Tag: ") for line in lines if line.startswith("Tag: "))


def test_a_missing_compiler_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    error = hatch_build._compile(ROOT / hatch_build.SOURCE, tmp_path / "k.so")
    assert error is not None
    assert "no-such-cc" in error


@pytest.mark.skipif(not has_compiler, reason="no C compiler")
def test_the_compiled_library_loads_and_sums_like_the_installed_one(tmp_path: Path) -> None:
    out = tmp_path / "_native_kernel.so"
    assert hatch_build._compile(ROOT / hatch_build.SOURCE, out) is None
    lib = _native.load(out)
    assert lib is not None
    x = torch.rand(1000, dtype=torch.float64)
    res = (_native._DOUBLE3)()
    lib.physscale_reduce_f64(x.data_ptr(), x.numel(), 1, res)
    assert res[0] + res[1] == pytest.approx(float(torch.dot(x, x)), rel=1e-14)
    assert res[2] == float(x.min())


@pytest.mark.skipif(not has_compiler, reason="no C compiler")
def test_the_wheel_carries_the_kernel_and_a_platform_tag(tmp_path: Path) -> None:
    with build_wheel(tmp_path) as whl:
        assert hatch_build.TARGET in whl.namelist()
        tag = wheel_tag(whl)
    assert tag.startswith("py3-none-")
    assert tag != "py3-none-any"


def test_a_wheel_build_leaves_no_scratch_folder_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel is compiled into a scratch folder the wheel copies from; every
    # build used to leave one in the temporary directory.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with build_wheel(tmp_path / "out") as whl:
        assert hatch_build.OUTCOME in whl.namelist()
    assert list(scratch.iterdir()) == []


def test_without_the_kernel_the_wheel_is_pure_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHYSSCALE_NATIVE", "0")
    monkeypatch.delenv("PHYSSCALE_REQUIRE_NATIVE", raising=False)
    with build_wheel(tmp_path) as whl:
        assert not any("_native_kernel" in n for n in whl.namelist())
        assert wheel_tag(whl) == "py3-none-any"


def test_a_failed_compile_falls_back_unless_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.delenv("PHYSSCALE_REQUIRE_NATIVE", raising=False)
    with build_wheel(tmp_path / "a") as whl:
        assert wheel_tag(whl) == "py3-none-any"
    err = capsys.readouterr().err
    assert "no native kernel" in err
    assert "no-such-cc" in err
    assert "physscale doctor" in err
    monkeypatch.setenv("PHYSSCALE_REQUIRE_NATIVE", "1")
    with pytest.raises(RuntimeError, match=r"(?s)no-such-cc.*PHYSSCALE_REQUIRE_NATIVE=1"):
        build_wheel(tmp_path / "b")


def test_a_failed_editable_rebuild_leaves_no_stale_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("hatchling")
    tree = tmp_path / "tree"
    source = tree / hatch_build.SOURCE
    source.parent.mkdir(parents=True)
    shutil.copy(ROOT / hatch_build.SOURCE, source)
    stale = tree / "src" / hatch_build.TARGET
    stale.write_bytes(b"an old build")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.delenv("PHYSSCALE_REQUIRE_NATIVE", raising=False)
    hook = hatch_build.NativeKernelHook(str(tree), {}, None, None, str(tmp_path), "wheel")
    build_data: dict[str, object] = {"force_include": {}}
    hook.initialize("editable", build_data)
    assert not stale.exists()
    assert "tag" not in build_data  # stays a pure-Python wheel
    # The editable install imports from src/: the outcome is recorded there.
    outcome = json.loads((tree / "src" / hatch_build.OUTCOME).read_text())
    assert outcome["built"] is False
    assert "no-such-cc" in outcome["reason"]


# --------------------------------------------------------------------------- the recorded outcome
def recorded_outcome(whl: zipfile.ZipFile) -> dict[str, object]:
    outcome: dict[str, object] = json.loads(whl.read(hatch_build.OUTCOME))
    return outcome


@pytest.mark.skipif(not has_compiler, reason="no C compiler")
def test_a_wheel_with_the_kernel_records_the_compiler_that_built_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PHYSSCALE_NATIVE", raising=False)
    with build_wheel(tmp_path) as whl:
        outcome = recorded_outcome(whl)
    assert outcome["built"] is True
    assert outcome["status"] == "built"
    assert outcome["compiler"] == shlex.join(hatch_build._compiler())
    assert str(outcome["reason"]).startswith("compiled with ")


def test_a_wheel_without_the_kernel_records_why_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", f"{tmp_path / 'no-such-cc'} -O2")
    monkeypatch.delenv("PHYSSCALE_REQUIRE_NATIVE", raising=False)
    monkeypatch.delenv("PHYSSCALE_NATIVE", raising=False)
    with build_wheel(tmp_path) as whl:
        outcome = recorded_outcome(whl)
    assert outcome["built"] is False
    assert outcome["status"] == "compile-failed"
    assert outcome["compiler"] == f"{tmp_path / 'no-such-cc'} -O2"
    reason = str(outcome["reason"])
    assert "could not compile" in reason
    assert "no-such-cc" in reason
    assert "\n" not in reason


def test_the_pure_wheel_records_that_the_kernel_was_left_out_on_purpose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHYSSCALE_NATIVE", "0")
    monkeypatch.delenv("PHYSSCALE_REQUIRE_NATIVE", raising=False)
    with build_wheel(tmp_path) as whl:
        outcome = recorded_outcome(whl)
    assert outcome["built"] is False
    assert outcome["status"] == "disabled"
    assert "PHYSSCALE_NATIVE=0" in str(outcome["reason"])


# --------------------------------------------------------------------------- compiler search
REAL_CC = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
needs_real_cc = pytest.mark.skipif(REAL_CC is None, reason="no C compiler")


def _shim(bin_dir: Path, name: str, log: Path) -> Path:
    """A fake compiler ``name`` in ``bin_dir`` that logs its name and runs the real one."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    real = REAL_CC or "false"
    # The real compiler runs with the original PATH so it finds its assembler and linker.
    path.write_text(
        f'#!/bin/sh\necho {name} >> "{log}"\nPATH="{os.environ["PATH"]}" exec "{real}" "$@"\n'
    )
    path.chmod(0o755)
    return path


@pytest.fixture
def only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Make PATH hold only the named fake compilers; $CC unset, Python's CC missing."""

    def setup(*names: str, python_cc: str = "x86_64-conda-linux-gnu-cc") -> Path:
        bin_dir = tmp_path / "bin"
        log = tmp_path / "calls.log"
        for name in names:
            _shim(bin_dir, name, log)
        bin_dir.mkdir(exist_ok=True)
        monkeypatch.setenv("PATH", str(bin_dir))
        monkeypatch.delenv("CC", raising=False)
        real = sysconfig.get_config_var
        monkeypatch.setattr(
            sysconfig, "get_config_var", lambda name: python_cc if name == "CC" else real(name)
        )
        return log

    return setup


@needs_real_cc
def test_with_only_cc_on_path_and_no_cc_variable_the_kernel_is_built(
    tmp_path: Path, only: Callable[..., Path]
) -> None:
    log = only("cc")
    out = tmp_path / "k.so"
    assert hatch_build._compile(ROOT / hatch_build.SOURCE, out) is None
    assert out.is_file()
    assert log.read_text().split()[0] == "cc"


@pytest.mark.parametrize(
    ("on_path", "python_cc", "expected"),
    [
        (["cc", "gcc", "clang"], "missing-cc", "cc"),
        (["gcc", "clang"], "missing-cc", "gcc"),
        (["clang"], "missing-cc", "clang"),
        (["cc", "gcc", "pycc"], "pycc -pthread", "pycc"),  # Python's CC when it exists
        (["gcc"], "", "gcc"),  # Python built without a CC
    ],
)
def test_the_compiler_search_follows_the_documented_order(
    only: Callable[..., Path], on_path: list[str], python_cc: str, expected: str
) -> None:
    only(*on_path, python_cc=python_cc)
    assert Path(hatch_build._compiler()[0]).name == expected


def test_an_explicit_cc_variable_is_used_as_given(
    tmp_path: Path, only: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    only("cc", "gcc")
    monkeypatch.setenv("CC", f"{tmp_path / 'bin' / 'gcc'} -m64")
    assert hatch_build._compiler() == [str(tmp_path / "bin" / "gcc"), "-m64"]


def test_with_no_compiler_at_all_the_build_says_what_it_looked_for(
    only: Callable[..., Path],
) -> None:
    only(python_cc="x86_64-conda-linux-gnu-cc")
    outcome = hatch_build.build_kernel(ROOT / hatch_build.SOURCE, Path("unused.so"))
    assert not outcome.built
    assert outcome.status == "no-compiler"
    assert outcome.compiler is None
    assert "no C compiler found" in outcome.reason
    for looked_for in ("$CC", "x86_64-conda-linux-gnu-cc", "cc", "gcc", "clang"):
        assert looked_for in outcome.reason
    assert "\n" not in outcome.reason


# --------------------------------------------------------------------------- the sdist
def test_the_sdist_carries_the_kernel_source_and_no_build_product(tmp_path: Path) -> None:
    sdist = pytest.importorskip("hatchling.builders.sdist")
    builder = sdist.SdistBuilder(str(ROOT))
    path = next(builder.build(directory=str(tmp_path), versions=["standard"]))
    with tarfile.open(path) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"src/physscale/core/kernels/native.c", "hatch_build.py", "pyproject.toml"} <= names
    assert "src/physscale/cli/doctor.py" in names
    # An editable install leaves both in src/physscale; a wheel built from the
    # sdist must compile its own.
    assert not any(n.endswith(("_native_kernel.so", "_native_build.json")) for n in names)
