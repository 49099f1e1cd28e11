"""Writes that a crash or a kill cannot turn into lost data.

Every file physscale writes (bundles, ``write_metadata``, ``derive --out``)
goes through `atomic_write`: the content is written to a temporary
file next to the target, flushed to disk, given the right mode, and renamed
over the target in one step. A reader sees the old file or the new one,
never half of one.

The temporary file has a recognizable name, ``.<target name>.physscale-tmp-<random>``,
and its writer holds an exclusive ``flock`` on it while it lives. A write
that is killed leaves that file behind; the next write to the same target
removes every such leftover whose lock is free (its writer is gone), and
leaves alone those of writers still running.

Modes: a new file gets the mode the process's umask gives (``0666 & ~umask``),
as ``open`` would; replacing a file keeps that file's permission bits.

`locked` serializes read-modify-write updates of one file
(``write_metadata``): it takes an exclusive ``flock`` on the current file and
checks, once it holds it, that the path still names that file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import socket
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from physscale.errors import DataFileError
from physscale.io._files import open_regular, preview

try:  # POSIX only; without it, leftovers are cleaned by age and updates are not locked.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "TEMP_MARK",
    "TargetAppearedError",
    "atomic_write",
    "check_output",
    "locked",
    "temp_prefix",
]

#: What every temporary file's name holds after the target's name.
TEMP_MARK = ".physscale-tmp-"
# A temporary file is created under this mark and renamed to TEMP_MARK once
# its writer holds the lock, so a live writer's file is never seen unlocked.
# Its name carries the writer's host and pid: one killed in that instant is
# recognized as dead by the next writer on the same host.
_BIRTH_MARK = ".physscale-new-"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]

#: Without flock, leftovers older than this are taken for dead writers' (seconds).
_STALE_AGE_S = 3600.0

#: How long ``locked`` waits for another writer of the same file (seconds).
LOCK_TIMEOUT_S = 120.0


class TargetAppearedError(DataFileError):
    """The target was created by someone else while a new file was being written."""


def temp_prefix(target: Path) -> str:
    """The name prefix of ``target``'s temporary files."""
    return f".{target.name}{TEMP_MARK}"


def resolve_target(path: str | os.PathLike[str]) -> Path:
    """The file to replace: links followed, so a symlink keeps pointing at the new file.

    Raises:
        DataFileError: the target exists and is not a regular file (a
            directory, a FIFO, a device), which a rename would destroy.
    """
    target = Path(os.path.realpath(os.fspath(path)))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise DataFileError(f"{path}: cannot write ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise DataFileError(
            f"{path}: exists and is not a regular file; physscale writes only regular files "
            f"(replacing it atomically would destroy what is there)"
        )
    return target


