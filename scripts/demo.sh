#!/usr/bin/env bash
# Sets everything up, then segments the bundled real knee MRI sample with the bundled model:
# writes out/sample.seg.nrrd (open it in 3D Slicer), out/sample-labels.nrrd (with its label table),
# out/sample-statistics.csv and out/sample.png (a preview). A re-run replaces its own outputs (--force).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
.venv/bin/kneeseg info
.venv/bin/kneeseg segment Resources/SampleData/MESE_T2_knee_echo1.nrrd \
  -o out/sample.seg.nrrd --labelmap out/sample-labels.nrrd --statistics out/sample-statistics.csv \
  --preview out/sample.png --force
echo "[demo] wrote out/sample.seg.nrrd, out/sample-labels.nrrd, out/sample-statistics.csv and out/sample.png"
