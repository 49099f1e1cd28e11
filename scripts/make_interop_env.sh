#!/usr/bin/env bash
# Build the environment that runs tests/interop/ against the real host codes:
# PtychoPINN's PyTorch port (ptycho_torch), deepinv 0.5.0 and pty-chi 2.2.0.
#
# Usage:
#   scripts/make_interop_env.sh [VENV]                 # default VENV: /work/venvs/hosts
#   PTYCHOPINN_SRC=/path/to/PtychoPINN VENV/bin/python -m pytest tests/interop
#
# Why a separate venv and not main CI: deepinv and pty-chi need torchvision, and
# PyPI's torchvision cannot load with the CPU torch build that main CI installs,
# so pip brings a CUDA torch build (several GB; it runs fine on CPU). Main CI
# stays small and fast and runs only the host-free adapter tests
# (tests/test_adapters.py); tests/interop/ skips there, naming what is missing.
#
# Never install TensorFlow into this venv: importing TensorFlow before triton
# crashes with this torch build. The port's TensorFlow half (ptycho/) is not
# needed: the interop tests import only ptycho_torch.
#
# PtychoPINN is not on PyPI. Get its source (GPL: run it, copy nothing of it
# into physscale) into a folder holding ptycho_torch/ and ptycho/, and point
# PTYCHOPINN_SRC at it, e.g.
#   git clone https://github.com/hoidn/PtychoPINN /work/ext/PtychoPINN
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-/work/venvs/hosts}"

python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install -q --upgrade pip
# torch and torchvision together, pinned to a pair that loads each other.
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q "deepinv==0.5.0" "ptychi==2.2.0"
# What ptycho_torch imports beyond torch (its own requirements are not on PyPI).
python -m pip install -q -r "$here/tests/interop/requirements-port.txt"
python -m pip install -q -e "$here[test,hdf5]"
python - <<'PY'
import deepinv, ptychi, torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__,
      "deepinv", deepinv.__version__, "ptychi", getattr(ptychi, "__version__", "?"))
PY
echo "interop env ready: $venv"
echo "run: PHYSSCALE_REQUIRE_INTEROP=1 PTYCHOPINN_SRC=/path/to/PtychoPINN $venv/bin/python -m pytest tests/interop tests/test_adapters.py"
