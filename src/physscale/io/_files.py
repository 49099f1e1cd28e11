"""Guards shared by every reader: regular files only, bounded messages, checked zip members.

A file from elsewhere may lie about everything it declares. The helpers here
make the readers check each declaration against what is really there before
any memory is committed, and keep every error message short whatever the
file holds:

- `open_regular` opens a path without ever blocking (a FIFO would
  block ``open`` forever) and refuses anything but a regular file (a FIFO,
  ``/dev/zero``, a socket, a directory).
- `preview` (from [`physscale.core.preview`][physscale.core.preview]) is a ``repr`` of bounded
  size and cost: a pickle can build a structure whose full ``repr`` is
  exponentially large.
- `check_zip_member` refuses encrypted members, compression methods
  other than stored and deflated, members larger than a cap, and members
  whose declared size is more than deflate can ever expand to.
- `load_json` parses JSON with bounded size, nesting depth and error
  messages.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# The one JSON guard lives in core (physscale.nn and resolve_nphotons use it too).
from physscale.core.jsontext import MAX_JSON_DEPTH, check_depth, load_json
from physscale.core.preview import preview
from physscale.errors import DataFileError

__all__ = [
    "MAX_DEFLATE_RATIO",
    "MAX_JSON_DEPTH",
    "ZIP_OPEN_ERRORS",
    "check_depth",
    "check_zip_member",
    "describe",
    "load_json",
    "open_regular",
    "preview",
    "require_regular",
]

#: Deflate cannot expand data more than 1032-fold; a member that claims more is lying.
MAX_DEFLATE_RATIO = 1100

#: What zipfile raises opening (or reading) a damaged archive or member: besides
#: BadZipFile and zlib.error,
#: NotImplementedError ("zip file version 8.9"), UnicodeDecodeError (a ValueError:
#: a name flagged UTF-8 that is not), RuntimeError (encryption), short reads.
ZIP_OPEN_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,
)

# General purpose flag bits a member may carry: 3 (sizes in a data descriptor)
# and 11 (UTF-8 names). Bit 0 is encryption, 5 patched data, 6 strong encryption.
_ALLOWED_ZIP_FLAGS = (1 << 3) | (1 << 11) | (1 << 1) | (1 << 2)
_COMPRESSION_NAMES = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


def describe(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line: its message (bounded), else its type's name.

    Some exceptions format their arguments with ``repr`` (``KeyError``), which
    for an object built by a hostile file can be huge; only short string
    arguments are shown as they are.
    """
    args = exc.args
    short_text = all(isinstance(a, str) for a in args) and sum(map(len, args)) <= 4 * limit
    # A UnicodeError's str names the codec and position, not the data.
    if isinstance(exc, UnicodeError) or (args and short_text):
        text = str(exc)
    elif not args:
        text = ""
    else:
        text = preview(args[0] if len(args) == 1 else args, limit)
    text = " ".join(text.split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _not_regular(path: str | os.PathLike[str], mode: int) -> DataFileError:
    return DataFileError(
        f"{os.fspath(path)}: is {_kind_of(mode)}, not a regular file; physscale reads "
        f"data only from regular files (copy the data into one first)"
    )


def _os_error(path: str | os.PathLike[str], exc: OSError) -> DataFileError:
    where = os.fspath(path)
    if exc.errno == errno.ENOENT:
        return DataFileError(f"{where}: no such file")
    if exc.errno == errno.EISDIR:
        return DataFileError(f"{where}: is a directory, not a data file")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return DataFileError(f"{where}: permission denied")
    return DataFileError(f"{where}: cannot read ({exc.strerror or describe(exc)})")


def require_regular(path: str | os.PathLike[str]) -> os.stat_result:
    """``os.stat`` of ``path`` (following links), refusing anything but a regular file.

    ``stat`` never blocks, unlike ``open`` on a FIFO. For libraries that open
    the path themselves (h5py); `open_regular` checks the very file it opens.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _os_error(path, exc) from None
    except ValueError as exc:  # an embedded NUL byte in the name
        raise DataFileError(f"{os.fspath(path)!r}: not a valid file name ({exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


def open_regular(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open ``path`` for binary reading if it is a regular file; never blocks.

    The file is opened non-blocking (so a FIFO without a writer cannot hang
    the call), checked with ``fstat`` (the very file opened, not the name),
    and switched back to blocking reads.

    Raises:
        DataFileError: missing, unreadable, or not a regular file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_error(path, exc) from None
    except ValueError as exc:
        raise DataFileError(f"{os.fspath(path)!r}: not a valid file name ({exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        with contextlib.suppress(AttributeError, OSError):  # POSIX only; regular files
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def open_zip(path: str | os.PathLike[str], what: str = "zip archive") -> Iterator[zipfile.ZipFile]:
    """Open a regular file as a zip, turning every failure into DataFileError."""
    fh = open_regular(path)
    with fh:
        try:
            zf = zipfile.ZipFile(fh)
        except ZIP_OPEN_ERRORS as exc:
            raise DataFileError(
                f"{os.fspath(path)}: not a readable {what}, probably truncated or corrupt "
                f"({describe(exc)})"
            ) from None
        with zf:
            yield zf


def check_zip_member(
    info: zipfile.ZipInfo,
    where: str,
    *,
    archive_size: int,
    max_bytes: int | None = None,
    stored_only: bool = False,
) -> None:
    """Refuse a zip member before any of it is inflated.

    Args:
        info: the member's entry from the central directory.
        where: names the member in messages (``"file.npz:diffraction"``).
        archive_size: the archive file's real size in bytes.
        max_bytes: the most uncompressed bytes this member may hold.
        stored_only: refuse compressed members (their data must be stored as is).

    Raises:
        DataFileError: encryption or other unsupported flags, a compression
            method other than stored/deflated, a size above ``max_bytes``, a
            compressed size beyond the archive, or an expansion larger than
            deflate can produce.
    """
    if info.flag_bits & 0x1:
        raise DataFileError(f"{where}: the member is encrypted; physscale reads no encrypted data")
    if info.flag_bits & ~_ALLOWED_ZIP_FLAGS:
        raise DataFileError(
            f"{where}: the member uses zip features (flag bits {info.flag_bits:#06x}) that "
            f"numpy and physscale never write; re-save the file"
        )
    method = _COMPRESSION_NAMES.get(info.compress_type)
    if method is None or (stored_only and info.compress_type != zipfile.ZIP_STORED):
        allowed = "stored" if stored_only else "stored or deflated"
        raise DataFileError(
            f"{where}: the member uses zip compression method {info.compress_type}; physscale "
            f"reads {allowed} members only (what numpy and physscale write)"
        )
    if info.compress_size > archive_size:
        raise DataFileError(
            f"{where}: the member claims {info.compress_size} bytes of data but the whole "
            f"archive holds {archive_size}; the file is truncated or corrupt"
        )
    if max_bytes is not None and info.file_size > max_bytes:
        raise DataFileError(
            f"{where}: the member holds {info.file_size} bytes, more than the {max_bytes} "
            f"bytes such a member may hold; refusing to read it"
        )
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise DataFileError(
                f"{where}: corrupt: a stored member of {info.compress_size} bytes claims to "
                f"hold {info.file_size}"
            )
    elif info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
        raise DataFileError(
            f"{where}: {info.compress_size} deflated bytes claim to expand to "
            f"{info.file_size}, more than deflate can produce; the file is corrupt or hostile"
        )


def zip_archive_size(zf: zipfile.ZipFile) -> int:
    """The size of the file behind an open ZipFile."""
    fp = zf.fp
    if fp is None:  # pragma: no cover - only a closed ZipFile
        raise DataFileError("internal: the zip archive is closed")
    return os.fstat(fp.fileno()).st_size


def file_size(path: Path) -> int:
    """Size in bytes of a regular file (refusing anything else)."""
    return require_regular(path).st_size
