"""Progress of physscale derive: tqdm bars over bytes and files, on a terminal only."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

import physscale.cli.progress as bars_module
from physscale.cli import main
from physscale.cli.progress import DatasetProgress
from physscale.io import write_metadata


class Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_bars_over_bytes_and_files_show_a_rate_and_an_eta_and_erase_themselves() -> None:
    stream = Tty()
    progress = DatasetProgress(4, 8 * 1024 * 1024, stream=stream, delay=0.0, min_interval=0.0)
    progress.advance(n_bytes=2 * 1024 * 1024)
    progress.advance(n_files=1)
    drawn = stream.getvalue()
    # Each bar: its share, the count, and tqdm's [elapsed<remaining, rate] (an ETA).
    assert re.search(r"reading: +25%.* 2\.00M/8\.00M \[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kMGT]?B/s\]",
                     drawn), drawn  # fmt: skip
    assert re.search(r"files: +25%.* 1/4 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+ files/s\]", drawn), drawn
    progress.close()
    # Closed, the bars are overwritten with blanks: nothing of them stays on the terminal.
    erased = stream.getvalue()[len(drawn) :]
    assert erased.strip(" \r\n\x1b[A") == "", repr(erased)


def test_one_file_draws_only_the_bytes_bar() -> None:
    stream = Tty()
    with DatasetProgress(1, 100, stream=stream, delay=0.0) as progress:
        progress.advance(n_bytes=50)
    assert "reading" in stream.getvalue() and "files" not in stream.getvalue()


@pytest.mark.parametrize(("stream", "enabled"), [(io.StringIO(), True), (Tty(), False)])
def test_nothing_is_drawn_off_a_terminal_or_when_disabled(
    stream: io.StringIO, enabled: bool
) -> None:
    with DatasetProgress(3, 100, stream=stream, enabled=enabled, delay=0.0) as progress:
        progress.advance(n_bytes=100, n_files=3)
    assert stream.getvalue() == ""


def test_quick_runs_draw_nothing_before_the_delay() -> None:
    stream = Tty()
    with DatasetProgress(2, 100, stream=stream, delay=60.0) as progress:
        progress.advance(n_bytes=100, n_files=2)
    assert stream.getvalue() == ""


def test_derive_draws_progress_on_a_terminal_and_quiet_silences_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    x = np.random.default_rng(0).random((40, 16, 16)).astype(np.float32) + 0.1
    for i in range(3):
        write_metadata(tmp_path / f"{i}.npz", {"physics_parameters": {"nphotons": 1e5}},
                       diffraction=x)  # fmt: skip
    monkeypatch.setattr(bars_module, "PROGRESS_DELAY_S", 0.0)
    for quiet, drawn in (([], True), (["--quiet"], False)):
        terminal = Tty()
        monkeypatch.setattr("sys.stderr", terminal)
        # Small pieces: several updates per file.
        code = main(["derive", str(tmp_path), "--chunk-patterns", "4", *quiet])
        assert code == 0
        assert ("files:" in terminal.getvalue()) is drawn
        assert ("reading:" in terminal.getvalue()) is drawn
    capsys.readouterr()
