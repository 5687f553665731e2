#!/usr/bin/env bash
# Builds benchmarks/kernels/window_harness.cpp against this checkout's kernel file and the venv's
# torch headers and libc10, then runs it pinned to one core: run_window_harness.sh [K] [D] [tokens].
# NOTES.md CPU entries 12-14 quote it ("the kernel harness").
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
torch_dir="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
out="${TMPDIR:-/tmp}/sgcvq_window_harness"
g++ -O3 -std=c++17 -w -I"$here/csrc/cpu" -I"$torch_dir/include" -o "$out" \
  "$here/benchmarks/kernels/window_harness.cpp" "$here/csrc/cpu/bf16_tile_avx512.cpp" \
  -L"$torch_dir/lib" -lc10 -Wl,-rpath,"$torch_dir/lib"
exec taskset -c "${CORE:-0}" "$out" "$@"
