#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv with everything KneeSegmentation needs.
#   bash scripts/setup.sh          runtime: torch (CPU), SimpleITK, safetensors, slicer-core (real MRML) ...
#   bash scripts/setup.sh --test   plus the test tools and the real knee data (mskt 0.1.22 sdist, via pip)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${KNEESEG_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first and pinned: the CPU build; an open range would pull CUDA packages (GBs).
$VENV/bin/python -c "import torch" 2>/dev/null || { echo "[setup] installing torch==2.13.0"; $PIP install torch==2.13.0; }
echo "[setup] installing pinned requirements"
$PIP install -r requirements.txt
$PIP install --no-deps -e . 2>/dev/null || $PIP install --no-deps --no-build-isolation -e .
if [ "${1:-}" = "--test" ]; then
  echo "[setup] installing test tools and fetching the real knee data (mskt 0.1.22 sdist)"
  $PIP install -r requirements-test.txt
  $VENV/bin/python -m trainer.mskt >/dev/null
fi
echo "[setup] ready: $VENV ($($VENV/bin/python -c 'import torch, SimpleITK, slicer; print("torch", torch.__version__)'))"
