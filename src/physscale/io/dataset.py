"""Many files, one scale: `derive_files` over a whole beamline dataset.

A dataset is seldom one file. `derive_files` takes paths, glob
patterns and directories (see `expand_paths` for which files count),
checks every file before reading any data (header, dtype, rank, pattern
shape, the layout guard, nphotons from its metadata), then streams each file
through its own [`IntensityAccumulator`][physscale.IntensityAccumulator] and merges them
with the accumulator's exact merge. The scale is the scale of all the
patterns together, to the last bit whatever the order of the files; the
frame numbering (per-pattern totals, flagged and excluded frames) follows
the files in the order given.

Memory is bounded whatever the number and size of the files: one piece of at
most 4 MiB per file being read (at most ``workers`` files at a time), 8
bytes per pattern for the per-pattern totals, and a few hundred bytes per
file for its name and counts. At most ``workers`` data files are open at
once.

The library speaks Python: errors name parameters (``nphotons=``,
``layout='NHWC'``) through a [`Wording`][physscale.errors.Wording], which the
command line renders with its flags; nothing here draws (``progress`` is a
callback, and [`physscale.report`][physscale.report] draws the figure from what
``derive_files(..., details=True)`` returns).
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import contextlib
import fnmatch
import hashlib
import itertools
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, overload

import numpy as np
import torch

from physscale.accumulator import IntensityAccumulator
from physscale.core.checks import DEFAULT_SPATIAL_DIMS, check_layout, positive_finite, spatial_axes
from physscale.core.kernels import native as _native
from physscale.core.kernels.sums import Domain
from physscale.core.nphotons import DISAGREEMENT_RTOL, NphotonsResolution, NphotonsSource
from physscale.core.nphotons import resolve_nphotons as _resolve
from physscale.derive import record_from_accumulator
from physscale.diagnostics import OutlierRule
from physscale.errors import (
    DataFileError,
    FileListError,
    MaskError,
    NphotonsError,
    PhysscaleError,
    StateError,
    UnsafeFileError,
    Wording,
)
from physscale.io._files import describe, preview
from physscale.io.metadata import read_metadata
from physscale.io.nexus import data_stacks
from physscale.io.readers import PatternSource, pattern_source, read_mask
from physscale.io.streaming import fold_patterns
from physscale.record import (
    MAX_LISTED_FILES,
    DataSources,
    NphotonsCount,
    ScaleRecord,
    SourceFile,
)

__all__ = [
    "DATA_SUFFIXES",
    "DEFAULT_WORKERS",
    "MAX_WORKERS",
    "DerivedFiles",
    "FilesProgress",
    "derive_files",
    "expand_paths",
]

#: Bytes read per piece when deriving over files: small enough that the reading
#: threads' buffers stay in the last-level cache while the kernel sums them
#: (measured on 100 files, 2 GiB: 4 MiB pieces took about 0.75x the time of 16 MiB
#: ones; 1 MiB pieces cost more in per-piece overhead than they save).
PIECE_BYTES = 4 * 1024 * 1024

#: File name endings (any case) that count as data files in a directory.
DATA_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5", ".nxs", ".cxi")

#: Files read at the same time by default: reading one file overlaps summing
#: another. Measured with benchmarks/bench_files.py on a 2-core machine, data in
#: the page cache: 2 workers 1.0 to 1.15x the time of np.load-ing the same files,
#: 1 worker 1.25 to 1.45x, 3 or 4 no better than 2 (see docs/performance.md).
DEFAULT_WORKERS = 2

#: The most files read at the same time: each reader holds a thread, an open
#: file and a 4 MiB buffer, and more than a few never read faster.
MAX_WORKERS = 64

_GLOB_CHARS = frozenset("*?[")
# How many files an error message names before it says "and N more".
_NAMED_IN_ERRORS = 5

#: How errors name derive_files' options, in Python terms (the command line
#: renders each [`Wording`][physscale.errors.Wording] with its own flags).
OPTIONS = {
    "nphotons": "nphotons=",
    "nphotons_default": "nphotons_default=",
    "recursive": "recursive=True",
    "mask": "mask",
}


# --------------------------------------------------------------------------- paths
def _display(path: Path | str) -> str:
    """A path as text that JSON can hold (undecodable bytes shown as escapes)."""
    text = os.fspath(path)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _check_path(entry: Any) -> None:
    """Refuse what no file can be named by: not text, empty, or holding a NUL."""
    text = os.fspath(entry) if isinstance(entry, str | os.PathLike) else None
    if not isinstance(text, str) or not text or "\0" in text:
        raise FileListError(
            f"not a path: {preview(entry, 80)} (paths are non-empty str or os.PathLike "
            "without NUL bytes)",
            parameter="paths",
        )


def _directory_files(directory: Path, recursive: bool) -> list[Path]:
    """The data files of ``directory`` (see `expand_paths`), sorted.

    Walked with a stack, not recursion: a tree thousands of levels deep is
    read like any other (links to directories are never followed, so the
    walk ends).
    """
    found: list[tuple[tuple[str, ...], Path]] = []
    stack: list[tuple[Path, tuple[str, ...]]] = [(directory, ())]
    while stack:
        folder, parts = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise DataFileError(
                f"{_display(folder)}: cannot list the directory ({describe(exc)})"
            ) from None
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden files, and physscale's own temporary files
            try:
                if entry.is_file() and entry.name.lower().endswith(DATA_SUFFIXES):
                    found.append(((*parts, entry.name), Path(entry.path)))
                elif recursive and entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), (*parts, entry.name)))
            except OSError:  # a dangling link or an entry gone meanwhile: not a data file
                continue
    return [path for _, path in sorted(found, key=lambda item: item[0])]


def _glob(pattern: str, recursive: bool) -> list[str]:
    """``glob.glob(pattern, recursive=recursive)``, sorted, except that ``**`` follows no link.

    The standard library's ``**`` follows links to directories: two links to
    ``..`` make its walk exponential (it never ends). Here ``**`` spans real
    subdirectories only (not hidden ones, as in glob); the other components
    match as in glob (a leading ``.`` only when the component names it).
    """
    import glob

    parts = pattern.split(os.sep)
    if not recursive or "**" not in parts:
        return sorted(glob.glob(pattern, recursive=recursive))
    root = os.sep if pattern.startswith(os.sep) else ""
    parts = [p for p in parts if p]
    found: set[str] = set()
    stack: list[tuple[str, int]] = [(root, 0)]
    seen: set[tuple[str, int]] = set()
    while stack:
        folder, i = stack.pop()
        if (folder, i) in seen:
            continue  # "**/**" reaches a folder twice
        seen.add((folder, i))
        if i == len(parts):
            if folder:
                found.add(folder)
            continue
        part, last = parts[i], i == len(parts) - 1
        if part == "**":
            stack.append((folder, i + 1))
            for entry in _entries(folder):
                if entry.name.startswith("."):
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((os.path.join(folder, entry.name), i))
                    elif last:
                        found.add(os.path.join(folder, entry.name))
        elif _GLOB_CHARS.intersection(part):
            hidden = part.startswith(".")
            for entry in _entries(folder):
                if entry.name.startswith(".") and not hidden:
                    continue
                if fnmatch.fnmatchcase(entry.name, part):
                    path = os.path.join(folder, entry.name)
                    if last:
                        found.add(path)
                    elif os.path.isdir(path):
                        stack.append((path, i + 1))
        else:
            path = os.path.join(folder, part)
            if last and os.path.lexists(path):
                found.add(path)
            elif not last and os.path.isdir(path):
                stack.append((path, i + 1))
    return sorted(found)


def _entries(folder: str) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` ("" is the current one), or none if it cannot be listed."""
    try:
        with os.scandir(folder or ".") as it:
            return list(it)
    except OSError:
        return []


