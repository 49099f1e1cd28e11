"""Issue 22's surfaces: adapters, output paths, globs, small inputs with large costs,
the numeric API and the accumulator's state.

Each generator builds its cases from the product of a few hostile choices
(which output, how it names an input, which link loop, which parameter gets
which value), so every combination is run, in the CI profile as in the long
one. Cases use only the API of 0.2.0 as well, so the same suite measures the
release before the fix (``PYTHONPATH=<0.2.0>/src``) and after.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import itertools
import multiprocessing
import os
import pickle
import resource
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuzz._harness import Case, Lost

Emit = Callable[[Case], None]
NPH = "1e6"


def _cli(*argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    from physscale.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([os.fspath(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _refused(argv: list[Any]) -> str:
    """A CLI run that must fail cleanly: exit 1 or 2, one error line, no bug report."""
    code, _, err = _cli(*argv)
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert code in (1, 2), f"exit {code} (expected a refusal): {err[-200:]!r}"
    assert len(lines) == 1 and "physscale bug" not in err and "Traceback" not in err, err[-300:]
    return f"clean: {lines[0][:200]}"


def _data(path: Path, n: int = 6) -> Path:
    x = np.random.default_rng(1).gamma(2.0, 0.5, size=(n, 4, 4)).astype(np.float32)
    with open(path, "wb") as f:  # any name, .png included
        np.save(f, x)
    return path


def _unchanged(path: Path, before: bytes, mode: int | None = None) -> None:
    if not path.exists() or path.read_bytes() != before:
        raise Lost(f"{path.name} was replaced")
    if mode is not None and stat.S_IMODE(path.stat().st_mode) != mode:
        raise Lost(f"{path.name} changed mode")


# ----------------------------------------------------------------- outputs (item 4)
def suite_outputs(w: Path, emit: Emit) -> None:
    cat = "output paths"
    relations = ("same", "link", "dot-spelling", "mask", "in-directory")
    for flag, relation in itertools.product(("--out", "--plot"), relations):
        d = w / f"o-{flag[2:]}-{relation}"
        d.mkdir()
        data = _data(d / ("scan.png" if flag == "--plot" else "scan.npy"))
        mask = d / "mask.npy"
        np.save(mask, np.ones((4, 4), bool))
        victim = mask if relation == "mask" else data
        target: Any = {
            "same": data, "mask": mask, "in-directory": data,
            "dot-spelling": f"{d}/./{data.name}", "link": d / "link",
        }[relation]  # fmt: skip
        if relation == "link":
            (d / "link").symlink_to(data)
        source = d if relation == "in-directory" else data
        argv = ["derive", source, "--nphotons", NPH, "-q", "--mask", mask, flag, target]

        def run(argv: list[Any] = argv, victim: Path = victim) -> str:
            before = victim.read_bytes()
            try:
                return _refused(argv)
            finally:
                _unchanged(victim, before)

        emit(Case(cat, f"{flag} names an input ({relation})", run, expect="clean"))
    for flag, mode in itertools.product(
        ("--out", "--plot", "write_metadata"), (0o444, 0o400, 0o555)
    ):
        d = w / f"ro-{flag.strip('-')}-{mode:o}"
        d.mkdir()
        data = _data(d / "scan.npy")
        target = d / ("t.png" if flag == "--plot" else "t.npz")

        def run_ro(
            flag: str = flag, target: Path = target, data: Path = data, mode: int = mode
        ) -> str:
            from physscale.io import write_metadata

            write_metadata(target, {"a": 1}, diffraction=np.ones((2, 4, 4), np.float32))
            target.chmod(mode)
            before = target.read_bytes()
            try:
                if flag == "write_metadata":
                    write_metadata(target, {"a": 2})
                    return "replaced"  # wrong: a read-only file was replaced
                return _refused(["derive", data, "--nphotons", NPH, "-q", flag, target])
            finally:
                _unchanged(target, before, mode)

        emit(Case(cat, f"{flag} over a read-only ({mode:o}) file", run_ro, expect="clean"))
    for failing in ("missing folder", "a directory", "read-only"):
        d = w / f"pf-{failing.replace(' ', '-')}"
        d.mkdir()
        data, out = _data(d / "scan.npy"), d / "record.json"
        plot = {"missing folder": d / "nope" / "f.png", "a directory": d / "dir.png",
                "read-only": d / "ro.png"}[failing]  # fmt: skip
        if failing == "a directory":
            plot.mkdir()
        if failing == "read-only":
            plot.write_bytes(b"old")
            plot.chmod(0o444)

        def run_pf(data: Path = data, out: Path = out, plot: Path = plot) -> str:
            out.write_text("old record")
            try:
                return _refused(["derive", data, "--nphotons", NPH, "-q", "--out", out,
                                 "--plot", plot])  # fmt: skip
            finally:
                _unchanged(out, b"old record")

        emit(Case(cat, f"--plot fails ({failing}) after --out", run_pf, expect="clean"))


# ----------------------------------------------------------------- globs (item 6)
def suite_globs(w: Path, emit: Emit) -> None:
    cat = "globs"
    loops = {"two links to ..": ("..", ".."), "one link to .": (".",), "three links to ..":
             ("..", "..", ".."), "link to root of tree": ("ROOT", "ROOT")}  # fmt: skip
    patterns = ("{root}/**/*.npy", "{root}/*/**/*.npy", "{root}/**/sub/*.npy", "{root}/**")
    for (label, links), pattern in itertools.product(loops.items(), patterns):
        root = w / f"g{abs(hash((label, pattern))) % 10**8}"
        (root / "sub").mkdir(parents=True)
        _data(root / "sub" / "a.npy")
        for i, target in enumerate(links):
            (root / "sub" / f"up{i}").symlink_to(root if target == "ROOT" else target)
        text = pattern.format(root=root)

        def run(text: str = text, root: Path = root) -> str:
            code, _, err = _cli("derive", "-r", text, "--nphotons", NPH, "-q", "--json")
            if code == 2 and "given twice" in err and err.count(": error: ") == 1:
                return f"clean: {err.strip()[-200:]}"
            assert code == 0, f"exit {code}: {err[-200:]!r}"
            return "ok"

        # "DIR/**" matches DIR and its files: each file twice, a clean usage error.
        expect = None if pattern.endswith("**") else "ok"
        emit(Case(cat, f"-r {pattern} with {label}", run, seconds=15.0, expect=expect))


# ----------------------------------------------------------------- costs (item 7)
def _deep_tree(root: Path, depth: int) -> Path:
    folder = root
    for _ in range(depth):
        folder = folder / "d"
        os.mkdir(folder)
    _data(folder / "x.npy", 2)
    return folder


def _remove_deep(root: Path, depth: int) -> None:
    """rmtree recurses: remove the chain from its end."""
    folders = [root]
    for _ in range(depth):
        folders.append(folders[-1] / "d")
    with contextlib.suppress(OSError):
        (folders[-1] / "x.npy").unlink()
    for f in reversed(folders[1:]):
        with contextlib.suppress(OSError):
            os.rmdir(f)


def suite_costs(w: Path, emit: Emit) -> None:
    cat = "small inputs, large costs"
    data = _data(w / "c.npy")
    for n, width in itertools.product((1, 2, 5), (2_000_000, 10_000_000)):
        spec = ",".join(f"{i * width}-{(i + 1) * width - 1}" for i in range(n))
        argv = ["derive", data, "--nphotons", NPH, "-q", "--exclude-frames", spec]
        emit(Case(cat, f"--exclude-frames {n} ranges of {width}", lambda a=argv: _refused(a),
                  seconds=20.0, expect="clean"))  # fmt: skip
    for depth in (300, 1100):
        root = w / f"deep{depth}"
        root.mkdir()
        _deep_tree(root, depth)

        def run_deep(root: Path = root, depth: int = depth) -> str:
            try:
                code, _, err = _cli("derive", "-r", root, "--nphotons", NPH, "-q", "--json")
                assert code == 0, f"exit {code}: {err[-200:]!r}"
                return "ok"
            finally:
                _remove_deep(root, depth)

        emit(Case(cat, f"a directory tree {depth} levels deep", run_deep, expect="ok"))
    for workers in ("65", "1000", "100000", str(2**63)):
        argv = ["derive", data, data.parent, "--nphotons", NPH, "-q", "--workers", workers]
        emit(Case(cat, f"--workers {workers}", lambda a=argv: _refused(a), expect="clean"))
    import physscale

    huge = torch.ones(1).expand(10**6, 10**3, 10**3)
    for name, fn in (
        ("normalize_counts", lambda: physscale.normalize_counts(huge)),
        ("scaled_poisson_nll", lambda: physscale.scaled_poisson_nll(huge, huge, scale=1.0)),
    ):
        emit(Case(cat, f"{name} on a zero-stride view of 10**12 elements",
                  lambda f=fn: (f(), "ok")[1], seconds=20.0, expect="clean"))  # fmt: skip
    for (kind, dtype), fname in itertools.product(
        (("numpy", "float64"), ("numpy", "float32"), ("numpy", ">f8"), ("numpy", "uint16"),
         ("torch", "float64"), ("torch", "float32")),
        ("normalize_counts", "derive_intensity_scale", "IntensityAccumulator.update"),
    ):  # fmt: skip
        if fname != "normalize_counts" and dtype == "uint16":
            continue

        def run_view(kind: str = kind, dtype: str = dtype, fname: str = fname) -> str:
            shape = (10**6, 10**3, 10**3)
            if kind == "numpy":
                view: Any = np.broadcast_to(np.ones(1, dtype), shape)
            else:
                view = torch.ones(1, dtype=getattr(torch, dtype)).expand(*shape)
            if fname == "normalize_counts":
                physscale.normalize_counts(view)
            elif fname == "derive_intensity_scale":
                physscale.derive_intensity_scale(view, nphotons=1e6)
            else:
                physscale.IntensityAccumulator().update(view)
            return "ok"

        emit(Case(cat, f"{fname} on a {kind} {dtype} broadcast view of 10**12 elements",
                  run_view, seconds=20.0, expect="clean"))  # fmt: skip


# ----------------------------------------------------------------- numeric API (item 8)
_FILL = {"x": "data", "data": "data", "batch": "data", "counts": "data", "amplitudes": "data",
         "pred": "data", "obs": "data", "intensities": "data", "samples": "samples",
         "nphotons": 1e6, "scale": 1.0, "gain": 1.0, "container": "container"}  # fmt: skip


def _value(name: str, x: torch.Tensor) -> Any:
    v = _FILL.get(name, 1.0)
    if v == "data":
        return x
    if v == "samples":
        return [{"x": x[0], "intensity_scale": 1.0}]
    if v == "container":
        return {"X": x, "metadata": {"physics_parameters": {"nphotons": 1e6}}}
    return v


def suite_numeric(w: Path, emit: Emit) -> None:
    import physscale

    cat = "numeric API"
    x = torch.rand(2, 4, 4)
    big = 10**5000
    names = [n for n in physscale.__all__ if callable(getattr(physscale, n, None))]
    for n in names:
        f = getattr(physscale, n)
        if isinstance(f, type) and not n.endswith(("Loss", "Accumulator")):
            continue
        try:
            params = inspect.signature(f).parameters
        except (TypeError, ValueError):
            continue
        for pname, p in params.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            kw = {q: _value(q, x) for q, pp in params.items()
                  if pp.default is inspect.Parameter.empty
                  and pp.kind not in (pp.VAR_POSITIONAL, pp.VAR_KEYWORD)}  # fmt: skip
            kw[pname] = big

            def run(f: Any = f, kw: dict[str, Any] = kw) -> str:
                try:
                    f(**kw)
                except TypeError as exc:  # the call itself (a missing argument): not the case
                    if "argument" in str(exc) and "must be" not in str(exc):
                        return "ok"
                    raise
                return "ok"

            emit(Case(cat, f"{n}({pname}=<int of 5000 digits>)", run))
    from physscale.io import expand_paths, write_metadata

    for bad in (None, 3, b"scan.npy", "a\0b.npy", ""):
        for label, fn in (
            ("expand_paths", lambda b=bad: expand_paths(b)),
            ("expand_paths([...])", lambda b=bad: expand_paths([b])),
            ("write_metadata", lambda b=bad: write_metadata(b, {"a": 1})),
        ):
            emit(Case(cat, f"{label} with the path {bad!r}", lambda f=fn: (f(), "ok")[1],
                      expect="clean"))  # fmt: skip
    emit(Case(cat, "derive with a NUL in a path", lambda: _refused(["derive", "a\0b.npy",
              "--nphotons", NPH]), expect="clean"))  # fmt: skip
    deep: Any = 1
    for _ in range(50_000):
        deep = [deep]
    loop: dict[str, Any] = {}
    loop["self"] = loop
    for label, meta in (("50,000 levels deep", {"d": deep}), ("self-referential", loop),
                        ("100 levels deep", {"d": _nest(100)})):  # fmt: skip
        emit(Case(cat, f"write_metadata with {label} metadata",
                  lambda m=meta: (write_metadata(w / "m.npz", m), "ok")[1],
                  expect="clean"))  # fmt: skip
    _metadata_cases(w, emit)
    for label, ndim in (("'4'", "4"), ("4.0", 4.0), ("-1", -1), ("10**5000", big), ("None", None)):
        emit(Case(cat, f"collate_with_scale(ndim={label})",
                  lambda d=ndim: (physscale.collate_with_scale(
                      [{"x": x[0], "intensity_scale": 1.0}], ndim=d), "ok")[1],
                  expect="clean"))  # fmt: skip


class _Holder:
    metadata: Any = None


def _npz_metadata(path: Path, metadata: np.ndarray) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in (("diffraction", np.ones((2, 4, 4), np.float32)), ("_metadata", metadata)):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=True)
            zf.writestr(name + ".npy", buf.getvalue())
    return path


def _metadata_cases(w: Path, emit: Emit) -> None:
    """Deep JSON, bytes that are not UTF-8 and metadata that holds itself (item 8)."""
    import physscale
    from physscale.nn import IntensityScaler

    cat = "numeric API"
    deep = {"array": "[" * 100_000 + "]" * 100_000,
            "object": '{"a": ' * 100_000 + "1" + "}" * 100_000,
            "100 levels": "[" * 100 + "]" * 100}  # fmt: skip
    for (label, text), as_bytes in itertools.product(deep.items(), (False, True)):
        data: Any = text.encode() if as_bytes else text
        kind = "bytes" if as_bytes else "str"
        calls: list[tuple[str, Callable[[], Any]]] = [
            ("resolve_nphotons(metadata=...)", lambda d=data: physscale.resolve_nphotons(d)),
            ("derive_scale_record(metadata={'metadata': ...})",
             lambda d=data: physscale.derive_scale_record(
                 torch.rand(2, 4, 4), metadata={"metadata": d})),
        ]  # fmt: skip
        if not as_bytes:
            calls.append(("IntensityScaler.set_extra_state",
                          lambda d=data: IntensityScaler(2.0).set_extra_state(d)))  # fmt: skip
        from physscale.io import record_from_checkpoint

        calls.append(("record_from_checkpoint",
                      lambda d=data: record_from_checkpoint({"physscale_record": d})))  # fmt: skip
        for fname, fn in calls:
            emit(Case(cat, f"{fname} with {label} of nested JSON ({kind})",
                      lambda f=fn: (f(), "ok")[1], expect="clean"))  # fmt: skip
    for raw in (b"\xff\xfe\x00", b"\xc3(", b'{"a": "\xff"}'):
        emit(Case(cat, f"resolve_nphotons(metadata={raw!r})",
                  lambda r=raw: (physscale.resolve_nphotons(r), "ok")[1],
                  expect="clean"))  # fmt: skip
    from physscale.io import derive_files, read_metadata

    members = {"an S array": np.array(b"\xff\xfe{}", dtype="S"),
               "a 0-d bytes": np.asarray(np.bytes_(b"\xc3(")),
               "a pickled bytes": np.array(b"\xff", dtype=object),
               "a pickled lone surrogate": np.array("\udcff{}", dtype=object)}  # fmt: skip
    for i, (label, member) in enumerate(members.items()):
        path = _npz_metadata(w / f"meta{i}.npz", member)
        for fname, fn in (
            ("read_metadata", lambda p=path: read_metadata(p)),
            ("derive_files", lambda p=path: derive_files([p], key="diffraction")),
        ):
            emit(Case(cat, f"{fname}: _metadata is {label} that is not UTF-8",
                      lambda f=fn: (f(), "ok")[1], expect="clean"))  # fmt: skip
        emit(Case(cat, f"physscale derive: _metadata is {label} that is not UTF-8",
                  lambda p=path: _refused(["derive", p, "--key", "diffraction", "-q"]),
                  expect="clean"))  # fmt: skip
    try:
        import h5py
    except ImportError:  # the hdf5 extra is optional
        h5py = None
    if h5py is not None:
        for kind in ("fixed", "vlen-ascii"):
            path = w / f"meta-{kind}.h5"
            with h5py.File(path, "w") as f:
                f["diffraction"] = np.ones((2, 4, 4), np.float32)
                if kind == "fixed":
                    f.attrs["_metadata"] = np.bytes_(b"\xff\xfe{}")
                else:
                    f.attrs.create("_metadata", b"\xff\xfe{}", dtype=h5py.string_dtype("ascii"))
            for fname, fn in (
                ("read_metadata", lambda p=path: read_metadata(p)),
                ("derive_files", lambda p=path: derive_files([p], key="diffraction")),
            ):
                emit(Case(cat, f"{fname}: an HDF5 {kind} attribute of raw bytes",
                          lambda f=fn: (f(), "ok")[1], expect="clean"))  # fmt: skip

    def loops() -> dict[str, Any]:
        obj = _Holder()
        obj.metadata = obj
        d: dict[str, Any] = {}
        d["metadata"] = d
        chain = node = _Holder()
        for _ in range(100_000):
            node.metadata = _Holder()
            node = node.metadata
        return {"an object whose .metadata is itself": obj, "a dict holding itself": d,
                "a chain of 100,000 containers": chain}  # fmt: skip

    from physscale.adapters import ptychopinn

    for label in loops():
        for fname in ("resolve_nphotons", "attach_intensity_scale", "ptychopinn.attach"):

            def run_loop(label: str = label, fname: str = fname) -> str:
                metadata = loops()[label]
                if fname == "resolve_nphotons":
                    physscale.resolve_nphotons(metadata=metadata)
                elif fname == "attach_intensity_scale":
                    physscale.attach_intensity_scale({"X": torch.rand(2, 4, 4),
                                                      "metadata": metadata})  # fmt: skip
                else:
                    ptychopinn.attach({"X": np.ones((4, 8, 8, 1), np.float32),
                                       "metadata": metadata})  # fmt: skip
                return "ok"

            emit(Case(cat, f"{fname} with metadata {label}", run_loop, expect="clean"))


def _nest(depth: int) -> Any:
    node: Any = 1
    for _ in range(depth):
        node = [node]
    return node


# ----------------------------------------------------------------- state and writes (item 9)
def suite_state(w: Path, emit: Emit) -> None:
    import physscale

    cat = "state and full disks"
    acc = physscale.IntensityAccumulator()
    acc.update(torch.ones(2, 3, 3))
    for partials in ([1e308, -1e308, 1.0], [1e300, 1.0, -1e300], [5.0, -4.0], [1e16, -1e16 + 2]):

        def run(p: list[float] = partials) -> str:
            state = acc.state_dict()
            state["total_partials"] = p
            physscale.IntensityAccumulator().load_state_dict(state)
            return "loaded"  # a scale from partials no sum made: wrong

        emit(Case(cat, f"load_state_dict(total_partials={partials})", run, expect="clean"))

    def real_partials() -> str:
        a = physscale.IntensityAccumulator()
        for i in range(40):
            a.update(torch.rand(3, 4, 4, dtype=torch.float64) * 10.0 ** (i % 17 - 8))
        b = physscale.IntensityAccumulator()
        b.load_state_dict(a.state_dict())
        assert float(b.intensity_scale(1e6)) == float(a.intensity_scale(1e6))
        return "ok"

    emit(Case(cat, "load_state_dict of real partials", real_partials, expect="ok"))
    for where in ("a copied member", "the new metadata"):
        path = w / f"full-{where[:4]}.npz"

        def run_full(path: Path = path, where: str = where) -> str:
            from physscale.io import write_metadata

            write_metadata(path, {"a": 1}, diffraction=np.ones((4, 8, 8), np.float32))
            before = path.read_bytes()
            real = zipfile._ZipWriteFile.write  # type: ignore[attr-defined]
            calls = {"n": 0}

            def full(self: Any, data: Any) -> int:
                calls["n"] += 1
                if where == "the new metadata" and calls["n"] == 1:
                    return int(real(self, data))
                raise OSError(errno.ENOSPC, "No space left on device")

            zipfile._ZipWriteFile.write = full  # type: ignore[attr-defined]
            try:
                write_metadata(path, {"a": 2})
            except Exception as exc:
                _unchanged(path, before)
                if "corrupt" in str(exc):  # the old file is intact: the story is wrong
                    raise AssertionError(f"blames the file: {exc}") from None
                raise
            finally:
                zipfile._ZipWriteFile.write = real  # type: ignore[attr-defined]
            return "written on a full disk?"

        emit(Case(cat, f"write_metadata on a full disk ({where})", run_full, expect="clean"))


# ----------------------------------------------------------------- adapters (items 1-3, 5)
def _port_zip(path: Path, params: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.dill", pickle.dumps({"models": ["diffraction_to_obj"]}))
        zf.writestr("diffraction_to_obj/params.dill", params)
    return path


def _in_fork(path: str, conn: Any) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (resource.getrlimit(resource.RLIMIT_AS)[0],) * 2)
    from physscale import PhysscaleError
    from physscale.adapters import ptychopinn

    try:
        ptychopinn.record_from_bundle(path)
        conn.send(("ok", ""))
    except PhysscaleError as exc:
        conn.send(("clean", str(exc)[:200]))
    except MemoryError:
        conn.send(("memory", ""))
    except BaseException as exc:
        conn.send(("raw", f"{type(exc).__name__}: {str(exc)[:150]}"))


def _record_from_bundle(path: str, seconds: float = 20.0) -> str:
    """record_from_bundle in a forked child: a crash must not take the suite down."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_in_fork, args=(path, child))
    proc.start()
    child.close()
    try:
        if not parent.poll(seconds):
            raise TimeoutError
        kind, detail = parent.recv()
    except EOFError:
        proc.join(5)
        raise AssertionError(f"the interpreter died (exit {proc.exitcode})") from None
    except TimeoutError:
        raise MemoryError("ran past its time in the child") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.join(5)
    if kind == "memory":
        raise MemoryError
    if kind == "raw":
        raise AssertionError(detail)
    return f"clean: {detail}" if kind == "clean" else "ok"


