"""The fuzz suites: mutated files (hypothesis), hand-built hostile files, exploits, writes.

Each suite is ``suite(profile, workdir, emit)``: it builds files under
``workdir`` and hands :class:`~fuzz._harness.Case` objects to ``emit``,
which measures them (memory, time, outcome). Profiles:

``ci``    about two minutes on a 2-core machine, derandomized (the same cases every run)
``long``  thirty times the examples, with fresh random seeds each run
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import multiprocessing
import os
import random
import signal
import struct
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fuzz import _build as b
from fuzz._harness import Case, Lost

Emit = Callable[[Case], None]


def _fold_api() -> tuple[Any, Any] | None:
    """``(pattern_source, fold_patterns)``, or None on a physscale without them.

    The suites also run against physscale 0.1.0 (``PYTHONPATH`` pointing at its
    source), to show what they catch: there, derive is ``iter_patterns`` into
    ``update``, and bundles cannot be signed.
    """
    try:
        from physscale.io.readers import pattern_source
        from physscale.io.streaming import fold_patterns
    except ImportError:
        return None
    return pattern_source, fold_patterns


def _has_signatures() -> bool:
    import inspect

    from physscale.io import load_bundle

    return "key" in inspect.signature(load_bundle).parameters


EXAMPLES = {"ci": 4, "long": 120}


def _examples(profile: str, ci: int) -> int:
    return ci * EXAMPLES[profile]


def _explore(profile: str, n: int, strategy: Any, body: Callable[[Any], None]) -> None:
    """Run ``body`` on ``n`` hypothesis examples (no shrinking: every outcome is counted)."""
    run = settings(
        max_examples=n,
        database=None,
        deadline=None,
        derandomize=profile == "ci",
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(given(strategy)(body))
    run()


# ----------------------------------------------------------------- the operations
def _cli(*argv: str) -> tuple[int, str, str]:
    from physscale.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _check_cli(argv: list[str]) -> str:
    """A CLI run must exit 0 or 1; every stderr line is one of ours; exit 1 has one error line."""
    code, _, err = b.run_quiet(lambda: _cli(*argv))
    lines = err.splitlines()
    assert code in (0, 1), f"exit {code}: {err[-300:]}"
    assert all(line.startswith("physscale: ") for line in lines), f"stray stderr: {err[:300]!r}"
    errors = [line for line in lines if line.startswith("physscale: error: ")]
    assert len(errors) == (code == 1), f"{len(errors)} error lines for exit {code}: {err[:300]!r}"
    assert "Traceback" not in err
    # The CLI's last resort: one line, but a raw exception all the same.
    assert "physscale bug" not in err, err[:300]
    return "ok" if code == 0 else f"clean: {errors[0][:200]}"


def data_cases(category: str, path: Path, kind: str, emit: Emit, key: str = "diffraction") -> None:
    """The five ways physscale reads a data file, each checked against numpy or h5py."""
    from physscale import IntensityAccumulator
    from physscale.io import iter_patterns, list_arrays, read_metadata

    api = _fold_api()

    def read() -> str:
        chunks = b.run_quiet(lambda: list(iter_patterns(path, key, chunk_patterns=2)))
        got = np.concatenate(chunks)
        b._guard(got.nbytes)
        want = b.oracle_array(path, kind, key)
        assert want is not None, "physscale read an array that numpy/h5py refuse"
        np.testing.assert_array_equal(got, want)
        return f"read {got.shape}"

    def fold() -> str:
        acc = IntensityAccumulator()
        if api is None:
            b.run_quiet(lambda: acc.update_all(iter_patterns(path, key, chunk_patterns=2)))
        else:
            source = api[0](path, key)
            b.run_quiet(lambda: api[1](acc, source, max_bytes=48))
        want = b.oracle_array(path, kind, key)
        assert want is not None, "physscale derived from an array that numpy/h5py refuse"
        expected = b.sum_of_squares(want)
        assert math.isclose(acc.total_intensity, expected, rel_tol=1e-12, abs_tol=1e-300), (
            acc.total_intensity,
            expected,
        )
        assert acc.n_patterns == want.size // math.prod(want.shape[-2:])
        return f"folded {acc.n_patterns} patterns"

    def metadata() -> str:
        arrays = list_arrays(path)
        meta = read_metadata(path)
        assert meta is None or isinstance(meta, dict)
        return f"{len(arrays)} arrays, metadata {'yes' if meta else 'no'}"

    emit(Case(category, f"{path.name}: iter_patterns", read))
    emit(Case(category, f"{path.name}: fold_patterns", fold))
    emit(Case(category, f"{path.name}: list_arrays/read_metadata", metadata))
    emit(Case(category, f"{path.name}: cli inspect", lambda: _check_cli(["inspect", str(path)])))
    emit(Case(category, f"{path.name}: cli derive", lambda: _check_cli(
        ["derive", str(path), "--key", key, "--nphotons", "1e6", "--json"]
    )))  # fmt: skip


def bundle_cases(category: str, path: Path, emit: Emit, original: dict[str, Any]) -> None:
    """load_bundle with and without the key, and the CLI; results checked against torch."""
    import torch

    from physscale.io import load_bundle

    def load(key: bytes | None) -> str:
        bundle = b.run_quiet(lambda: load_bundle(path, key=key) if key else load_bundle(path))
        members = b.read_members(path, ("state_dict.pt", "manifest.json"))
        want = torch.load(
            io.BytesIO(members["state_dict.pt"]), weights_only=True, map_location="cpu"
        )
        assert set(bundle.state_dict) == set(want)
        for name, value in want.items():
            assert torch.equal(bundle.state_dict[name], value)
        if key is not None:
            # A verified bundle must be the one signed: same manifest bytes.
            assert members["manifest.json"] == original["manifest"], "signature bypassed"
        return f"loaded, authenticated={bundle.authenticated}"

    emit(Case(category, f"{path.name}: load_bundle", lambda: load(None)))
    if _has_signatures():
        emit(Case(category, f"{path.name}: load_bundle(key)", lambda: load(b.KEY)))
    emit(Case(category, f"{path.name}: cli inspect", lambda: _check_cli(["inspect", str(path)])))


# ----------------------------------------------------------------- mutations
def _flips(size: int) -> Any:
    head = st.integers(0, max(0, min(511, size - 1)))
    tail = st.integers(max(0, size - 512), size - 1)
    anywhere = st.integers(0, size - 1)
    position = st.one_of(head, tail, anywhere)
    return st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=4)


def _apply(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    raw = bytearray(data)
    for at, value in flips:
        raw[at] = value
    return bytes(raw[:cut] if cut is not None else raw)


def _explore_flips(
    profile: str,
    workdir: Path,
    emit: Emit,
    bases: list[bytes],
    counter: Iterator[int],
    *,
    category: str,
    kind: str,
    suffix: str,
    positions: int,
    cut_max: int,
    ci_examples: int,
) -> None:
    """Byte flips (and a truncation) of valid ``bases``, each file read the five ways."""

    def flips(args: tuple[int, list[tuple[int, int]], int | None]) -> None:
        which, changes, cut = args
        base = bases[which]
        path = workdir / f"flip{next(counter)}{suffix}"
        path.write_bytes(_apply(base, [(a % len(base), v) for a, v in changes], cut))
        data_cases(category, path, kind, emit)

    strategy = st.tuples(
        st.integers(0, len(bases) - 1),
        _flips(positions),
        st.one_of(st.none(), st.integers(0, cut_max)),
    )
    _explore(profile, _examples(profile, ci_examples), strategy, flips)


_DIMS = st.one_of(
    st.integers(-3, 9),
    st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 + 1, 2**62, 2**63 - 1, 2**63, 2**64 + 5]),
    st.integers(-(2**70), 2**70),
)
_DESCRS = st.one_of(
    st.sampled_from([
        "<f4", ">f4", "<f8", ">f8", "<f2", "<f16", "|b1", "<i4", "|u1", "<c8", "|O", "<U4",
        "|S3", "|V8", "<M8[s]", "<U0", "|S0", "<U2147483647", "f4", "float32", "",
    ]),
    st.lists(st.tuples(st.sampled_from(["a", "", "b"]), st.sampled_from(["<f4", "|O", "<i2"])),
             max_size=3),
    st.tuples(st.sampled_from(["<f4", "<f8"]), st.lists(st.integers(-2, 2**40), max_size=3)
              .map(tuple)),
    st.text(max_size=12),
)  # fmt: skip


_NEAR_SHAPES = st.sampled_from([(4, 6, 5), (4, 30), (120,), (2, 2, 6, 5), (5, 6, 4), (1, 4, 6, 5),
                                 (4, 6, 6), (8, 6, 5), (0, 6, 5), (4, 6, 5, 1)])  # fmt: skip


@st.composite
def npy_header_edit(draw: Any) -> bytes:
    plausible = draw(st.booleans())  # half the headers are nearly right
    header: dict[str, Any] = {
        "descr": draw(st.sampled_from(["<f4", ">f4", "<f8", "<f2"]) if plausible else _DESCRS),
        "fortran_order": draw(st.one_of(st.booleans(), st.sampled_from([0, None, "x"]))),
        "shape": draw(_NEAR_SHAPES) if plausible else tuple(draw(st.lists(_DIMS, max_size=5))),
    }
    if not plausible and draw(st.booleans()):
        del header[draw(st.sampled_from(sorted(header)))]
    if draw(st.integers(0, 9)) == 0:
        header["extra"] = 1
    text: str | dict[str, Any] = header
    if draw(st.integers(0, 9)) == 0:
        text = repr(header)[: draw(st.integers(0, 60))] + draw(st.text(max_size=8))
    version = draw(st.sampled_from([1, 1, 2, 3]))
    lie = draw(st.one_of(st.just(0), st.just(0), st.integers(-40, 40)))
    data = b.patterns(draw(st.integers(0, 3)), (4, 6, 5)).tobytes()
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return b.npy_header(text, version, lie) + data[:cut]


def suite_npy(profile: str, workdir: Path, emit: Emit) -> None:
    bases = [
        b.npy_bytes(b.patterns(0)),
        b.npy_bytes(b.patterns(1, (3, 2, 5, 4), ">f8")),
        b.npy_bytes(np.asfortranarray(b.patterns(2, (5, 4, 3)))),
    ]
    counter = iter(range(10**9))

    _explore_flips(
        profile,
        workdir,
        emit,
        bases,
        counter,
        category="npy: byte flips and truncation",
        kind="npy",
        suffix=".npy",
        positions=300,
        cut_max=600,
        ci_examples=60,
    )

    def edits(raw: bytes) -> None:
        path = workdir / f"edit{next(counter)}.npy"
        path.write_bytes(raw)
        data_cases("npy: header edits", path, "npy", emit)

    _explore(profile, _examples(profile, 60), npy_header_edit(), edits)


# zip fields that can lie: (record signature, offset, size)
_ZIP_FIELDS = {
    "local flags": (b"PK\x03\x04", 6, 2),
    "local method": (b"PK\x03\x04", 8, 2),
    "local crc": (b"PK\x03\x04", 14, 4),
    "local compressed size": (b"PK\x03\x04", 18, 4),
    "local size": (b"PK\x03\x04", 22, 4),
    "local name length": (b"PK\x03\x04", 26, 2),
    "local extra length": (b"PK\x03\x04", 28, 2),
    "central flags": (b"PK\x01\x02", 8, 2),
    "central method": (b"PK\x01\x02", 10, 2),
    "central crc": (b"PK\x01\x02", 16, 4),
    "central compressed size": (b"PK\x01\x02", 20, 4),
    "central size": (b"PK\x01\x02", 24, 4),
    "central name length": (b"PK\x01\x02", 28, 2),
    "central extra length": (b"PK\x01\x02", 30, 2),
    "central offset": (b"PK\x01\x02", 42, 4),
    "end entries": (b"PK\x05\x06", 10, 2),
    "end directory size": (b"PK\x05\x06", 12, 4),
    "end directory offset": (b"PK\x05\x06", 16, 4),
}


def _patch_field(raw: bytes, field: str, nth: int, value: int) -> bytes:
    signature, offset, size = _ZIP_FIELDS[field]
    starts = []
    at = raw.find(signature)
    while at != -1:
        starts.append(at)
        at = raw.find(signature, at + 1)
    if not starts:
        return raw
    at = starts[nth % len(starts)] + offset
    out = bytearray(raw)
    out[at : at + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
    return bytes(out)


_FIELD_VALUES = st.one_of(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 6, 8, 9, 12, 14, 98, 99, 0x20, 0x40, 0x41, 2**31, 2**32 - 1]),
)


@st.composite
def npz_edit(draw: Any) -> bytes:
    members: dict[str, bytes] = {}
    if draw(st.booleans()):
        members["diffraction.npy"] = draw(npy_header_edit())
    else:
        members["diffraction.npy"] = b.npy_bytes(b.patterns(draw(st.integers(0, 3))))
    meta = draw(st.sampled_from(["plain", "pickle", "none", "junk", "bigstring"]))
    if meta in ("plain", "pickle"):
        members["_metadata.npy"] = b.metadata_member(meta)
    elif meta == "junk":
        members["_metadata.npy"] = draw(npy_header_edit())
    elif meta == "bigstring":
        members["_metadata.npy"] = b.npy_header(
            {"descr": draw(st.sampled_from(["<U", "|S"])) + str(draw(st.integers(0, 2**40))),
             "fortran_order": False, "shape": ()}
        ) + b'"{}"'  # fmt: skip
    if draw(st.integers(0, 4)) == 0:
        members[draw(st.sampled_from(["../x.npy", "a/b.npy", "diffraction.npy", "x"]))] = b"PK"
    raw = b.npz_bytes(members, compress=draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(sorted(_ZIP_FIELDS)))
        raw = _patch_field(raw, field, draw(st.integers(0, 3)), draw(_FIELD_VALUES))
    return raw


def suite_npz(profile: str, workdir: Path, emit: Emit) -> None:
    bases = [b.base_npz(i) for i in range(4)]
    counter = iter(range(10**9))

    _explore_flips(
        profile,
        workdir,
        emit,
        bases,
        counter,
        category="npz: byte flips and truncation",
        kind="npz",
        suffix=".npz",
        positions=700,
        cut_max=1400,
        ci_examples=60,
    )

    def edits(raw: bytes) -> None:
        path = workdir / f"edit{next(counter)}.npz"
        path.write_bytes(raw)
        data_cases("npz: member and zip edits", path, "npz", emit)

    _explore(profile, _examples(profile, 60), npz_edit(), edits)


@st.composite
def hdf5_variant(draw: Any) -> dict[str, Any]:
    return {
        "shape": tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=4))),
        "dtype": draw(st.sampled_from(["<f4", ">f8", "<f2", "<i4", "|u1", "<c8", "S4", "vlen"])),
        "chunked": draw(st.booleans()),
        "filter": draw(st.sampled_from([None, "gzip", "lzf", "shuffle", "fletcher32"])),
        "written": draw(st.sampled_from(["all", "none", "part"])),
        "null": draw(st.integers(0, 9)) == 0,
        "meta": draw(st.sampled_from(["attr", "dataset", "fixed", "none", "lie", "bytes"])),
        "libver": draw(st.sampled_from(["earliest", "latest"])),
        "flips": draw(st.one_of(st.just([]), _flips(2000))),
    }


def _write_hdf5(path: Path, v: dict[str, Any]) -> None:
    import h5py

    with h5py.File(path, "w", libver=v["libver"]) as f:
        if v["null"]:
            f.create_dataset("diffraction", data=h5py.Empty("<f4"))
        else:
            dtype: Any = h5py.string_dtype() if v["dtype"] == "vlen" else v["dtype"]
            shape = v["shape"]
            kwargs: dict[str, Any] = {}
            if v["chunked"] and shape and all(shape):
                kwargs["chunks"] = tuple(max(1, s // 2) for s in shape)
                if v["dtype"] in ("vlen", "S4"):
                    pass  # libhdf5 allows no filters on these
                elif v["filter"] in ("gzip", "lzf"):
                    kwargs["compression"] = v["filter"]
                elif v["filter"] == "shuffle":
                    kwargs["shuffle"] = True
                elif v["filter"] == "fletcher32":
                    kwargs["fletcher32"] = True
            d = f.create_dataset("diffraction", shape=shape, dtype=dtype, **kwargs)
            if v["written"] != "none" and shape and all(shape) and v["dtype"] != "vlen":
                data = np.arange(math.prod(shape)).reshape(shape) % 7
                if v["written"] == "all":
                    d[...] = data.astype(d.dtype)
                else:
                    d[: max(1, shape[0] // 2)] = data[: max(1, shape[0] // 2)].astype(d.dtype)
        text = json.dumps(b.META)
        if v["meta"] == "attr":
            f.attrs["_metadata"] = text
        elif v["meta"] == "dataset":
            f["_metadata"] = text
        elif v["meta"] == "fixed":
            f.attrs["_metadata"] = np.bytes_(text.encode())
        elif v["meta"] == "bytes":
            f.attrs.create("_metadata", data=b'{"a": "\xff"}', dtype=h5py.string_dtype())
        elif v["meta"] == "lie":
            f["_metadata"] = text + " " * 777
    if v["meta"] == "lie":
        raw = bytearray(path.read_bytes())
        at = raw.find((len(text) + 777).to_bytes(4, "little"))
        if at != -1:
            raw[at : at + 4] = (0x7FFFFFF0).to_bytes(4, "little")
        path.write_bytes(bytes(raw))


def suite_hdf5(profile: str, workdir: Path, emit: Emit) -> None:
    bases = []
    for i in range(4):
        base = workdir / f"base{i}.h5"
        b.base_hdf5(base, i)
        bases.append(base.read_bytes())
    counter = iter(range(10**9))

    _explore_flips(
        profile,
        workdir,
        emit,
        bases,
        counter,
        category="HDF5: byte flips and truncation",
        kind="hdf5",
        suffix=".h5",
        positions=6000,
        cut_max=9000,
        ci_examples=50,
    )

    def variants(v: dict[str, Any]) -> None:
        path = workdir / f"var{next(counter)}.h5"
        _write_hdf5(path, v)
        if v["flips"]:
            raw = path.read_bytes()
            path.write_bytes(_apply(raw, [(a % len(raw), x) for a, x in v["flips"]], None))
        data_cases("HDF5: structure variants", path, "hdf5", emit)

    _explore(profile, _examples(profile, 50), hdf5_variant(), variants)


_JSON = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.floats(allow_nan=False), st.integers(-(2**80), 2**80),
        st.text(max_size=10),
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                      children, max_size=3),
    max_leaves=12,
)  # fmt: skip


@st.composite
def bundle_edit(draw: Any) -> dict[str, Any]:
    return {
        "signed": draw(st.booleans()),
        "target": draw(st.sampled_from(
            ["pickle", "pickle", "inner-zip", "record", "manifest", "members", "methods"]
        )),
        "flips": draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                               min_size=1, max_size=3)),
        "json": draw(_JSON),
        "field": draw(st.sampled_from(["format", "format_version", "members", "extra",
                                       "schema_version", "intensity_scale", "nphotons",
                                       "pattern_shape", "n_patterns"])),
        "deep": draw(st.integers(0, 6)) == 0,
        "name": draw(st.sampled_from(["evil.txt", "../record.json", "/abs", "signature.json",
                                      "state_dict.pt", "C:x", "a\\..\\b"])),
        "method": draw(st.sampled_from([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                        zipfile.ZIP_LZMA])),
    }  # fmt: skip


def _edit_bundle(path: Path, base: Path, e: dict[str, Any]) -> None:
    members = b.read_members(base)
    methods: dict[str, int] = {}
    target = e["target"]
    if target in ("pickle", "inner-zip"):
        with zipfile.ZipFile(io.BytesIO(members["state_dict.pt"])) as inner:
            contents = {i.filename: inner.read(i) for i in inner.infolist()}
        name = next(n for n in contents if n.endswith("data.pkl"))
        if target == "pickle":
            contents[name] = _apply(contents[name], [(a % len(contents[name]), v)
                                                     for a, v in e["flips"]], None)  # fmt: skip
        rebuilt = io.BytesIO()
        with zipfile.ZipFile(rebuilt, "w") as out:
            for n, data in contents.items():
                info = zipfile.ZipInfo(n)
                if target == "inner-zip" and n.endswith(("data.pkl", "/0")):
                    info.compress_type = e["method"]
                out.writestr(info, data)
        members["state_dict.pt"] = rebuilt.getvalue()
    elif target in ("record", "manifest"):
        member = f"{target}.json"
        doc = json.loads(members[member])
        doc[e["field"]] = e["json"]
        text = json.dumps(doc).encode()
        if e["deep"]:
            text = b"[" * 50_000 + b"]" * 50_000
        members[member] = text
    elif target == "members":
        members[e["name"]] = json.dumps(e["json"]).encode()
    else:
        methods = dict.fromkeys(members, e["method"])
    b.rebuild_bundle(path, members, methods=methods)


def suite_bundle(profile: str, workdir: Path, emit: Emit) -> None:
    bases = {}
    for signed in (False, True):
        base = workdir / f"base-{'signed' if signed else 'plain'}.zip"
        b.base_bundle(base, signed)
        bases[signed] = base
    original = {"manifest": b.read_members(bases[True])["manifest.json"]}
    counter = iter(range(10**9))

    def flips(args: tuple[bool, list[tuple[int, int]], int | None]) -> None:
        signed, changes, cut = args
        raw = bases[signed].read_bytes()
        path = workdir / f"flip{next(counter)}.zip"
        path.write_bytes(_apply(raw, [(a % len(raw), v) for a, v in changes], cut))
        bundle_cases("bundle: byte flips and truncation", path, emit, original)

    strategy = st.tuples(st.booleans(), _flips(4000), st.one_of(st.none(), st.integers(0, 6000)))
    _explore(profile, _examples(profile, 40), strategy, flips)

    def edits(e: dict[str, Any]) -> None:
        path = workdir / f"edit{next(counter)}.zip"
        _edit_bundle(path, bases[e["signed"]], e)
        bundle_cases("bundle: member edits, checksums recomputed", path, emit, original)

    _explore(profile, _examples(profile, 50), bundle_edit(), edits)


# ----------------------------------------------------------------- exploits
def suite_exploits(profile: str, workdir: Path, emit: Emit) -> None:
    from physscale.io import load_bundle, read_metadata

    category = "exploit pickles (17 routes)"
    for i, (route, pickled) in enumerate(sorted(b.exploit_pickles(workdir / "x").items())):
        marker = workdir / f"pwned-{i}"
        pickled = b.exploit_pickles(marker)[route]
        path = workdir / f"exploit{i}.npz"
        path.write_bytes(b.object_npz(pickled))
        markers = (marker,)

        def meta(p: Path = path) -> str:
            read_metadata(p)
            raise AssertionError("an exploit pickle was read as metadata")

        emit(Case(category, f"{route}: read_metadata", meta, markers=markers, expect="clean"))
        emit(Case(category, f"{route}: cli inspect",
                  lambda p=path: _check_cli(["inspect", str(p)]), markers=markers,
                  expect="clean"))  # fmt: skip
        emit(Case(category, f"{route}: cli derive",
                  lambda p=path: _check_cli(["derive", str(p)]), markers=markers,
                  expect="clean"))  # fmt: skip
        emit(Case(category, f"{route}: cli derive --nphotons",
                  lambda p=path: _check_cli(["derive", str(p), "--nphotons", "1e6"]),
                  markers=markers))  # fmt: skip
    base = workdir / "base.zip"
    b.base_bundle(base, signed=False)
    for route in ("os.system", "exec", "subprocess"):
        marker = workdir / f"pwned-torch-{route}"
        path = workdir / f"exploit-{route}.zip"
        members = b.read_members(base)
        members["state_dict.pt"] = b.torch_exploit(marker, route)
        b.rebuild_bundle(path, members)

        def load(p: Path = path) -> str:
            load_bundle(p)
            raise AssertionError("an exploit state dict was loaded")

        emit(Case(category, f"torch {route}: load_bundle", load, markers=(marker,),
                  expect="clean"))  # fmt: skip
        emit(Case(category, f"torch {route}: cli inspect",
                  lambda p=path: _check_cli(["inspect", str(p)]), markers=(marker,),
                  expect="clean"))  # fmt: skip
    # The control: these files really run code under np.load(allow_pickle=True).
    live = 0
    for i, (route, _) in enumerate(sorted(b.exploit_pickles(workdir / "x").items())):
        marker = workdir / f"control-{i}"
        path = workdir / f"control{i}.npz"
        path.write_bytes(b.object_npz(b.exploit_pickles(marker)[route]))
        with contextlib.suppress(Exception):
            _in_child(lambda p=path: np.load(p, allow_pickle=True)["_metadata"])
        live += marker.exists()
    (workdir / "exploits-live-under-np.load.txt").write_text(str(live))


def _in_child(fn: Callable[[], Any], timeout: float = 30.0) -> int | None:
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=fn)
    proc.start()
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    return proc.exitcode


# ----------------------------------------------------------------- hand-built hostile files
def _nest(depth: int) -> list[Any]:
    node: list[Any] = ["x"]
    for _ in range(depth):
        node = [node, node]
    return node


def hostile_cases(workdir: Path) -> list[Case]:
    """Every bomb and raw-error case of issue 11, each as a file built here."""
    import h5py

    from physscale.io import iter_patterns, load_bundle, read_metadata

    api = _fold_api()
    pattern_source = api[0] if api else (lambda p: list(iter_patterns(p)))
    w = workdir
    cases: list[Case] = []
    bombs, raw, special = "memory and time bombs", "raw exceptions", "special files"

    def add(category: str, name: str, fn: Callable[[], Any], expect: str = "clean",
            seconds: float = 30.0) -> None:  # fmt: skip
        def run() -> str:
            result = fn()
            return result if isinstance(result, str) else "ok"

        cases.append(Case(category, name, run, seconds=seconds, expect=expect))

    def derive(path: Path, *extra: str) -> Callable[[], str]:
        return lambda: _check_cli(["derive", str(path), "--nphotons", "1e6", *extra])

    # 1. error messages as bombs (depth 40: 2**40 leaves in a full repr)
    for label, fn, extra in (("numpy.dtype", np.dtype, ()), ("_codecs.encode", __import__(
            "codecs").encode, ("latin1",)), ("str", str, ())):  # fmt: skip
        path = w / f"repr-{label}.npz"
        path.write_bytes(b.object_npz(__import__("pickle").dumps(
            b.Payload(fn, _nest(40), *extra), protocol=2)))  # fmt: skip
        add(bombs, f"repr bomb via {label} (depth 40)", lambda p=path: read_metadata(p))
    # 2. the memo table
    path = w / "memo.npz"
    path.write_bytes(b.object_npz(b"\x80\x02N" + b"r" + (2**27).to_bytes(4, "little") + b"."))
    add(bombs, "LONG_BINPUT 2**27 in a 9-byte pickle", lambda: read_metadata(w / "memo.npz"))
    path = w / "sets.npz"
    path.write_bytes(b.object_npz(b"\x80\x04" + b"\x8f" * 2_000_000 + b"."))
    add(bombs, "2M EMPTY_SET opcodes (432 MB of sets)", lambda: read_metadata(w / "sets.npz"))
    # 3. uncapped string metadata
    for descr in ("<U268435456", "|S1073741824"):
        path = w / f"str{descr[1]}.npz"
        header = b.npy_header({"descr": descr, "fortran_order": False, "shape": ()})
        members = {"diffraction.npy": b.npy_bytes(b.patterns(1)),
                   "_metadata.npy": header + b" " * (1 << 20)}  # fmt: skip
        path.write_bytes(b.npz_bytes(members, True))
        add(bombs, f"{descr} metadata claiming 1 GiB in a 1 MB member",
            lambda p=path: read_metadata(p))  # fmt: skip
        add(bombs, f"{descr} metadata, derive --nphotons", derive(path))
    h5 = w / "meta7g.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("diffraction", data=b.patterns(2))
        f.create_dataset("_metadata", shape=(7,), dtype="S1000000000")
    add(bombs, "HDF5 _metadata dataset of 7 GB never written", lambda: read_metadata(h5))
    add(bombs, "HDF5 _metadata of 7 GB, derive --nphotons", derive(h5))
    for where in ("attribute", "dataset"):
        path = w / f"vlen-{where}.h5"
        text = json.dumps(b.META) + " " * 1000
        with h5py.File(path, "w") as f:
            f.create_dataset("diffraction", data=b.patterns(2))
            if where == "attribute":
                f.attrs["_metadata"] = text
            else:
                f["_metadata"] = text
        data = bytearray(path.read_bytes())
        at = data.index(len(text).to_bytes(4, "little"), data.index(b"_metadata"))
        data[at : at + 4] = (0xFFFFFFF0).to_bytes(4, "little")
        path.write_bytes(bytes(data))
        add(bombs, f"HDF5 string {where} claiming 4 GiB", lambda p=path: read_metadata(p))
    # 4. headers that lie
    header = b.npy_header({"descr": "<f8", "fortran_order": False, "shape": (1, 100000, 100000)})
    path = w / "claim.npz"
    path.write_bytes(b.npz_bytes({"diffraction.npy": header + bytes(97)}, False))
    add(
        bombs, "225-byte npz member claiming 74.5 GiB", lambda: list(iter_patterns(w / "claim.npz"))
    )
    for shape in ((2, -4, 4), (2**62, 2**62, 4)):
        path = w / f"dims{len(cases)}.npz"
        h = b.npy_header({"descr": "<f4", "fortran_order": False, "shape": shape})
        path.write_bytes(b.npz_bytes({"diffraction.npy": h + bytes(64)}, False))
        add(raw, f"npz dims {shape}", lambda p=path: list(iter_patterns(p)))
    npy = w / "negative.npy"
    npy.write_bytes(b.npy_header({"descr": "<f4", "fortran_order": False, "shape": (3, 4, -4)})
                    + bytes(256))  # fmt: skip
    add(raw, "npy with a negative inner dimension (mmap OverflowError)", derive(npy))
    # A deflated member holding one 1 GiB pattern (zeros but its last value):
    # memory must stay bounded by the chunk, not the pattern.
    side = 16384
    bomb = w / "deflate-bomb.npz"
    info = zipfile.ZipInfo("diffraction.npy")
    info.compress_type = zipfile.ZIP_DEFLATED
    with (
        zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
        zf.open(info, "w", force_zip64=True) as out,
    ):
        out.write(b.npy_header({"descr": "<f4", "fortran_order": False,
                                "shape": (1, side, side)}))  # fmt: skip
        row = bytes(side * 4)
        for _ in range(side - 1):
            out.write(row)
        out.write(bytes(side * 4 - 4) + struct.pack("<f", 3.0))
    add(bombs, f"deflated npz: one {side}x{side} pattern (1 GiB) in {bomb.stat().st_size >> 10}"
        " KB", derive(bomb), expect="ok", seconds=120)  # fmt: skip
    sparse = w / "sparse.h5"
    with h5py.File(sparse, "w") as f:
        f.create_dataset("diffraction", shape=(1, 28000, 28000), dtype="<f4")
    add(bombs, "1.4 KB HDF5 with one 28000x28000 pattern never written", derive(sparse))
    big = w / "big-pattern.npy"
    head = b.npy_header({"descr": "<f4", "fortran_order": False, "shape": (1, 16384, 32768)})
    b.sparse_file(big, head, len(head) + 16384 * 32768 * 4, struct.pack("<f", 2.0))
    add(bombs, "npy with one 16384x32768 pattern (2 GiB)", derive(big), expect="ok",
        seconds=120)  # fmt: skip
    # 5. bundles
    base = w / "base.zip"
    b.base_bundle(base, signed=False)
    members = b.read_members(base)
    members["record.json"] = members["record.json"] + b" " * (512 << 20)
    path = w / "record-bomb.zip"
    b.rebuild_bundle(path, members, methods={"record.json": zipfile.ZIP_DEFLATED})
    add(bombs, f"bundle of {path.stat().st_size >> 10} KB whose record inflates to 512 MiB",
        lambda: load_bundle(w / "record-bomb.zip"))  # fmt: skip
    import torch

    inner = io.BytesIO()
    torch.save({"w": torch.ones(2)}, inner)
    with zipfile.ZipFile(io.BytesIO(inner.getvalue())) as zin:
        contents = {i.filename: zin.read(i) for i in zin.infolist()}
    key = next(n for n in contents if n.endswith("/data/0"))
    contents[key] = bytes(512 << 20)
    rebuilt = io.BytesIO()
    with zipfile.ZipFile(rebuilt, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for n, data in contents.items():
            zout.writestr(n, data)
    members = b.read_members(base)
    members["state_dict.pt"] = rebuilt.getvalue()
    path = w / "inner-bomb.zip"
    b.rebuild_bundle(path, members)
    add(bombs, "bundle whose torch archive inflates to 512 MiB", lambda: load_bundle(
        w / "inner-bomb.zip"))  # fmt: skip
    # 6. the mask
    mask = w / "mask4g.npy"
    mh = b.npy_header({"descr": "|b1", "fortran_order": False, "shape": (65536, 65536)})
    b.sparse_file(mask, mh, len(mh) + 65536 * 65536)
    data = w / "data.npy"
    np.save(data, b.patterns(5, (8, 16, 16)))
    add(bombs, "a sparse 4 GiB --mask", derive(data, "--mask", str(mask)))
    # 7. special files
    fifo = w / "fifo"
    os.mkfifo(fifo)
    add(special, "physscale inspect /dev/zero", lambda: _check_cli(["inspect", "/dev/zero"]))
    add(special, "physscale derive /dev/zero", derive(Path("/dev/zero")))
    add(special, "--mask /dev/zero", derive(data, "--mask", "/dev/zero"))
    add(special, "load_bundle(/dev/zero)", lambda: load_bundle("/dev/zero"))
    for label, fn in (
        ("iter_patterns", lambda: list(iter_patterns(fifo))),
        ("read_metadata", lambda: read_metadata(fifo)),
        ("pattern_source", lambda: pattern_source(fifo)),
        ("load_bundle", lambda: load_bundle(fifo)),
        ("cli inspect", lambda: _check_cli(["inspect", str(fifo)])),
        ("cli derive", derive(fifo)),
        ("cli --mask", derive(data, "--mask", str(fifo))),
    ):
        add(special, f"FIFO: {label}", fn, seconds=10)
    # Raw exceptions of the campaign.
    lie = w / "token.npy"
    tok = bytearray(b.npy_bytes(b.patterns(1)))
    tok[8:10] = (40).to_bytes(2, "little")
    lie.write_bytes(bytes(tok))
    add(raw, "npy header length that lies (tokenize.TokenError)", lambda: list(iter_patterns(lie)))
    for label, flag, method in (("encrypted member", 1, 0), ("compression method 6", 0, 6),
                                ("compression method 99", 0, 99), ("flag bit 5", 0x20, 0),
                                ("flag bit 6", 0x40, 0)):  # fmt: skip
        raw_npz = b.npz_bytes({"diffraction.npy": b.npy_bytes(b.patterns(1))}, False)
        for field, value in (("local flags", flag), ("central flags", flag),
                             ("local method", method), ("central method", method)):  # fmt: skip
            raw_npz = _patch_field(raw_npz, field, 0, value)
        path = w / f"zip-{label.replace(' ', '-')}.npz"
        path.write_bytes(raw_npz)
        add(raw, f"npz {label}", lambda p=path: list(iter_patterns(p)))
    for label, text in (("JSON nested 100k deep", "[" * 100_000 + "]" * 100_000),
                        ("a 5000-digit integer", '{"n": ' + "7" * 5000 + "}")):  # fmt: skip
        path = w / f"json-{len(cases)}.npz"
        np.savez(path, diffraction=b.patterns(1), _metadata=np.array(text))
        add(raw, f"metadata: {label}", lambda p=path: read_metadata(p))
        deep = b.read_members(base)
        deep["manifest.json"] = text.encode()
        bpath = w / f"json-manifest-{len(cases)}.zip"
        b.rebuild_bundle(bpath, deep, fix=False)
        add(raw, f"manifest: {label}", lambda p=bpath: load_bundle(p))
        deep = b.read_members(base)
        deep["record.json"] = text.encode()
        bpath = w / f"json-record-{len(cases)}.zip"
        b.rebuild_bundle(bpath, deep)
        add(raw, f"record.json: {label}", lambda p=bpath: load_bundle(p))
    path = w / "latin1.npz"
    path.write_bytes(b.npz_bytes({"diffraction.npy": b.npy_bytes(b.patterns(1)),
                                  "_metadata.npy": b.npy_header({"descr": "|S10",
                                  "fortran_order": False, "shape": ()}) + b'{"a": "\xe9"}'},
                                 False))  # fmt: skip
    add(raw, "non-UTF-8 metadata in .npz", lambda: read_metadata(w / "latin1.npz"))
    path = w / "latin1.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("diffraction", data=b.patterns(1))
        f.attrs.create("_metadata", data=np.bytes_(b'{"a": "\xe9"}'))
    add(raw, "non-UTF-8 metadata as an HDF5 attribute", lambda: read_metadata(w / "latin1.h5"))
    path = w / "null.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("diffraction", data=h5py.Empty("<f4"))
    add(raw, "HDF5 null dataspace", lambda: list(iter_patterns(w / "null.h5")))
    zero_d = w / "zero-d.npy"
    np.save(zero_d, np.float32(2.0))
    add(raw, "derive on a 0-d .npy (IndexError)", derive(zero_d))
    return cases


def suite_hostile(profile: str, workdir: Path, emit: Emit) -> None:
    for case in hostile_cases(workdir):
        emit(case)


# ----------------------------------------------------------------- writes
def _wait_kill(proc: Any, delay: float) -> None:
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)


def suite_writes(profile: str, workdir: Path, emit: Emit) -> None:
    import torch

    from physscale import derive_scale_record
    from physscale.io import load_bundle, read_metadata, save_bundle, write_metadata

    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0 if profile == "ci" else None)
    n_kills = {"ci": 40, "long": 400}[profile]
    record = derive_scale_record(b.patterns(3, (6, 8, 8)), nphotons=1e6, data_source="w")
    small = {"w": torch.ones(4)}
    large = {"w": torch.arange(4_000_000, dtype=torch.float32)}

    def killed_save(i: int) -> str:
        path = workdir / f"bundle{i}.zip"
        save_bundle(path, small, record, version=1)
        proc = ctx.Process(target=lambda: save_bundle(path, large, record, version=2))
        proc.start()
        _wait_kill(proc, rng.uniform(0.0, 0.15))
        orphaned = any(p.name.startswith(f".{path.name}.") for p in workdir.iterdir())
        loaded = load_bundle(path)
        if loaded.extra["version"] == 1:
            assert torch.equal(loaded.state_dict["w"], small["w"])
        elif not torch.equal(loaded.state_dict["w"], large["w"]):
            raise Lost("the bundle holds neither the old nor the new weights")
        save_bundle(path, small, record, version=3)
        leftovers = [p.name for p in workdir.iterdir() if p.name.startswith(f".{path.name}.")]
        assert not leftovers, f"leftovers after the next save: {leftovers}"
        mid = ", killed mid-write: its leftover was removed by the next save" if orphaned else ""
        return f"survived (version {loaded.extra['version']}){mid}"

    for i in range(n_kills):
        emit(Case("writes: killed save_bundle", f"kill {i}", lambda i=i: killed_save(i)))

    def killed_metadata(i: int) -> str:
        path = workdir / f"meta{i}.npz"
        write_metadata(path, {"v": 1}, diffraction=np.ones((2, 3, 3), np.float32))
        big = np.random.default_rng(i).random((256, 128, 64))
        proc = ctx.Process(target=lambda: write_metadata(path, {"v": 2}, big=big))
        proc.start()
        _wait_kill(proc, rng.uniform(0.0, 0.3))
        orphaned = any(p.name.startswith(f".{path.name}.") for p in workdir.iterdir())
        meta = read_metadata(path)
        with np.load(path) as data:
            if meta == {"v": 2}:
                if not np.array_equal(data["big"], big):
                    raise Lost("the new file lacks its array")
            elif meta != {"v": 1} or "diffraction" not in data.files:
                raise Lost(f"the file is neither old nor new: {meta}, {data.files}")
        write_metadata(path, {"v": 3})
        leftovers = [p.name for p in workdir.iterdir() if p.name.startswith(f".{path.name}.")]
        assert not leftovers, f"leftovers after the next write: {leftovers}"
        with np.load(path) as data:
            if "diffraction" not in data.files:
                raise Lost("an array vanished")
        mid = ", killed mid-write: its leftover was removed by the next write" if orphaned else ""
        return f"survived ({meta}){mid}"

    for i in range(n_kills * 3 // 4):
        emit(Case("writes: killed write_metadata", f"kill {i}", lambda i=i: killed_metadata(i)))

    def killed_out(i: int) -> str:
        data = workdir / f"out-data{i}.npz"
        write_metadata(data, b.META, diffraction=b.patterns(i, (64, 32, 32)))
        out = workdir / f"record{i}.json"
        out.write_text("previous\n")
        proc = ctx.Process(target=lambda: _cli("derive", str(data), "--out", str(out), "-q"))
        proc.start()
        _wait_kill(proc, rng.uniform(0.0, 0.05))
        text = out.read_text()
        if text != "previous\n":
            from physscale import ScaleRecord

            try:
                ScaleRecord.model_validate_json(text)
            except Exception:
                raise Lost(
                    f"--out holds neither the old nor a whole new record: {text[:60]!r}"
                ) from None
        return "survived"

    for i in range(n_kills // 2):
        emit(Case("writes: killed derive --out", f"kill {i}", lambda i=i: killed_out(i)))

    def concurrent(i: int) -> str:
        path = workdir / f"shared{i}.npz"
        start = ctx.Barrier(12)

        def add(j: int) -> None:
            start.wait()
            write_metadata(path, {"writer": j}, **{f"a{j}": np.full((32, 32), j, np.float32)})

        procs = [ctx.Process(target=add, args=(j,)) for j in range(12)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        with np.load(path) as data:
            missing = [j for j in range(12) if f"a{j}" not in data.files]
        failed = [j for j, p in enumerate(procs) if p.exitcode != 0]
        codes = [procs[j].exitcode for j in failed]
        assert not failed, f"writers {failed} failed (exit codes {codes})"
        if missing:
            raise Lost(f"{len(missing)} of 12 concurrent updates lost")
        return "all 12 updates kept"

    for i in range(max(1, n_kills // 10)):
        emit(Case("writes: 12 concurrent write_metadata", f"round {i}", lambda i=i: concurrent(i),
                  seconds=120))  # fmt: skip

    def full_disk(i: int) -> str:
        data = workdir / f"fsize-data{i}.npz"
        write_metadata(data, b.META, diffraction=b.patterns(i, (8, 16, 16)))
        out = workdir / f"fsize{i}.json"
        out.write_text("previous\n")

        def child() -> None:
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (100 + 37 * i, 100 + 37 * i))
            os._exit(_cli("derive", str(data), "--out", str(out), "-q")[0])

        proc = ctx.Process(target=child)
        proc.start()
        proc.join(60)
        text = out.read_text()
        if proc.exitcode == 0:  # the limit was above the record's size: the write succeeded
            from physscale import ScaleRecord

            ScaleRecord.model_validate_json(text)
            return "the record fit under the limit and was written whole"
        if text != "previous\n":
            raise Lost("a failed --out write damaged the previous record")
        assert proc.exitcode == 1, proc.exitcode
        return "clean: the write failed and the previous record is intact"

    for i in range(max(2, n_kills // 4)):
        emit(Case("writes: derive --out on a full disk", f"limit {i}", lambda i=i: full_disk(i)))


# ----------------------------------------------------------------- detector files (issue 19)
def _eiger(
    folder: Path, n: int = 6, h: int = 12, w: int = 12
) -> tuple[Path, np.ndarray, np.ndarray]:
    """An Eiger-like master with external links to 2 data files (bitshuffle when available)."""
    import h5py

    rng = np.random.default_rng(0)
    counts = rng.poisson(30.0, size=(n, h, w)).astype(np.uint32)
    pixel_mask = np.zeros((h, w), np.uint32)
    pixel_mask[h // 2, :] = 1
    counts[:, pixel_mask != 0] = 2**32 - 1
    kwargs: dict[str, Any] = {"compression": "gzip"}
    with contextlib.suppress(ImportError):
        import hdf5plugin

        kwargs = dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    folder.mkdir(parents=True, exist_ok=True)
    half = n // 2
    for i, part in enumerate((counts[:half], counts[half:]), start=1):
        with h5py.File(folder / f"d_data_{i:06d}.h5", "w") as f:
            f.create_dataset("/entry/data/data", data=part, chunks=(1, h, w), **kwargs)
    master = folder / "d_master.h5"
    with h5py.File(master, "w") as f:
        f["/entry/instrument/detector/detectorSpecific/pixel_mask"] = pixel_mask
        for i in (1, 2):
            f[f"/entry/data/data_{i:06d}"] = h5py.ExternalLink(
                f"d_data_{i:06d}.h5", "/entry/data/data"
            )
    return master, counts, pixel_mask


def _eiger_oracle(folder: Path) -> float | None:
    """nphotons as h5py reads the files (None when h5py refuses them)."""
    import h5py

    try:
        with contextlib.suppress(ImportError):
            import hdf5plugin  # noqa: F401
        with h5py.File(folder / "d_master.h5", "r") as f:
            pm = f["/entry/instrument/detector/detectorSpecific/pixel_mask"][()]
        parts = []
        for i in (1, 2):
            with h5py.File(folder / f"d_data_{i:06d}.h5", "r") as f:
                parts.append(f["/entry/data/data"][()])
        data = np.concatenate(parts)
    except Exception:
        return None
    if data.ndim != 3 or pm.shape != data.shape[1:] or data.dtype.kind not in "iu":
        return None
    valid = (pm == 0) & (data != np.iinfo(data.dtype).max)
    return float(np.where(valid, data, 0).astype(np.float64).sum(axis=(1, 2)).mean())


def _normalize_case(master: Path, out: Path, oracle: Callable[[], float | None]) -> str:
    """normalize_files must give the oracle's nphotons and a whole output, or a clean error."""
    from physscale.io import normalize_files

    out.write_bytes(b"previous")
    try:
        result = b.run_quiet(lambda: normalize_files(master, out, follow_links=True))
    except Exception:
        if out.read_bytes() != b"previous":
            raise Lost("a failed normalize damaged the previous output") from None
        raise
    want = oracle()
    assert want is not None, "physscale normalized files that h5py refuses"
    assert math.isclose(result.record.nphotons, want, rel_tol=1e-12), (result.record.nphotons, want)
    with np.load(out, allow_pickle=False) as z:
        x = z["diff3d"]
        b._guard(x.nbytes)
        assert np.isfinite(x).all() and (x >= 0).all()
    return f"normalized {result.record.n_patterns} patterns"