def expand_paths(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    recursive: bool = False,
) -> list[Path]:
    """The data files named by paths, glob patterns and directories, in order.

    The rule, for each entry in the order given:

    - an existing **directory** stands for its data files: regular files (or
      links to them) whose names end in ``.npy``, ``.npz``, ``.h5``,
      ``.hdf5``, ``.nxs`` or ``.cxi`` (any case), hidden files (names
      starting with ``.``) skipped, sorted by name; subdirectories only with
      ``recursive=True`` (then sorted by their path, hidden ones skipped);
    - an entry holding ``*``, ``?`` or ``[`` that is not an existing path is a
      **glob pattern** (``**`` spans directories with ``recursive=True``),
      expanded as a shell would (hidden files only when the pattern names
      them), sorted; each match then counts as if it had been given: a file
      as it is, a directory by the rule above;
    - anything else is a **file**, used as given (whatever its name: files
      are recognized by content). A missing file is reported when it is read.

    Args:
        paths: one path or pattern, or several.
        recursive: also take the data files of subdirectories, and let
            ``**`` in a pattern span directories.

    Returns:
        The files, each once.

    Raises:
        FileListError: a pattern that matches nothing, a directory with no
            data file, no paths at all, or a file named twice (by two
            entries, or through a link).
        DataFileError: a directory that cannot be listed.

    Example:
        >>> import numpy as np
        >>> from physscale.io import expand_paths
        >>> for name in ("b.npy", "a.npy"):
        ...     np.save(tmp / name, np.zeros((1, 8, 8), np.float32))
        >>> _ = (tmp / "notes.txt").write_text("not data")
        >>> [p.name for p in expand_paths([tmp])]  # data files only, sorted
        ['a.npy', 'b.npy']
    """
    if isinstance(paths, str | os.PathLike):
        entries: list[Any] = [paths]
    elif isinstance(paths, Iterable) and not isinstance(paths, bytes | bytearray):
        entries = list(paths)
    else:
        raise FileListError(
            f"paths must be a path, a pattern or a list of them, got {type(paths).__name__}",
            parameter="paths",
        )
    for entry in entries:
        _check_path(entry)
    if not entries:
        raise FileListError("no data files were given: pass at least one path")
    out: list[Path] = []
    seen: dict[tuple[int, int] | str, str] = {}

    def add(path: Path, given: str) -> None:
        try:
            st = path.stat()
            ident: tuple[int, int] | str = (st.st_dev, st.st_ino)
        except OSError:  # missing: the reader says so, naming it
            ident = os.path.abspath(path)
        if ident in seen:
            first = seen[ident]
            how = "" if first == given else f" (as {first!r} and as {given!r})"
            raise FileListError(
                f"{_display(path)} is given twice{how}; each file may count only once"
            )
        seen[ident] = given
        out.append(path)

    for entry in entries:
        text = os.fspath(entry)
        path = Path(text)
        if path.is_dir():
            files = _directory_files(path, recursive)
            if not files:
                where = "or its subdirectories " if recursive else ""
                hint = "" if recursive else " (subdirectories are read only with {recursive})"
                raise FileListError(
                    Wording(
                        "{path}: the directory {where}holds no data files: none named "
                        "{names} (hidden files are skipped)" + hint,
                        OPTIONS,
                        path=_display(path),
                        where=where,
                        names="*" + ", *".join(DATA_SUFFIXES),
                    ),
                    parameter="paths",
                )
            for f in files:
                add(f, text)
        elif not os.path.lexists(path) and _GLOB_CHARS.intersection(text):
            matches = _glob(text, recursive)
            if not matches:
                raise FileListError(f"{text!r} matches no file")
            for match in matches:
                m = Path(match)
                if m.is_dir():
                    files = _directory_files(m, recursive)
                    if not files:
                        raise FileListError(
                            f"{_display(m)} (matched by {text!r}): the directory holds no "
                            f"data files named *{', *'.join(DATA_SUFFIXES)}"
                        )
                    for f in files:
                        add(f, match)
                else:
                    add(m, text)
        else:
            add(path, text)
    return out


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class _File:
    """One checked data file: its stacks, its patterns, what its metadata said.

    ``sources`` is one stack for most files; a NeXus master read with
    ``follow_links`` gives one per ``data_NNNNNN`` link, in link-name order.
    """

    path: Path
    sources: tuple[PatternSource, ...]
    n_patterns: int
    metadata_nphotons: float | None
    has_metadata: bool
    resolution: NphotonsResolution | None  # None: nphotons is not known for this file
    refused: str | None  # why its metadata was ignored (unsafe, with explicit nphotons)

    @property
    def source(self) -> PatternSource:
        """The first stack (the file itself, unless it is a master of links)."""
        return self.sources[0]

    @property
    def name(self) -> str:
        return _display(self.path)


