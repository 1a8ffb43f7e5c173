#!/usr/bin/env bash
# The GPU check (issue 24), one command from a bare clone on a GPU machine with PyPI only (no
# apt, no Docker): sets up its own virtualenv, exports MiniLM, CLIP ViT-B-32 (random weights)
# and the Whisper encoder, builds TensorRT FP16 engines, measures them in-process (TensorRT,
# onnxruntime CUDA, onnxruntime TensorRT EP) and serves the fused pipelines through the
# pip-bundled Triton on the GPU (c=1 / c=8). Figures go to $OUT (default artifacts/gpu_check)
# as gpu_check.json and gpu_check.md after every step, so a timeout still leaves them.
#
#   scripts/gpu_check.sh                  # everything: ~8 min including set-up on an H100/H200
#   scripts/gpu_check.sh --dry-run        # every step short of CUDA, on CPU (in the test suite)
#   scripts/gpu_check.sh --encoders text --runtimes trt
#
# Environment: PYTHON (use this interpreter, no set-up), MMSERVE_GPU_VENV (default .venv-gpu),
# MMSERVE_GPU_BUDGET (seconds for everything, set-up included; default 480).
# perf_analyzer is not used: it links libb64, a Debian package with no PyPI route; the served
# step drives Triton with tritonclient's asyncio client at the same concurrencies instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
started=$(date +%s)
OUT="${OUT:-$root/artifacts/gpu_check}"
cd "$root"

dry_run=0
budget_given=0
previous=""
for argument in "$@"; do
  case "$argument" in
    --dry-run) dry_run=1 ;;
    --budget|--budget=*) budget_given=1 ;;
    --out=*) OUT="${argument#--out=}" ;;
    -h|--help) dry_run=1 ;;
  esac
  [ "$previous" = "--out" ] && OUT="$argument"
  previous="$argument"
done
export OUT
mkdir -p "$OUT"

log() { echo "gpu_check.sh: $*" >&2; }

base_python() {
  # The machine's Python, 3.10 to 3.12 (what mmserve and the bundled Triton's stubs support).
  for candidate in python3.12 python3.11 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  log "no Python 3.10-3.12 on PATH"; return 1
}

make_venv() {  # $1 interpreter, $2 folder: venv, else virtualenv (a Python without ensurepip)
  "$1" -m venv "$2" 2>/dev/null && return 0
  rm -rf "$2"  # a venv without pip, left by the failed attempt
  log "python -m venv failed (no ensurepip?): trying virtualenv from PyPI"
  if ! "$1" -m pip install -q --user virtualenv >&2; then
    log "this Python has neither venv with ensurepip nor pip: install either, or give PYTHON=an interpreter with mmserve"
    return 1
  fi
  "$1" -m virtualenv -q "$2"
}

setup() {
  local venv="${MMSERVE_GPU_VENV:-$root/.venv-gpu}" py pip
  py="$(base_python)"
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $py"
    make_venv "$py" "$venv"
  fi
  pip=("$venv/bin/python" -m pip)
  if [ ! -f "$venv/.mmserve-gpu-installed" ] || [ "$root/pyproject.toml" -nt "$venv/.mmserve-gpu-installed" ]; then
    "${pip[@]}" install -q --upgrade pip uv >&2
    local install=("$venv/bin/python" -m uv pip install --python "$venv/bin/python")
    "${install[@]}" -q -e "$root[train,server]" >&2
    # The wheel's tritonserver + Python backend; its own Python API is not used (--no-deps).
    "${install[@]}" -q --no-deps "nvidia-pytriton==0.7.0" >&2
    if [ "$dry_run" = 0 ]; then
      local tensorrt
      tensorrt="$("$venv/bin/python" - <<'PY'
import sys
from mmserve.bench.gpu.device import driver_version
from mmserve.exporters.gpu_stack import deployed_image, host_tensorrt

requirement, note = host_tensorrt(deployed_image(), driver_version())
if note:
    print(f"gpu_check.sh: {note}", file=sys.stderr)
print(requirement)
PY
)"
      log "TensorRT pinned to the deployed Triton image's: $tensorrt"
      "${install[@]}" -q "$tensorrt" >&2
      # onnxruntime (a base dependency) and onnxruntime-gpu share one module directory: the
      # CPU package must go, then the GPU one is put back whole.
      "${pip[@]}" uninstall -q -y onnxruntime onnxruntime-gpu >&2 || true
      "${install[@]}" -q "onnxruntime-gpu[cuda,cudnn]>=1.20" >&2
    fi
    touch "$venv/.mmserve-gpu-installed"
  fi
  PYTHON="$venv/bin/python"
}

if [ -n "${PYTHON:-}" ]; then
  :  # the caller's interpreter, with mmserve installed (the test suite's)
elif [ "$dry_run" = 1 ] && [ -x "$root/.venv/bin/python" ] && "$root/.venv/bin/python" -c 'import mmserve.exporters' 2>/dev/null; then
  PYTHON="$root/.venv/bin/python"
else
  setup
fi

# The CUDA, cuDNN and TensorRT libraries of the pip wheels (nvidia/*/lib, tensorrt*libs) for
# onnxruntime's CUDA and TensorRT execution providers, here and in the Triton stubs this
# process starts: no system CUDA is assumed.
site="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
wheel_libs="$(find "$site" -maxdepth 4 \( -name 'libnvinfer.so*' -o -name 'libcudart.so*' -o -name 'libcudnn.so*' \
  -o -name 'libcublas.so*' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd: - || true)"
if [ -n "$wheel_libs" ] && [ "$dry_run" = 0 ]; then
  export LD_LIBRARY_PATH="$wheel_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export MMSERVE_TRT_CACHE="${MMSERVE_TRT_CACHE:-${TMPDIR:-/tmp}/mmserve-gpu-check/ort-trt}"

setup_seconds=$(( $(date +%s) - started ))
echo "{\"setup_seconds\": $setup_seconds, \"python\": \"$PYTHON\"}" > "$OUT/setup.json"
log "set-up took ${setup_seconds} s; perf_analyzer skipped (needs libb64, a Debian package): the asyncio client drives Triton"
extra=()
if [ "$budget_given" = 0 ]; then  # what is left of the whole budget, with a margin for the report
  left=$(( ${MMSERVE_GPU_BUDGET:-480} - setup_seconds - 20 ))
  [ "$left" -lt 60 ] && left=60
  extra=(--budget "$left")
fi
exec "$PYTHON" -m mmserve.bench.gpu ${extra[@]+"${extra[@]}"} "$@"
