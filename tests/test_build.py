"""The build hook (hatch_build.py): the native kernel goes into the wheel or is left out cleanly."""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from physscale import _native

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
        assert "physscale/_native_kernel.so" in whl.namelist()
        tag = wheel_tag(whl)
    assert tag.startswith("py3-none-")
    assert tag != "py3-none-any"


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
    assert "could not compile the native kernel" in capsys.readouterr().err
    monkeypatch.setenv("PHYSSCALE_REQUIRE_NATIVE", "1")
    with pytest.raises(RuntimeError, match="could not compile the native kernel"):
        build_wheel(tmp_path / "b")


def test_a_failed_editable_rebuild_leaves_no_stale_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("hatchling")
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "csrc", tree / "csrc")
    stale = tree / "src" / hatch_build.TARGET
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an old build")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.delenv("PHYSSCALE_REQUIRE_NATIVE", raising=False)
    hook = hatch_build.NativeKernelHook(str(tree), {}, None, None, str(tmp_path), "wheel")
    build_data: dict[str, object] = {"force_include": {}}
    hook.initialize("editable", build_data)
    assert not stale.exists()
    assert "tag" not in build_data  # stays a pure-Python wheel
