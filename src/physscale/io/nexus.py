"""Detector files as instruments and pipelines lay them out: NeXus masters, known keys, masks.

- [`list_links`][physscale.io.nexus.list_links]: the external links and virtual datasets of an HDF5
  file, and where each points (a Dectris Eiger master holds its data only
  behind links ``/entry/data/data_000001``, ...).
- `data_stacks`: the stacks a key names, in order. The Eiger
  ``/entry/data`` group of ``data_NNNNNN`` links is one stack read link by
  link in link-name order; links are followed only when asked
  (``follow_links``) and only to files in the master's own folder.
- `find_counts_key`: the known layouts (``/entry/data/data``, ``/dp``,
  ``patterns``, ``diff3d``, ``diffraction``) found without a key; a file with
  several candidates is refused with the list.
- `detector_info`: the pixel mask (NeXus ``pixel_mask``: nonzero = bad
  pixel; ptychodus ``bad_pixels``: True = bad) and the count limits
  (``saturation_value``, ``countrate_correction_count_cutoff``) of a master.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from physscale.errors import DataFileError, UnsafeFileError, Wording
from physscale.io.formats.base import file_kind
from physscale.io.formats.hdf5 import (
    FOLLOW_LINKS,
    external_target,
    hdf5_errors,
    import_h5py,
    inside_folder,
    open_hdf5,
)
from physscale.io.readers import list_arrays

__all__ = [
    "COUNTS_KEYS",
    "MASK_KEYS",
    "DetectorInfo",
    "LinkInfo",
    "data_stacks",
    "detector_info",
    "find_counts_key",
    "list_links",
]

#: An Eiger master's data links: ``data_000001``, ``data_000002``, ...
EIGER_LINK = re.compile(r"^data_\d{6}$")

COUNTS_KEYS = ("/entry/data", "/entry/data/data", "/dp", "/patterns", "/diff3d", "/diffraction")
"""The keys detector and training files keep patterns under, most specific first: an Eiger master's
link group, an Eiger data file, fold_slice/PtychoShelves, ptychodus' training file, PtychoPINN's
``diff3d`` and ``diffraction``."""

MASK_KEYS = (
    "/entry/instrument/detector/detectorSpecific/pixel_mask",
    "/entry/instrument/detector/pixel_mask",
    "/bad_pixels",
)
"""Where masks live, and their polarity: every one of these is nonzero = bad pixel."""

_DETECTOR_SPECIFIC = "/entry/instrument/detector/detectorSpecific"

#: A pixel mask larger than this (256 MiB) is not one frame's mask.
MAX_MASK_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class LinkInfo:
    """One link of an HDF5 file that leaves it.

    Attributes:
        name: the link's path in the file (``/entry/data/data_000001``).
        kind: ``"external"`` (an external link) or ``"virtual"`` (a virtual
            dataset; one entry per source file).
        file: the file it names, as written in the link.
        target: the path inside that file.
    """

    name: str
    kind: str
    file: str
    target: str


def list_links(path: str | Path) -> list[LinkInfo]:
    """The external links and virtual-dataset sources of an HDF5 file, by name.

    Examples:
        >>> import h5py
        >>> from physscale.io import list_links
        >>> with h5py.File(tmp / 'master.h5', 'w') as f:
        ...     link = h5py.ExternalLink('data_000001.h5', '/entry/data/data')
        ...     f['entry/data/data_000001'] = link
        >>> [(link.kind, link.file, link.target) for link in list_links(tmp / 'master.h5')]
        [('external', 'data_000001.h5', '/entry/data/data')]
    """
    p = Path(path)
    if file_kind(p) != "hdf5":
        return []
    h5py = import_h5py(p)
    found: list[LinkInfo] = []
    with open_hdf5(p) as f, hdf5_errors(str(p)):

        def visit(name: str, link: Any) -> None:
            full = "/" + name
            if isinstance(link, h5py.ExternalLink):
                found.append(LinkInfo(full, "external", str(link.filename), str(link.path)))
            elif isinstance(link, h5py.HardLink):
                obj = f.get(full)
                if isinstance(obj, h5py.Dataset) and obj.is_virtual:
                    for src in obj.virtual_sources():
                        found.append(
                            LinkInfo(full, "virtual", str(src.file_name), str(src.dset_name))
                        )

        f.visititems_links(visit)
    return sorted(found, key=lambda link: link.name)


def data_stacks(path: Path, key: str, follow_links: bool) -> list[tuple[Path, str]]:
    """The ``(file, key)`` stacks that ``key`` of ``path`` names, in reading order.

    A group of Eiger ``data_NNNNNN`` links is one stack: each link's target,
    in link-name order (external links must stay in the master's folder and
    need ``follow_links``). Anything else is ``[(path, key)]``.
    """
    if file_kind(path) != "hdf5":
        return [(path, key)]
    h5py = import_h5py(path)
    with open_hdf5(path) as f, hdf5_errors(f"{path}:{key}"):
        if external_target(f, path, key) is not None:
            # Never opened here: pattern_source checks (or refuses) the link first.
            return [(path, key)]
        group = f.get(key, getlink=False) if key.strip("/") else f
        if not isinstance(group, h5py.Group):
            return [(path, key)]
        names = sorted(n for n in group if EIGER_LINK.match(n))
        if not names:
            return [(path, key)]
        base = "/" + key.strip("/")
        stacks: list[tuple[Path, str]] = []
        external = []
        for name in names:
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                external.append(name)
                if follow_links:
                    where = f"{path}:{base}/{name}"
                    stacks.append((inside_folder(path, str(link.filename), where), link.path))
            else:
                stacks.append((path, f"{base}/{name}"))
    if external and not follow_links:
        shown = ", ".join(external[:5]) + (
            f" and {len(external) - 5} more" if len(external) > 5 else ""
        )
        raise UnsafeFileError(
            Wording(
                "{where} is a NeXus master: its data are external links ({shown}) to files "
                "beside it; pass {follow_links} to read them (only files in the master's own "
                "folder are read)",
                FOLLOW_LINKS,
                where=f"{path}:{base}",
                shown=shown,
            )
        )
    return stacks


def find_counts_key(path: Path) -> str:
    """The key of the patterns in a file of a known layout (see `COUNTS_KEYS`).

    Raises:
        DataFileError: no known key (the file's arrays are listed), or
            several (listed too): pick one with ``key=`` (``--key``).
    """
    kind = file_kind(path)
    if kind == "npy":
        return ""
    if kind == "hdf5":
        h5py = import_h5py(path)
        with open_hdf5(path) as f, hdf5_errors(str(path)):
            present = []
            for k in COUNTS_KEYS:
                link = f.get(k, getlink=True)
                if link is None:
                    continue
                obj = f.get(k) if not isinstance(link, h5py.ExternalLink) else None
                if k == "/entry/data":
                    if isinstance(obj, h5py.Group) and any(EIGER_LINK.match(n) for n in obj):
                        present.append(k)
                elif obj is None or isinstance(obj, h5py.Dataset):
                    present.append(k)
        if "/entry/data" in present and "/entry/data/data" in present:
            present.remove("/entry/data/data")
        names = [a.name for a in list_arrays(path)]
    else:
        names = [a.name for a in list_arrays(path)]
        present = [
            k.strip("/") for k in COUNTS_KEYS if k.strip("/") in names and "/" not in k.strip("/")
        ]
    if len(present) == 1:
        return present[0]
    if not present:
        shown = ", ".join(repr(n) for n in names[:20]) or "none"
        raise DataFileError(
            f"{path}: none of the known pattern keys ({', '.join(COUNTS_KEYS)}) is in this "
            f"file; its arrays: {shown}. Pick one with key= (--key)"
        )
    raise DataFileError(
        f"{path}: several arrays could be the patterns: {', '.join(repr(k) for k in present)}; "
        f"pick one with key= (--key)"
    )


@dataclass(frozen=True)
class DetectorInfo:
    """What a master says about its detector.

    Attributes:
        pixel_mask: the pixel mask as stored (nonzero = bad pixel), or None.
        mask_key: where it was found.
        saturation_value: NeXus ``saturation_value`` (counts above it are not photons).
        count_cutoff: NeXus ``countrate_correction_count_cutoff``.
        metadata: other scalar metadata of ``detectorSpecific`` (count_time, photon_energy...).
    """

    pixel_mask: np.ndarray | None = None
    mask_key: str | None = None
    saturation_value: float | None = None
    count_cutoff: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def max_valid(self) -> float | None:
        """The lowest count limit the master states (None without one)."""
        limits = [v for v in (self.saturation_value, self.count_cutoff) if v is not None]
        return min(limits) if limits else None


def _scalar(value: Any) -> Any:
    arr = np.asarray(value)
    if arr.size != 1:
        return None
    item = arr.reshape(()).item()
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    return item


def detector_info(path: Path) -> DetectorInfo:
    """The pixel mask and count limits of an HDF5 master (an empty info for other files)."""
    if file_kind(path) != "hdf5":
        return DetectorInfo()
    h5py = import_h5py(path)
    with open_hdf5(path) as f, hdf5_errors(str(path)):
        mask = None
        mask_key = None
        for k in MASK_KEYS:
            link = f.get(k, getlink=True)
            if link is None or isinstance(link, h5py.ExternalLink):
                continue
            obj = f.get(k)
            if isinstance(obj, h5py.Dataset) and obj.shape is not None:
                nbytes = math.prod(obj.shape) * obj.dtype.itemsize
                if nbytes > MAX_MASK_BYTES or obj.dtype.kind not in "biu":
                    raise DataFileError(
                        f"{path}:{k}: a pixel mask must be integers or booleans of at most "
                        f"{MAX_MASK_BYTES} bytes, got {obj.dtype} of shape {obj.shape}"
                    )
                mask = np.asarray(obj[()])
                mask_key = k
                break
        meta: dict[str, Any] = {}
        spec = f.get(_DETECTOR_SPECIFIC)
        if isinstance(spec, h5py.Group):
            for name in spec:
                link = spec.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    continue
                obj = spec.get(name)
                if isinstance(obj, h5py.Dataset) and obj.shape is not None and obj.size == 1:
                    value = _scalar(obj[()])
                    if isinstance(value, int | float | str):
                        meta[name] = value
    saturation = meta.get("saturation_value")
    cutoff = meta.get("countrate_correction_count_cutoff")
    return DetectorInfo(
        pixel_mask=mask,
        mask_key=mask_key,
        saturation_value=float(saturation) if isinstance(saturation, int | float) else None,
        count_cutoff=float(cutoff) if isinstance(cutoff, int | float) else None,
        metadata=meta,
    )
