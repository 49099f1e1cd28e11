"""Progress of ``physscale derive`` over a dataset's bytes and files: tqdm, on a terminal only.

Nothing is drawn unless the stream is a terminal and progress is enabled,
and nothing before `PROGRESS_DELAY_S` seconds, so pipes, logs and
quick runs stay clean. The bars erase themselves when closed.
`ProgressBars` is the ``progress`` callback the command passes to
[`physscale.io.derive_files`][physscale.io.derive_files], which only reports counts.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

from physscale.io.dataset import FilesProgress

__all__ = ["PROGRESS_DELAY_S", "DatasetProgress", "ProgressBars"]

#: Seconds of work before the bars appear (small inputs stay silent).
PROGRESS_DELAY_S = 0.5


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class DatasetProgress:
    """Bars over the bytes read and, for several files, over the files done.

    Each bar gives the count, the rate and an ETA (tqdm's). Safe to advance
    from several threads.

    Args:
        n_files: the number of files to read.
        n_bytes: the bytes of pattern data to read (over every file).
        stream: where to draw (default ``sys.stderr``); nothing is drawn
            unless it is a terminal.
        enabled: False draws nothing (``--quiet``).
        delay: seconds before the bars appear (default `PROGRESS_DELAY_S`).
        min_interval: least seconds between two redraws.
    """

    def __init__(
        self,
        n_files: int,
        n_bytes: int,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        delay: float | None = None,
        min_interval: float = 0.1,
    ) -> None:
        out = sys.stderr if stream is None else stream
        self.active = enabled and _isatty(out)
        self._lock = threading.Lock()
        self._files: tqdm[Any] | None = None
        self._bytes: tqdm[Any] | None = None
        if not self.active:
            return
        wait = PROGRESS_DELAY_S if delay is None else delay
        common: dict[str, Any] = {"file": out, "delay": wait, "leave": False,
                                  "dynamic_ncols": True, "mininterval": min_interval}  # fmt: skip
        if n_files > 1:
            self._files = tqdm(total=n_files, unit=" files", desc="files", position=0, **common)
        self._bytes = tqdm(
            total=n_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="reading",
            position=1 if n_files > 1 else 0,
            **common,
        )

    def advance(self, n_bytes: int = 0, n_files: int = 0) -> None:
        """Count ``n_bytes`` more bytes read and ``n_files`` more files done."""
        if not self.active:
            return
        with self._lock:
            if n_bytes and self._bytes is not None:
                self._bytes.update(n_bytes)
            if n_files and self._files is not None:
                self._files.update(n_files)

    def close(self) -> None:
        """Erase the bars (if any were drawn)."""
        with self._lock:
            for bar in (self._bytes, self._files):
                if bar is not None:
                    bar.close()
            self._bytes = self._files = None

    def __enter__(self) -> DatasetProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ProgressBars:
    """The ``progress`` callback of [`physscale.io.derive_files`][physscale.io.derive_files],
    drawing tqdm bars.

    The bars open at the first call (every file checked: the totals are
    known) and advance by what each later call adds. A context manager: the
    bars are erased on leaving it.

    Args:
        stream: where to draw (default ``sys.stderr`` when the bars open).
        enabled: False draws nothing (``--quiet``).
    """

    def __init__(self, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._stream = stream
        self._enabled = enabled
        self._bars: DatasetProgress | None = None
        self._seen = FilesProgress(0, 0)

    def __call__(self, progress: FilesProgress) -> None:
        if self._bars is None:
            self._bars = DatasetProgress(
                progress.n_files, progress.n_bytes, stream=self._stream, enabled=self._enabled
            )
        seen, self._seen = self._seen, progress
        self._bars.advance(
            n_bytes=progress.bytes_done - seen.bytes_done,
            n_files=progress.files_done - seen.files_done,
        )

    def close(self) -> None:
        """Erase the bars (if any were drawn)."""
        if self._bars is not None:
            self._bars.close()

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
