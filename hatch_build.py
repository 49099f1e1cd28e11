"""Build hook: compile physscale's optional native kernel into the wheel.

``src/physscale/core/kernels/native.c`` becomes ``_native_kernel.so`` beside it, a plain C
shared library that ``physscale.core.kernels.native`` loads with ctypes (no Python
headers, so one build serves every Python version). Without a working C
compiler the wheel is built pure-Python and physscale uses its eager kernel,
which gives the same results, more slowly.

Environment:
    PHYSSCALE_NATIVE=0          do not build the kernel.
    PHYSSCALE_REQUIRE_NATIVE=1  fail the build instead of falling back (CI).
    CC                          the C compiler, used as given.

Without ``$CC`` the compiler is Python's configured one (``sysconfig``'s CC)
when that executable exists, else the first of ``cc``, ``gcc``, ``clang`` on
PATH. The outcome (built or not, the compiler, a one-line reason) is written
into the package as ``physscale/core/kernels/_native_build.json``, which ``physscale
doctor`` and ``physscale --version`` read: pip shows a build hook's messages
only with ``-v``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src") / "physscale" / "core" / "kernels" / "native.c"
TARGET = "physscale/core/kernels/_native_kernel.so"
#: The build outcome, read by ``physscale doctor`` (physscale/cli/doctor.py).
OUTCOME = "physscale/core/kernels/_native_build.json"

#: Compilers looked for on PATH when neither $CC nor Python's CC gives one.
FALLBACK_COMPILERS = ("cc", "gcc", "clang")


def _search() -> tuple[list[str] | None, tuple[str, ...]]:
    """The C compiler command to use (None if there is none) and what was looked at.

    ``$CC`` is used as given (a broken one fails the compile, with its name in
    the error, rather than being passed over). Python's configured CC is used
    only if its executable exists: it often names the compiler of the machine
    that built Python (a conda or manylinux toolchain), absent here.
    """
    looked: list[str] = []
    env = os.environ.get("CC", "").strip()
    if env:
        return shlex.split(env), (f"$CC={env}",)
    looked.append("$CC (unset)")
    python_cc = str(sysconfig.get_config_var("CC") or "").strip()
    if python_cc:
        cmd = shlex.split(python_cc)
        if shutil.which(cmd[0]):
            return cmd, (*looked, f"Python's CC {python_cc!r}")
        looked.append(f"Python's CC {cmd[0]!r} (not found)")
    else:
        looked.append("Python's CC (none configured)")
    for name in FALLBACK_COMPILERS:
        if shutil.which(name):
            return [name], (*looked, f"{name} on PATH")
        looked.append(f"{name} (not on PATH)")
    return None, tuple(looked)


def _compiler() -> list[str]:
    """The C compiler command; with none found, ``cc`` (whose compile then fails cleanly)."""
    found, _ = _search()
    return found if found is not None else [FALLBACK_COMPILERS[0]]


def _compile(source: Path, output: Path) -> str | None:
    """Compile ``source`` into ``output``; the error text on failure, else None."""
    base = [*_compiler(), "-O3", "-shared", "-fPIC", "-fvisibility=hidden"]
    # First with the x86-64 AVX2/AVX-512 kernels (chosen at run time; ignored on
    # other CPUs), then without them for compilers that lack their intrinsics.
    attempts = [["-DPHYSSCALE_X86_SIMD"], []]
    errors = []
    for extra in attempts:
        cmd = [*base, *extra, "-o", str(output), str(source), "-lm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            return f"{shlex.join(cmd)}: {exc}"
        if proc.returncode == 0:
            return None
        errors.append(f"{shlex.join(cmd)}:\n{proc.stderr.strip()}")
    return "\n".join(errors)


class Outcome(NamedTuple):
    """What the build did about the native kernel, as recorded in the package.

    (A NamedTuple, not a dataclass: hatchling loads this file without putting
    it in ``sys.modules``, which dataclasses need.)
    """

    built: bool
    #: "built", "no-compiler", "compile-failed", "disabled" or "unsupported-platform".
    status: str
    #: The compiler command used (None: none found, or not attempted).
    compiler: str | None
    #: One line: how it was built, or why not.
    reason: str
    #: The compiler search, in order (see ``_search``).
    searched: tuple[str, ...] = ()
    platform: str = sysconfig.get_platform()

    def to_json(self) -> str:
        return json.dumps(self._asdict(), indent=2) + "\n"


def _first_error(text: str) -> str:
    """The line of a compiler's output that says what went wrong, shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = next((x for x in lines if "error" in x.lower()), lines[-1] if lines else "failed")
    return line if len(line) <= 200 else line[:197] + "..."


