// The CPU search's settings from the environment, read in one place (options.cpp).
//
// A call reads them once, at its start (cpu_options()), and passes the snapshot down; the tests
// switch them between calls. Each value is kept as written and interpreted where it is used (an
// unknown value is an error only when the setting matters for the call, as before). Python sees
// them through sgcvq._C.cpu_options().
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace sgcvq {
namespace cpu {

struct CpuOptions {
  // SGCVQ_CPU_PORTABLE (non-empty, not "0"): the portable scans instead of the AVX-512 ones, which
  // also turns the bf16 paths off. Read once per process: it fixes which scans the library runs.
  bool portable = false;
  // SGCVQ_CPU_BF16: "amx", "avx512bf16", "off" (or "0"), or empty: the fastest this CPU runs.
  std::string bf16;
  // SGCVQ_CPU_F32_GEMM: "mm" keeps ATen's at::mm for the float32 tiles where brgemm would run.
  std::string f32_gemm;
  // SGCVQ_CPU_SMALLD: "window" or "branchy" forces the bf16 small-D scan (empty: by code count).
  std::string smalld;
  // SGCVQ_CPU_SMALLD_SEED: "cells" (default) or "first": the branchy small-D scan's seed.
  std::string smalld_seed;
  // SGCVQ_CPU_RESEARCH: "loop" re-searches uncertified tokens one at a time (tests, benchmarks).
  std::string research;
  // SGCVQ_CPU_AVX2: "1" forces the AVX2 kernels (also on an AVX-512 CPU), "0" turns them off,
  // empty: the CPU's features decide (avx2/cpu_kind.h).
  std::string avx2;
  // SGCVQ_CPU_LEAVES: "1" takes the k-d leaf search (collect_f32_leaves.cpp) wherever it can run
  // (AVX2 kernels on, D <= 16, all codes, two leaves or more), "0" never; empty: by size.
  std::string leaves;
};

// The settings now (SGCVQ_CPU_PORTABLE as read when the library first asked).
CpuOptions cpu_options();

// Each setting's environment variable and its value now, in CpuOptions' order (for
// sgcvq._C.cpu_options; empty: unset).
std::vector<std::pair<const char*, std::string>> cpu_option_values();

}  // namespace cpu
}  // namespace sgcvq
