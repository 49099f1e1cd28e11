"""Zip archives, read and written one way: checked members in, atomic archives out.

Everything physscale writes as a zip (bundles, ``.npz`` metadata updates, a
host code's bundle with the record added) is a new archive written by
`new_archive` through [`atomic_write`][physscale.io._atomic.atomic_write]: the
target is replaced in one step when the archive is complete, so a failure
or a kill leaves the previous file as it was. Members get a fixed timestamp,
so an archive's bytes depend on its contents only. No archive is ever
appended to or edited in place.

Reading: `open_archive` opens a regular file as a zip and
`read_member` reads one member after checking what it declares (no
encryption, stored or deflated, within a size cap and what deflate can
produce); every failure of ``zipfile`` is a [`DataFileError`][physscale.errors.DataFileError].
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from physscale.errors import DataFileError
from physscale.io._atomic import atomic_write
from physscale.io._files import (
    ZIP_OPEN_ERRORS,
    check_zip_member,
    describe,
    open_regular,
    open_zip,
    zip_archive_size,
)

__all__ = [
    "ZIP_TIME",
    "add_members",
    "copy_members",
    "member_info",
    "new_archive",
    "open_archive",
    "read_member",
    "write_member",
]

#: The timestamp of every member physscale writes (zip's epoch).
ZIP_TIME = (1980, 1, 1, 0, 0, 0)

# Members are copied this much at a time (4 MiB).
_COPY_BYTES = 1 << 22


def open_archive(
    path: str | os.PathLike[str], what: str = "zip archive"
) -> contextlib.AbstractContextManager[zipfile.ZipFile]:
    """Open a regular file as a zip for reading; ``what`` names it in errors.

    Raises:
        DataFileError: missing, special, truncated or not a zip (every
            ``zipfile`` failure, undecodable member names included).
    """
    return open_zip(path, what)


def read_member(zf: zipfile.ZipFile, name: str, where: str, *, max_bytes: int) -> bytes:
    """One member's bytes, after checking its declared sizes and flags.

    Args:
        zf: the open archive.
        name: the member.
        where: names the member in messages.
        max_bytes: the most bytes it may hold.

    Raises:
        DataFileError: no such member, encrypted, compressed with a method
            other than deflate, above ``max_bytes``, or damaged.
    """
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise DataFileError(f"{where}: no such member") from None
    check_zip_member(info, where, archive_size=zip_archive_size(zf), max_bytes=max_bytes)
    try:
        return zf.read(info)
    except ZIP_OPEN_ERRORS as exc:
        raise DataFileError(f"{where}: cannot be read ({describe(exc)})") from None


def member_info(name: str, *, compress: bool = True, mode: int | None = None) -> zipfile.ZipInfo:
    """A member entry with the fixed timestamp; deflated unless ``compress`` is False."""
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    if mode is not None:
        info.external_attr = mode << 16
    return info


def write_member(
    zf: zipfile.ZipFile, name: str, data: bytes, *, compress: bool, mode: int | None = None
) -> None:
    """Write a whole member (see `member_info`)."""
    zf.writestr(member_info(name, compress=compress, mode=mode), data)


@contextlib.contextmanager
def new_archive(
    path: str | os.PathLike[str], *, create_only: bool = False
) -> Iterator[zipfile.ZipFile]:
    """A new zip archive at ``path``, in place only once the block ends without error.

    See [`atomic_write`][physscale.io._atomic.atomic_write] (``create_only`` included).
    """
    with atomic_write(path, create_only=create_only) as fh, zipfile.ZipFile(fh, "w") as zf:
        yield zf


def _read_member(fin: IO[bytes], where: str, unchanged: str) -> bytes:
    """The next piece of a member being copied; a damaged member is DataFileError."""
    try:
        return fin.read(_COPY_BYTES)
    except ZIP_OPEN_ERRORS as exc:
        raise DataFileError(f"{where}: corrupt member ({describe(exc)}); {unchanged}") from None


def copy_members(
    src: IO[bytes],
    path: Path,
    out: zipfile.ZipFile,
    skip: set[str],
    *,
    unchanged: str,
    what: str = ".npz (zip) archive",
) -> None:
    """Copy the members of the open archive ``src`` into ``out``, 4 MiB at a time.

    Each member is checked before it is inflated (as `read_member`),
    and written deflated with the fixed timestamp.

    Args:
        src: the archive's file, open for reading.
        path: its path, for messages.
        out: the archive being written.
        skip: member names not to copy (they are being replaced).
        unchanged: what a failure leaves undone, ending every message
            (``"metadata not written"``).
        what: what ``src`` is, for messages.
    """
    try:
        zf = zipfile.ZipFile(src)
    except ZIP_OPEN_ERRORS as exc:
        raise DataFileError(
            f"{path}: not a readable {what}, probably truncated or corrupt "
            f"({describe(exc)}); {unchanged}"
        ) from None
    with zf:
        size = os.fstat(src.fileno()).st_size
        for info in zf.infolist():
            if info.filename in skip:
                continue
            where = f"{path}:{info.filename}"
            check_zip_member(info, where, archive_size=size)
            target = member_info(info.filename)
            try:
                fin = zf.open(info)
            except ZIP_OPEN_ERRORS as exc:
                raise DataFileError(
                    f"{where}: corrupt member ({describe(exc)}); {unchanged}"
                ) from None
            # Only reading fails as "corrupt": a failed write (a full disk) is
            # the output's, reported by atomic_write with the old file intact.
            with fin, out.open(target, "w", force_zip64=True) as fout:
                while chunk := _read_member(fin, where, unchanged):
                    fout.write(chunk)


def add_members(
    source: Path, target: str | os.PathLike[str], members: Mapping[str, bytes], *, what: str
) -> Path:
    """Write at ``target`` a new archive: ``source``'s members plus ``members`` (deflated).

    Members of ``source`` with the same names are replaced. ``target`` may
    be ``source`` itself: it is replaced atomically, never edited in place,
    so a failure leaves it as it was.

    Args:
        source: the archive to copy.
        target: where to write the result.
        members: name -> bytes of the members to add.
        what: what ``source`` is, for messages (``"port bundle (zip archive)"``).

    Returns:
        ``target`` as a Path.
    """
    unchanged = f"{os.fspath(target)} is unchanged"
    with open_regular(source) as src, new_archive(target) as out:
        copy_members(src, source, out, set(members), unchanged=unchanged, what=what)
        for name, data in members.items():
            write_member(out, name, data, compress=True)
    return Path(target)