def check_output(
    path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """The file an output at ``path`` replaces, refused if it is an input or read-only.

    Every write goes through here (`atomic_write`): an output must never
    destroy what it was computed from, nor a file its owner protected. A file
    is read-only when this process may not write it or when its mode gives no
    one write permission (0444: a shell's ``>`` refuses it; root's too, here).

    Args:
        path: the output.
        inputs: the files read to make it (compared as files: a link or
            another spelling of the same file counts).

    Raises:
        DataFileError: not a valid name, not a regular file, one of
            ``inputs``, or read-only.
    """
    text = _path_text(path)
    target = resolve_target(text)
    try:
        st = os.stat(target)
    except OSError:  # not there yet (or unreadable: the write itself will say)
        return target
    for given in inputs:
        try:
            other = os.stat(given)
        except (OSError, ValueError, TypeError):
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            raise DataFileError(
                f"{text}: is also an input ({os.fspath(given)}); writing there would "
                "replace the data being read; choose another output file"
            )
    if not os.access(target, os.W_OK) or not st.st_mode & 0o222:
        raise DataFileError(
            f"{text}: is read-only (mode {stat.S_IMODE(st.st_mode):04o}); physscale does not "
            "replace a protected file: choose another output file, or make it writable first"
        )
    return target


def _path_text(path: object) -> str:
    """``path`` as text, refusing what is not a usable file name (bytes, None, a NUL)."""
    if isinstance(path, str | os.PathLike):
        text = os.fspath(path)
        if isinstance(text, str) and text and "\0" not in text:
            return text
    raise DataFileError(
        f"not a valid output file name: {preview(path, 80)} (expected a non-empty str or "
        "os.PathLike without NUL bytes)"
    )


def _try_lock(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def remove_leftovers(target: Path) -> list[Path]:
    """Remove temporary files of earlier writes to ``target`` whose writer is gone.

    Returns:
        The paths removed.
    """
    prefix = temp_prefix(target)
    newborn = f".{target.name}{_BIRTH_MARK}"
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith((prefix, newborn))]
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        # A writer killed between creating and renaming its file: the file is
        # not locked yet, so its name (host, pid) or its age tells it is dead.
        young = entry.name.startswith(newborn) and not _dead_writer(entry.name[len(newborn) :])
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            if (fcntl is None or young) and time.time() - st.st_mtime < _STALE_AGE_S:
                continue
            if fcntl is not None and not _try_lock(fd):
                continue  # a live writer holds it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
        finally:
            os.close(fd)
    return removed


def _dead_writer(tag: str) -> bool:
    """Whether the birth tag ``<host>-<pid>-<token>`` names a process gone from this host."""
    host, _, rest = tag.partition("-")
    pid_text, _, _ = rest.partition("-")
    if host != _HOST or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False
    return False


def _create_temp(target: Path) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    for _ in range(100):
        token = secrets.token_hex(6)
        born = target.with_name(f".{target.name}{_BIRTH_MARK}{_HOST}-{os.getpid()}-{token}")
        try:
            # 0o666: the kernel applies the umask, as for any new file.
            fd = os.open(born, flags, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        except OSError as exc:
            raise DataFileError(
                f"{target}: cannot write in {target.parent} ({exc.strerror or exc})"
            ) from None
        try:
            _try_lock(fd)  # marks it as live for remove_leftovers...
            tmp = target.with_name(f"{temp_prefix(target)}{token}")
            os.rename(born, tmp)  # ...before it gets the name remove_leftovers looks for
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(born)
            raise
        return fd, tmp
    raise DataFileError(f"{target}: could not create a temporary file")  # pragma: no cover


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    *,
    create_only: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[IO[bytes]]:
    """Write ``path`` all at once: yields a binary file; the target changes only on success.

    Args:
        path: the file to create or replace (a symlink is followed: its
            target is replaced).
        create_only: fail with `TargetAppearedError` instead of replacing
            a file that appeared at ``path`` while writing (used when the
            caller saw no file there and must not overwrite one).
        inputs: files the content was made from; the target may be none of
            them (see `check_output`, which also refuses read-only files).

    On any exception (or a kill) the target is left as it was; the temporary
    file is removed (or, after a kill, removed by the next write).
    """
    target = check_output(path, inputs)
    remove_leftovers(target)
    fd, tmp = _create_temp(target)
    try:
        with os.fdopen(fd, "wb", closefd=False) as fh:
            yield fh
            fh.flush()
        os.fsync(fd)
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            else:  # pragma: no cover - Windows before Python 3.13
                os.chmod(tmp, mode)
        if create_only:
            _link_new(tmp, target)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        # A full disk, a quota or a size limit: the bare OSError names no file
        # (or only the temporary one). An error about another file stays as is.
        if isinstance(exc, OSError) and _about(exc, tmp, target):
            raise DataFileError(
                f"{target}: could not write it ({exc.strerror or exc}); the previous "
                "file, if any, is unchanged"
            ) from exc
        raise
    finally:
        os.close(fd)  # releases the lock, after the rename


def _about(exc: OSError, *paths: Path) -> bool:
    """Whether ``exc`` names no file or one of ``paths``."""
    return exc.filename is None or str(exc.filename) in {str(p) for p in paths}


def _link_new(tmp: Path, target: Path) -> None:
    """Put ``tmp`` at ``target`` only if nothing is there (a hard link cannot overwrite)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise TargetAppearedError(f"{target}: created by another writer meanwhile") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                             errno.EMLINK, errno.ENOSYS):  # fmt: skip
            raise
        # A file system without hard links: the best left is a check, then a rename.
        if os.path.lexists(target):
            raise TargetAppearedError(f"{target}: created by another writer meanwhile") from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[IO[bytes] | None]:
    """Hold an exclusive lock on the file at ``path`` for a read-modify-write update.

    Yields the file, open for reading and locked, or None when there is no
    file at ``path``. Once the lock is held the path is checked to still name
    the locked file (another writer may have replaced it while this one
    waited); if not, the new file is locked instead. Writers that use
    ``locked`` therefore never base an update on a stale file.

    Raises:
        DataFileError: the file stays locked by another writer for
            `LOCK_TIMEOUT_S` seconds, or is not a regular file.
    """
    target = resolve_target(path)
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        fh = _open_existing(target)
        if fh is None:
            yield None
            return
        try:
            while not _try_lock(fh.fileno()):
                if time.monotonic() > deadline:
                    raise DataFileError(
                        f"{path}: another process has been writing it for over "
                        f"{LOCK_TIMEOUT_S:.0f} s; try again when it is done"
                    )
                time.sleep(0.01)
            if _names(target, fh):
                yield fh
                return
        finally:
            fh.close()


def _open_existing(target: Path) -> IO[bytes] | None:
    """The file at ``target`` opened for reading, or None when there is none."""
    for _ in range(3):
        try:
            return open_regular(target)
        except DataFileError:
            if not os.path.lexists(target):
                return None
            # Created by another writer between the two calls: open it now.
    return open_regular(target)  # still failing: a real error (not a regular file...)


def _names(target: Path, fh: IO[bytes]) -> bool:
    """Whether ``target`` still names the open file ``fh``."""
    try:
        current = os.stat(target)
    except FileNotFoundError:
        return False
    mine = os.fstat(fh.fileno())
    return (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev)
