"""ScaleRecord: the provenance of one intensity scale (pydantic types only).

A record is a frozen pydantic model with a versioned schema. It says what the
scale is, which nphotons it was derived for and where that came from, how it
was obtained, and the data statistics behind it, including the dose the scale
actually implies for that data (``intensity_scale**2 * mean_intensity``), so a
record never claims a dose the data does not have. Records are made in
`physscale.derive` (``derive_scale_record``, ``record_from_accumulator``,
``closed_form_scale_record``).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from physscale._version import __version__
from physscale.core.checks import positive_finite
from physscale.core.kernels.sums import Domain
from physscale.core.nphotons import NphotonsSource
from physscale.core.scale import normalization_target
from physscale.diagnostics import ExcludedFrames, PatternStats
from physscale.errors import RecordError

__all__ = [
    "MAX_LISTED_FILES",
    "READABLE_SCHEMA_VERSIONS",
    "SCHEMA_VERSION",
    "DataSources",
    "NphotonsCount",
    "ScaleMethod",
    "ScaleRecord",
    "SourceFile",
]

SCHEMA_VERSION: Literal[2] = 2
"""The record schema this physscale writes (``ScaleRecord.schema_version``)."""
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)
"""The record schemas this physscale reads (version 1 is a subset of version 2)."""

#: Relative tolerance of the record's internal consistency checks.
CONSISTENCY_RTOL = 1e-9

ScaleMethod = Literal["derived", "closed_form", "trained", "explicit"]
PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
#: Bounds that no real dataset reaches, so arithmetic on a record never overflows.
MAX_PATTERN_SIZE = 2**31 - 1
MAX_PATTERN_AXES = 8
MAX_PATTERNS = 2**63 - 1


UTC = timezone.utc  # datetime.UTC is Python 3.11+; physscale supports 3.10

MAX_LISTED_FILES = 100
"""At most this many files (and distinct metadata nphotons values) are listed in
[`DataSources`][physscale.record.DataSources]; the counts and the hash always cover
every file, so a record stays small (a few tens of kB) whatever the number of files."""


class SourceFile(BaseModel):
    """One data file a scale was derived from.

    Attributes:
        path: the file, as it was given (after expanding globs and directories).
        n_patterns: the patterns it holds.
        first_frame: the index of its first pattern in the frame numbering of
            the record (files in the order given, patterns in storage order),
            as ``pattern_stats.flagged_frames`` and ``excluded_frames`` count.
        nphotons: what its metadata (``["physics_parameters"]["nphotons"]``)
            said; None when it said nothing (or its metadata was refused).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    n_patterns: Annotated[int, Field(ge=1, le=MAX_PATTERNS)]
    first_frame: Annotated[int, Field(ge=0, le=MAX_PATTERNS)]
    nphotons: PositiveFinite | None = None


