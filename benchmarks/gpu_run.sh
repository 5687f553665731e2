#!/usr/bin/env bash
# Everything that needs a GPU, in one device call: build the CUDA extension (if it builds), run the
# GPU tests (tests/test_triton.py, tests/test_cuda.py), run the GPU benchmarks. Logs, JUnit XML,
# the pytest-benchmark JSON and bench_gpu.json (device, ceilings, floors) go under $OUT
# (default benchmarks/out/). A step that fails or runs out of time is recorded and the next runs.
#
#   bash benchmarks/gpu_run.sh                  # build, test, bench (the default: all)
#   bash benchmarks/gpu_run.sh test bench       # only some steps, in the order given
#   SGCVQ_BENCH_QUICK=1 bash benchmarks/gpu_run.sh bench
#
# From a session with the device tool: run(command="bash benchmarks/gpu_run.sh", carry=[".whl"]).
# .whl/ holds pure-Python wheels (pytest, pytest-benchmark, nvidia-ml-py, ...) installed into a
# private folder only where the machine lacks them (it has no network).
# The whole script keeps to SGCVQ_GPU_BUDGET_S seconds (default 570: device calls stop at 600).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT="${OUT:-$ROOT/benchmarks/out}"
export OUT
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
START=$(date +%s)
BUDGET="${SGCVQ_GPU_BUDGET_S:-570}"
SUMMARY="$OUT/summary.txt"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(build test bench)
: >"$SUMMARY"

left() { echo $((BUDGET - ($(date +%s) - START))); }
note() { echo "$*" | tee -a "$SUMMARY"; }

# run_step NAME MAX_SECONDS CMD...: runs CMD under a timeout (the smaller of MAX_SECONDS and the
# time left), output to $OUT/NAME.log, and records the exit status and duration.
run_step() {
  local name=$1 max=$2
  shift 2
  local t=$(left)
  [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -le 5 ]; then
    note "$name: SKIPPED (no time left)"
    return 0
  fi
  local t0=$(date +%s)
  timeout --kill-after=5 "$t" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local status="rc=$rc"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMEOUT after ${t}s (rc=$rc)"
  note "$name: $status in $(($(date +%s) - t0))s  (log: $name.log)"
  tail -n 5 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY"
  return 0
}

# ---- environment record ------------------------------------------------------------------
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,memory.total,power.limit \
    --format=csv 2>&1 || echo "nvidia-smi unavailable"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1
  command -v nvcc && nvcc --version | tail -n 2
} >"$OUT/env.txt" 2>&1
note "env: $(tr '\n' ' ' <"$OUT/env.txt" | cut -c1-400)"

# ---- test/benchmark dependencies missing on the machine: from .whl/ into a private folder ----
DEPS="${TMPDIR:-/tmp}/sgcvq_pydeps"  # outside the tree: nothing to commit or ship back
need=()
"$PY" -c "import pytest" 2>/dev/null || need+=(pytest pluggy iniconfig packaging pygments)
"$PY" -c "import pytest_benchmark" 2>/dev/null || need+=(pytest-benchmark py-cpuinfo2)
"$PY" -c "import pynvml" 2>/dev/null || need+=(nvidia-ml-py)
if [ ${#need[@]} -gt 0 ]; then
  if [ -d "$ROOT/.whl" ]; then
    "$PY" -m pip install -q --no-index --no-deps --find-links "$ROOT/.whl" --target "$DEPS" "${need[@]}" \
      >"$OUT/deps.log" 2>&1 && note "deps: installed ${need[*]} into $DEPS" || note "deps: pip failed (see deps.log)"
  else
    note "deps: missing ${need[*]} and no .whl/ carried"
  fi
fi
export PYTHONPATH="$ROOT:$DEPS${PYTHONPATH:+:$PYTHONPATH}"

# sgcvq.kernels is the top-level kernels/ folder (pyproject package-dir). Without an install, a
# link inside the package gives the same import path on this (throwaway) copy of the tree.
ensure_importable() {
  if ! "$PY" -c "import sgcvq.kernels" >/dev/null 2>&1; then
    [ -e sgcvq/kernels ] || ln -s ../kernels sgcvq/kernels
  fi
  "$PY" -c "import sgcvq, sgcvq.kernels; print('sgcvq imports; CPU ext', sgcvq.ops.HAS_CPU_EXTENSION, 'CUDA ext', sgcvq.ops.HAS_CUDA_EXTENSION)" \
    >>"$SUMMARY" 2>&1 || note "import sgcvq FAILED"
}

for step in "${STEPS[@]}"; do
  case $step in
    build)
      run_step build 240 env MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace
      ensure_importable
      ;;
    test)
      ensure_importable
      # SGCVQ_TRITON_AUTOTUNE=0: one tile config per kernel family, so the tests do not spend
      # their time autotuning every shape; the benchmarks autotune.
      run_step test 180 env SGCVQ_TRITON_AUTOTUNE=0 "$PY" -m pytest tests/test_triton.py tests/test_cuda.py \
        -q -rs --durations=15 --junitxml="$OUT/tests.xml"
      ;;
    bench)
      ensure_importable
      run_step bench 560 "$PY" -m pytest benchmarks/test_bench_gpu.py -q -rs \
        --benchmark-json="$OUT/pytest_benchmark.json" --benchmark-columns=min,median,max,rounds
      ;;
    *)
      note "unknown step $step (build, test, bench)"
      ;;
  esac
done
note "total $(($(date +%s) - START))s; outputs in $OUT"
