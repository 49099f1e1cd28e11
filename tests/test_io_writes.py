"""Atomic writes: the target is old or new, never half; leftovers of dead writers go away."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from physscale.errors import DataFileError
from physscale.io import _atomic


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "t.json"
    target.write_text("old")

    def write_half() -> None:
        with _atomic.atomic_write(target) as fh:
            fh.write(b"half")
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_half()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_a_write_the_system_refuses_names_the_file(tmp_path: Path) -> None:
    # The command line printed only "File too large": the OSError of a write
    # to the temporary file named neither it nor the target.
    target = tmp_path / "t.json"
    target.write_text("old")

    def write_to_a_full_disk() -> None:
        with _atomic.atomic_write(target) as fh:
            fh.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(DataFileError) as caught:
        write_to_a_full_disk()
    message = str(caught.value)
    assert message.startswith(f"{target}: could not write it")
    assert os.strerror(errno.ENOSPC) in message
    assert "unchanged" in message
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_an_os_error_about_another_file_is_not_blamed_on_the_target(tmp_path: Path) -> None:
    target = tmp_path / "t.json"
    with pytest.raises(FileNotFoundError) as caught, _atomic.atomic_write(target):
        (tmp_path / "missing").read_bytes()
    assert caught.value.filename == str(tmp_path / "missing")
    assert not target.exists()


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "t.npz"
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = _atomic._HOST
    born_dead = tmp_path / f".t.npz.physscale-new-{host}-{dead.pid}-aa"
    born_live = tmp_path / f".t.npz.physscale-new-{host}-{os.getpid()}-bb"
    orphan = tmp_path / ".t.npz.physscale-tmp-cc"  # unlocked: its writer is gone
    other = tmp_path / ".u.npz.physscale-tmp-dd"  # another target's
    for path in (born_dead, born_live, orphan, other):
        path.write_text("x")
    with _atomic.atomic_write(target) as fh:
        # While this writer runs, its own temporary file is locked and survives
        # another writer's cleanup.
        assert _atomic.remove_leftovers(target) == []
        fh.write(b"new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [born_live.name, other.name, "t.npz"]
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_target_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DataFileError, match="exists and is not a regular file"):
        _atomic.atomic_write(fifo).__enter__()
    with pytest.raises(DataFileError, match="exists and is not a regular file"):
        _atomic.atomic_write(tmp_path).__enter__()


def test_create_only_refuses_to_replace_a_file_that_appeared(tmp_path: Path) -> None:
    target = tmp_path / "t"

    def race() -> None:
        with _atomic.atomic_write(target, create_only=True) as fh:
            fh.write(b"mine")
            target.write_text("theirs")  # another writer, while this one writes

    with pytest.raises(_atomic.TargetAppearedError):
        race()
    assert target.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
