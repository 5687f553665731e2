#!/usr/bin/env bash
# CI: the CPU extension on aarch64 (Graviton, Grace, Apple silicon's architecture), from an x86-64
# machine. 1) Cross-compiles every C++ source the aarch64 build takes (setup.py's cpu_sources():
# no AVX-512 files, csrc/cpu/portable/ instead) with Debian's g++-aarch64-linux-gnu against this
# venv's torch headers (compile only: there is no aarch64 torch to link), and checks that every
# sgcvq:: symbol one object needs another defines. 2) Builds a static C++ smoke test of the
# portable kernels (nearest_code_scan.cpp: the small-D scan, top-2 rows, the exact search, the
# re-score) and runs it under qemu-user against a brute-force float64 search.
# Needs: apt packages g++-aarch64-linux-gnu qemu-user (installed here when missing), .venv with torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CXX=aarch64-linux-gnu-g++
if ! command -v "$CXX" >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  (apt-get install -y -q g++-aarch64-linux-gnu qemu-user || (apt-get update -q && apt-get install -y -q g++-aarch64-linux-gnu qemu-user)) >/dev/null
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# The aarch64 source list, as setup.py builds it there (its X86_ONLY list, read from its AST).
SOURCES=$($PY - <<'EOF'
import ast, glob
tree = ast.parse(open("setup.py").read())
x86_only = next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "X86_ONLY")
src = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp")) + sorted(glob.glob("csrc/cpu/avx2/*.cpp"))
print(" ".join([s for s in src if s not in x86_only] + sorted(glob.glob("csrc/cpu/portable/*.cpp"))))
EOF
)
INC=$($PY -c 'import sysconfig; from torch.utils import cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths() + [sysconfig.get_paths()["include"]]))')

echo "== cross-compiling for aarch64: $SOURCES"
pids=()
for s in $SOURCES; do
  o="$OUT/$(echo "$s" | tr / _).o"
  # -O0: this checks that the code compiles for aarch64, not how fast it runs there.
  $CXX -std=c++20 -O0 -fPIC -fopenmp -Wall -Werror=return-type $INC -DTORCH_API_INCLUDE_EXTENSION_H \
       -DTORCH_EXTENSION_NAME=_C -c "$s" -o "$o" &
  pids+=($!)
  if (( ${#pids[@]} >= $(nproc) )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
for o in "$OUT"/*.o; do
  file "$o" | grep -q "ARM aarch64" || { echo "not an aarch64 object: $o"; exit 1; }
done

echo "== every sgcvq:: symbol used is defined (no x86-only definition left out)"
aarch64-linux-gnu-nm -C --defined-only "$OUT"/*.o | grep -o 'sgcvq::[^(]*(.*' | sort -u > "$OUT/defined.txt"
aarch64-linux-gnu-nm -C --undefined-only "$OUT"/*.o | grep -o 'sgcvq::[^(]*(.*' | sort -u > "$OUT/needed.txt"
missing=$(comm -23 "$OUT/needed.txt" "$OUT/defined.txt")
if [ -n "$missing" ]; then echo "undefined on aarch64:"; echo "$missing"; exit 1; fi

echo "== portable kernels under qemu-aarch64"
cat > "$OUT/smoke.cpp" <<'EOF'
// The portable kernels of nearest_code_scan.h against a brute-force search in double.
#include "nearest_code_scan.h"
#include "avx2/cpu_kind.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace sgcvq::cpu {  // the AVX2 switch is x86-64 only: always off here (as avx2/cpu_kind.cpp says)
bool cpu_has_avx2() { return false; }
bool avx2_forced() { return false; }
bool avx2_kernels_on() { return false; }
}  // namespace sgcvq::cpu

using namespace sgcvq::cpu;

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  int bad = 0;
  for (int64_t D : {1, 3, 8, 16, 17, 40}) {
    const int64_t K = 37 + D, T = 24;
    std::vector<float> x(T * D), e(K * D), norms(K);
    for (float& v : x) v = nd(rng);
    for (float& v : e) v = nd(rng);
    for (int64_t k = 0; k < K; ++k) norms[k] = sum_squares(e.data() + k * D, D);
    // Brute force: the float64 argmin, and the float32 direct distance's argmin (ties to the lowest).
    std::vector<int64_t> want(T);
    for (int64_t t = 0; t < T; ++t) {
      float bv = INFINITY;
      for (int64_t k = 0; k < K; ++k) {
        const float v = direct_sqdist(x.data() + t * D, e.data() + k * D, D);
        double ref = 0;
        for (int64_t d = 0; d < D; ++d) ref += double(x[t * D + d] - e[k * D + d]) * (x[t * D + d] - e[k * D + d]);
        if (std::fabs(ref - v) > 1e-5 * (ref + 1)) { std::printf("direct_sqdist D=%ld off\n", long(D)); ++bad; }
        if (v < bv) { bv = v; want[t] = k; }
      }
    }
    // The small-D layout for the scan and the exact search.
    const int64_t blocks = (K + kLanes - 1) / kLanes;
    std::vector<float> lay(blocks * D * kLanes, 0.f), ln(blocks * kLanes, 0.f);
    for (int64_t k = 0; k < K; ++k) {
      ln[k] = norms[k];
      for (int64_t d = 0; d < D; ++d) lay[((k / kLanes) * D + d) * kLanes + k % kLanes] = e[k * D + d];
    }
    const SmallDCodebook cb{lay.data(), ln.data()};
    std::vector<float> val(T, INFINITY);
    std::vector<int64_t> arg(T, -1);
    exact_search(x.data(), T, D, e.data(), D <= kSmallMaxD ? &cb : nullptr, 0, K, val.data(), arg.data());
    for (int64_t t = 0; t < T; ++t)
      if (arg[t] != want[t]) { std::printf("exact_search D=%ld token %ld: %ld, want %ld\n", long(D), long(t), long(arg[t]), long(want[t])); ++bad; }
    // Top-2 of the approximate distances: the exact answer is one of them on this well-separated data.
    std::vector<float> xs(T * D);
    for (int64_t i = 0; i < T * D; ++i) xs[i] = -2.f * x[i];
    std::vector<Top2> best(T);
    if (D <= kSmallMaxD) {
      small_d_scan(xs.data(), T, D, cb, 0, K, best.data());
    } else {
      std::vector<float> S(T * K);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t k = 0; k < K; ++k) {
          float s = 0.f;
          for (int64_t d = 0; d < D; ++d) s += xs[t * D + d] * e[k * D + d];
          S[t * K + k] = s;
        }
      top2_rows(S.data(), K, T, K, norms.data(), 0, best.data());
    }
    for (int64_t t = 0; t < T; ++t)
      if (best[t].i1 != want[t] && best[t].i2 != want[t]) { std::printf("top-2 D=%ld token %ld misses %ld\n", long(D), long(t), long(want[t])); ++bad; }
    // The re-score of candidate lists (every code listed): the exact answer again.
    std::vector<int32_t> lists(T * (K + 1));
    for (int64_t t = 0; t < T; ++t) {
      lists[t * (K + 1)] = int32_t(K);
      for (int64_t k = 0; k < K; ++k) lists[t * (K + 1) + 1 + k] = int32_t(k);
    }
    rescore_lists(x.data(), T, D, e.data(), lists.data() + 1, lists.data(), K + 1, val.data(), arg.data());
    for (int64_t t = 0; t < T; ++t)
      if (arg[t] != want[t]) { std::printf("rescore_lists D=%ld token %ld: %ld, want %ld\n", long(D), long(t), long(arg[t]), long(want[t])); ++bad; }
  }
  std::printf(bad ? "aarch64 smoke test: %d failures\n" : "aarch64 smoke test: ok\n", bad);
  return bad != 0;
}
EOF
# The scan file and the AVX2 files it calls (their non-x86 stubs here); none of them needs torch.
$CXX -std=c++20 -O2 -static -Icsrc/cpu "$OUT/smoke.cpp" csrc/cpu/nearest_code_scan.cpp csrc/cpu/avx2/small_scan_avx2.cpp \
     csrc/cpu/avx2/exact_lanes_avx2.cpp csrc/cpu/avx2/sums_avx2.cpp -o "$OUT/smoke"
qemu-aarch64 "$OUT/smoke"
