"""Build hook: compile physscale's optional native kernel into the wheel.

``csrc/physscale_native.c`` becomes ``physscale/_native_kernel.so``, a plain C
shared library that ``physscale._native`` loads with ctypes (no Python
headers, so one build serves every Python version). Without a working C
compiler the wheel is built pure-Python and physscale uses its eager kernel,
which gives the same results, more slowly.

Environment:
    PHYSSCALE_NATIVE=0          do not build the kernel.
    PHYSSCALE_REQUIRE_NATIVE=1  fail the build instead of falling back (CI).
    CC                          the C compiler (default: Python's, else ``cc``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("csrc") / "physscale_native.c"
TARGET = "physscale/_native_kernel.so"


def _compiler() -> list[str]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


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


class NativeKernelHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        require = os.environ.get("PHYSSCALE_REQUIRE_NATIVE") == "1"
        if os.environ.get("PHYSSCALE_NATIVE") == "0" and not require:
            return
        if sys.platform == "win32":
            msg = "physscale: the native kernel is not built on Windows (eager kernel used)"
            if require:
                raise RuntimeError(msg)
            print(msg, file=sys.stderr)
            return
        root = Path(self.root)
        if version == "editable":
            # The editable install imports from src/: put the library there, and
            # never leave a previous build behind if this compile fails.
            output = root / "src" / TARGET
            output.unlink(missing_ok=True)
        else:
            output = Path(tempfile.mkdtemp(prefix="physscale-native-")) / "kernel.so"
        error = _compile(root / SOURCE, output)
        if error is not None:
            msg = (
                "physscale: could not compile the native kernel; installing without it "
                "(the eager kernel gives the same results, about 2x slower on large "
                f"CPU inputs).\n{error}"
            )
            if require:
                raise RuntimeError(msg)
            print(msg, file=sys.stderr)
            return
        if version != "editable":
            build_data["force_include"][str(output)] = TARGET
        # A platform wheel, but for any Python: the library does not use the C API.
        platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
        build_data["pure_python"] = False
        build_data["tag"] = f"py3-none-{platform}"
