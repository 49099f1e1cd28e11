#!/usr/bin/env bash
# Build an environment that runs tests/interop/ against the real host codes.
#
# Usage:
#   scripts/make_interop_env.sh [hosts] [VENV]    # PtychoPINN's port, deepinv 0.5.0, pty-chi 2.2.0
#                                                 #   default VENV /work/venvs/hosts
#   scripts/make_interop_env.sh cdtools [VENV]    # cdtools-py 0.3.2, default /work/venvs/cdtools
#   scripts/make_interop_env.sh ptyrad [VENV]     # ptyrad 1.0.0 (Python 3.12), default /work/venvs/ptyrad
#   scripts/make_interop_env.sh VENV              # as `hosts VENV` (the old form)
# then, in each:
#   PHYSSCALE_REQUIRE_INTEROP=1 VENV/bin/python -m pytest tests/interop/test_cdtools.py docs/interop/cdtools.md
#   (the line to run is printed at the end, per environment)
#
# Why separate venvs and not main CI: the hosts need torchvision or their own
# torch pins, and PyPI's torchvision cannot load with the CPU torch build that
# main CI installs, so pip brings a CUDA torch build (several GB; it runs fine
# on CPU). Main CI stays small and fast and runs only the host-free adapter
# tests (tests/test_adapters.py); tests/interop/ skips there, naming what is
# missing, and the docs' host blocks skip (conftest.py's has_host).
#
# hosts: never install TensorFlow into this venv: importing TensorFlow before
# triton crashes with this torch build. The port's TensorFlow half (ptycho/)
# is not needed: the interop tests import only ptycho_torch. PtychoPINN is not
# on PyPI. Get its source (GPL: run it, copy nothing of it into physscale) into
# a folder holding ptycho_torch/ and ptycho/, and point PTYCHOPINN_SRC at it, e.g.
#   git clone https://github.com/hoidn/PtychoPINN /work/ext/PtychoPINN
#
# ptyrad: ptyrad 1.0.0 says Python >= 3.10 but uses 3.12-only f-string syntax,
# so its venv is made with Python 3.12 ($PYTHON312, else python3.12 on PATH,
# else pyenv's 3.12). Its torchvision is unpinned and the newest one swaps
# torch: tests/interop/constraints-ptyrad.txt pins the pair.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

case "${1:-hosts}" in
    hosts | cdtools | ptyrad) target="${1:-hosts}"; venv="${2:-/work/venvs/$target}" ;;
    *) target=hosts; venv="$1" ;;
esac

python312() {
    local candidate
    for candidate in "${PYTHON312:-}" python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
        if [ -n "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
    echo "ptyrad 1.0.0 needs Python 3.12 (set PYTHON312=/path/to/python3.12)" >&2
    exit 1
}

case "$target" in
    ptyrad) "$(python312)" -m venv "$venv" ;;
    *) python3 -m venv "$venv" ;;
esac
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install -q --upgrade pip

case "$target" in
    hosts)
        # torch and torchvision together, pinned to a pair that loads each other.
        python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
        python -m pip install -q "deepinv==0.5.0" "ptychi==2.2.0"
        # What ptycho_torch imports beyond torch (its own requirements are not on PyPI).
        python -m pip install -q -r "$here/tests/interop/requirements-port.txt"
        python -m pip install -q -e "$here[test,hdf5]"
        check="import deepinv, ptychi, torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'deepinv', deepinv.__version__)"
        run="PHYSSCALE_REQUIRE_INTEROP=1 PTYCHOPINN_SRC=/path/to/PtychoPINN $venv/bin/python -m pytest tests/interop/test_ptychopinn.py tests/interop/test_deepinv.py tests/interop/test_ptychi.py tests/test_adapters.py"
        ;;
    cdtools)
        # cdtools needs no torchvision: torch 2.13.0 (the CPU build where pip finds it).
        python -m pip install -q "torch==2.13.0" "cdtools-py==0.3.2"
        python -m pip install -q -e "$here[test,hdf5]"
        check="import cdtools, torch; print('torch', torch.__version__, 'cdtools', cdtools.__version__)"
        run="PHYSSCALE_REQUIRE_INTEROP=1 $venv/bin/python -m pytest tests/interop/test_cdtools.py docs/interop/cdtools.md tests/test_adapters.py"
        ;;
    ptyrad)
        constraints="$here/tests/interop/constraints-ptyrad.txt"
        python -m pip install -q -c "$constraints" "torch==2.13.0" "torchvision==0.28.0" "ptyrad==1.0.0"
        python -m pip install -q -c "$constraints" -e "$here[test,hdf5]"
        check="import ptyrad, torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ptyrad', ptyrad.__version__)"
        run="PHYSSCALE_REQUIRE_INTEROP=1 $venv/bin/python -m pytest tests/interop/test_ptyrad.py docs/interop/ptyrad.md tests/test_adapters.py"
        ;;
esac
python -c "$check"
echo "interop env ready: $venv"
echo "run (from $here): $run"