class NphotonsCount(BaseModel):
    """One nphotons value that files' metadata gave, and how many files gave it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: PositiveFinite
    files: Annotated[int, Field(ge=1)]


class DataSources(BaseModel):
    """The files a scale was derived from, bounded whatever their number.

    Attributes:
        n_files: how many files (every one is counted and hashed).
        key: the ``.npz`` key or HDF5 dataset path read in each file.
        paths_sha256: SHA-256 of the sorted paths, one per line, UTF-8:
            ``hashlib.sha256("\\n".join(sorted(paths)).encode()).hexdigest()``;
            it identifies the set of files even when they are not all listed.
        files: the first [`MAX_LISTED_FILES`][physscale.record.MAX_LISTED_FILES] files, in the
            order given.
        files_truncated: whether ``files`` lists fewer than ``n_files``.
        metadata_nphotons: the distinct nphotons values the files' metadata
            gave, with how many files gave each (at most
            [`MAX_LISTED_FILES`][physscale.record.MAX_LISTED_FILES] values, the most common first).
        metadata_nphotons_truncated: whether that list was cut.
        files_without_nphotons: files whose metadata gave no nphotons.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_files: Annotated[int, Field(ge=1)]
    key: str
    paths_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    files: list[SourceFile] = Field(max_length=MAX_LISTED_FILES)
    files_truncated: bool
    metadata_nphotons: list[NphotonsCount] = Field(max_length=MAX_LISTED_FILES)
    metadata_nphotons_truncated: bool
    files_without_nphotons: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _consistent(self) -> DataSources:
        if len(self.files) > self.n_files or self.files_truncated != (
            len(self.files) < self.n_files
        ):
            raise ValueError(
                f"sources lists {len(self.files)} of {self.n_files} files but "
                f"files_truncated is {self.files_truncated}"
            )
        frame = 0
        for f in self.files:
            if f.first_frame != frame:
                raise ValueError(
                    f"sources: {f.path} starts at frame {f.first_frame}, expected {frame} "
                    f"(the patterns of the files before it)"
                )
            frame += f.n_patterns
        listed = sum(c.files for c in self.metadata_nphotons) + self.files_without_nphotons
        cut = self.metadata_nphotons_truncated
        if listed > self.n_files or (not cut and listed != self.n_files):
            raise ValueError(
                f"sources: the nphotons counts cover {listed} files, not the {self.n_files} given"
            )
        return self

    @property
    def n_patterns_listed(self) -> int:
        """The patterns of the listed files."""
        return sum(f.n_patterns for f in self.files)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ScaleRecord(BaseModel):
    """The provenance of one intensity scale (JSON round-trips exactly).

    Attributes:
        schema_version: version of this schema (2; version 1 records are read too).
        physscale_version: the physscale that wrote the record.
        created_utc: when the record was made, timezone-aware UTC.
        intensity_scale: the amplitude factor ``s``; counts are ``(s * x)**2``.
        nphotons: expected photons per pattern the scale was derived for.
        nphotons_source: where ``nphotons`` came from.
        nphotons_candidates: every value offered for nphotons, by source.
        method: ``"derived"`` from data, ``"closed_form"`` ``sqrt(nphotons)/(N/2)``,
            ``"trained"`` (a learned log-scale), or ``"explicit"``.
        initial_intensity_scale: for ``"trained"``, the value training started from.
        domain: whether the data were amplitudes or intensities.
        n_patterns: patterns the statistics were taken over.
        pattern_shape: sizes of one pattern's spatial axes.
        spatial_dims: the axes used as spatial axes.
        masked: whether a valid-pixel mask excluded pixels. With a mask,
            nphotons is the expected count in the *unmasked* pixels of a
            pattern (the masked ones add nothing to the mean intensity).
        masked_pixel_fraction: with a mask, the fraction of all pixels it excluded.
        masked_intensity_fraction: with a mask, the fraction of the data's
            intensity that lay in the excluded pixels (None where those
            pixels held NaN or infinities, so no fraction can be given).
        mean_intensity: mean per-pattern ``sum(x**2)`` (or ``sum(x)``), normalized units.
        implied_nphotons: mean photon counts per pattern this scale gives
            this data, ``intensity_scale**2 * mean_intensity``; equals
            ``nphotons`` for a derived scale, differs after training.
        data_source: free text naming the data (a path, a dataset name).
        pattern_stats: the spread of the per-pattern intensity over every
            pattern seen, and the frames the outlier rule flags (see
            `physscale.diagnostics`); present when per-pattern totals
            were kept.
        excluded_frames: the frames the scale was derived *without*, and why;
            None when every pattern counts (the TF-parity case).
        sources: the data files the scale was derived from, with what each
            file's metadata said about nphotons (bounded; see
            [`DataSources`][physscale.record.DataSources]); set by
            [`physscale.io.derive_files`][physscale.io.derive_files].

    Examples:
        >>> import physscale as ps
        >>> record = ps.closed_form_scale_record(1e6, 64)
        >>> record.intensity_scale, record.nphotons, record.nphotons_source
        (31.25, 1000000.0, 'explicit')
        >>> ps.ScaleRecord.model_validate_json(record.model_dump_json()) == record
        True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    physscale_version: str = __version__
    created_utc: AwareDatetime = Field(default_factory=_utc_now)
    intensity_scale: PositiveFinite
    nphotons: PositiveFinite
    nphotons_source: NphotonsSource
    nphotons_candidates: dict[NphotonsSource, PositiveFinite] = Field(default_factory=dict)
    method: ScaleMethod
    initial_intensity_scale: PositiveFinite | None = None
    domain: Domain = "amplitude"
    n_patterns: Annotated[int, Field(ge=1, le=MAX_PATTERNS)] | None = None
    pattern_shape: (
        Annotated[
            tuple[Annotated[int, Field(ge=1, le=MAX_PATTERN_SIZE)], ...],
            Field(min_length=1, max_length=MAX_PATTERN_AXES),
        ]
        | None
    ) = None
    spatial_dims: (
        Annotated[
            tuple[Annotated[int, Field(ge=-64, le=63)], ...],
            Field(max_length=MAX_PATTERN_AXES),
        ]
        | None
    ) = None
    masked: bool = False
    masked_pixel_fraction: Fraction | None = None
    masked_intensity_fraction: Fraction | None = None
    mean_intensity: PositiveFinite | None = None
    implied_nphotons: PositiveFinite | None = None
    data_source: str | None = None
    pattern_stats: PatternStats | None = None
    excluded_frames: ExcludedFrames | None = None
    sources: DataSources | None = None

    @field_validator("created_utc")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        if value.utcoffset() != UTC.utcoffset(None):
            raise ValueError(f"created_utc must be in UTC, got offset {value.utcoffset()}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _fill_implied(cls, data: Any) -> Any:
        # The implied dose is derivable: fill it in when the caller leaves it out.
        if isinstance(data, dict) and data.get("implied_nphotons") is None:
            s, mean = data.get("intensity_scale"), data.get("mean_intensity")
            if isinstance(s, int | float) and isinstance(mean, int | float):
                try:
                    implied = float(s) * float(s) * float(mean)  # inf, not OverflowError
                except OverflowError:  # an int beyond the float range
                    return data  # the field validators refuse it with a clear message
                data = {**data, "implied_nphotons": implied}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ScaleRecord:
        try:
            return self._check_consistency()
        except (OverflowError, ZeroDivisionError) as exc:
            # Arithmetic on extreme values: a validation error, never a raw exception.
            raise ValueError(f"the record's numbers are out of range ({exc})") from None

    def _check_consistency(self) -> ScaleRecord:
        s = self.intensity_scale

        def close(a: float, b: float) -> bool:
            return math.isclose(a, b, rel_tol=CONSISTENCY_RTOL)

        if self.method == "derived":
            missing = [f for f in ("n_patterns", "pattern_shape", "mean_intensity")
                       if getattr(self, f) is None]  # fmt: skip
            if missing:
                raise ValueError(f"a derived record needs {', '.join(missing)}")
            assert self.mean_intensity is not None
            expected = math.sqrt(self.nphotons / self.mean_intensity)
            if not close(s, expected):
                raise ValueError(
                    f"intensity_scale {s!r} is not sqrt(nphotons / mean_intensity) = {expected!r}"
                )
        if self.method == "closed_form":
            if self.pattern_shape is None:
                raise ValueError("a closed_form record needs pattern_shape")
            expected = math.sqrt(self.nphotons / normalization_target(self.pattern_shape))
            if not close(s, expected):
                raise ValueError(
                    f"intensity_scale {s!r} is not sqrt(nphotons)/(N/2) = {expected!r}"
                )
        if (self.method == "trained") != (self.initial_intensity_scale is not None):
            raise ValueError(
                "initial_intensity_scale is required for method='trained' and only for it"
            )
        if self.mean_intensity is None and self.implied_nphotons is not None:
            raise ValueError("implied_nphotons needs mean_intensity")
        if self.mean_intensity is not None:
            implied = s * s * self.mean_intensity
            if self.implied_nphotons is None or not close(self.implied_nphotons, implied):
                raise ValueError(
                    f"implied_nphotons {self.implied_nphotons!r} is not "
                    f"intensity_scale**2 * mean_intensity = {implied!r}"
                )
        excluded = self.excluded_frames
        if excluded is not None and (
            self.n_patterns is None
            or self.n_patterns != excluded.n_patterns_before - excluded.count
        ):
            raise ValueError(
                f"n_patterns {self.n_patterns!r} is not the {excluded.n_patterns_before} "
                f"patterns before exclusion less the {excluded.count} excluded"
            )
        stats = self.pattern_stats
        if stats is not None:
            seen = self.n_patterns if excluded is None else excluded.n_patterns_before
            if stats.n_patterns != seen:
                raise ValueError(
                    f"pattern_stats covers {stats.n_patterns} patterns but the data had {seen!r}"
                )
        sources = self.sources
        if sources is not None and not sources.files_truncated:
            seen = self.n_patterns if excluded is None else excluded.n_patterns_before
            if sources.n_patterns_listed != seen:
                raise ValueError(
                    f"sources lists files of {sources.n_patterns_listed} patterns but the data "
                    f"had {seen!r}"
                )
        fractions = (self.masked_pixel_fraction, self.masked_intensity_fraction)
        if not self.masked and any(f is not None for f in fractions):
            raise ValueError("masked_pixel_fraction and masked_intensity_fraction need masked=True")
        offered = self.nphotons_candidates.get(self.nphotons_source)
        if offered is not None and not close(offered, self.nphotons):
            raise ValueError(
                f"nphotons {self.nphotons!r} differs from the {self.nphotons_source} "
                f"candidate {offered!r}"
            )
        return self

    def __float__(self) -> float:
        """The intensity scale: a record is accepted wherever a scale is."""
        return self.intensity_scale

    @property
    def data_scale(self) -> float:
        """The scale derived from the data: a trained record's initial value, else its scale.

        Observed counts are ``(data_scale * obs)**2`` even while a trained scale moves the rate.
        """
        return self.initial_intensity_scale or self.intensity_scale

    def trained(self, intensity_scale: Any) -> ScaleRecord:
        """A new record for a scale learned from this one (``method="trained"``).

        Keeps the data statistics and nphotons; ``initial_intensity_scale`` is
        this record's initial value if it was already trained, else its scale.
        """
        value = positive_finite(intensity_scale, "trained intensity_scale", RecordError)
        data = self.model_dump(exclude={"created_utc", "implied_nphotons", "physscale_version"})
        data.update(
            method="trained",
            intensity_scale=value,
            initial_intensity_scale=self.data_scale,
        )
        return ScaleRecord(**data)
