#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu with nvcc for sm_90a and sm_80 (no GPU needed), prints the ptxas
# report (registers, spills, shared memory per kernel) and the SASS counts of HGMMA / HMMA /
# LDGSTS / LDL, and fails on a compile error or a Hopper search without HGMMA. A spill in a
# hot loop is a finding to fix. Then syntax-checks the torch glue csrc/cuda/ops_cuda.cpp against the
# venv's torch headers (a CPU build of torch ships the c10/cuda headers; CUDA's own come from nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || true)}
[ -n "$NVCC" ] || NVCC=/usr/local/cuda/bin/nvcc
if [ ! -x "$NVCC" ]; then
  echo "nvcc_check: nvcc not found (set NVCC or put it on PATH): skipping the CUDA compile check"
  exit 0
fi
"$NVCC" --version | tail -n 2

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# The flags torch's CUDAExtension adds (no implicit half/bfloat16 conversions), no fast math.
FLAGS=(-std=c++17 -O3 -lineinfo -Xptxas -v
  -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)

cat >"$OUT/report.py" <<'PY'
import re, subprocess, sys
text = open(sys.argv[1]).read()
rows = []
for block in re.split(r"(?=ptxas info\s*: Compiling entry function)", text)[1:]:
    fn, arch = re.search(r"function '([^']+)' for '(sm_\w+)'", block).groups()
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
    regs = re.search(r"Used (\d+) registers", block)
    smem = re.search(r"(\d+) bytes smem", block)
    rows.append([arch, regs.group(1) if regs else "?", spill.group(1) if spill else "?",
                 spill.group(2) if spill else "?", smem.group(1) if smem else "0", fn])
names = subprocess.run(["c++filt"], input="\n".join(r[5] for r in rows), capture_output=True,
                       text=True).stdout.splitlines() if rows else []
print(f"  {'arch':<7} {'regs':>5} {'spill-s':>8} {'spill-l':>8} {'smem':>6}  kernel")
cub, spilled = {}, []
for r, name in zip(rows, names):
    name = name.replace("(anonymous namespace)::", "").replace("sgcvq::gpu::", "")
    name = re.sub(r"^void |\(.*$", "", name)
    if r[2] not in ("0", "?") or r[3] not in ("0", "?"):
        spilled.append(f"    SPILL {r[0]}: {r[2]} B stores, {r[3]} B loads in {name}")
    if name.startswith("cub::"):
        cub[r[0]] = cub.get(r[0], 0) + 1
        continue
    print(f"  {r[0]:<7} {r[1]:>5} {r[2]:>8} {r[3]:>8} {r[4]:>6}  {name}")
for arch, n in cub.items():
    print(f"  {arch:<7} (+ {n} cub kernels)")
print(f"  spill summary: {len(spilled)} kernel(s) with spills")
print("\n".join(spilled))
PY

# cuobjdump (CUDA's, or the copy Triton ships) reads the SASS: the Hopper search must hold HGMMA
# (wgmma) and the cp.async ring LDGSTS; a matrix kernel with only HMMA / FFMA is on a slower path.
CUOBJDUMP=${CUOBJDUMP:-$(command -v cuobjdump || true)}
[ -n "$CUOBJDUMP" ] || CUOBJDUMP=$(dirname "$(readlink -f "$NVCC")")/cuobjdump
if [ ! -x "$CUOBJDUMP" ]; then
  CUOBJDUMP=$(${PYTHON:-.venv/bin/python} -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"))' 2>/dev/null || true)
fi

status=0
for src in csrc/cuda/*.cu; do
  name=$(basename "$src")
  log="$OUT/$name.log"
  start=$(date +%s)
  if ! "$NVCC" "${FLAGS[@]}" -c "$src" -o "$OUT/$name.o" >"$log" 2>&1; then
    cat "$log"
    echo "nvcc_check: FAILED to compile $src"
    status=1
    continue
  fi
  echo
  echo "== $src ($(( $(date +%s) - start )) s)"
  # Anything nvcc said besides the ptxas report (warnings) is shown as is.
  grep -v -e '^ptxas info' -e 'bytes stack frame' -e '^$' "$log" || true
  # One line per kernel: arch, registers, spill stores/loads, shared memory, name (ours listed;
  # cub's radix-sort kernels summarised by their count), then every spill, cub's included.
  python3 "$OUT/report.py" "$log"
  if [ -x "$CUOBJDUMP" ]; then
    sass=$("$CUOBJDUMP" -sass "$OUT/$name.o" 2>/dev/null || true)
    echo "  SASS: $(grep -c 'HGMMA' <<<"$sass") HGMMA, $(grep -c 'HMMA' <<<"$sass") HMMA, $(grep -c 'LDGSTS' <<<"$sass") LDGSTS, $(grep -cw 'LDL' <<<"$sass") LDL lines"
    if [ "$name" = nearest_code_sm90.cu ] && ! grep -q 'HGMMA.64x128x16.F32.BF16' <<<"$sass"; then
      echo "nvcc_check: nearest_code_sm90.cu has no HGMMA.64x128x16.F32.BF16 in its SASS"
      status=1
    fi
  else
    echo "  SASS: no cuobjdump found (set CUOBJDUMP): HGMMA not checked"
  fi
done

echo
echo "== syntax check of csrc/cuda/ops_cuda.cpp (torch glue) =="
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TORCH_INC=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))' 2>/dev/null || true)
PY_INC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)
CUDA_INC=$(dirname "$(readlink -f "$NVCC")")/../include
[ -f "$CUDA_INC/cuda_runtime_api.h" ] || CUDA_INC=/usr/local/cuda/include
if [ -z "$TORCH_INC" ] || [ ! -f "$TORCH_INC/c10/cuda/CUDAGuard.h" ]; then
  echo "skipped: this torch has no c10/cuda headers"
elif ! command -v g++ >/dev/null; then
  echo "skipped: no g++"
else
  # C10_CUDA_NO_CMAKE_CONFIGURE_FILE: a CPU build of torch lacks c10/cuda/impl/cuda_cmake_macros.h.
  if g++ -std=c++20 -fsyntax-only -Wall -isystem "$TORCH_INC" -isystem "$TORCH_INC/torch/csrc/api/include" \
      -isystem "$PY_INC" -isystem "$CUDA_INC" -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE csrc/cuda/ops_cuda.cpp; then
    echo "ops_cuda.cpp: OK"
  else
    echo "nvcc_check: ops_cuda.cpp does not compile"
    status=1
  fi
fi
exit $status
