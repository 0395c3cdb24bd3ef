#!/usr/bin/env bash
# Sets up flashcore from a fresh clone, or refreshes an existing setup (safe to re-run: .venv is reused, pip skips
# what is installed, ninja recompiles only changed sources).
#   1. .venv/ in the repository root, if missing ($PYTHON -m venv; PYTHON defaults to python3)
#   2. torch 2.14.1, the build and test tools, and cuobjdump/nvdisasm for the SASS checks (tests/test_build_checks.py);
#      clang-19 through apt-get, best effort, for the gfx942 ISA checks (tests/test_hip_isa.py)
#   3. flashcore as an editable install; with the CUDA kernels when nvcc is found
#      (CUDA_HOME defaults to /usr/local/cuda; MAX_JOBS defaults to the number of cores;
#       FLASHCORE_CUDA_ARCHS adds CUDA targets to sm_90a, see setup.py)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "install.sh: creating .venv with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python

echo "install.sh: installing packages into .venv"
start=$(date +%s)
# setuptools>=70.1 builds editable wheels without the separate `wheel` package (a Python 3.12 venv has neither).
"$PY" -m pip install -q "setuptools>=70.1" torch==2.14.1 ninja pybind11 pytest matplotlib numpy \
  nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
echo "install.sh: packages ready in $(( $(date +%s) - start )) s"

# clang-19 compiles the gfx942 kernels device-only for tests/test_hip_isa.py (no ROCm needed). Best effort: without
# root/sudo or the package, those checks skip with their reason.
if ! command -v clang++-19 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
  echo "install.sh: installing clang-19 (apt-get) for the gfx942 ISA checks"
  start=$(date +%s)
  if $sudo apt-get install -y -q --no-install-recommends clang-19 >/dev/null 2>&1 ||
     { $sudo apt-get update -q >/dev/null 2>&1 &&
       $sudo apt-get install -y -q --no-install-recommends clang-19 >/dev/null 2>&1; }; then
    echo "install.sh: clang-19 ready in $(( $(date +%s) - start )) s"
  else
    echo "install.sh: could not install clang-19; tests/test_hip_isa.py will skip"
  fi
fi

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "install.sh: building flashcore with the CUDA kernels ($CUDA_HOME/bin/nvcc, MAX_JOBS=$MAX_JOBS)"
elif command -v nvcc >/dev/null 2>&1; then
  unset CUDA_HOME  # not a toolkit root; let setup.py find the toolkit of the nvcc on PATH
  echo "install.sh: building flashcore with the CUDA kernels ($(command -v nvcc), MAX_JOBS=$MAX_JOBS)"
else
  echo "install.sh: no nvcc found (CUDA_HOME=$CUDA_HOME): installing flashcore without compiled kernels"
fi

start=$(date +%s)
log=$(mktemp)
# -v: the compiler's output goes to the log, shown in full only when the build fails.
if ! "$PY" -m pip install -v --no-build-isolation --no-deps -e . >"$log" 2>&1; then
  cat "$log"
  echo "install.sh: building flashcore FAILED (log above)" >&2
  rm -f "$log"
  exit 1
fi
grep "flashcore setup:" "$log" | awk '!seen[$0]++' || true
rm -f "$log"
echo "install.sh: flashcore installed in $(( $(date +%s) - start )) s"
