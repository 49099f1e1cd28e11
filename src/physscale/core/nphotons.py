"""Resolving nphotons from its possible sources (SPEC §4).

Order (`nphotons_precedence`): an explicit argument, then the dataset's
metadata (``metadata["physics_parameters"]["nphotons"]``, PtychoPINN's
schema), then the configuration, then a caller-supplied default; with none of
them, an error. The source label always names where the value actually came
from: a metadata dict without ``nphotons`` does not make a default "metadata".
[`resolve_nphotons`][physscale.core.nphotons.resolve_nphotons] reads and checks each source, then
asks
`nphotons_precedence` which one wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from physscale.core.checks import positive_finite
from physscale.core.jsontext import load_json
from physscale.core.preview import preview
from physscale.errors import NphotonsError

__all__ = ["NphotonsResolution", "NphotonsSource", "nphotons_precedence", "resolve_nphotons"]

#: Where an nphotons value came from. ``"measured"`` is never a resolution's
#: source: it marks a record whose nphotons is the mean counts per pattern
#: measured in raw-count data ([`physscale.normalize_counts`][physscale.normalize_counts]).
NphotonsSource = Literal["explicit", "metadata", "config", "default", "measured"]

_METADATA_PATH = 'metadata["physics_parameters"]["nphotons"]'

#: Containers unwrapped at most to reach the metadata mapping (a dataset holding
#: metadata holding ...): real code nests two; more is a cycle or a mistake.
_MAX_WRAPPERS = 16

#: The sources a resolution may pick, highest priority first.
PRECEDENCE: tuple[NphotonsSource, ...] = ("explicit", "metadata", "config", "default")

#: Relative difference above which metadata and config are said to disagree.
DISAGREEMENT_RTOL = 1e-9


class NphotonsResolution(BaseModel):
    """Which nphotons to use, where it came from, and what else was on offer.

    Attributes:
        value: photons per pattern, positive finite.
        source: where ``value`` came from.
        candidates: every source that offered a value, with its value.
        disagreement: a sentence when metadata and config both offered values
            that differ (metadata wins, as in the reference), else None.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: float = Field(gt=0, allow_inf_nan=False)
    source: NphotonsSource
    candidates: dict[NphotonsSource, float] = Field(default_factory=dict)
    disagreement: str | None = None

    @property
    def disagrees(self) -> bool:
        """Whether metadata and config offered different values."""
        return self.disagreement is not None


def _metadata_mapping(metadata: Any) -> Mapping[str, Any] | None:
    """Unwrap the accepted metadata forms to a mapping (or None).

    A data container is accepted where metadata is expected, the same way
    [`physscale.attach_intensity_scale`][physscale.attach_intensity_scale] reads one: an object's
    ``.metadata`` attribute, or a mapping's ``"metadata"`` entry when the
    mapping is not itself metadata (has no ``"physics_parameters"``).
    """
    # Unwrapped in a loop, a bounded number of times: an object whose .metadata is
    # itself (or a dict holding itself) would otherwise recurse until RecursionError.
    seen: set[int] = set()
    while metadata is not None:
        if id(metadata) in seen:
            raise NphotonsError(
                'metadata refers back to itself (a .metadata or ["metadata"] that holds its '
                "own container); pass the metadata mapping itself"
            )
        if len(seen) >= _MAX_WRAPPERS:
            raise NphotonsError(
                f"metadata is wrapped in more than {_MAX_WRAPPERS} containers (.metadata or "
                f'["metadata"]); pass the metadata mapping itself'
            )
        seen.add(id(metadata))
        if (
            isinstance(metadata, Mapping)
            and "metadata" in metadata
            and "physics_parameters" not in metadata
        ):
            metadata = metadata["metadata"]
        elif not isinstance(metadata, Mapping | str | bytes) and hasattr(metadata, "metadata"):
            metadata = metadata.metadata
        else:
            break
    if metadata is None:
        return None
    if isinstance(metadata, str | bytes):
        # The one JSON guard: deep nesting or bytes that are not UTF-8 are an NphotonsError.
        metadata = load_json(metadata, "metadata", NphotonsError, what="the JSON string")
    if not isinstance(metadata, Mapping):
        raise NphotonsError(
            f"metadata must be a mapping like {{'physics_parameters': {{'nphotons': 1e9}}}}, "
            f"a JSON string, or an object with a .metadata attribute; got {type(metadata).__name__}"
        )
    return metadata