def suite_detector(profile: str, workdir: Path, emit: Emit) -> None:
    """Eiger masters: byte flips in the master and data files, hostile links, the writer."""
    import h5py

    workdir = workdir / "detector"
    workdir.mkdir(exist_ok=True)
    base = workdir / "base"
    _eiger(base)
    originals = {p.name: p.read_bytes() for p in base.iterdir()}
    counter = iter(range(10**9))

    def flips(args: tuple[str, list[tuple[int, int]], int | None]) -> None:
        name, changes, cut = args
        folder = workdir / f"det{next(counter)}"
        folder.mkdir()
        for n, raw in originals.items():
            data = _apply(raw, [(a % len(raw), v) for a, v in changes], cut) if n == name else raw
            (folder / n).write_bytes(data)
        emit(Case("detector: byte flips in a master or data file", f"{folder.name}/{name}",
                  lambda: _normalize_case(folder / "d_master.h5", folder / "out.npz",
                                          lambda: _eiger_oracle(folder))))  # fmt: skip

    strategy = st.tuples(
        st.sampled_from(sorted(originals)), _flips(8000), st.one_of(st.none(), st.integers(0, 9000))
    )
    _explore(profile, _examples(profile, 25), strategy, flips)

    # Hand-built hostile links: each must be refused cleanly (never read outside the folder).
    outside = workdir / "outside"
    _eiger(outside)
    cases: list[tuple[str, Callable[[Path], None], str]] = []

    def link(target: str, inner: str = "/entry/data/data") -> Callable[[Path], None]:
        def make(folder: Path) -> None:
            with h5py.File(folder / "d_master.h5", "a") as f:
                del f["/entry/data/data_000001"]
                f["/entry/data/data_000001"] = h5py.ExternalLink(target, inner)

        return make

    def symlinked(folder: Path) -> None:
        (folder / "d_data_000001.h5").unlink()
        os.symlink(outside / "d_data_000001.h5", folder / "d_data_000001.h5")

    def vds_outside(folder: Path) -> None:
        layout = h5py.VirtualLayout(shape=(3, 12, 12), dtype=np.uint32)
        layout[:] = h5py.VirtualSource(outside / "d_data_000001.h5", "/entry/data/data",
                                       shape=(3, 12, 12))  # fmt: skip
        with h5py.File(folder / "d_master.h5", "a") as f:
            del f["/entry/data"]
            f.create_virtual_dataset("/entry/data/data", layout)

    cases += [
        ("a link to ../outside", link("../outside/d_data_000001.h5"), "clean"),
        ("an absolute link outside", link(str(outside / "d_data_000001.h5")), "clean"),
        ("a symlinked data file outside", symlinked, "clean"),
        ("a link to a missing file", link("d_data_000009.h5"), "clean"),
        ("a link to the master itself", link("d_master.h5", "/entry/data"), "clean"),
        ("a link to a group", link("d_data_000002.h5", "/entry"), "clean"),
        ("a link to a missing path", link("d_data_000002.h5", "/nope"), "clean"),
        ("a link to /dev/zero", link("/dev/zero"), "clean"),
        ("a virtual dataset outside", vds_outside, "clean"),
    ]
    for name, make, expect in cases:
        folder = workdir / f"det{next(counter)}"
        folder.mkdir()
        for n, raw in originals.items():
            (folder / n).write_bytes(raw)
        make(folder)
        emit(Case("detector: hostile links", name,
                  lambda folder=folder: _normalize_case(folder / "d_master.h5",
                                                        folder / "out.npz",
                                                        lambda: None),
                  expect=expect))  # fmt: skip
    # The clean master: the right number, then the listing.
    emit(Case("detector: the writer", "the base master",
              lambda: _normalize_case(base / "d_master.h5", workdir / "base_out.npz",
                                      lambda: _eiger_oracle(base)), expect="ok"))  # fmt: skip

    def links() -> str:
        from physscale.io import list_links

        found = list_links(base / "d_master.h5")
        assert [ln.file for ln in found] == ["d_data_000001.h5", "d_data_000002.h5"]
        return f"{len(found)} links"

    emit(Case("detector: the writer", "list_links", links, expect="ok"))

    # The writer on mutated integer .npy counts (markers and all).
    raw_npy = io.BytesIO()
    rng = np.random.default_rng(1)
    counts = rng.poisson(20.0, size=(5, 10, 10)).astype(np.uint16)
    counts[:, 0, 0] = 65535
    np.save(raw_npy, counts)
    npy = raw_npy.getvalue()

    def npy_flips(args: tuple[list[tuple[int, int]], int | None]) -> None:
        changes, cut = args
        path = workdir / f"c{next(counter)}.npy"
        path.write_bytes(_apply(npy, [(a % len(npy), v) for a, v in changes], cut))

        def run() -> str:
            from physscale.io import normalize_files

            result = b.run_quiet(lambda: normalize_files(path, path.with_suffix(".npz")))
            want = b.oracle_array(path, "npy")
            assert want is not None, "physscale normalized a .npy numpy refuses"
            kept = (
                want != np.iinfo(want.dtype).max
                if want.dtype.kind in "iu"
                else np.ones(want.shape, bool)
            )
            expected = np.where(kept, want, 0).astype(np.float64).reshape(-1, *want.shape[-2:])
            assert math.isclose(result.record.nphotons, expected.sum(axis=(1, 2)).mean(),
                                rel_tol=1e-12)  # fmt: skip
            return "normalized"

        emit(Case("detector: the writer on mutated .npy counts", path.name, run))

    _explore(profile, _examples(profile, 15), st.tuples(_flips(len(npy)), st.one_of(
        st.none(), st.integers(0, len(npy)))), npy_flips)  # fmt: skip


SUITES: dict[str, Callable[[str, Path, Emit], None]] = {
    "npy": suite_npy,
    "npz": suite_npz,
    "hdf5": suite_hdf5,
    "bundle": suite_bundle,
    "exploits": suite_exploits,
    "hostile": suite_hostile,
    "writes": suite_writes,
    "detector": suite_detector,
}

# Issue 22's generators (adapters, output paths, globs, costs, the numeric API, state).
from fuzz._issue22 import suite_issue22  # noqa: E402

SUITES["issue22"] = suite_issue22
