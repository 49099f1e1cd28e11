"""resolve_nphotons: priority order, honest source labels, disagreement, bad values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import physscale as ps
from physscale.core.nphotons import PRECEDENCE, nphotons_precedence

positive = st.floats(1e-3, 1e15, allow_nan=False, allow_infinity=False)
maybe = st.one_of(st.none(), positive)


def meta(n: object) -> dict[str, object]:
    return {"physics_parameters": {"nphotons": n}}


@given(maybe, maybe, maybe, maybe)
def test_priority_is_explicit_then_metadata_then_config_then_default(
    explicit: float | None, m: float | None, c: float | None, d: float | None
) -> None:
    offered = [("explicit", explicit), ("metadata", m), ("config", c), ("default", d)]
    present = [(k, v) for k, v in offered if v is not None]
    kwargs = {
        "metadata": None if m is None else meta(m),
        "config": None if c is None else {"nphotons": c},
        "explicit": explicit,
        "default": d,
    }
    if not present:
        with pytest.raises(ps.errors.NphotonsError, match="was not given"):
            ps.resolve_nphotons(**kwargs)
        return
    r = ps.resolve_nphotons(**kwargs)
    assert (r.source, r.value) == present[0]
    assert r.candidates == dict(present)


def test_metadata_without_nphotons_falls_through_and_is_not_labelled_metadata() -> None:
    # The reference labels the default "metadata" whenever a metadata dict exists.
    for metadata in ({}, {"physics_parameters": {}}, {"other": 1}, meta(None),
                     {"physics_parameters": None}):  # fmt: skip
        r = ps.resolve_nphotons(metadata, default=1e9)
        assert r.source == "default"
        assert r.value == 1e9
        r = ps.resolve_nphotons(metadata, {"nphotons": 1e5}, default=1e9)
        assert r.source == "config"


def test_metadata_forms_mapping_json_string_and_object_attribute() -> None:
    mapping = meta(2e6)
    container = SimpleNamespace(metadata=mapping, X=np.ones(3))
    for form in (
        mapping,
        json.dumps(mapping),
        container,
        SimpleNamespace(metadata=json.dumps(mapping)),
    ):
        r = ps.resolve_nphotons(form)
        assert (r.value, r.source) == (2e6, "metadata")
    assert ps.resolve_nphotons(SimpleNamespace(metadata=None), default=3.0).source == "default"


def test_a_dict_container_is_read_like_an_object_container() -> None:
    # A training container given where metadata is expected (as Lightning users do):
    # its "metadata" entry is the metadata, as attach_intensity_scale reads it.
    mapping = meta(2e6)
    for container in ({"X": np.ones(3), "metadata": mapping},
                      {"X": np.ones(3), "metadata": json.dumps(mapping)}):  # fmt: skip
        r = ps.resolve_nphotons(container, config={"nphotons": 1e9})
        assert (r.value, r.source) == (2e6, "metadata")
    empty = ps.resolve_nphotons({"X": np.ones(3), "metadata": None}, config={"nphotons": 5.0})
    assert empty.source == "config"
    # Metadata that itself holds a "metadata" entry is still read as metadata.
    both = {"physics_parameters": {"nphotons": 7.0}, "metadata": {"anything": 1}}
    assert ps.resolve_nphotons(both).value == 7.0


@pytest.mark.parametrize(
    "bad",
    [torch.ones((), device="meta"), torch.ones(1).to_sparse()],
    ids=["meta", "sparse"],
)
def test_a_tensor_with_no_concrete_value_is_refused_clearly(bad: torch.Tensor) -> None:
    with pytest.raises(ps.errors.NphotonsError, match="single concrete number"):
        ps.resolve_nphotons(explicit=bad)


def test_config_forms_mapping_and_attribute() -> None:
    @dataclass
    class TrainingConfig:
        nphotons: float | None = 1e7

    assert ps.resolve_nphotons(config=TrainingConfig()).value == 1e7
    assert ps.resolve_nphotons(config=TrainingConfig(None), default=5.0).source == "default"
    assert ps.resolve_nphotons(config=object(), default=5.0).source == "default"
    assert ps.resolve_nphotons(config={"nphotons": "1e8"}).value == 1e8  # quoted numbers are fine


def test_disagreement_between_metadata_and_config_is_recorded() -> None:
    r = ps.resolve_nphotons(meta(1e5), {"nphotons": 1e9})
    assert r.source == "metadata"
    assert r.value == 1e5
    assert r.disagrees
    assert r.disagreement is not None
    assert "100000.0" in r.disagreement
    assert "1000000000.0" in r.disagreement
    assert "metadata wins" in r.disagreement
    agree = ps.resolve_nphotons(meta(1e5), {"nphotons": 1e5})
    assert not agree.disagrees
    explicit = ps.resolve_nphotons(meta(1e5), {"nphotons": 1e9}, explicit=7.0)
    assert explicit.source == "explicit"
    assert explicit.disagreement is not None and "explicit value wins" in explicit.disagreement


def test_numeric_types_are_accepted() -> None:
    for value in (5, 5.0, np.float32(5.0), np.int64(5), torch.tensor(5.0), np.array(5.0), "5"):
        assert ps.resolve_nphotons(explicit=value).value == 5.0


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0, "got 0.0"),
        (-3, "got -3.0"),
        (float("nan"), "got nan"),
        (float("inf"), "got inf"),
        (True, "boolean"),
        ("many", "string 'many'"),
        ([1e9], "list"),
        ({"value": 1e9}, "dict"),
        (2j, "complex"),
    ],
)
@pytest.mark.parametrize("where", ["explicit", "metadata", "config", "default"])
def test_every_invalid_value_is_rejected_naming_its_source(
    value: object, match: str, where: str
) -> None:
    source_text = {
        "explicit": "explicit nphotons",
        "metadata": r'metadata\["physics_parameters"\]\["nphotons"\]',
        "config": r'config\["nphotons"\]',
        "default": "default nphotons",
    }[where]
    kwargs: dict[str, object] = {
        "explicit": {"explicit": value},
        "metadata": {"metadata": meta(value)},
        "config": {"config": {"nphotons": value}},
        "default": {"default": value},
    }[where]
    with pytest.raises(ps.errors.NphotonsError, match=match) as info:
        # A valid higher-priority value does not hide an invalid lower one.
        ps.resolve_nphotons(**kwargs)
    assert __import__("re").search(source_text, str(info.value))


def test_invalid_lower_priority_value_is_still_reported() -> None:
    with pytest.raises(ps.errors.NphotonsError, match="config"):
        ps.resolve_nphotons(meta(1e6), {"nphotons": -1})


def test_config_object_attribute_error_names_the_class() -> None:
    cfg = SimpleNamespace(nphotons=float("nan"))
    with pytest.raises(ps.errors.NphotonsError, match=r"SimpleNamespace\.nphotons"):
        ps.resolve_nphotons(config=cfg)


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"physics_parameters": [1e9]}, r'metadata\["physics_parameters"\] must be a mapping'),
        ({"physics_parameters": "1e9"}, "must be a mapping"),
        ("{not json", "not valid JSON"),
        (42, "must be a mapping"),
        ("[1, 2]", "must be a mapping"),
    ],
)
def test_malformed_metadata_is_rejected(metadata: object, match: str) -> None:
    with pytest.raises(ps.errors.NphotonsError, match=match):
        ps.resolve_nphotons(metadata)


def test_resolution_is_frozen() -> None:
    r = ps.resolve_nphotons(explicit=1.0)
    with pytest.raises(ValueError, match="frozen"):
        r.value = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("metadata", "where"),
    [
        ({"nphotons": 1e6}, r"metadata\['nphotons'\]"),
        ({"n_photons": 1e6, "physics_parameters": {}}, r"metadata\['n_photons'\]"),
        ({"physics_parameters": {"n_photons": 1e6}}, r"\['n_photons'\]"),
        ({"physics_parameters": {"nPhotons": 1e6}}, r"\['nPhotons'\]"),
    ],
)
def test_misplaced_or_misspelled_metadata_nphotons_is_an_error_not_a_silent_default(
    metadata: dict[str, object], where: str
) -> None:
    with pytest.raises(ps.errors.NphotonsError, match=where):
        ps.resolve_nphotons(metadata, {"nphotons": 1e9}, default=1e9)
    # an explicit value still wins, as it would over well-placed metadata
    assert ps.resolve_nphotons(metadata, explicit=5.0).value == 5.0


def test_a_misspelled_duplicate_beside_the_right_key_is_ignored() -> None:
    r = ps.resolve_nphotons({"physics_parameters": {"nphotons": 1e6, "n_photons": 3.0}})
    assert r.value == 1e6


@given(maybe, maybe, maybe, maybe)
def test_the_precedence_is_one_pure_function_the_first_offered_source_wins(
    explicit: float | None, m: float | None, c: float | None, d: float | None
) -> None:
    assert PRECEDENCE == ("explicit", "metadata", "config", "default")
    offered = {"explicit": explicit, "metadata": m, "config": c, "default": d}
    present = [k for k, v in offered.items() if v is not None]
    if not present:
        with pytest.raises(ps.errors.NphotonsError, match="was not given"):
            nphotons_precedence(offered)  # type: ignore[arg-type]
        return
    assert nphotons_precedence(offered) == present[0]  # type: ignore[arg-type]
    # The order of the mapping does not matter, only the sources' priority.
    assert nphotons_precedence(dict(reversed(offered.items()))) == present[0]  # type: ignore[arg-type]