def build_kernel(source: Path, output: Path) -> Outcome:
    """Search for a C compiler and compile ``source`` into ``output`` with it."""
    found, searched = _search()
    if found is None:
        return Outcome(
            built=False,
            status="no-compiler",
            compiler=None,
            reason="no C compiler found (looked for " + ", ".join(searched) + ")",
            searched=searched,
        )
    compiler = shlex.join(found)
    error = _compile(source, output)
    if error is not None:
        return Outcome(
            built=False,
            status="compile-failed",
            compiler=compiler,
            reason=f"{compiler} could not compile {SOURCE.as_posix()}: {_first_error(error)}",
            searched=searched,
        )
    where = shutil.which(found[0]) or found[0]
    return Outcome(
        built=True,
        status="built",
        compiler=compiler,
        reason=f"compiled with {compiler} ({where})",
        searched=searched,
    )


class NativeKernelHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"
    _scratch: Path | None = None

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        require = os.environ.get("PHYSSCALE_REQUIRE_NATIVE") == "1"
        root = Path(self.root)
        if version == "editable":
            # The editable install imports from src/: put the library there, and
            # never leave a previous build behind if this compile fails.
            output = root / "src" / TARGET
            output.unlink(missing_ok=True)
        else:
            # Removed in finalize(), once the wheel has copied the files out of it.
            self._scratch = Path(tempfile.mkdtemp(prefix="physscale-native-"))
            output = self._scratch / "kernel.so"
        if os.environ.get("PHYSSCALE_NATIVE") == "0" and not require:
            outcome = Outcome(
                built=False,
                status="disabled",
                compiler=None,
                reason="left out on purpose (PHYSSCALE_NATIVE=0 at build time)",
            )
        elif sys.platform == "win32":
            outcome = Outcome(
                built=False,
                status="unsupported-platform",
                compiler=None,
                reason="the native kernel is not built on Windows",
            )
        else:
            outcome = build_kernel(root / SOURCE, output)
        self._record(version, build_data, outcome, output.with_name("_native_build.json"))
        if not outcome.built:
            msg = (
                f"physscale: no native kernel: {outcome.reason}. Installing without it "
                "(the eager kernel gives the same results, about 2x slower on large CPU "
                "inputs); `physscale doctor` says how to get it."
            )
            if require:
                self._remove_scratch()
                raise RuntimeError(f"{msg}\nPHYSSCALE_REQUIRE_NATIVE=1: failing the build.")
            print(msg, file=sys.stderr)
            return
        if version != "editable":
            build_data["force_include"][str(output)] = TARGET
        # A platform wheel, but for any Python: the library does not use the C API.
        platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
        build_data["pure_python"] = False
        build_data["tag"] = f"py3-none-{platform}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _record(
        self, version: str, build_data: dict[str, Any], outcome: Outcome, path: Path
    ) -> None:
        """Put the outcome in the package, where ``physscale doctor`` reads it."""
        if version == "editable":
            path = Path(self.root) / "src" / OUTCOME
        path.write_text(outcome.to_json(), encoding="utf-8")
        if version != "editable":
            build_data["force_include"][str(path)] = OUTCOME
