"""Detector counts in files to normalized training data out:
[`normalize_files`][physscale.io.normalize.normalize_files].

The counts front door (SPEC section 6). Integer or float counts in ``.npy``,
``.npz``, HDF5 or a NeXus master (its ``data_NNNNNN`` links followed on
request) are streamed twice in bounded memory: pass 1 counts the photons of
the valid pixels, pass 2 writes ``x = sqrt(counts) * factor`` (0 at every
invalid or masked pixel) under PtychoPINN's key ``diff3d``, the valid-pixel
mask (True = valid pixel) under ``mask``, any arrays carried along by name,
and ``_metadata`` (PtychoPINN's JSON convention: ``physics_parameters.nphotons``
is the measured mean counts per pattern, so ``physscale derive`` and
PtychoPINN read the same scale back). The output appears atomically, whole.

Invalid pixels are never photons: the integer dtype's maximum (Eiger's gap
and saturation marker), any ``invalid_values``, counts above ``max_valid``
(or the master's ``saturation_value`` / ``countrate_correction_count_cutoff``)
and the pixels the pixel mask marks bad are excluded alike and counted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import numpy as np

from physscale.accumulator import IntensityAccumulator
from physscale.core.checks import MASK_POLARITY, check_mask_coverage, real_number
from physscale.core.scale import mean_from_totals, normalization_target, scale_from_totals
from physscale.counts import default_invalid_values, invalid_pixels
from physscale.errors import (
    DataFileError,
    MaskError,
    MaskWarning,
    NegativeValueError,
    NonFiniteError,
    OptionError,
)
from physscale.io._atomic import check_output
from physscale.io.archive import member_info, new_archive
from physscale.io.formats.base import CHUNK_BYTES, PatternSource, file_kind
from physscale.io.formats.hdf5 import hdf5_errors, import_h5py, open_hdf5
from physscale.io.metadata import METADATA_KEY
from physscale.io.nexus import MASK_KEYS, data_stacks, detector_info, find_counts_key
from physscale.io.readers import array_info, pattern_source
from physscale.record import MAX_LISTED_FILES, DataSources, ScaleRecord, SourceFile

__all__ = [
    "DATA_KEY",
    "MASK_KEY",
    "NormalizeProgress",
    "NormalizedFiles",
    "normalize_files",
]

DATA_KEY = "diff3d"
"""The key of the normalized amplitudes (PtychoPINN's)."""
MASK_KEY = "mask"
"""The key of the valid-pixel mask written beside them (True = valid pixel)."""
#: Arrays carried along are read whole: at most this many bytes each (256 MiB).
MAX_CARRY_BYTES = 256 * 1024 * 1024

MaskPolarity = Literal["bad", "valid"]


@dataclass(frozen=True)
class NormalizeProgress:
    """How far [`normalize_files`][physscale.io.normalize.normalize_files] is: ``pass_`` 1
    (counting) or 2 (writing)."""

    pass_: int
    frames_done: int
    n_frames: int


@dataclass(frozen=True)
class NormalizedFiles:
    """What [`normalize_files`][physscale.io.normalize.normalize_files] wrote.

    Attributes:
        out: the file written.
        record: the [`ScaleRecord`][physscale.ScaleRecord] of the normalized data
            (``nphotons_source == "measured"``; masked fractions count the
            invalid pixels as masked, and marker values are never intensity).
        stacks: the ``(file, key)`` stacks read, in order.
        invalid_values: the marker values excluded (per dtype: the integer maximum).
        max_valid: counts above this were excluded (None: no limit).
        invalid_pixels: pixel values excluded as markers in pixels the mask
            calls valid (over every frame).
        mask_source: where the pixel mask came from, with its polarity (None: no mask).
        masked_pixels: pixels per pattern the stored mask excludes (a per-frame
            mask: the mean over the frames, rounded).
        carried: the arrays carried along by name.
        metadata: the ``_metadata`` written.
    """

    out: Path
    record: ScaleRecord
    stacks: list[tuple[Path, str]]
    invalid_values: list[float]
    max_valid: float | None
    invalid_pixels: int
    mask_source: str | None
    masked_pixels: int
    carried: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def _as_paths(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise DataFileError("normalize_files needs at least one file of counts")
    return out


class _FrameMasks:
    """A per-frame pixel mask ``(n, ..., H, W)``, read a chunk at a time with the frames.

    Holds either the array itself or a checked source streaming it from a
    file (never read whole), and the polarity that turns its entries into
    valid pixels (True = valid).
    """

    def __init__(
        self, polarity: MaskPolarity, array: np.ndarray | None, source: PatternSource | None
    ) -> None:
        self.polarity = polarity
        self.array = array
        self.source = source

    @property
    def shape(self) -> tuple[int, ...]:
        if self.array is not None:
            return tuple(self.array.shape)
        assert self.source is not None  # one of the two is always given
        return tuple(self.source.info.shape)

    def reader(self, step: int, hw: tuple[int, int]) -> Callable[[int], np.ndarray]:
        """For one pass: ``take(k)`` gives the next ``k`` frames' valid pixels, ``(k, H, W)``."""
        chunks = (
            iter([self.array.reshape(-1, *hw)])
            if self.array is not None
            else (c.reshape(-1, *hw) for c in self.source.chunks(step))  # type: ignore[union-attr]
        )
        held: list[np.ndarray] = []

        def take(k: int) -> np.ndarray:
            have = sum(len(c) for c in held)
            while have < k:
                nxt = next(chunks, None)
                if nxt is None:
                    raise DataFileError("the per-frame mask ended before the frames did")
                held.append(nxt)
                have += len(nxt)
            joined = held[0] if len(held) == 1 else np.concatenate(held)
            held[:] = [joined[k:]] if len(joined) > k else []
            part = joined[:k]
            return np.asarray(part == 0 if self.polarity == "bad" else part != 0)

        return take


def _load_mask(
    pixel_mask: Any, polarity: MaskPolarity | None, first: Path
) -> tuple[np.ndarray | _FrameMasks | None, str | None]:
    """The valid-pixel mask (True = valid) and where it came from, polarity stated.

    A mask of one frame ``(H, W)`` comes back as an array; a per-frame mask
    (three axes or more) as a `_FrameMasks` to stream with the frames.
    """
    if pixel_mask is False:
        return None, None
    if pixel_mask is None:
        info = detector_info(first)
        if info.pixel_mask is None:
            return None, None
        if polarity == "valid":
            raise MaskError(
                f"{first}:{info.mask_key} is a NeXus/ptychodus mask, nonzero = bad pixel; "
                f"mask_polarity='valid' contradicts it"
            )
        where = f"{first}:{info.mask_key} (nonzero = bad pixel)"
        if info.pixel_mask.ndim >= 3:
            return _FrameMasks("bad", info.pixel_mask, None), where
        return info.pixel_mask == 0, where
    if isinstance(pixel_mask, str | os.PathLike):
        text = os.fspath(pixel_mask)
        file, _, key = text.partition(":") if not Path(text).exists() else (text, "", "")
        mpath = Path(file)
        known = key or None
        raw: np.ndarray | PatternSource
        if file_kind(mpath) == "hdf5" and not key:
            info = detector_info(mpath)
            if info.pixel_mask is None:
                raise MaskError(
                    f"{mpath}: no pixel mask at the known places ({', '.join(MASK_KEYS)}); "
                    f"name it as FILE:DATASET"
                )
            raw, known = info.pixel_mask, info.mask_key
        elif len(array_info(mpath, key or "mask").shape) >= 3:
            # One mask per frame: checked now, streamed with the frames (never read whole).
            streamed = pattern_source(mpath, key or "mask", counts=True)
            if streamed.info.dtype.kind not in "biu":
                raise MaskError(
                    f"{text}: a pixel mask must be integers or booleans, got {streamed.info.dtype}"
                )
            raw = streamed
        else:
            raw = _read_small(mpath, key or "mask")
        if polarity is None:
            if known in MASK_KEYS or (known or "").rsplit("/", 1)[-1] in (
                "pixel_mask",
                "bad_pixels",
            ):
                polarity = "bad"
            else:
                raise MaskError(
                    f"{text}: state the mask's polarity: mask_polarity='bad' (nonzero = bad "
                    f"pixel: NeXus pixel_mask, ptychodus bad_pixels) or 'valid' (True = "
                    f"valid pixel, physscale's own); physscale never guesses it"
                )
        what = "nonzero = bad pixel" if polarity == "bad" else "nonzero = valid pixel"
        where = f"{mpath}:{known or key} ({what})"
        if isinstance(raw, PatternSource):
            return _FrameMasks(polarity, None, raw), where
        if raw.ndim >= 3:
            return _FrameMasks(polarity, raw, None), where
        valid = raw == 0 if polarity == "bad" else raw != 0
        return np.asarray(valid, dtype=bool), where
    arr = np.asarray(pixel_mask)
    if polarity is None:
        raise MaskError(
            f"an array pixel_mask needs its polarity stated: mask_polarity='bad' (nonzero = "
            f"bad pixel, NeXus) or 'valid' (True = valid pixel). {MASK_POLARITY}"
        )
    if arr.dtype.kind not in "biu":
        raise MaskError(f"pixel_mask must be integers or booleans, got {arr.dtype}")
    what = "nonzero = bad pixel" if polarity == "bad" else "nonzero = valid pixel"
    if arr.ndim >= 3:
        return _FrameMasks(polarity, arr, None), f"array per frame ({what})"
    valid = arr == 0 if polarity == "bad" else arr != 0
    return np.asarray(valid, dtype=bool), f"array ({what})"


def _read_small(path: Path, key: str) -> np.ndarray:
    """A small array (a mask, positions, a probe) read whole, at most MAX_CARRY_BYTES."""
    info = array_info(path, key)
    if info.nbytes > MAX_CARRY_BYTES:
        raise DataFileError(
            f"{path}:{key}: {info.nbytes} bytes, more than the {MAX_CARRY_BYTES} bytes "
            f"an array carried along (or a mask) may have"
        )
    if info.dtype.hasobject:
        raise DataFileError(f"{path}:{key}: dtype object (a pickle) is never loaded")
    kind = file_kind(path)
    if kind == "hdf5":
        with open_hdf5(path) as f, hdf5_errors(f"{path}:{key}"):
            h5py = import_h5py(path)
            obj = f.get(key)
            if not isinstance(obj, h5py.Dataset):
                raise DataFileError(f"{path}: {key!r} is not a dataset")
            return np.asarray(obj[()])
    try:
        if kind == "npy":
            return np.asarray(np.load(path, allow_pickle=False))
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z[key])
    except (OSError, ValueError, KeyError) as exc:
        raise DataFileError(f"{path}:{key}: cannot read ({exc})") from None


def _frames(chunk: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return chunk.reshape(-1, *shape)


def normalize_files(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    key: str | None = None,
    pixel_mask: Any = None,
    mask_polarity: MaskPolarity | None = None,
    invalid_values: Sequence[float] | None = None,
    max_valid: float | None = None,
    follow_links: bool = False,
    carry: Sequence[str] = (),
    dtype: str = "float32",
    progress: Callable[[NormalizeProgress], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> NormalizedFiles:
    """Normalize detector counts from files into one PtychoPINN ``.npz``, streaming.

    Args:
        paths: one file or several (``.npy``, ``.npz``, HDF5, NeXus master),
            read in the order given; their patterns are concatenated. Each
            holds a stack ``(n, ..., H, W)`` of counts (integer or float).
        out: the ``.npz`` to write (replaced atomically; never half-written).
        key: the array in every file; default: the known layouts
            (``/entry/data`` of an Eiger master, ``/entry/data/data``,
            ``/dp``, ``patterns``, ``diff3d``, ``diffraction``).
        pixel_mask: None: the master's NeXus ``pixel_mask`` or ptychodus'
            ``bad_pixels`` when the first file has one (nonzero = bad pixel);
            ``"FILE[:DATASET]"`` or an ``(H, W)`` array with ``mask_polarity``;
            or one mask per frame, ``(n, H, W)`` (a file's is streamed with the
            frames, never read whole; stored as the ``(n, H, W)`` mask);
            False: no mask.
        mask_polarity: ``"bad"`` (nonzero = bad pixel: NeXus, ptychodus) or
            ``"valid"`` (True = valid pixel: physscale's ``mask=``); required
            for masks not at a known NeXus/ptychodus place.
        invalid_values: marker values that are never photons; default the
            integer dtype's maximum (none for floats); ``()`` for none.
        max_valid: counts above this are invalid; default the master's
            ``saturation_value`` / ``countrate_correction_count_cutoff``.
        follow_links: follow external links and virtual datasets of a
            master, only to files in its own folder.
        carry: names of other arrays (positions, a probe) to copy from the
            first file that has them, unchanged.
        dtype: of ``diff3d``: ``"float32"`` (PtychoPINN's) or ``"float64"``.
        progress: called with a [`NormalizeProgress`][physscale.io.normalize.NormalizeProgress]
            after each chunk.
        chunk_bytes: input bytes per chunk (whole frames; memory is a small
            multiple of it).

    Returns:
        A [`NormalizedFiles`][physscale.io.normalize.NormalizedFiles] with the record and what was
        excluded.

    Raises:
        DataFileError, UnsafeFileError: as `physscale.io.readers.pattern_source`
            (every file checked before any data is read, HDF5 filters included).
        MaskError: a mask of unstated polarity or the wrong shape, or one
            that excludes every pixel (one that excludes most is warned about).
        NegativeValueError, NonFiniteError: negative or non-finite counts in a valid pixel.
        ZeroIntensityError: every valid pixel counted zero photons.

    Examples:
        >>> import numpy as np
        >>> from physscale.io import normalize_files
        >>> counts = np.random.default_rng(0).poisson(40.0, size=(8, 16, 16))   # integer counts
        >>> np.save(tmp / 'scan.npy', counts)
        >>> done = normalize_files(tmp / 'scan.npy', tmp / 'normalized.npz')
        >>> done.out.name, done.record.nphotons_source
        ('normalized.npz', 'measured')
    """
    files = _as_paths(paths)
    if dtype not in ("float32", "float64"):
        raise OptionError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    out_dtype = np.dtype(dtype)
    # ---- check everything before reading any data
    stacks: list[tuple[Path, str]] = []
    sources: list[PatternSource] = []
    per_file: list[tuple[Path, int]] = []
    for path in files:
        k = find_counts_key(path) if key is None else key
        n_before = sum(math.prod(s.info.shape[:-2]) for s in sources)
        for spath, skey in data_stacks(path, k, follow_links):
            src = pattern_source(spath, skey, counts=True, follow_links=follow_links)
            stacks.append((spath, skey))
            sources.append(src)
        n_after = sum(math.prod(s.info.shape[:-2]) for s in sources)
        per_file.append((path, n_after - n_before))
    shape = tuple(sources[0].info.shape[-2:])
    for src in sources:
        if tuple(src.info.shape[-2:]) != shape:
            raise DataFileError(
                f"{src.where}: patterns of shape {src.info.shape[-2:]}, but {sources[0].where} "
                f"holds {shape}; every stack must hold patterns of one shape"
            )
    h, w = int(shape[0]), int(shape[1])
    n_frames = sum(math.prod(s.info.shape[:-2]) for s in sources)
    # An output that is an input (through links or spellings) or read-only: refused
    # before anything is read.
    mask_file = [] if not isinstance(pixel_mask, str | os.PathLike) else [os.fspath(pixel_mask)]
    check_output(out, [*files, *(p for p, _ in stacks), *mask_file])
    loaded, mask_source = _load_mask(pixel_mask, mask_polarity, files[0])
    frame_masks = loaded if isinstance(loaded, _FrameMasks) else None
    static_valid = None if isinstance(loaded, _FrameMasks) else loaded
    if static_valid is not None and static_valid.shape != (h, w):
        raise MaskError(
            f"the pixel mask {mask_source} has shape {static_valid.shape}, the patterns "
            f"{(h, w)}; give the mask of one frame, or one per frame {(n_frames, h, w)}"
        )
    if frame_masks is not None and (
        frame_masks.shape[-2:] != (h, w) or math.prod(frame_masks.shape[:-2]) != n_frames
    ):
        raise MaskError(
            f"the per-frame pixel mask {mask_source} has shape {frame_masks.shape}, but the "
            f"files hold {n_frames} patterns of {(h, w)}; give one mask per frame "
            f"{(n_frames, h, w)}, or the mask of one frame {(h, w)}"
        )
    for src in sources:
        if src.info.dtype.kind == "b":
            raise DataFileError(
                f"{src.where}: holds booleans, not counts; a mask is given as pixel_mask "
                f"(--pixel-mask FILE[:DATASET])"
            )
    info = detector_info(files[0])
    limit = info.max_valid if max_valid is None else real_number(max_valid, "max_valid", "counts")
    markers_by_source = [
        tuple(default_invalid_values(s.info.dtype) if invalid_values is None else invalid_values)
        for s in sources
    ]
    step = max(1, chunk_bytes // max(1, h * w * max(s.info.dtype.itemsize for s in sources)))

    midx = None if static_valid is None else np.flatnonzero(~static_valid)

    # ---- pass 1: the photons of the valid pixels
    total = 0
    total_f = IntensityAccumulator((-2, -1), "intensity")
    masked_total = 0
    masked_total_f = IntensityAccumulator((-2, -1), "intensity")
    n_invalid = 0
    n_excluded = 0
    always_bad = np.ones((h, w), bool)
    done = 0
    any_float = any(s.info.dtype.kind == "f" for s in sources)
    take = None if frame_masks is None else frame_masks.reader(step, (h, w))
    for src, markers in zip(sources, markers_by_source, strict=True):
        for chunk in src.chunks(step):
            frames = _frames(chunk, (h, w))
            per_frame = None if take is None else take(frames.shape[0])
            valid = static_valid if per_frame is None else per_frame
            if frames.dtype.kind in "iu" and per_frame is not None:
                part = _count_integers_per_frame(frames, markers, limit, per_frame, src.where)
            elif frames.dtype.kind in "iu":
                part = _count_integers(frames, markers, limit, midx, src.where)
            else:
                part = _count_floats(frames, limit, valid, total_f, masked_total_f, src.where)
            if frames.dtype.kind in "iu":
                total += part.valid_total
                masked_total += part.masked_total
            n_invalid += part.invalid
            n_excluded += part.excluded
            if part.always_bad is None:
                always_bad[:] = False
            else:
                always_bad &= part.always_bad
            done += frames.shape[0]
            if progress is not None:
                progress(NormalizeProgress(1, done, n_frames))
    if any_float:
        total_value = float(total) + total_f.total_intensity
        masked_value = float(masked_total) + masked_total_f.total_intensity
    else:
        total_value = float(total)
        masked_value = float(masked_total)
    pixels = n_frames * h * w
    where_mask = "the pixel mask (with the invalid pixels)"
    check_mask_coverage(n_excluded, pixels, where_mask, refuse=True)
    if total_value == 0.0 and masked_value > 0.0:
        raise MaskError(
            f"every valid pixel is zero and all the photons lie in pixels {where_mask} "
            f"excludes: the mask looks inverted. {MASK_POLARITY}"
        )
    if n_invalid:
        markers_text = sorted({v for m in markers_by_source for v in m})
        warnings.warn(
            f"{n_invalid} pixel value(s) ({n_invalid / pixels:.3%} of all) are detector "
            f"markers ({', '.join(str(v) for v in markers_text)}"
            f"{'' if limit is None else f', or above {limit:g}'}) in pixels the mask "
            f"calls valid: excluded like masked pixels, never counted as photons",
            MaskWarning,
            stacklevel=2,
        )
    measured = mean_from_totals(total_value, n_frames)
    factor = scale_from_totals(total_value, n_frames, normalization_target((h, w)))
    stored_valid = None
    if frame_masks is None and (static_valid is not None or always_bad.any()):
        stored_valid = (
            static_valid if static_valid is not None else np.ones((h, w), bool)
        ) & ~always_bad
    # ---- pass 2: write x, the mask, carried arrays and the metadata
    acc_x = IntensityAccumulator((-2, -1), "amplitude")
    carried: dict[str, np.ndarray] = {}
    for name in carry:
        for path in files:
            try:
                carried[name] = _read_small(path, name)
                break
            except DataFileError:
                continue
        else:
            raise DataFileError(f"carry: no array {name!r} in {', '.join(map(str, files))}")
    header = {
        "descr": np.lib.format.dtype_to_descr(out_dtype),
        "fortran_order": False,
        "shape": (n_frames, h, w),
    }
    done = 0
    with new_archive(out) as zf:
        with zf.open(member_info(DATA_KEY + ".npy", compress=False), "w", force_zip64=True) as m:
            np.lib.format.write_array_header_2_0(m, header)
            with _Writer(m) as writer:
                take = None if frame_masks is None else frame_masks.reader(step, (h, w))
                for src, markers in zip(sources, markers_by_source, strict=True):
                    for chunk in src.chunks(step):
                        frames = _frames(chunk, (h, w))
                        xo = _amplitudes(frames, factor, out_dtype, markers, limit, midx)
                        if take is not None:
                            np.copyto(xo, out_dtype.type(0), where=~take(frames.shape[0]))
                        acc_x.update(xo, None)
                        writer.put(np.ascontiguousarray(xo))
                        done += frames.shape[0]
                        if progress is not None:
                            progress(NormalizeProgress(2, done, n_frames))
        if acc_x.n_patterns != n_frames:
            raise DataFileError("the files changed between the two passes; nothing written")
        scale = acc_x.scale_for(measured)
        masked = stored_valid is not None or frame_masks is not None or n_excluded > 0
        record = ScaleRecord(
            intensity_scale=scale,
            nphotons=measured,
            nphotons_source="measured",
            nphotons_candidates={"measured": measured},
            method="derived",
            domain="amplitude",
            n_patterns=n_frames,
            pattern_shape=(h, w),
            spatial_dims=(1, 2),
            masked=masked,
            masked_pixel_fraction=n_excluded / pixels if masked else None,
            masked_intensity_fraction=(
                masked_value / (masked_value + total_value) if masked else None
            ),
            mean_intensity=acc_x.mean_intensity,
            data_source=", ".join(str(p) for p in files)[:4096],
            sources=_sources(per_file, key or "(known layouts)"),
        )
        markers_list = sorted({float(v) for m in markers_by_source for v in m})
        meta: dict[str, Any] = {
            "physics_parameters": {"nphotons": measured},
            "physscale": {
                "record": record.model_dump(mode="json"),
                "data_key": DATA_KEY,
                "mask_key": (
                    MASK_KEY if stored_valid is not None or frame_masks is not None else None
                ),
                "mask_polarity": "True = valid pixel",
                "pixel_mask_source": mask_source,
                "invalid_values": markers_list,
                "max_valid": limit,
                "invalid_pixels": n_invalid,
                "stacks": [f"{p}:{k}" for p, k in stacks[:MAX_LISTED_FILES]],
                "detector": info.metadata,
            },
        }
        if stored_valid is not None:
            with zf.open(member_info(MASK_KEY + ".npy"), "w", force_zip64=True) as m:
                np.lib.format.write_array(m, stored_valid, allow_pickle=False)
        masked_pixels = 0 if stored_valid is None else int((~stored_valid).sum())
        if frame_masks is not None:
            # One mask per frame, (n, H, W), streamed once more: True = valid pixel, and
            # False too where a pixel held a marker in every frame.
            take = frame_masks.reader(step, (h, w))
            excluded = 0
            with zf.open(member_info(MASK_KEY + ".npy"), "w", force_zip64=True) as m:
                np.lib.format.write_array_header_2_0(
                    m, {"descr": "|b1", "fortran_order": False, "shape": (n_frames, h, w)}
                )
                for start in range(0, n_frames, step):
                    kept = take(min(step, n_frames - start)) & ~always_bad
                    excluded += kept.size - int(np.count_nonzero(kept))
                    m.write(np.ascontiguousarray(kept).data)
            masked_pixels = round(excluded / n_frames)
        for name, arr in carried.items():
            with zf.open(member_info(name + ".npy"), "w", force_zip64=True) as m:
                np.lib.format.write_array(m, arr, allow_pickle=False)
        text = json.dumps(meta, allow_nan=False)
        with zf.open(member_info(METADATA_KEY + ".npy"), "w") as m:
            np.lib.format.write_array(m, np.array(text, dtype=np.str_), allow_pickle=False)
    return NormalizedFiles(
        out=Path(out),
        record=record,
        stacks=stacks,
        invalid_values=markers_list,
        max_valid=limit,
        invalid_pixels=n_invalid,
        mask_source=mask_source,
        masked_pixels=masked_pixels,
        carried=list(carried),
        metadata=meta,
    )


def _sources(per_file: list[tuple[Path, int]], key: str) -> DataSources:
    listed = []
    frame = 0
    for path, n in per_file[:MAX_LISTED_FILES]:
        if n >= 1:
            listed.append(SourceFile(path=str(path), n_patterns=n, first_frame=frame))
        frame += n
    names = sorted(str(p) for p, _ in per_file)
    return DataSources(
        n_files=len(per_file),
        key=key,
        paths_sha256=hashlib.sha256("\n".join(names).encode()).hexdigest(),
        files=listed,
        files_truncated=len(listed) < len(per_file),
        metadata_nphotons=[],
        metadata_nphotons_truncated=False,
        files_without_nphotons=len(per_file),
    )


@dataclass(frozen=True)
class _Part:
    """One chunk's counts: integer totals exact (Python ints), what was excluded."""

    valid_total: int
    masked_total: int
    invalid: int  # marker values in pixels the mask calls valid
    excluded: int  # pixels excluded (masked or invalid)
    always_bad: np.ndarray | None  # pixels invalid in every frame of the chunk


def _count_integers(
    frames: np.ndarray,
    markers: tuple[float, ...],
    limit: float | None,
    midx: np.ndarray | None,
    where: str,
) -> _Part:
    """Exact integer sums of the valid counts of ``(k, H, W)`` frames, without full-size masks.

    The whole chunk is summed once; the masked pixels (a few per cent, gathered)
    and the markers (counted) are then taken off, so no full-size masked copy
    is made.
    """
    acc = np.uint64 if frames.dtype.kind == "u" else np.int64
    k = frames.shape[0]
    if frames.dtype.kind == "i" and frames.min() < 0:
        ok = _ok(frames, markers, limit, midx)
        if np.min(frames, where=ok, initial=0) < 0:
            raise NegativeValueError(
                f"{where}: negative counts in valid pixels; name them with "
                f"invalid_values= (--invalid-value) or mask them"
            )
    whole = int(frames.sum(dtype=acc))
    bad = invalid_pixels(frames, markers, limit)
    n_bad = 0 if bad is None else int(np.count_nonzero(bad))
    if n_bad == 0:
        bad_sum = 0
    elif limit is None and len(markers) == 1:
        bad_sum = n_bad * int(markers[0])
    else:
        bad_sum = int(frames[bad].sum(dtype=acc))
    m_all = m_bad = n_mbad = 0
    m = 0
    if midx is not None and midx.size:
        m = int(midx.size)
        mvals = frames.reshape(k, -1)[:, midx]
        m_all = int(mvals.sum(dtype=acc))
        mb = invalid_pixels(mvals, markers, limit)
        if mb is not None and mb.any():
            n_mbad = int(np.count_nonzero(mb))
            m_bad = int(mvals[mb].sum(dtype=acc))
    valid_total = whole - m_all - (bad_sum - m_bad)
    always = None if bad is None or n_bad == 0 else np.logical_and.reduce(bad, axis=0)
    return _Part(
        valid_total=valid_total,
        masked_total=m_all - m_bad,
        invalid=n_bad - n_mbad,
        excluded=k * m + (n_bad - n_mbad),
        always_bad=always,
    )


def _count_integers_per_frame(
    frames: np.ndarray,
    markers: tuple[float, ...],
    limit: float | None,
    valid: np.ndarray,
    where: str,
) -> _Part:
    """Exact integer sums of ``(k, H, W)`` frames under a per-frame valid mask ``(k, H, W)``."""
    acc = np.uint64 if frames.dtype.kind == "u" else np.int64
    bad = invalid_pixels(frames, markers, limit)
    ok = valid if bad is None else valid & ~bad
    rest = ~valid if bad is None else ~valid & ~bad  # masked, not markers: their photons
    if frames.dtype.kind == "i" and np.min(frames, where=ok, initial=0) < 0:
        raise NegativeValueError(
            f"{where}: negative counts in valid pixels; name them with "
            f"invalid_values= (--invalid-value) or mask them"
        )
    n_bad = 0 if bad is None else int(np.count_nonzero(bad & valid))
    always = None if bad is None or not bad.any() else np.logical_and.reduce(bad, axis=0)
    return _Part(
        valid_total=int(np.sum(frames, dtype=acc, where=ok)),
        masked_total=int(np.sum(frames, dtype=acc, where=rest)),
        invalid=n_bad,
        excluded=ok.size - int(np.count_nonzero(ok)),
        always_bad=always,
    )


def _ok(
    frames: np.ndarray, markers: tuple[float, ...], limit: float | None, midx: np.ndarray | None
) -> np.ndarray:
    """The valid pixels of ``(k, H, W)`` frames as a full-size boolean array."""
    bad = invalid_pixels(frames, markers, limit)
    ok = np.ones(frames.shape, bool) if bad is None else ~bad
    if midx is not None and midx.size:
        ok.reshape(frames.shape[0], -1)[:, midx] = False
    return ok


def _count_floats(
    frames: np.ndarray,
    limit: float | None,
    static_valid: np.ndarray | None,  # (H, W), or (k, H, W) for a per-frame mask
    total_f: IntensityAccumulator,
    masked_total_f: IntensityAccumulator,
    where: str,
) -> _Part:
    """Float counts folded into exact accumulators (NaN, inf, negatives refused at valid pixels)."""
    f64 = frames.astype(np.float64, copy=False)
    bad = None if limit is None else f64 > limit
    ok = np.ones(f64.shape, bool) if bad is None else ~bad
    if static_valid is not None:
        ok &= static_valid
    if not np.isfinite(f64, where=ok, out=np.ones(f64.shape, bool)).all():
        raise NonFiniteError(f"{where}: NaN or inf counts in valid pixels")
    total_f.update(f64, ok)
    if static_valid is not None:
        rest = ~static_valid & (True if bad is None else ~bad)
        with np.errstate(invalid="ignore"):
            masked_total_f.update(np.where(rest & np.isfinite(f64) & (f64 >= 0), f64, 0.0), None)
    n_bad = (
        0
        if bad is None
        else int(np.count_nonzero(bad if static_valid is None else bad & static_valid))
    )
    always = None if bad is None or not bad.any() else np.logical_and.reduce(bad, axis=0)
    return _Part(0, 0, n_bad, f64.size - int(np.count_nonzero(ok)), always)


def _amplitudes(
    frames: np.ndarray,
    factor: float,
    out_dtype: np.dtype[Any],
    markers: tuple[float, ...],
    limit: float | None,
    midx: np.ndarray | None,
) -> np.ndarray:
    """``sqrt(counts) * factor`` in ``out_dtype``, 0 at every invalid or masked pixel."""
    bad = invalid_pixels(frames, markers, limit)
    with np.errstate(invalid="ignore"):
        if out_dtype == np.float32 and frames.dtype.itemsize <= 4:
            # float32 holds counts exactly up to 2**24; the output is float32 anyway.
            x = frames.astype(np.float32)
            np.sqrt(x, out=x)
            x *= np.float32(factor)
        else:
            x = np.sqrt(frames, dtype=np.float64)
            x *= factor
            x = x.astype(out_dtype, copy=False)
    if bad is not None:
        np.copyto(x, out_dtype.type(0), where=bad)
    if midx is not None and midx.size:
        x.reshape(x.shape[0], -1)[:, midx] = 0
    if frames.dtype.kind == "f":
        np.copyto(x, out_dtype.type(0), where=~np.isfinite(x))
    return x


class _Writer:
    """Writes chunks to ``stream`` in a background thread, two chunks ahead at most.

    The zip member's CRC and the file write release the GIL, so writing
    overlaps reading and computing the next chunk; memory stays two chunks.
    A write error is raised in the caller at the next ``put`` or at the end.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="physscale-normalize-writer")

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._stream.write(item.data)
                except BaseException as exc:  # re-raised in the caller
                    self._error = exc

    def put(self, array: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(array)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._queue.put(None)
        self._thread.join()
        if kind is None and self._error is not None:
            raise self._error