def _near_misses(mapping: Mapping[str, Any], prefix: str, exact_ok: bool) -> list[str]:
    """Keys that spell nphotons differently (or, at the top level, at all)."""
    return [
        f"{prefix}[{key!r}]"
        for key in mapping
        if isinstance(key, str)
        and key.lower().replace("_", "").replace("-", "") == "nphotons"
        and (key != "nphotons" or not exact_ok)
    ]


def _from_metadata(metadata: Any) -> tuple[float | None, list[str]]:
    """The metadata's nphotons (or None) and any misplaced or misspelled nphotons keys."""
    mapping = _metadata_mapping(metadata)
    if mapping is None:
        return None, []
    misplaced = _near_misses(mapping, "metadata", exact_ok=False)
    physics = mapping.get("physics_parameters")
    if physics is None:
        return None, misplaced
    if not isinstance(physics, Mapping):
        raise NphotonsError(
            f'metadata["physics_parameters"] must be a mapping, got {type(physics).__name__} '
            f"{preview(physics)}"
        )
    misplaced += _near_misses(physics, 'metadata["physics_parameters"]', exact_ok=True)
    value = physics.get("nphotons")
    if value is None:
        return None, misplaced
    return positive_finite(value, f"nphotons from {_METADATA_PATH}"), []


def _from_config(config: Any) -> float | None:
    if config is None:
        return None
    if isinstance(config, Mapping):
        value = config.get("nphotons")
        where = 'config["nphotons"]'
    else:
        value = getattr(config, "nphotons", None)
        where = f"{type(config).__name__}.nphotons"
    return None if value is None else positive_finite(value, f"nphotons from {where}")


def nphotons_precedence(offered: Mapping[NphotonsSource, float | None]) -> NphotonsSource:
    """The source whose value wins: explicit > metadata > config > default.

    Args:
        offered: each source's value, already checked, or None where the
            source offered nothing.

    Raises:
        NphotonsError: no source offered a value.
    """
    for source in PRECEDENCE:
        if offered.get(source) is not None:
            return source
    raise NphotonsError(
        "nphotons was not given: pass it explicitly, or provide metadata with "
        f"{_METADATA_PATH}, a config with nphotons, or a default"
    )


def resolve_nphotons(
    metadata: Any = None,
    config: Any = None,
    *,
    explicit: Any = None,
    default: Any = None,
) -> NphotonsResolution:
    """Pick nphotons: ``explicit`` > metadata > config > ``default``.

    Args:
        metadata: PtychoPINN-style mapping ``{"physics_parameters":
            {"nphotons": ...}}``, its JSON string, or a data container holding
            one (an object with a ``.metadata`` attribute, or a dict with a
            ``"metadata"`` entry). A mapping without the key simply offers nothing.
        config: a mapping with an ``"nphotons"`` key or any object with an
            ``nphotons`` attribute (None means "not set").
        explicit: a value that overrides everything.
        default: the value of last resort.

    Every value offered is validated (positive, finite, real, not bool) even
    when a higher-priority source wins, and errors name the source.

    Raises:
        NphotonsError: an invalid value anywhere, or no value at all.

    Examples:
        >>> import physscale as ps
        >>> r = ps.resolve_nphotons({'physics_parameters': {'nphotons': 1e9}}, {'nphotons': 1e6})
        >>> r.value, r.source
        (1000000000.0, 'metadata')
        >>> ps.resolve_nphotons(explicit=5e8).source
        'explicit'
    """
    from_metadata, misplaced = _from_metadata(metadata)
    if misplaced and explicit is None:
        # Silently falling through to config/default here is the reference's trap.
        raise NphotonsError(
            f"metadata has {', '.join(misplaced)} but nphotons is read from "
            f"{_METADATA_PATH} (the PtychoPINN schema); move it there or pass nphotons explicitly"
        )
    offered: dict[NphotonsSource, float | None] = {
        "explicit": None if explicit is None else positive_finite(explicit, "explicit nphotons"),
        "metadata": from_metadata,
        "config": _from_config(config),
        "default": None if default is None else positive_finite(default, "default nphotons"),
    }
    source = nphotons_precedence(offered)
    candidates = {k: v for k, v in offered.items() if v is not None}
    disagreement = None
    meta, conf = candidates.get("metadata"), candidates.get("config")
    if (
        meta is not None
        and conf is not None
        and not math.isclose(meta, conf, rel_tol=DISAGREEMENT_RTOL)
    ):
        disagreement = (
            f"metadata says nphotons={meta!r} but the config says {conf!r}; "
            f"{'the explicit value' if source == 'explicit' else 'metadata'} wins"
        )
    return NphotonsResolution(
        value=candidates[source], source=source, candidates=candidates, disagreement=disagreement
    )
