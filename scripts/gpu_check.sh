#!/usr/bin/env bash
# One-shot check of the CUDA path on a machine with an NVIDIA GPU:
#   1. prints the driver, GPU, nvcc and Python it finds;
#   2. picks a Python with a CUDA-enabled torch (the current one, or a fresh venv
#      in .venv-gpu with `pip install torch==2.13.0` when the current one has none);
#   3. builds convx with CUDA for this GPU's architecture only (fast);
#   4. runs tests/test_cuda.py and tests/test_build.py (CONVX_EXPECT_CUDA=1);
#   5. runs benchmarks/bench_gpu.py.
# Everything goes into one results file (default convx-out/gpu_check/results.md,
# or $1) next to the benchmark's CSV/JSON/markdown. Meant to finish in under six
# minutes on an H200; each stage has its own time limit so one hang cannot eat
# the rest. Exits non-zero if any stage failed; the file says which.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT_DIR=${OUT_DIR:-$ROOT/convx-out/gpu_check}
RESULTS=${1:-$OUT_DIR/results.md}
mkdir -p "$OUT_DIR" "$(dirname "$RESULTS")"
: > "$RESULTS"
START=$(date +%s)
FAILED=()

log() { echo "$*" | tee -a "$RESULTS"; }
elapsed() { echo $(( $(date +%s) - START ))s; }
# run_stage NAME SECONDS CMD...: runs CMD with a time limit, output to the terminal
# and the results file inside a code block, and records a failure.
run_stage() {
  local name=$1 limit=$2
  shift 2
  log ""
  log "## $name (limit ${limit}s, started at $(elapsed))"
  log '```'
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$RESULTS"
  local rc=${PIPESTATUS[0]}
  log '```'
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && log "**$name: timed out after ${limit}s**" || log "**$name: failed with exit code $rc**"
    FAILED+=("$name")
  else
    log "$name: ok ($(elapsed) so far)"
  fi
  return "$rc"
}

log "# convx GPU check"
log ""
log "date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"

# ---- 1. what is here ----------------------------------------------------------
log ""
log "## Machine"
log '```'
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 | tee -a "$RESULTS"
else
  log "nvidia-smi not found: is the NVIDIA driver installed?"
fi
NVCC=$(command -v nvcc || true)
if [ -z "$NVCC" ]; then
  for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc /opt/cuda/bin/nvcc; do
    [ -x "$candidate" ] && NVCC=$candidate && break
  done
fi
if [ -n "$NVCC" ]; then
  export PATH="$(dirname "$NVCC"):$PATH"
  log "nvcc: $NVCC ($("$NVCC" --version | tail -1))"
else
  log "nvcc: not found (looked in PATH, /usr/local/cuda*/bin, /opt/cuda/bin)"
fi
log "cpus: $(nproc), python3: $(python3 --version 2>&1)"
log '```'
if [ -z "$NVCC" ]; then
  log "**No CUDA compiler: cannot build the CUDA kernels. Install the CUDA toolkit or put nvcc on PATH.**"
  exit 2
fi

# ---- 2. a Python with CUDA torch ------------------------------------------------
torch_cuda_ok() {  # $1: python; true if its torch sees a GPU
  "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1
}
PY=${PYTHON:-python3}
if ! torch_cuda_ok "$PY"; then
  log ""
  log "$PY has no CUDA-enabled torch; setting up .venv-gpu with pip install torch==2.13.0"
  if [ ! -x .venv-gpu/bin/python ]; then python3 -m venv .venv-gpu || { log "**could not create a venv**"; exit 2; }; fi
  PY=$ROOT/.venv-gpu/bin/python
  run_stage "install torch" 240 "$PY" -m pip install -q torch==2.13.0 || true
  if ! torch_cuda_ok "$PY"; then
    log "**torch in .venv-gpu does not see a GPU:**"
    "$PY" -c "import torch; print('torch', torch.__version__, 'built for CUDA', torch.version.cuda, 'available', torch.cuda.is_available())" 2>&1 | tee -a "$RESULTS"
    exit 2
  fi
fi
log ""
log "python: $PY"
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), GPU {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB')" 2>&1 | tee -a "$RESULTS"
"$PY" -m pip install -q scikit-build-core pybind11 ninja cmake numpy pytest hypothesis 2>&1 | tail -3 | tee -a "$RESULTS"

# ---- 3. build for this GPU ---------------------------------------------------------
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
[ -z "$ARCH" ] && ARCH=$("$PY" -c "import torch; print('%d%d' % torch.cuda.get_device_capability(0))")
log "building for sm_$ARCH"
export CUDAARCHS=$ARCH CONVX_WITH_CUDA=ON CONVX_EXPECT_CUDA=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
run_stage "build" 300 "$PY" -m pip install --no-build-isolation --no-deps -q -Cbuild-dir=build/gpu-check-sm$ARCH \
  -Cbuild.verbose=false . || { log "**build failed: see above**"; exit 1; }
run_stage "convx info" 60 "$PY" -m convx info

# ---- 4. tests ------------------------------------------------------------------------
run_stage "CUDA tests" 200 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_build.py || true

# ---- 5. benchmark ----------------------------------------------------------------------
run_stage "GPU benchmark" 150 "$PY" benchmarks/bench_gpu.py --out "$OUT_DIR" --repeats 20 --budget 0.4 || true
if [ -f "$OUT_DIR/bench_gpu.md" ]; then
  log ""
  log "## Benchmark table"
  log ""
  cat "$OUT_DIR/bench_gpu.md" >> "$RESULTS"
fi

log ""
if [ ${#FAILED[@]} -eq 0 ]; then
  log "**All stages passed** in $(elapsed). Results: $RESULTS"
  exit 0
fi
log "**Failed stages: ${FAILED[*]}** (total $(elapsed)). Results: $RESULTS"
exit 1
