"""``physscale doctor``: what this installation runs, and why.

The report gives the versions of physscale and its dependencies, the kernel in
use (the native C kernel or the eager PyTorch one) and, without the native
kernel, why and how to get it, which optional packages are installed, the
validation switch, and torch's threads and devices.

Why the kernel is missing comes from the build record
``physscale/_native_build.json``, which the build hook (``hatch_build.py``)
writes into every wheel it builds: pip shows a build hook's messages only
with ``-v``, so the record is how the install's outcome stays visible.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy
import pydantic
import torch

from physscale._version import __version__
from physscale.core.kernels import native as _native
from physscale.core.validation import is_validation_enabled

__all__ = [
    "KernelStatus",
    "VersionAction",
    "format_report",
    "kernel_status",
    "report",
    "version_line",
]

#: The native library, where the build hook installs it.
LIBRARY = Path(_native.__file__).with_name(_native.LIBRARY_NAME)
#: The build hook's record of what it did about the kernel.
BUILD_RECORD = LIBRARY.with_name("_native_build.json")

#: Optional packages: import name -> what uses it (with the extra that installs it).
OPTIONAL = {
    "h5py": "HDF5 files (extra: hdf5)",
    "lightning": "physscale.lightning (extra: lightning)",
    "matplotlib": "the report figure of physscale derive --plot (extra: plot)",
    "tqdm": "progress bars of physscale derive (a dependency since 0.2)",
    "tensorflow": "the TensorFlow parity tests (extra: parity)",
}

_REINSTALL = "pip install --force-reinstall --no-deps --no-binary physscale physscale"
_WHEEL = (
    "install a wheel that carries the kernel (the manylinux wheels for Linux x86_64 "
    "and aarch64): pip install --force-reinstall --no-deps --only-binary physscale physscale"
)
_COMPILERS = (
    "install a C compiler (Debian/Ubuntu: apt install gcc; Fedora: dnf install gcc; "
    "macOS: xcode-select --install; conda: conda install c-compiler)"
)


@dataclass(frozen=True)
class KernelStatus:
    """Which reduction kernel this process uses, and, if not the native one, why."""

    #: "native" (the C kernel) or "eager" (PyTorch; same results, slower on large CPU inputs).
    kernel: Literal["native", "eager"]
    #: The native library's path, when it is in use.
    library: str | None
    #: The compiler the build hook used or tried, from the build record.
    compiler: str | None
    #: Why the native kernel is not in use (one line); None when it is.
    reason: str | None
    #: A few words for ``physscale --version``; None when the native kernel is in use.
    summary: str | None
    #: How to get the native kernel; None when it is in use or cannot be had.
    remedy: str | None


def _build_record() -> dict[str, Any] | None:
    try:
        data = json.loads(BUILD_RECORD.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _from_record(record: dict[str, Any] | None) -> tuple[str, str, str | None]:
    """Reason, summary and remedy for an installation without the library file."""
    if record is None:
        return (
            f"the library is not installed and there is no build record ({BUILD_RECORD.name}):"
            " physscale was installed without its build hook, or by a version before 0.2",
            "not built",
            f"reinstall physscale with a C compiler on PATH: {_REINSTALL} "
            "(in a source checkout: pip install -e .)",
        )
    reason = str(record.get("reason") or "not built")
    remedy: str | None
    status = record.get("status")
    if status == "no-compiler":
        summary = "no C compiler was found when physscale was installed"
        remedy = f"{_COMPILERS}, then reinstall from source: {_REINSTALL}; or {_WHEEL}"
    elif status == "compile-failed":
        summary = f"{record.get('compiler') or 'the compiler'} failed to compile it at install time"
        remedy = (
            "fix the compiler, or point CC= at a working one (CC=gcc or CC=clang), then "
            f"reinstall from source: {_REINSTALL} (pip -v shows the compiler's output); or {_WHEEL}"
        )
    elif status == "disabled":
        summary = "installed from the pure-Python wheel (PHYSSCALE_NATIVE=0 at build time)"
        remedy = f"{_WHEEL}; or, with a C compiler, build it from source: {_REINSTALL}"
    elif status == "unsupported-platform":
        summary = f"not built on {record.get('platform') or sys.platform}"
        remedy = None
    elif record.get("built"):
        reason = "the build recorded a native kernel, but its library file is missing"
        summary = "the library file is missing"
        remedy = f"reinstall physscale: {_REINSTALL}"
    else:
        summary = "not built"
        remedy = f"reinstall physscale with a C compiler on PATH: {_REINSTALL}"
    return reason, summary, remedy


def kernel_status() -> KernelStatus:
    """Which kernel this process uses and, without the native one, why and how to get it."""
    record = _build_record()
    compiler = record.get("compiler") if record else None
    if _native.available():
        return KernelStatus("native", str(LIBRARY), compiler, None, None, None)
    if os.environ.get("PHYSSCALE_NATIVE", "1") == "0":
        reason = "switched off at run time by PHYSSCALE_NATIVE=0 in the environment"
        remedy = "unset PHYSSCALE_NATIVE to use the native kernel"
        if not LIBRARY.is_file():
            why, _, fix = _from_record(record)
            reason += f"; it is not installed either: {why}"
            remedy += f"; to install it: {fix}" if fix else ""
        return KernelStatus("eager", None, compiler, reason, "PHYSSCALE_NATIVE=0 is set", remedy)
    if LIBRARY.is_file():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = _native.load(LIBRARY)
        if loaded is None:
            detail = str(caught[0].message) if caught else f"{LIBRARY} could not be loaded"
            reason = f"the installed library could not be loaded: {detail}"
        else:
            reason = f"{LIBRARY} loads, but this process did not load it when it started"
        return KernelStatus(
            "eager",
            None,
            compiler,
            reason,
            "the installed library could not be loaded",
            f"reinstall physscale to rebuild it: {_REINSTALL} (in a source checkout: "
            "pip install -e .)",
        )
    why, summary, fix = _from_record(record)
    return KernelStatus("eager", None, compiler, why, summary, fix)


def version_line() -> str:
    """``physscale --version``: the version and the kernel, with the reason if it is eager."""
    status = kernel_status()
    if status.kernel == "native":
        return f"physscale {__version__} (native kernel)"
    return (
        f"physscale {__version__} (eager kernel only: {status.summary}; "
        "`physscale doctor` says how to get the native one)"
    )


class VersionAction(argparse.Action):
    """``--version`` for the ``physscale`` command: `version_line`, on one line.

    (argparse's own version action wraps its text to the terminal's width.)
    """

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="show the version and the kernel in use, and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(version_line() + "\n")
        parser.exit()


def _distribution_version(module: str, owners: Mapping[str, list[str]]) -> str | None:
    dists = owners.get(module, [])
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _optional() -> dict[str, dict[str, Any]]:
    # find_spec, not import: importing TensorFlow or Lightning takes seconds.
    found = {}
    owners = importlib.metadata.packages_distributions()
    for name, use in OPTIONAL.items():
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        installed = spec is not None
        found[name] = {
            "installed": installed,
            "version": _distribution_version(name, owners) if installed else None,
            "used_for": use,
        }
    return found


def _torch() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    count = torch.cuda.device_count() if cuda else 0
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    mps = getattr(torch.backends, "mps", None)
    return {
        "version": torch.__version__,
        "intra_op_threads": torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
        "cuda_build": torch.version.cuda,
        "cuda_devices": len(names),
        "cuda_device_names": names,
        "mps": bool(mps is not None and mps.is_available()),
    }


def report() -> dict[str, Any]:
    """Everything ``physscale doctor`` reports, as JSON-ready data."""
    return {
        "physscale": {"version": __version__, "location": str(Path(__file__).parent)},
        "python": {
            "version": platform.python_version(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
        "torch": _torch(),
        "numpy": numpy.__version__,
        "pydantic": pydantic.VERSION,
        "kernel": asdict(kernel_status()),
        "build_record": _build_record(),
        "validation": is_validation_enabled(),
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith("PHYSSCALE_")},
        "optional": _optional(),
    }


def format_report(data: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    t = data["torch"]
    devices = ", ".join(t["cuda_device_names"]) or "none"
    if t["cuda_build"] is None:
        devices = "none (a CPU-only build of torch)"
    lines = [
        f"physscale   {data['physscale']['version']}  ({data['physscale']['location']})",
        f"python      {data['python']['version']}  ({data['python']['executable']}, "
        f"{data['python']['platform']})",
        f"torch       {t['version']}  ({t['intra_op_threads']} intra-op threads, "
        f"{t['inter_op_threads']} inter-op)",
        f"  CUDA      {devices}" + ("" if not t["mps"] else "; MPS available"),
        f"numpy       {data['numpy']}",
        f"pydantic    {data['pydantic']}",
    ]
    k = data["kernel"]
    if k["kernel"] == "native":
        built = f", built with {k['compiler']}" if k["compiler"] else ""
        lines.append(f"kernel      native  ({k['library']}{built})")
    else:
        lines += [
            "kernel      eager  (same results as the native kernel, slower on large CPU "
            "inputs: docs/performance.md has the figures)",
            f"  why       {k['reason']}",
        ]
        if k["remedy"]:
            lines.append(f"  fix       {k['remedy']}")
    state = "on" if data["validation"] else "off"
    lines.append(
        f"validation  {state}  (ps.is_validation_enabled(); ps.set_validation(...) switches it)"
    )
    for key, value in data["environment"].items():
        lines.append(f"env         {key}={value}")
    lines.append("optional packages (found, not imported):")
    width = max(len(name) for name in data["optional"])
    for name, entry in data["optional"].items():
        version = (entry["version"] or "installed") if entry["installed"] else "not installed"
        lines.append(f"  {name:<{width}}  {version:<14}  {entry['used_for']}")
    return "\n".join(lines)