@dataclass
class _Plan:
    """Every file checked, before any data is read."""

    files: list[_File]
    spatial_dims: tuple[int, ...]
    axes_explicit: bool
    pattern_shape: tuple[int, ...]
    max_entry: int  # the most elements of one first-axis entry, over the files
    nbytes: int
    key: str

    @property
    def refused(self) -> list[_File]:
        return [f for f in self.files if f.refused is not None]


def _named(files: Sequence[str]) -> str:
    shown = ", ".join(files[:_NAMED_IN_ERRORS])
    more = len(files) - _NAMED_IN_ERRORS
    return shown if more <= 0 else f"{shown} and {more} more"


def plan_files(
    paths: Sequence[Path],
    *,
    key: str = "diffraction",
    spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
    layout: str | None = None,
    domain: Domain = "amplitude",
    nphotons: Any = None,
    nphotons_default: Any = None,
    follow_links: bool = False,
) -> _Plan:
    """Check every file (header, dtype, rank, pattern shape, layout, metadata) in order.

    Reads headers and metadata only, one file open at a time. nphotons is
    resolved per file (``nphotons`` > its metadata > ``nphotons_default``)
    but not yet compared across files (`resolve_files` does that).
    With ``follow_links``, an HDF5 file's external links and virtual datasets
    are followed to files in its own folder, and a NeXus master's
    ``data_NNNNNN`` links under ``key`` are read as one stack
    ([`physscale.io.nexus.data_stacks`][physscale.io.nexus.data_stacks]).

    Raises:
        DataFileError, UnsafeFileError: a bad file (named), or patterns of
            another shape than the first file's.
        AmbiguousLayoutError: channels-last-looking data with defaulted axes.
        NphotonsError: an invalid nphotons anywhere (named).
    """
    explicit = None if nphotons is None else positive_finite(nphotons, "explicit nphotons")
    default = (
        None if nphotons_default is None else positive_finite(nphotons_default, "default nphotons")
    )
    template = IntensityAccumulator(spatial_dims, domain, layout=layout)
    files: list[_File] = []
    first: _File | None = None
    shape: tuple[int, ...] = ()
    max_entry = nbytes = 0
    for path in paths:
        sources = tuple(
            pattern_source(spath, skey, follow_links=follow_links)
            for spath, skey in data_stacks(path, key, follow_links)
        )
        n_patterns = 0
        for source in sources:
            info = source.info
            check_layout(info.shape, template.axes_explicit, source.where)
            axes = spatial_axes(len(info.shape), template.spatial_dims)
            pattern = tuple(info.shape[a] for a in axes)
            if first is None and source is sources[0]:
                shape = pattern
            if pattern != shape:
                seen = sources[0] if first is None else first.source
                raise DataFileError(
                    f"{source.where}: patterns of {' x '.join(map(str, pattern))} pixels (shape "
                    f"{info.shape}), but {seen.where} has patterns of "
                    f"{' x '.join(map(str, shape))}; one scale is derived from patterns of one "
                    f"shape (derive each shape on its own)"
                )
            n_patterns += info.count // math.prod(pattern)
            max_entry = max(max_entry, info.count // info.shape[0])
            nbytes += info.nbytes
        metadata, refused = None, None
        try:
            metadata = read_metadata(path)
        except UnsafeFileError as exc:
            if explicit is None:
                raise
            refused = " ".join(str(exc).split())
        meta_value, resolution = _file_nphotons(path, metadata, explicit, default)
        entry = _File(
            path=path,
            sources=sources,
            n_patterns=n_patterns,
            metadata_nphotons=meta_value,
            has_metadata=metadata is not None,
            resolution=resolution,
            refused=refused,
        )
        if first is None:
            first = entry
        files.append(entry)
    return _Plan(
        files=files,
        spatial_dims=template.spatial_dims,
        axes_explicit=template.axes_explicit,
        pattern_shape=shape,
        max_entry=max_entry,
        nbytes=nbytes,
        key=key,
    )


def _file_nphotons(
    path: Path,
    metadata: Any,
    explicit: float | None,
    default: float | None,
) -> tuple[float | None, NphotonsResolution | None]:
    """What a file's metadata says about nphotons, and the value resolved for it."""
    try:
        resolution = _resolve(metadata, explicit=explicit, default=default)
    except NphotonsError as exc:
        if "was not given" in str(exc):
            return None, None  # nothing anywhere: resolve_files names every such file
        raise NphotonsError(
            Wording("{path}: {problem}; or pass {nphotons}", OPTIONS, path=path, problem=str(exc)),
            parameter="nphotons",
        ) from None
    return resolution.candidates.get("metadata"), resolution


# --------------------------------------------------------------------------- nphotons
def resolve_files(plan: _Plan) -> NphotonsResolution:
    """The one nphotons of every file, its source, and the candidates offered.

    Raises:
        NphotonsError: files with no nphotons anywhere, or files whose values
            disagree (each named, with what it said), unless an explicit
            value was given.
    """
    missing = [f for f in plan.files if f.resolution is None]
    if missing:
        hint = (
            "Pass {nphotons} (expected photons per pattern; overrides the file's metadata) "
            "or {nphotons_default} (used only when the metadata gives none)"
        )
        if len(plan.files) == 1:
            why = (
                'its metadata has no ["physics_parameters"]["nphotons"]'
                if missing[0].has_metadata
                else "it has no metadata"
            )
            raise NphotonsError(
                Wording("{file}: nphotons is not known: {why}. " + hint, OPTIONS,
                        file=missing[0].name, why=why),
                parameter="nphotons",
            )  # fmt: skip
        raise NphotonsError(
            Wording(
                "nphotons is not known for {n} of the {total} files ({files}): they have no "
                'metadata, or none with ["physics_parameters"]["nphotons"]. ' + hint,
                OPTIONS,
                n=len(missing),
                total=len(plan.files),
                files=_named([f.name for f in missing]),
            ),
            parameter="nphotons",
        )
    resolved = [f.resolution for f in plan.files if f.resolution is not None]
    groups = _groups([(r.value, f.name) for r, f in zip(resolved, plan.files, strict=True)])
    if len(groups) > 1:
        said = "; ".join(
            f"{_named(names)} {'say' if len(names) > 1 else 'says'} {value:.6g}"
            for value, names in groups[:_NAMED_IN_ERRORS]
        )
        more = "" if len(groups) <= _NAMED_IN_ERRORS else f"; and {len(groups) - 5} more values"
        raise NphotonsError(
            Wording(
                "the files disagree on nphotons: {said}{more}. Derive them separately, or pass "
                "{nphotons} to use one value for every file",
                OPTIONS,
                said=said,
                more=more,
            ),
            parameter="nphotons",
        )
    value = groups[0][0]
    sources = {r.source for r in resolved}
    # The weakest source any file used: a default that filled in for one file is said.
    order: tuple[NphotonsSource, ...] = ("default", "config", "metadata", "explicit")
    source = next(s for s in order if s in sources)
    candidates: dict[NphotonsSource, float] = {}
    if "explicit" in sources:
        candidates["explicit"] = value
    meta = _groups([(f.metadata_nphotons, f.name) for f in plan.files
                    if f.metadata_nphotons is not None])  # fmt: skip
    if len(meta) == 1:  # every file that said something said the same
        candidates["metadata"] = meta[0][0]
    if "default" in sources:
        candidates["default"] = value
    return NphotonsResolution(value=value, source=source, candidates=candidates)


def _groups(values: Sequence[tuple[float, str]]) -> list[tuple[float, list[str]]]:
    """Values equal to within the disagreement tolerance, grouped; the most common first."""
    groups: list[tuple[float, list[str]]] = []
    for value, name in values:
        for v, names in groups:
            if math.isclose(v, value, rel_tol=DISAGREEMENT_RTOL):
                names.append(name)
                break
        else:
            groups.append((value, [name]))
            if len(groups) > 10 * MAX_LISTED_FILES:  # bounded: enough to report
                break
    return sorted(groups, key=lambda g: -len(g[1]))


def data_sources(plan: _Plan) -> DataSources:
    """The record's bounded account of the files."""
    listed: list[SourceFile] = []
    frame = 0
    for f in plan.files[:MAX_LISTED_FILES]:
        listed.append(SourceFile(path=f.name, n_patterns=f.n_patterns, first_frame=frame,
                                 nphotons=f.metadata_nphotons))  # fmt: skip
        frame += f.n_patterns
    counts = collections.Counter(
        f.metadata_nphotons for f in plan.files if f.metadata_nphotons is not None
    )
    common = counts.most_common()
    paths = sorted(f.name for f in plan.files)
    digest = hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()
    return DataSources(
        n_files=len(plan.files),
        key=plan.key,
        paths_sha256=digest,
        files=listed,
        files_truncated=len(plan.files) > MAX_LISTED_FILES,
        metadata_nphotons=[NphotonsCount(value=v, files=n) for v, n in common[:MAX_LISTED_FILES]],
        metadata_nphotons_truncated=len(common) > MAX_LISTED_FILES,
        files_without_nphotons=sum(1 for f in plan.files if f.metadata_nphotons is None),
    )


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class FilesProgress:
    """How far `derive_files` has read: what its ``progress`` callback is given.

    Attributes:
        n_files: the files to read (every one checked).
        n_bytes: the bytes of pattern data to read, over every file.
        files_done: the files read and merged so far.
        bytes_done: the bytes of pattern data read so far.
    """

    n_files: int
    n_bytes: int
    files_done: int = 0
    bytes_done: int = 0


#: A ``progress`` callback: called once when every file is checked (nothing
#: read yet), then after every piece read and every file merged, one call at a
#: time (from the reading threads; keep it quick).
ProgressCallback = Callable[[FilesProgress], None]


class _StoppedError(Exception):
    """Raised inside a worker when another file failed: stop reading."""


def fold_files(
    plan: _Plan,
    *,
    domain: Domain = "amplitude",
    keep_pattern_totals: bool = True,
    mask: Any = None,
    chunk_patterns: int | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: ProgressCallback | None = None,
) -> IntensityAccumulator:
    """Stream every file of ``plan`` into its own accumulator and merge them in file order.

    The merge is exact, so the scale does not depend on the order; the
    per-pattern totals follow the files in order. ``workers`` files are read
    at a time (threads: the readers and kernels release the GIL). The first
    failing file in the order given raises, naming itself; no other state is
    returned. ``progress`` is called as `ProgressCallback` says.
    """
    total = _accumulator(plan, domain, keep_pattern_totals)
    stop = threading.Event()
    lock = threading.Lock()
    done = FilesProgress(len(plan.files), plan.nbytes)

    def advance(n_bytes: int = 0, n_files: int = 0) -> None:
        nonlocal done
        if progress is not None:
            with lock:
                done = FilesProgress(done.n_files, done.n_bytes, done.files_done + n_files,
                                     done.bytes_done + n_bytes)  # fmt: skip
                progress(done)

    if progress is not None:
        progress(done)
    parallel = workers > 1 and len(plan.files) > 1
    # Files read side by side share the cores: each kernel call takes its share.
    share = max(1, torch.get_num_threads() // workers) if parallel else None
    # One buffer per reading thread, kept across its files: fresh memory for every
    # file would cost a page fault per 4 KiB read (measured up to 2.5x the read time).
    buffers = threading.local()

    def scratch() -> np.ndarray:
        buf: np.ndarray | None = getattr(buffers, "buf", None)
        if buf is None:
            buf = buffers.buf = np.zeros(PIECE_BYTES, dtype=np.uint8)
        return buf

    def one(f: _File) -> IntensityAccumulator:
        if share is None:
            return fold_one(f)
        with _native.thread_limit(share):
            return fold_one(f)

    def fold_one(f: _File) -> IntensityAccumulator:
        acc = _accumulator(plan, domain, keep_pattern_totals)
        for source in f.sources:  # a master's stacks in link-name order, into one accumulator
            per_entry = source.row_bytes

            def on_progress(entries: int, per_entry: int = per_entry) -> None:
                if stop.is_set():
                    raise _StoppedError
                advance(n_bytes=entries * per_entry)

            try:
                fold_patterns(
                    acc,
                    source,
                    mask=mask,
                    chunk_patterns=chunk_patterns,
                    max_bytes=PIECE_BYTES,
                    on_progress=on_progress,
                    scratch=scratch(),
                )
            except PhysscaleError as exc:
                _name_the_file(exc, source)
                raise
        return acc

    def merge(acc: IntensityAccumulator) -> None:
        total.merge(acc)
        advance(n_files=1)

    if not parallel:
        for f in plan.files:
            merge(one(f))
        return total
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="physscale") as pool:
        todo: Iterator[_File] = iter(plan.files)
        window: collections.deque[concurrent.futures.Future[IntensityAccumulator]] = (
            collections.deque()
        )
        try:
            for f in todo:
                window.append(pool.submit(one, f))
                if len(window) >= workers:
                    break
            while window:
                # In file order: the first failing file is the one reported.
                acc = window.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    window.append(pool.submit(one, nxt))
                merge(acc)
        except BaseException:
            stop.set()
            for fut in window:
                fut.cancel()
            raise
    return total


def _accumulator(plan: _Plan, domain: Domain, keep: bool) -> IntensityAccumulator:
    acc = IntensityAccumulator(plan.spatial_dims, domain, keep_pattern_totals=keep)
    acc.axes_explicit = plan.axes_explicit  # the layout guard ran on each file's shape
    return acc


def _name_the_file(exc: PhysscaleError, source: PatternSource) -> None:
    """Make sure an error from inside the data names the file it came from."""
    text = str(exc)
    if str(source.path) not in text:
        exc.args = (f"{source.where}: {text}", *exc.args[1:])
        if exc.wording is not None:
            w = exc.wording
            exc.wording = Wording("{where_}: " + w.template, w.options, **w.data,
                                  where_=source.where)  # fmt: skip


# --------------------------------------------------------------------------- the whole
@dataclass(frozen=True)
class DerivedFiles:
    """What ``derive_files(..., details=True)`` gives: the record, and what the report needs.

    [`physscale.report.plot_report`][physscale.report.plot_report] draws its figure from it.

    Attributes:
        record: the [`ScaleRecord`][physscale.ScaleRecord].
        pattern_totals: every pattern's total (float64, frame order,
            normalized units), or None without diagnostics.
        files: each file's name and number of patterns, in frame order.
        refused: why each file's metadata was ignored (it would have run
            code; read only because nphotons was given), in file order.
    """

    record: ScaleRecord
    pattern_totals: torch.Tensor | None
    files: list[tuple[str, int]]
    refused: list[str]

    def file_of(self, frame: int) -> tuple[str, int]:
        """The file holding ``frame``, and the frame's index within that file."""
        starts = list(itertools.accumulate((n for _, n in self.files[:-1]), initial=0))
        i = bisect.bisect_right(starts, frame) - 1
        return self.files[i][0], frame - starts[i]

    def total_of(self, frame: int) -> float:
        """The total of ``frame`` (normalized units); NaN without diagnostics."""
        if self.pattern_totals is None:
            return math.nan
        return float(self.pattern_totals[frame])


def data_source_text(files: Sequence[str]) -> str:
    """The record's ``data_source`` for these files: the path, or a count and a folder."""
    if len(files) == 1:
        return files[0]
    try:
        folder = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    except ValueError:  # different drives
        return f"{len(files)} files"
    return f"{len(files)} files under {_display(folder)}"


def check_frames(frames: Iterable[Any], n_patterns: int) -> list[int]:
    """Frame indices to exclude, checked against the number of patterns before any reading.

    Raises:
        StateError: indices that are not distinct ints in ``[0, n_patterns)``,
            or that would exclude every pattern.
    """
    out: list[int] = []
    for i in frames:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise StateError(f"frame indices must be ints, got {i!r:.40}", parameter="exclude")
        out.append(int(i))
    bad = [i for i in out if not 0 <= i < n_patterns]
    if bad:
        raise StateError(
            f"frame indices must be in [0, {n_patterns}) (the files hold {n_patterns} "
            f"patterns), got {', '.join(map(str, bad[:5]))}",
            parameter="exclude",
        )
    if len(set(out)) != len(out):
        raise StateError("frame indices to exclude must be distinct", parameter="exclude")
    if len(out) >= n_patterns:
        raise StateError(
            f"excluding all {n_patterns} patterns leaves nothing to derive a scale from",
            parameter="exclude",
        )
    return out


def derive_plan(
    plan: _Plan,
    resolution: NphotonsResolution,
    *,
    domain: Domain = "amplitude",
    mask: Any = None,
    diagnostics: bool = True,
    exclude: Literal["outliers"] | Sequence[int] | None = None,
    outlier_rule: OutlierRule | None = None,
    chunk_patterns: int | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: ProgressCallback | None = None,
) -> DerivedFiles:
    """Read the planned files and build the record (the second half of `derive_files`)."""
    keep = diagnostics or exclude is not None
    if exclude is not None and not isinstance(exclude, str):
        exclude = check_frames(exclude, sum(f.n_patterns for f in plan.files))
    named = Wording("{mask}", OPTIONS)  # how errors name the mask
    if isinstance(mask, str | os.PathLike):
        named = Wording("{mask} {path}", OPTIONS, path=os.fspath(mask))
        mask = _read_mask(mask, named, max(math.prod(plan.pattern_shape), plan.max_entry))
    try:
        acc = fold_files(plan, domain=domain, keep_pattern_totals=keep, mask=mask,
                         chunk_patterns=chunk_patterns, workers=workers,
                         progress=progress)  # fmt: skip
    except MaskError as exc:
        raise MaskError(
            Wording(named.template + ": {problem}", OPTIONS, **named.data, problem=str(exc)),
            parameter="mask",
        ) from None
    names = [f.name for f in plan.files]
    record = record_from_accumulator(
        acc,
        resolution,
        data_source=data_source_text(names),
        exclude=exclude,
        outlier_rule=outlier_rule,
        sources=data_sources(plan),
    )
    return DerivedFiles(
        record=record,
        pattern_totals=acc.pattern_totals,
        files=[(f.name, f.n_patterns) for f in plan.files],
        refused=[f.refused for f in plan.files if f.refused is not None],
    )


def _read_mask(path: str | os.PathLike[str], named: Wording, max_count: int) -> np.ndarray:
    """[`read_mask`][physscale.io.readers.read_mask], its errors worded as ``named`` says."""
    where = named.render()
    try:
        return read_mask(path, where, max_count)
    except PhysscaleError as exc:
        # The reader's messages start with the name it was given: keep the rest, so that
        # the command line can name its flag in place of the parameter.
        text = str(exc)
        if exc.wording is None and text.startswith(where):
            exc.wording = Wording(named.template + "{rest}", OPTIONS, **named.data,
                                  rest=text[len(where):])  # fmt: skip
            exc.parameter = "mask"
        raise


_PLOT_REMOVED = (
    "derive_files() no longer draws the report figure (plot= was removed in physscale 0.3): "
    "draw it from the result: derived = derive_files(paths, ..., details=True); "
    'physscale.report.plot_report(derived, "report.png"); record = derived.record'
)


@overload
def derive_files(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    nphotons: Any = ...,
    key: str = ...,
    layout: str | None = ...,
    spatial_dims: Sequence[int] = ...,
    domain: Domain = ...,
    mask: Any = ...,
    nphotons_default: Any = ...,
    diagnostics: bool = ...,
    exclude: Literal["outliers"] | Sequence[int] | None = ...,
    outlier_rule: OutlierRule | None = ...,
    recursive: bool = ...,
    chunk_patterns: int | None = ...,
    workers: int = ...,
    progress: ProgressCallback | None = ...,
    follow_links: bool = ...,
    details: Literal[False] = ...,
    **removed: NoReturn,
) -> ScaleRecord: ...


@overload
def derive_files(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    nphotons: Any = ...,
    key: str = ...,
    layout: str | None = ...,
    spatial_dims: Sequence[int] = ...,
    domain: Domain = ...,
    mask: Any = ...,
    nphotons_default: Any = ...,
    diagnostics: bool = ...,
    exclude: Literal["outliers"] | Sequence[int] | None = ...,
    outlier_rule: OutlierRule | None = ...,
    recursive: bool = ...,
    chunk_patterns: int | None = ...,
    workers: int = ...,
    progress: ProgressCallback | None = ...,
    follow_links: bool = ...,
    details: Literal[True],
    **removed: NoReturn,
) -> DerivedFiles: ...


def derive_files(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    nphotons: Any = None,
    key: str = "diffraction",
    layout: str | None = None,
    spatial_dims: Sequence[int] = DEFAULT_SPATIAL_DIMS,
    domain: Domain = "amplitude",
    mask: Any = None,
    nphotons_default: Any = None,
    diagnostics: bool = True,
    exclude: Literal["outliers"] | Sequence[int] | None = None,
    outlier_rule: OutlierRule | None = None,
    recursive: bool = False,
    chunk_patterns: int | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: ProgressCallback | None = None,
    follow_links: bool = False,
    details: bool = False,
    # Removed keywords (plot=) get a message naming the new call; typed NoReturn so
    # that a type checker refuses any other keyword too.
    **removed: NoReturn,
) -> ScaleRecord | DerivedFiles:
    """Derive one intensity scale from every pattern of many files.

    The result is exactly the scale of all the patterns together: each file
    streams into its own accumulator and they are merged exactly, so the
    scale is the same, to the last bit, whatever the order of the files.

    Every file is checked before any data is read: a missing, unreadable,
    truncated or corrupt file, a missing ``key``, a dtype that is not
    float16/32/64, patterns of another shape than the first file's, or
    channels-last-looking data without a layout raises an error naming the
    file, and nothing is derived.

    Args:
        paths: files, glob patterns and directories (see
            `expand_paths` for which files a directory holds); one
            string or path, or several.
        nphotons: expected photons per pattern for every file; overrides
            the files' metadata. Without it, each file's metadata
            (``["physics_parameters"]["nphotons"]``) gives its value, and
            files that disagree are an error naming them.
        key: the ``.npz`` key or HDF5 dataset path of the patterns in every
            file (ignored for ``.npy``).
        layout: ``"NCHW"`` or ``"NHWC"``, as for
            [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        spatial_dims: the axes of one pattern, as for
            [`physscale.derive_intensity_scale`][physscale.derive_intensity_scale].
        domain: ``"amplitude"`` (normalized amplitudes, summed as ``x**2``)
            or ``"intensity"``.
        mask: optional boolean valid-pixel mask for every file, e.g. ``(H,
            W)``; an array, or the path of a boolean ``.npy`` file.
        nphotons_default: used for files whose metadata gives no nphotons.
        diagnostics: keep every pattern's total (8 bytes a pattern) and put
            their spread and the flagged frames in ``record.pattern_stats``.
        exclude: derive *without* some frames (an explicit choice the record
            states): ``"outliers"`` (those ``outlier_rule`` flags) or frame
            indices (files in order, patterns in storage order; see
            ``record.sources``). None (default): every pattern counts.
        outlier_rule: the `OutlierRule`.
        recursive: also read the data files of subdirectories.
        chunk_patterns: first-axis entries per piece read (default: about
            4 MiB a piece).
        workers: files read at the same time (threads).
        progress: called with a `FilesProgress` once every file is
            checked, then after every piece read and every file merged (one
            call at a time, from the reading threads): e.g. to draw a bar.
        follow_links: HDF5 files (NeXus masters): follow external links and
            virtual datasets, only to files in the master's own folder
            (anything resolving outside it is refused, symlinks resolved
            first); a ``key`` naming an Eiger ``/entry/data`` group of
            ``data_NNNNNN`` links reads them as one stack, in link-name
            order. Off by default: data behind links is refused, naming
            this option.
        details: return a `DerivedFiles` (the record, every
            pattern's total, the files in frame order, the refused
            metadata) instead of the record alone: what
            [`physscale.report.plot_report`][physscale.report.plot_report] draws.

    Returns:
        The [`ScaleRecord`][physscale.ScaleRecord], whose ``sources`` names the
        files (bounded: the first 100, the count, and a SHA-256 of the
        sorted paths) with what each file's metadata said about nphotons;
        with ``details=True``, a `DerivedFiles` holding it.

    Raises:
        PhysscaleError: ``FileListError`` (a pattern matching nothing, a
            directory without data files, a file named twice),
            ``DataFileError`` / ``UnsafeFileError`` (a bad file, named;
            mixed pattern shapes), ``NphotonsError`` (nphotons unknown for
            some files, or files that disagree), and what
            [`physscale.derive_scale_record`][physscale.derive_scale_record] raises.
            Errors that name an option carry a [`Wording`][physscale.errors.Wording].
        TypeError: ``plot=`` (removed in 0.3; the message gives the new
            call), or another unknown keyword.

    Example:
        >>> import numpy as np
        >>> from physscale.io import derive_files, write_metadata
        >>> for i in range(2):  # two files; nphotons from each file's metadata
        ...     write_metadata(tmp / f"scan{i}.npz", {"physics_parameters": {"nphotons": 1e4}},
        ...                    diffraction=np.full((4, 1, 8, 8), 0.5, np.float32))
        >>> record = derive_files([tmp / "scan0.npz", tmp / "scan1.npz"])
        >>> record.n_patterns, round(record.intensity_scale, 6), record.nphotons_source
        (8, 25.0, 'metadata')
    """
    if removed:
        name = next(iter(removed))
        if name == "plot":
            raise TypeError(_PLOT_REMOVED)
        raise TypeError(f"derive_files() got an unexpected keyword argument {name!r}")
    if isinstance(progress, bool):  # 0.2 drew tqdm bars on stderr for progress=True
        warnings.warn(
            "derive_files(progress=True/False) is deprecated since physscale 0.3 and draws "
            "nothing: progress takes a callable, called with a FilesProgress (files and bytes "
            'read, and their totals), e.g. progress=lambda p: print(p.bytes_done, "of", '
            "p.n_bytes); the command line (physscale derive) still draws bars",
            DeprecationWarning,
            stacklevel=2,
        )
        progress = None
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise FileListError(
            f"workers must be an int from 1 to {MAX_WORKERS}, got {preview(workers, 60)}"
        )
    files = expand_paths(paths, recursive=recursive)
    plan = plan_files(files, key=key, spatial_dims=spatial_dims, layout=layout, domain=domain,
                      nphotons=nphotons, nphotons_default=nphotons_default,
                      follow_links=follow_links)  # fmt: skip
    resolution = resolve_files(plan)
    derived = derive_plan(plan, resolution, domain=domain, mask=mask, diagnostics=diagnostics,
                          exclude=exclude, outlier_rule=outlier_rule,
                          chunk_patterns=chunk_patterns, workers=workers,
                          progress=progress)  # fmt: skip
    return derived if details else derived.record
