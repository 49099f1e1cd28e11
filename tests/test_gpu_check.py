"""benchmarks/gpu_check.py runs on the CPU in CI, so the GPU check cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
if not SCRIPT.is_file():  # pragma: no cover - an installed test tree
    pytest.skip("needs the source tree (benchmarks/)", allow_module_level=True)
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402

#: What a benchmark that the loss helper has not landed yet may report.
NOT_YET = {"missing", "unsupported"}


@pytest.fixture(scope="module")
def cpu_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu_check") / "results.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
        cwd=tmp_path_factory.getbasetemp(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"results: {out}" in proc.stdout
    results: dict[str, Any] = json.loads(out.read_text())
    return results


@pytest.mark.slow
def test_the_cpu_run_covers_every_step(cpu_results: dict[str, Any]) -> None:
    steps = cpu_results["steps"]
    assert list(steps) == ["tests", "all_reduce", *gpu_check.BENCHMARKS]
    assert cpu_results["device"] == "cpu" and cpu_results["quick"] is True
    assert cpu_results["ok"] is True
    assert all(step["seconds"] >= 0 for step in steps.values())


@pytest.mark.slow
def test_the_cuda_tests_collect_and_skip_cleanly_without_a_gpu(
    cpu_results: dict[str, Any],
) -> None:
    tests = cpu_results["steps"]["tests"]
    assert tests["status"] == "passed"
    assert tests["failed"] == 0 and tests["errors"] == 0
    assert tests["skipped"] >= 1  # at least this project's own cuda tests exist
    assert any("test_device_sum.py" in reason for reason in tests["skip_reasons"])


@pytest.mark.slow
def test_all_reduce_over_gloo_matches_one_process_bit_for_bit(
    cpu_results: dict[str, Any],
) -> None:
    step = cpu_results["steps"]["all_reduce"]
    assert step["status"] == "passed"
    assert (step["backend"], step["world_size"]) == ("gloo", 2)
    assert step["bitwise_equal_to_one_process_on_every_rank"] is True
    assert step["rel_err_vs_fsum"] <= 1e-14


@pytest.mark.slow
def test_the_derive_benchmark_reports_its_ratios(cpu_results: dict[str, Any]) -> None:
    step = cpu_results["steps"]["bench_derive"]
    assert step["status"] == "passed"
    result = step["result"]
    assert result["benchmark"] == "derive" and result["device"] == "cpu"
    assert result["floor_ratio"]["derive"] > 0
    assert result["rel_err"]["derive"] <= 1e-14
    targets = cpu_results["targets"]
    assert targets["derive_floor_ratio"] == result["floor_ratio"]["derive"]
    assert targets["derive_extra_mib"] == result["extra_mib"]["derive"]
    assert targets["bench_derive"]["floor_ratio_max"] == 1.3


@pytest.mark.slow
def test_the_loss_benchmarks_run_or_are_reported_as_not_there_yet(
    cpu_results: dict[str, Any],
) -> None:
    for name in ("bench_likelihood", "bench_train_step"):
        step = cpu_results["steps"][name]
        assert step["status"] in {"passed", *NOT_YET}, step
        if step["status"] == "passed":
            assert isinstance(step["result"], dict)
        else:
            assert cpu_results["targets"][name] == {"met": None, "why": step["status"]}


# ------------------------------------------------------------ one benchmark's outcomes
@pytest.fixture
def fake_benchmarks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(gpu_check, "HERE", tmp_path)
    return tmp_path


def write(path: Path, body: str) -> None:
    path.write_text("import argparse, json, sys\n" + body)


def test_a_missing_benchmark_is_reported_not_raised(fake_benchmarks: Path) -> None:
    out = gpu_check.run_benchmark("bench_train_step", "cpu", True)
    assert out == {
        "status": "missing",
        "reason": "benchmarks/bench_train_step.py does not exist yet",
    }


def test_a_benchmark_without_device_is_unsupported(fake_benchmarks: Path) -> None:
    write(fake_benchmarks / "bench_x.py", "argparse.ArgumentParser().parse_args()\n")
    out = gpu_check.run_benchmark("bench_x", "cpu", True)
    assert out["status"] == "unsupported"
    assert "does not take --device cpu --quick" in out["reason"]


def test_a_crashing_benchmark_or_one_without_json_fails(fake_benchmarks: Path) -> None:
    write(fake_benchmarks / "bench_crash.py", "raise SystemExit(3)\n")
    write(fake_benchmarks / "bench_text.py", "print('no json here')\n")
    crash = gpu_check.run_benchmark("bench_crash", "cpu", True)
    text = gpu_check.run_benchmark("bench_text", "cpu", True)
    assert (crash["status"], crash["returncode"]) == ("failed", 3)
    assert (text["status"], text["reason"]) == ("failed", "no JSON object on the last line")


def test_a_benchmark_json_line_and_its_targets_are_collected(fake_benchmarks: Path) -> None:
    write(
        fake_benchmarks / "bench_likelihood.py",
        "print('table')\nprint(json.dumps({'argv': sys.argv[1:], "
        "'targets': {'met': False, 'ratio': 0.9}}))\n",
    )
    step = gpu_check.run_benchmark("bench_likelihood", "cuda", False)
    assert step["status"] == "passed"
    assert step["result"]["argv"] == ["--device", "cuda"]
    targets = gpu_check._targets({"bench_likelihood": step})
    assert targets["bench_likelihood"] == {"met": False, "ratio": 0.9}
    assert targets["bench_derive"] == {"met": None, "why": "not run"}


def test_without_a_gpu_the_cuda_run_refuses_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "r.json")]) == 2
    assert "use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_a_step_past_its_time_fails_and_steps_past_the_budget_are_skipped(
    fake_benchmarks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    write(fake_benchmarks / "bench_slow.py", "import time\ntime.sleep(30)\n")
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0.5)
    slow = gpu_check._timed(
        gpu_check.run_benchmark,
        "bench_slow",
        "cpu",
        True,
        limit=1.0,
        deadline=time.monotonic() + 60,
    )
    assert slow["status"] == "failed" and "timed out after 1.0 s" in slow["reason"]
    assert slow["seconds"] < 10
    late = gpu_check._timed(
        gpu_check.run_benchmark, "bench_slow", "cpu", True, limit=60, deadline=time.monotonic()
    )
    assert late["status"] == "skipped" and "out of time" in late["reason"]