def suite_adapters(w: Path, emit: Emit) -> None:
    cat = "adapters"
    raw = pickle.dumps({"intensity_scale": np.float64(1.0)}, protocol=4)
    scalar = raw.replace(b"\x8c\x02f8", b"\x8c\x02O8").replace(np.float64(1.0).tobytes(), b"A" * 8)
    bombs = {
        "object scalar from bytes (SIGSEGV)": scalar,
        "memo slot 2**28": b"\x80\x02}q\x00r" + (2**28).to_bytes(4, "little") + b".",
        "20,000 lists deep": pickle.dumps({"intensity_scale": 3.0}, protocol=2)[:-1]
        + b"X\x06\x00\x00\x00nested"
        + b"]" * 20_000
        + b"a" * 19_999
        + b"s.",
        "truncated pickle": raw[:-5],
    }
    for label, data in bombs.items():
        path = _port_zip(w / f"port-{abs(hash(label)) % 10**8}.zip", data)
        emit(Case(cat, f"record_from_bundle: {label}",
                  lambda p=str(path): _record_from_bundle(p), seconds=40.0,
                  expect="clean"))  # fmt: skip
    for label, path in (("''", ""), ("'/'", "/"), ("a FIFO-less missing file", str(w / "no.zip"))):
        emit(Case(cat, f"record_from_bundle({label})", lambda p=path: _record_from_bundle(p),
                  seconds=40.0, expect="clean"))  # fmt: skip


def suite_issue22(profile: str, workdir: Path, emit: Emit) -> None:
    """Every generator of issue 22, in order; ``profile`` changes nothing (all combinations)."""
    for name, gen in (("outputs", suite_outputs), ("globs", suite_globs), ("costs", suite_costs),
                      ("numeric", suite_numeric), ("state", suite_state),
                      ("adapters", suite_adapters)):  # fmt: skip
        folder = workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        gen(folder, emit)
