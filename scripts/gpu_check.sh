#!/usr/bin/env bash
# The GPU check (issue 14): export the default encoders with the gpu profile, build TensorRT
# FP16 engines, measure each encoder at batch 1 and 32 with TensorRT, onnxruntime CUDA /
# TensorRT and (inside the NGC image) Triton; figures to $OUT (default artifacts/gpu_check)
# as gpu_check.json and gpu_check.md. Needs one NVIDIA GPU; without one it stops at once
# (exit 3). No network is used. Options: scripts/gpu_check.sh --help
#
#   scripts/gpu_check.sh                          # everything, ~8 min budget on an H200
#   scripts/gpu_check.sh --encoders text,clip --runtimes trt --batch-sizes 1,32
#   scripts/gpu_check.sh --export-only            # the gpu-profile repository, on any machine
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
export OUT="${OUT:-$root/artifacts/gpu_check}"
cd "$root"
exec "$python" -m mmserve.bench.gpu_check "$@"
