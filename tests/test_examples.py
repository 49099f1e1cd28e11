"""The example scripts run end to end (CI executes them through these tests)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import physscale as ps
from physscale.io import load_bundle

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, out: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONWARNINGS": "error::UserWarning", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _losses(stdout: str) -> tuple[float, float]:
    match = re.search(r"loss (\S+) -> (\S+) in", stdout)
    assert match, stdout
    return float(match[1]), float(match[2])


def test_amplitude_model_example_trains_saves_and_reloads(tmp_path: Path) -> None:
    stdout = _run("train_amplitude_model.py", tmp_path, "--steps", "8")
    first, last = _losses(stdout)
    assert last < first
    bundle = load_bundle(tmp_path / "amplitude_model.physscale.zip")
    record = bundle.record
    assert record.method == "trained"
    assert record.nphotons_source == "metadata"
    assert record.initial_intensity_scale is not None
    assert record.intensity_scale != record.initial_intensity_scale
    # The stored trained scale is the exp of the saved log-scale parameter.
    log_scale = bundle.state_dict["scaler.log_scale"]
    assert math.exp(float(log_scale.double())) == pytest.approx(record.intensity_scale, rel=1e-12)
    assert bundle.extra == {"model": "AmplitudeNet", "steps": 8}
    assert "reloaded outputs match" in stdout


def test_forward_model_example_refines_object_and_reloads(tmp_path: Path) -> None:
    stdout = _run("forward_model_intensity.py", tmp_path, "--steps", "10")
    first, last = _losses(stdout)
    assert last < first
    bundle = load_bundle(tmp_path / "forward_model.physscale.zip")
    assert bundle.record.method == "derived"
    assert bundle.record.domain == "intensity"
    assert bundle.record.masked
    assert set(bundle.state_dict) == {"probe", "object_ri"}
    assert bundle.state_dict["probe"].dtype == torch.complex64
    # Simulated at 1e5 photons per pattern with sum|P|^2 = (N/2)**2: s is near sqrt(1e5)/16.
    assert bundle.record.intensity_scale == pytest.approx(
        ps.closed_form_intensity_scale(1e5, 32), rel=0.01
    )
    assert bundle.extra["pattern_side"] == 32
